"""Feed run artifacts: the trained model and everything scoring needs, in Django's storage API.

The worker that trains a run writes one ``.npz`` archive
(:meth:`ranking.pipeline.PreparedFeeds.save`: arrays and a JSON header, never pickle) to the
``feedmodels`` storage (``settings.STORAGES``; local disk by default, any Django storage such as
an S3 backend when workers run on several machines). Shard tasks read it back, once per worker
process. Artifacts are deleted with the feeds of pruned runs (:func:`artifacts_prune`).

Contents (for a future fold-in task as much as for scoring): the ALS user and item factors
with the member id of every user row (``fit_member_ids``) and the item id of every item column
(the first ``n_model_items`` of ``space_ids``), the policy, the catalogue the policy's effects
read, each feed member's route, seen items and mutes. See docs/pipeline.md.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from django.core.files import File
from django.core.files.storage import Storage, storages

from ranking.pipeline import PreparedFeeds

STORAGE_ALIAS = "feedmodels"

# The artifact this worker process loaded last, by name (names hold the run id and the claim
# token of the worker that trained it, so a name never denotes two different artifacts).
_loaded: dict[str, PreparedFeeds] = {}


def artifact_storage() -> Storage:
    return storages[STORAGE_ALIAS]


def _folder(community_id: int, run_id: int) -> str:
    return f"runs/{community_id}/{run_id}"


def artifact_save(*, community_id: int, run_id: int, token: str, prepared: PreparedFeeds) -> str:
    """Write ``prepared`` for the run's attempt ``token``; returns the storage name."""
    storage = artifact_storage()
    name = f"{_folder(community_id, run_id)}/{token}.npz"
    try:
        target = Path(storage.path(name))
    except NotImplementedError:  # a remote storage: stage locally, then upload
        with tempfile.TemporaryFile() as handle:
            prepared.save(handle)
            handle.seek(0)
            return storage.save(name, File(handle, name=name))
    # Local disk: write next to the final name and rename, so a reader never sees half a file.
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    with open(partial, "wb") as handle:
        prepared.save(handle)
    os.replace(partial, target)
    _loaded.clear()
    _loaded[name] = prepared  # the trainer may score a shard itself
    return name


def artifact_load(name: str) -> PreparedFeeds:
    """The prepared run stored under ``name``, cached for the life of this worker process.

    From a storage with local paths (the default) the arrays are memory-mapped, not read: the
    first fold-in after a swap no longer waits for the whole model to be read (1.1-1.3 s per
    worker process at 1M members), and the processes of one machine share the pages. Other
    storages (S3-style) are copied to a temporary file and read.
    """
    cached = _loaded.get(name)
    if cached is not None:
        return cached
    storage = artifact_storage()
    try:
        prepared = PreparedFeeds.load(storage.path(name), mmap=True)
    except NotImplementedError:
        with storage.open(name, "rb") as remote, tempfile.TemporaryFile() as local:
            shutil.copyfileobj(remote, local, 1 << 20)  # np.load needs a seekable file
            local.seek(0)
            prepared = PreparedFeeds.load(local)
    _loaded.clear()  # one run at a time per worker: keep memory bounded
    _loaded[name] = prepared
    return prepared


def artifacts_prune(*, community_id: int, run_ids: list[int]) -> int:
    """Delete every artifact of the given runs (any attempt). Returns files deleted."""
    storage = artifact_storage()
    deleted = 0
    for run_id in run_ids:
        folder = _folder(community_id, run_id)
        try:
            _, files = storage.listdir(folder)
        except FileNotFoundError:
            continue
        for file in files:
            name = f"{folder}/{file}"
            _loaded.pop(name, None)
            storage.delete(name)
            deleted += 1
    return deleted
