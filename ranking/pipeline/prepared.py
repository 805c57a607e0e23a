"""The prepared run (:class:`PreparedFeeds`) and its ``.npz`` archive: written aligned, read or
memory-mapped, never pickled."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import zipfile
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix

from ranking.als import ALSModel
from ranking.effects import Catalogue
from ranking.pipeline.new_items import (
    NewItemEstimator,
)
from ranking.policy import Policy

_PREPARED_FORMAT = "commonfeed.prepared_feeds"
_PREPARED_VERSION = 1
_CATALOGUE_FIELDS = (
    "creator",
    "provenance",
    "age_days",
    "popularity",
    "refused",
    "creator_long_tail",
    "creator_first_age_days",
)


_ESTIMATOR_FIELDS = (
    "creator_ids",
    "creator_vectors",
    "creator_known",
    "tag_names",
    "tag_vectors",
    "overall",
)


@dataclass(frozen=True)
class PreparedFeeds:
    """Everything a feed needs except the per-member ranking: the output of the training stage.

    :func:`prepare_feeds` builds it once per run (vocabularies, matrices, the fitted model, the
    catalogue, every member's route); :func:`score_feeds` ranks any slice of :attr:`targets`
    from it, so a run can be scored in shards by several processes. :meth:`save` / :meth:`load`
    move it between processes as one ``.npz`` archive (arrays and a JSON header, no pickle).

    Row ``r`` of the per-member arrays belongs to ``targets[r]`` (the ``feed_members`` given to
    :func:`prepare_feeds`, same order).
    """

    policy: Policy
    n: int
    """Feed length."""
    pool: int
    """Candidates per member before the policy cuts them to :attr:`n`."""
    targets: npt.NDArray[np.int64]
    """int64 ``[m]``: the members to make feeds for."""
    route: npt.NDArray[np.int8]
    """int8 ``[m]``: ``ROUTE_TRAINED``, ``ROUTE_RECALCULATED``, ``ROUTE_POPULAR`` or
    ``ROUTE_REFUSING``."""
    model_rows: npt.NDArray[np.int64]
    """int64 ``[m]``: each member's row of ``model.user_factors``; ``-1`` if none."""
    seen: csr_matrix
    """``[m, n_model_items]``: every item each member interacted with (any weight)."""
    train: csr_matrix
    """``[m, n_model_items]``: training rows of the ``ROUTE_RECALCULATED`` members (empty rows
    for everybody else)."""
    extra_blocks: csr_matrix
    """``[m, len(space_ids)]``: items each member blocked (mutes) besides what they saw."""
    space_ids: npt.NDArray[np.int64]
    """int64 ``[N]``: item id of each catalogue column; the first ``n_model_items`` are the
    model's items (columns of ``item_factors``), then candidates nobody interacted with."""
    n_model_items: int
    scorable: npt.NDArray[np.int64]
    """int64: model item indices that may be recommended by ALS or popularity."""
    popularity: npt.NDArray[np.int64]
    """int64 ``[n_model_items]``: distinct training members with a positive interaction."""
    candidates: npt.NDArray[np.int64]
    """int64: the candidate item ids as given."""
    catalogue: Catalogue
    item_vectors_needed: bool
    model: ALSModel | None
    fit_member_ids: npt.NDArray[np.int64]
    """int64 ``[model.n_users]``: the member id of each row of ``model.user_factors``."""
    metadata: dict[str, object]
    """JSON-ready facts about the preparation (sizes, ``fit_seconds``, route counts)."""
    new_items: npt.NDArray[np.int64] = dataclasses.field(
        default_factory=lambda: np.empty(0, dtype=np.int64)
    )
    """int64 ``[c]``: catalogue indices of the cold-start candidates, newest first (empty when
    the policy's ``candidates.new_items`` is 0)."""
    new_item_vectors: npt.NDArray[np.float32] = dataclasses.field(
        default_factory=lambda: np.empty((0, 0), dtype=np.float32)
    )
    """float32 ``[c, factors]``: their estimated factors (see :mod:`ranking.pipeline.new_items`)."""
    estimator: NewItemEstimator | None = None
    """How items published after the run are estimated (``None`` without cold start)."""

    def __len__(self) -> int:
        return int(self.targets.size)

    def save(self, file: BinaryIO) -> None:
        """Write the prepared run to ``file`` as one ``.npz`` archive (no pickle)."""
        arrays: dict[str, npt.NDArray[Any]] = {
            "targets": self.targets,
            "route": self.route,
            "model_rows": self.model_rows,
            "space_ids": self.space_ids,
            "scorable": self.scorable,
            "popularity": self.popularity,
            "candidates": self.candidates,
            "fit_member_ids": self.fit_member_ids,
            "new_items": self.new_items,
            "new_item_vectors": self.new_item_vectors,
        }
        if self.estimator is not None:
            for name in _ESTIMATOR_FIELDS:
                arrays[f"estimator_{name}"] = getattr(self.estimator, name)
        for name in ("seen", "train", "extra_blocks"):
            matrix: csr_matrix = getattr(self, name)
            arrays[f"{name}_data"] = matrix.data
            arrays[f"{name}_indices"] = matrix.indices
            arrays[f"{name}_indptr"] = matrix.indptr
            arrays[f"{name}_shape"] = np.asarray(matrix.shape, dtype=np.int64)
        for name in _CATALOGUE_FIELDS:
            arrays[f"catalogue_{name}"] = getattr(self.catalogue, name)
        if self.model is not None:
            arrays["user_factors"] = self.model.user_factors
            arrays["item_factors"] = self.model.item_factors
        header = {
            "format": _PREPARED_FORMAT,
            "version": _PREPARED_VERSION,
            "policy": self.policy.model_dump(mode="json"),
            "n": self.n,
            "pool": self.pool,
            "n_model_items": self.n_model_items,
            "item_vectors_needed": self.item_vectors_needed,
            "has_model": self.model is not None,
            "metadata": self.metadata,
        }
        arrays["header"] = np.array(json.dumps(header, sort_keys=True))
        _savez_aligned(file, arrays)

    @classmethod
    def load(
        cls,
        file: BinaryIO | str | os.PathLike[str],
        *,
        num_threads: int = 0,
        mmap: bool = False,
    ) -> PreparedFeeds:
        """Read an archive written by :meth:`save` (``allow_pickle=False``).

        With ``mmap`` (``file`` must then be a path), the large arrays are mapped from the file
        copy-on-write instead of read: loading takes milliseconds whatever the size, pages are
        read when first used (a member's fold-in touches the item factors and a few rows), and
        the worker processes of one machine share them through the page cache. The results
        are the same either way.

        Raises
        ------
        ValueError
            If ``file`` is not a prepared-feeds archive of a supported version.
        """
        if mmap:
            if not isinstance(file, (str, os.PathLike)):
                raise TypeError("mmap needs a path, not an open file")
            everything = _npz_mapped(file)
        else:
            with np.load(file, allow_pickle=False) as archive:
                everything = {name: archive[name] for name in archive.files}
        try:
            header = json.loads(str(everything.pop("header")))
            arrays = everything
        except KeyError as error:
            raise ValueError(f"not a prepared-feeds archive: missing {error}") from None
        if header.get("format") != _PREPARED_FORMAT or header.get("version") != _PREPARED_VERSION:
            raise ValueError(f"not a {_PREPARED_FORMAT} archive of version {_PREPARED_VERSION}")
        policy = Policy.model_validate(header["policy"])

        def matrix(name: str) -> csr_matrix:
            shape = tuple(int(v) for v in arrays[f"{name}_shape"])
            result = csr_matrix(
                (arrays[f"{name}_data"], arrays[f"{name}_indices"], arrays[f"{name}_indptr"]),
                shape=shape,
            )
            result.has_sorted_indices = True
            return result

        model = None
        if header["has_model"]:
            model = _model_from_factors(
                policy, arrays["user_factors"], arrays["item_factors"], num_threads
            )
        return cls(
            policy=policy,
            n=int(header["n"]),
            pool=int(header["pool"]),
            targets=arrays["targets"].astype(np.int64, copy=False),
            route=arrays["route"].astype(np.int8, copy=False),
            model_rows=arrays["model_rows"].astype(np.int64, copy=False),
            seen=matrix("seen"),
            train=matrix("train"),
            extra_blocks=matrix("extra_blocks"),
            space_ids=arrays["space_ids"].astype(np.int64, copy=False),
            n_model_items=int(header["n_model_items"]),
            scorable=arrays["scorable"].astype(np.int64, copy=False),
            popularity=arrays["popularity"].astype(np.int64, copy=False),
            candidates=arrays["candidates"].astype(np.int64, copy=False),
            catalogue=Catalogue(**{f: arrays[f"catalogue_{f}"] for f in _CATALOGUE_FIELDS}),
            item_vectors_needed=bool(header["item_vectors_needed"]),
            model=model,
            fit_member_ids=arrays["fit_member_ids"].astype(np.int64, copy=False),
            metadata=dict(header["metadata"]),
            # Archives written before cold start have neither.
            new_items=arrays.get("new_items", np.empty(0)).astype(np.int64, copy=False),
            new_item_vectors=arrays.get("new_item_vectors", np.empty((0, 0))).astype(
                np.float32, copy=False
            ),
            estimator=(
                NewItemEstimator(**{f: arrays[f"estimator_{f}"] for f in _ESTIMATOR_FIELDS})
                if "estimator_overall" in arrays
                else None
            ),
        )


_ALIGN = 64
"""Every array's bytes start at a multiple of this in the archive, so a mapped array is
aligned as an allocated one is (numpy computes on unaligned arrays without BLAS, which rounds
differently)."""
_ALIGN_EXTRA_ID = 0xD935
"""The zip extra field that pads a member's local header (the id Android's zipalign uses)."""


def _savez_aligned(file: BinaryIO, arrays: dict[str, npt.NDArray[Any]]) -> None:
    """:func:`numpy.savez` (an uncompressed zip of ``.npy`` files, read by :func:`numpy.load`),
    with each array's data aligned to ``_ALIGN`` bytes in the file.

    numpy pads the ``.npy`` header to a multiple of 64 bytes; padding each member's local zip
    header with an extra field (ignored by zip readers) puts the ``.npy`` itself on a multiple
    of 64 too.
    """
    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            zip64 = array.nbytes > (1 << 30)
            encoded = info.filename.encode("utf-8" if info.flag_bits & 0x800 else "ascii")
            start = (
                archive.fp.tell()  # type: ignore[union-attr]
                + 30
                + len(encoded)
                + (20 if zip64 else 0)  # zipfile's zip64 extra in the local header
                + 4  # our extra field's id and size
            )
            info.extra = struct.pack("<HH", _ALIGN_EXTRA_ID, -start % _ALIGN) + bytes(
                -start % _ALIGN
            )
            with archive.open(info, mode="w", force_zip64=zip64) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


_MAP_AT_LEAST = 1 << 16
"""Arrays smaller than this many bytes are read, not mapped."""


def _npz_mapped(path: str | os.PathLike[str]) -> dict[str, npt.NDArray[Any]]:
    """The arrays of an uncompressed ``.npz`` (as :func:`numpy.savez` writes), the large ones
    memory-mapped copy-on-write where they lie in the file.

    An ``.npz`` is a zip of ``.npy`` files; :func:`numpy.savez` stores them uncompressed, so
    each array's bytes sit at a fixed offset: after the member's local zip header (30 bytes,
    its name and its extra field; PKWARE APPNOTE 4.3.7) and the ``.npy`` header.
    """
    arrays: dict[str, npt.NDArray[Any]] = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[: -len(".npy")]
            if info.compress_type != zipfile.ZIP_STORED:  # np.savez_compressed: read it
                with archive.open(info) as member:
                    arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
                continue
            raw.seek(info.header_offset)
            local = raw.read(30)
            if local[:4] != b"PK\x03\x04":
                raise ValueError(f"not a zip member at {info.header_offset} of {path}")
            name_length, extra_length = struct.unpack("<HH", local[26:30])
            raw.seek(info.header_offset + 30 + name_length + extra_length)
            version = np.lib.format.read_magic(raw)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(raw)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(raw)
            else:  # a format numpy writes only for unusual dtypes: read it
                with archive.open(info) as member:
                    arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
                continue
            if dtype.hasobject:
                raise ValueError(f"{name} holds Python objects; refusing to load it")
            size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if size < _MAP_AT_LEAST or not shape or raw.tell() % _ALIGN:
                data = np.frombuffer(raw.read(size), dtype=dtype)
                arrays[name] = data.reshape(shape, order="F" if fortran else "C").copy()
                continue
            arrays[name] = np.memmap(
                path,
                dtype=dtype,
                mode="c",
                offset=raw.tell(),
                shape=shape,
                order="F" if fortran else "C",
            )
    return arrays


def _model_from_factors(
    policy: Policy,
    user_factors: npt.NDArray[np.float32],
    item_factors: npt.NDArray[np.float32],
    num_threads: int,
) -> ALSModel:
    """An :class:`ALSModel` holding saved factors, as :meth:`ALSModel.load` rebuilds one."""
    model = ALSModel(policy.model, num_threads=num_threads)
    implicit_model = model._new_implicit_model()
    implicit_model.user_factors = np.ascontiguousarray(user_factors, dtype=np.float32)
    implicit_model.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
    model._model = implicit_model
    return model
