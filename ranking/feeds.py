"""End to end: interactions and a policy in, every member's feed out.

:func:`compute_feeds` is :func:`prepare_feeds` (train once) followed by :func:`score_feeds`
(rank any slice of the members); the feed pipeline runs the two stages in different processes,
moving the prepared run between them as an ``.npz`` archive (:class:`PreparedFeeds`). Together
they map database ids to dense indices (:class:`~ranking.vocabulary.Vocabulary`), build the
interaction matrix the policy asks for, fit ALS, take each member's top
``policy.candidates.pool_size`` unseen candidates (ALS for members with history, popularity for
the others, the policy's fallback for members who refuse personalisation) and cut them to a feed
with :func:`ranking.effects.apply_policy`. Everything is vectorised over members; the only loop is
over chunks of members, to bound memory.

Cold start. ALS can only score items somebody interacted with. With ``candidates.new_items`` above
0, the :data:`NEW_ITEMS_CONSIDERED` newest candidates nobody has interacted with positively are
candidates too: each gets a vector in the model's factor space, the mean of the factors of its
creator's other items, else of the items sharing its tags, else of all items; a member's score for
it is the dot product with their factors, as for any item, so the best ``new_items`` of them join
the member's ALS candidates on the same scale. Members without history get the newest ones at a
score below any popular item. They go through the same refusals, blocks, caps and quotas, and
their entries say so (:attr:`Reason.NEW_FROM_KNOWN_CREATOR` /
:attr:`Reason.NEW_FROM_UNSEEN_CREATOR`), so a new-creator quota can be met by items nobody has
interacted with yet.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix

from ranking.als import ALSModel, interaction_matrix
from ranking.effects import PROVENANCE_CODES, Catalogue, ItemAttributes, apply_policy
from ranking.policy import CapShare, Downrank, Exclude, Policy, RankingParams
from ranking.reasons import Reason
from ranking.vocabulary import Vocabulary

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "ROUTE_POPULAR",
    "ROUTE_RECALCULATED",
    "ROUTE_REFUSING",
    "ROUTE_TRAINED",
    "FeedBatch",
    "PreparedFeeds",
    "compute_feeds",
    "prepare_feeds",
    "refresh_feeds",
    "score_feeds",
]

DEFAULT_CHUNK_SIZE = 10_000
"""Members ranked per vectorised batch; bounds peak memory at ``O(chunk x candidates)``."""

NEW_ITEMS_CONSIDERED = 1_000
"""How many of the newest items nobody has interacted with are scored for each member when the
policy's ``candidates.new_items`` is above 0 (bounds the cost at ``O(members x this x
factors)``)."""


@dataclass(frozen=True)
class FeedBatch:
    """The feeds computed for a batch of members.

    Row ``r`` of :attr:`item_ids` and :attr:`scores` is the feed of ``member_ids[r]``, best first.
    """

    member_ids: npt.NDArray[np.int64]
    """int64 ``[m]``: the members the feeds were made for (``feed_members``, same order)."""
    item_ids: npt.NDArray[np.int64]
    """int64 ``[m, n]``: recommended item ids (external ids, not indices); ``-1`` pads."""
    scores: npt.NDArray[np.float32]
    """float32 ``[m, n]``: the score the feed was ranked by (the policy-adjusted score; equal to
    :attr:`base_scores` when the policy adjusts no scores); ``-inf`` pads."""
    base_scores: npt.NDArray[np.float32]
    """float32 ``[m, n]``: ALS score, normalised popularity (popular fallback) or
    ``1 / (1 + age_days)`` (newest fallback), before the policy's adjustments; ``-inf`` pads."""
    reasons: npt.NDArray[np.int32]
    """int32 ``[m, n]``: why each item is there, a :class:`~ranking.reasons.Reason` bitmask
    (:func:`ranking.reasons.explain`); 0 pads."""
    metadata: dict[str, object]
    """JSON-ready facts about the run (sizes, timings, ``fallback_members``, ``id_collisions``)."""


def _as_ids(values: npt.ArrayLike, name: str) -> npt.NDArray[np.int64]:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        return np.empty(0, dtype=np.int64)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer ids, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _collisions(
    vocabulary: Vocabulary, ids: npt.NDArray[np.int64], index: npt.NDArray[np.int64]
) -> int:
    """Ids that do not round-trip through ``vocabulary`` (always 0 for an exact mapping), given
    their looked-up ``index``."""
    return int(np.count_nonzero((index < 0) | (vocabulary.ids[np.maximum(index, 0)] != ids)))


def _ranked_candidates(
    blocked: csr_matrix,
    ranked_items: npt.NDArray[np.int64],
    ranked_scores: npt.NDArray[np.float32],
    width: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The first ``width`` items of one global ranking that each member has not blocked.

    ``blocked`` (``[m, N]``) holds each member's blocked items; ``ranked_items`` /
    ``ranked_scores`` are item indices into its columns, best first. Vectorised over members.
    """
    m = blocked.shape[0]
    items = np.full((m, width), -1, dtype=np.int64)
    scores = np.full((m, width), -np.inf, dtype=np.float32)
    k = min(width, ranked_items.size)
    if k == 0 or m == 0:
        return items, scores
    per_row = np.diff(blocked.indptr)
    # A member can lose at most nnz(row) of the top items, so the first k + max(nnz) suffice.
    span = min(ranked_items.size, k + int(per_row.max(initial=0)))
    position = np.full(blocked.shape[1], -1, dtype=np.int64)
    position[ranked_items[:span]] = np.arange(span)
    mask = np.zeros((m, span), dtype=bool)
    row = np.repeat(np.arange(m), per_row)
    column = position[blocked.indices]
    hit = column >= 0
    mask[row[hit], column[hit]] = True
    # Stable sort puts the unblocked positions first, still in ranking order.
    pick = np.argsort(mask, axis=1, kind="stable")[:, :k]
    ok = ~np.take_along_axis(mask, pick, axis=1)
    items[:, :k] = np.where(ok, ranked_items[:span][pick], -1)
    scores[:, :k] = np.where(ok, ranked_scores[:span][pick], -np.inf)
    return items, scores


def _top_k(
    scores: npt.NDArray[np.float32], k: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Column indices and values of each row's ``k`` largest finite scores, best first."""
    m, width = scores.shape
    k = min(k, width)
    part = (
        np.argpartition(-scores, k - 1, axis=1)[:, :k]
        if k < width
        else np.tile(np.arange(width), (m, 1))
    )
    values = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -values), axis=1)
    index = np.take_along_axis(part, order, axis=1).astype(np.int64)
    top = np.take_along_axis(values, order, axis=1).astype(np.float32)
    index[~np.isfinite(top)] = -1
    top[~np.isfinite(top)] = -np.inf
    return index, top


def _needs_attributes(policy: Policy) -> list[str]:
    """The settings of ``policy`` that cannot be applied without item attributes."""
    ranking = policy.ranking
    needs = []
    if policy.refusals:
        needs.append("refusals")
    if ranking.creator_cap is not None:
        needs.append("ranking.creator_cap")
    if ranking.long_tail_quota > 0 or ranking.new_creator_quota > 0:
        needs.append("ranking quotas")
    if ranking.freshness_half_life_days is not None:
        needs.append("ranking.freshness_half_life_days")
    if any(isinstance(t, Downrank | CapShare | Exclude) for t in ranking.provenance.values()):
        needs.append("ranking.provenance")
    if policy.fallback.kind == "newest" or policy.fallback.creator_cap is not None:
        needs.append("fallback")
    if policy.candidates.new_items > 0:
        needs.append("candidates.new_items")
    return needs


def _fallback_params(policy: Policy) -> RankingParams:
    """Ranking for members who refuse personalisation: provenance rules and the fallback cap."""
    return policy.ranking.model_copy(
        update={
            "popularity_penalty": 0.0,
            "creator_cap": policy.fallback.creator_cap,
            "long_tail_quota": 0.0,
            "new_creator_quota": 0.0,
            "diversity": 0.0,
            "freshness_half_life_days": None,
        }
    )


def _member_set(values: npt.ArrayLike | None, name: str) -> npt.NDArray[np.int64]:
    return np.unique(_as_ids([] if values is None else values, name))


ROUTE_TRAINED = 0
"""Route of a member scored by ALS from the factors fitted on their own (trained) row."""
ROUTE_RECALCULATED = 1
"""Route of a member who refused training: factors solved from their row against the items."""
ROUTE_POPULAR = 2
"""Route of a member without usable history: the popularity ranking."""
ROUTE_REFUSING = 3
"""Route of a member who refuses personalisation: the policy's fallback."""

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
    """float32 ``[c, factors]``: their estimated factors (see the module's "Cold start")."""
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


def compute_feeds(
    *,
    member_ids: npt.ArrayLike,
    item_ids: npt.ArrayLike,
    weights: npt.ArrayLike,
    policy: Policy,
    feed_members: npt.ArrayLike,
    candidate_items: npt.ArrayLike,
    n: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    num_threads: int = 0,
    item_attributes: ItemAttributes | None = None,
    refused_items: npt.ArrayLike | None = None,
    member_blocks: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    no_personalisation_members: npt.ArrayLike | None = None,
    no_training_members: npt.ArrayLike | None = None,
) -> FeedBatch:
    """Compute a feed of ``n`` items for every member in ``feed_members``.

    Parameters
    ----------
    member_ids, item_ids : array_like of int64, shape (k,)
        One entry per interaction: who interacted with what (database primary keys).
    weights : array_like of float32, shape (k,)
        The interactions' weights; used when ``policy.model.weighting == "weight"``.
    policy : Policy
        The ratified policy: ``model`` configures the matrix and ALS, ``candidates`` the pool,
        ``ranking`` / ``refusals`` / ``fallback`` the re-ranking
        (:func:`ranking.effects.apply_policy`).
    feed_members : array_like of int64, shape (m,)
        Every member to make a feed for, including members without interactions.
    candidate_items : array_like of int64
        Ids of the items that may be recommended (e.g. the active items). ALS and popularity can
        only score candidates somebody has interacted with positively; the ``newest`` fallback
        can also return candidates nobody has interacted with yet.
    n : int
        Feed length (``>= 0``).
    chunk_size : int, default 10_000
        Members ranked per vectorised batch.
    num_threads : int, default 0
        Threads for ALS (``0``: all cores); results do not depend on it.
    item_attributes : ItemAttributes, optional
        Creators, provenance, ages, keys and tags of the items. Required when the policy has
        refusals, a creator cap, quotas, freshness, a provenance treatment other than
        ``allow`` / ``label``, or a non-default fallback.
    refused_items : array_like of int64, optional
        Item ids refused for everyone besides the policy's rules (e.g. creator opt-outs).
    member_blocks : (array_like of int64, array_like of int64), optional
        Parallel ``(member ids, item ids)``: items a member must never get (mutes, resolved to
        items by the caller). Seen items are always blocked.
    no_personalisation_members : array_like of int64, optional
        Members who refuse personalisation: they get ``policy.fallback`` (``popular`` or
        ``newest``), still through the refusals, their blocks and the provenance rules, with
        the fallback's creator cap (and no penalty, quotas, diversity or freshness).
    no_training_members : array_like of int64, optional
        Members who refuse that their interactions train anything: their rows are left out of
        the training matrix and of popularity. They still get a personalised feed: their factors
        are solved from their own row against the fitted item factors (implicit's
        ``recalculate_user``); when no model can be fitted they get the popularity feed. Their
        seen items are still excluded.

    Returns
    -------
    FeedBatch
        ``member_ids`` equals ``feed_members``. A member with at least one positive entry in the
        interaction matrix gets the ALS top ``max(pool_size, n)`` candidates, re-ranked by the
        policy into ``n``; any other member gets the candidates with the most distinct
        interacting members (ties by ascending item id) scored by popularity / max popularity,
        likewise re-ranked. With no re-ranking in the policy (:func:`ranking.policy.neutral_policy`,
        or the default policy, whose only effect is a label) and no extras, the feed is exactly
        the ALS (or popularity) top-``n``. Rows never contain an item the member interacted with
        (whatever its weight), a refused or blocked item, an item outside ``candidate_items``, or
        a repeated item; short rows are padded with ``-1`` / ``-inf``.

    Raises
    ------
    ValueError
        If the interaction arrays differ in length, ``n < 0``, ``chunk_size < 1``, or the policy
        needs ``item_attributes`` and none were given.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    prepared = prepare_feeds(
        member_ids=member_ids,
        item_ids=item_ids,
        weights=weights,
        policy=policy,
        feed_members=feed_members,
        candidate_items=candidate_items,
        n=n,
        num_threads=num_threads,
        item_attributes=item_attributes,
        refused_items=refused_items,
        member_blocks=member_blocks,
        no_personalisation_members=no_personalisation_members,
        no_training_members=no_training_members,
    )
    return score_feeds(prepared, chunk_size=chunk_size)


def prepare_feeds(
    *,
    member_ids: npt.ArrayLike,
    item_ids: npt.ArrayLike,
    weights: npt.ArrayLike,
    policy: Policy,
    feed_members: npt.ArrayLike,
    candidate_items: npt.ArrayLike,
    n: int,
    num_threads: int = 0,
    item_attributes: ItemAttributes | None = None,
    refused_items: npt.ArrayLike | None = None,
    member_blocks: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    no_personalisation_members: npt.ArrayLike | None = None,
    no_training_members: npt.ArrayLike | None = None,
) -> PreparedFeeds:
    """The training stage of :func:`compute_feeds`: everything but the per-member ranking.

    Takes the same arguments as :func:`compute_feeds` (bar ``chunk_size``) and raises the same
    errors. :func:`score_feeds` on the result, over all members or any slices of them, gives
    exactly :func:`compute_feeds`'s feeds.
    """
    members = _as_ids(member_ids, "member_ids")
    items = _as_ids(item_ids, "item_ids")
    weight = np.asarray(weights, dtype=np.float32)
    if not (members.shape == items.shape == weight.shape):
        raise ValueError(
            "member_ids, item_ids and weights must be parallel 1-D arrays; got shapes "
            f"{members.shape}, {items.shape}, {weight.shape}"
        )
    targets = _as_ids(feed_members, "feed_members")
    candidates = _as_ids(candidate_items, "candidate_items")
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if item_attributes is None and (needs := _needs_attributes(policy)):
        raise ValueError(f"the policy's {', '.join(needs)} need item_attributes")
    params = policy.model
    pool = max(policy.candidates.pool_size, n)

    member_vocab = Vocabulary.from_ids(members)
    item_vocab = Vocabulary.from_ids(items)
    user_index = member_vocab.lookup(members)
    item_index = item_vocab.lookup(items)
    shape = (len(member_vocab), len(item_vocab))
    # Pairs whose weights sum to zero or less (skips, dislikes) are not evidence of interest:
    # they never train the model, under either weighting; "binary" then counts each remaining
    # pair once.
    train = interaction_matrix(user_index, item_index, weight, shape=shape, weighting="weight")
    if params.weighting == "binary":
        train.data[:] = 1.0
    # Everything a member interacted with, positive or not: never recommended back.
    seen = interaction_matrix(user_index, item_index, None, shape=shape, weighting="binary")

    # Members who refuse training: their rows train nothing (neither ALS nor popularity).
    untrained = np.zeros(shape[0], dtype=bool)
    refusing_training = _member_set(no_training_members, "no_training_members")
    known = member_vocab.lookup(refusing_training)
    untrained[known[known >= 0]] = True
    if untrained.any():
        fit_rows = np.flatnonzero(~untrained)
        train_fit = csr_matrix(train[fit_rows])
    else:
        fit_rows = np.arange(shape[0])
        train_fit = train
    model_row = np.full(shape[0], -1, dtype=np.int64)
    model_row[fit_rows] = np.arange(fit_rows.size)

    has_history = np.diff(train.indptr) > 0
    popularity = np.bincount(train_fit.indices, minlength=shape[1])
    candidate_index = item_vocab.lookup(np.unique(candidates))
    candidate_index = candidate_index[candidate_index >= 0]
    scorable = candidate_index[popularity[candidate_index] > 0]  # ascending index == ascending id

    # The catalogue's item space: the model's items first (same indices), then candidates
    # nobody has interacted with (only the newest fallback can reach them).
    space = item_vocab.extend(candidates)
    catalogue, item_vectors_needed, creator_ids = _catalogue(
        space, popularity, policy, item_attributes, refused_items
    )

    # Route every member: ALS (trained or recalculated), popular, or the refusal fallback.
    rows = member_vocab.lookup(targets)
    refusing = np.isin(targets, _member_set(no_personalisation_members, "no_personalisation"))
    with_history = rows >= 0
    with_history[with_history] = has_history[rows[with_history]]

    fit_seconds = 0.0
    model: ALSModel | None = None
    if (with_history & ~refusing).any() and scorable.size and n and train_fit.nnz:
        started = time.perf_counter()
        model = ALSModel(params, num_threads=num_threads).fit(train_fit)
        fit_seconds = time.perf_counter() - started
    estimator = NewItemEstimator.empty(params.factors)
    if policy.candidates.new_items > 0:
        estimator = _new_item_estimator(
            model, popularity, catalogue, creator_ids, space, item_attributes, params.factors
        )
    new_items, new_item_vectors = _new_item_candidates(
        policy,
        space,
        candidates,
        popularity,
        catalogue,
        estimator,
        lambda indices: _item_tags(item_attributes, space, indices),
    )
    personal = with_history & ~refusing & (model is not None)
    recalculated = personal.copy()
    recalculated[personal] = untrained[rows[personal]]
    popular = ~personal & ~refusing

    route = np.full(targets.size, ROUTE_POPULAR, dtype=np.int8)
    route[personal] = ROUTE_TRAINED
    route[recalculated] = ROUTE_RECALCULATED
    route[refusing] = ROUTE_REFUSING
    target_model_rows = np.full(targets.size, -1, dtype=np.int64)
    if model is not None:
        target_model_rows[rows >= 0] = model_row[rows[rows >= 0]]
    metadata: dict[str, object] = {
        "n_members_trained": int(fit_rows.size),
        "n_items": int(shape[1]),
        "n_interactions": int(members.size),
        "nnz": int(train_fit.nnz),
        "n_candidates_scorable": int(scorable.size),
        "factors": int(params.factors),
        "fit_seconds": round(fit_seconds, 6),
        "id_collisions": _collisions(member_vocab, members, user_index)
        + _collisions(item_vocab, items, item_index),
        "fallback_members": int(popular.sum()),
        "no_personalisation_members": int(refusing.sum()),
        "no_training_members": int(untrained.sum()),
        "recalculated_members": int(recalculated.sum()),
        "refused_items": int(catalogue.refused.sum()),
        "pool_size": int(pool),
        "new_item_candidates": int(new_items.size),
        "max_item_id": int(np.max(np.asarray(space.ids), initial=0)),
    }
    return PreparedFeeds(
        policy=policy,
        n=n,
        pool=pool,
        targets=targets.copy(),
        route=route,
        model_rows=target_model_rows,
        seen=_rows_of(seen, rows),
        train=_rows_of(train, np.where(recalculated, rows, -1)),
        extra_blocks=_extra_blocks(targets, space, member_blocks),
        space_ids=np.asarray(space.ids, dtype=np.int64),
        n_model_items=int(shape[1]),
        scorable=scorable.astype(np.int64, copy=False),
        popularity=popularity.astype(np.int64, copy=False),
        candidates=candidates.copy(),
        catalogue=catalogue,
        item_vectors_needed=item_vectors_needed,
        model=model,
        fit_member_ids=np.asarray(member_vocab.ids[fit_rows], dtype=np.int64),
        metadata=metadata,
        new_items=new_items,
        new_item_vectors=new_item_vectors,
        estimator=estimator if policy.candidates.new_items > 0 else None,
    )


def score_feeds(
    prepared: PreparedFeeds,
    *,
    start: int = 0,
    stop: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> FeedBatch:
    """Rank the feeds of ``prepared.targets[start:stop]``: the scoring stage of a run.

    Members are ranked in blocks of ``chunk_size`` absolute positions. Shards whose bounds are
    multiples of ``chunk_size`` (and the same ``chunk_size``) concatenate to exactly, bit for
    bit, the feeds of one call over everybody; other bounds may differ in the last bit of an
    ALS score (BLAS rounds a row's dot products according to the batch it is in).

    Parameters
    ----------
    prepared : PreparedFeeds
        From :func:`prepare_feeds` (or :meth:`PreparedFeeds.load`).
    start, stop : int
        The slice of members (positions in ``prepared.targets``); ``stop=None``: to the end.
    chunk_size : int, default 10_000
        Members ranked per vectorised batch.

    Returns
    -------
    FeedBatch
        The slice's feeds; ``metadata`` is the preparation's plus ``recommend_seconds`` for
        this slice.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    total = len(prepared)
    stop = total if stop is None else stop
    if not 0 <= start <= stop <= total:
        raise ValueError(f"slice [{start}, {stop}) is outside the {total} prepared members")
    n, pool, policy, catalogue = prepared.n, prepared.pool, prepared.policy, prepared.catalogue
    model = prepared.model
    route = prepared.route[start:stop]
    m = stop - start
    space = Vocabulary(prepared.space_ids)
    item_vectors = None
    if prepared.item_vectors_needed:
        item_vectors = np.zeros((len(space), policy.model.factors), dtype=np.float32)
        if model is not None:
            item_vectors[: prepared.n_model_items] = model.item_factors
        if prepared.new_items.size:
            item_vectors[prepared.new_items] = prepared.new_item_vectors
    new_per_member = policy.candidates.new_items if prepared.new_items.size else 0
    is_new = np.zeros(len(space) + 1, dtype=bool)  # the extra entry: padding (-1)
    is_new[prepared.new_items] = True

    out_items = np.full((m, n), -1, dtype=np.int64)
    out_scores = np.full((m, n), -np.inf, dtype=np.float32)
    out_base = np.full((m, n), -np.inf, dtype=np.float32)
    out_reasons = np.zeros((m, n), dtype=np.int32)

    def finish(
        chunk: npt.NDArray[np.int64],
        pool_items: npt.NDArray[np.int64],
        pool_scores: npt.NDArray[np.float32],
        ranking: RankingParams,
        source: Reason,
    ) -> None:
        ranked = apply_policy(
            pool_items,
            pool_scores,
            catalogue=catalogue,
            params=ranking,
            n=n,
            member_blocked=_blocked_rows(prepared, start + chunk),
            source=int(source),
            item_vectors=item_vectors,
        )
        reasons = ranked.reasons
        new = is_new[ranked.items]
        if new.any():
            known = _engaged_with_creator(prepared.seen[start + chunk], ranked.items, catalogue)
            told = np.where(known, Reason.NEW_FROM_KNOWN_CREATOR, Reason.NEW_FROM_UNSEEN_CREATOR)
            reasons = np.where(new, (reasons & ~_SOURCE_BITS) | told, reasons).astype(np.int32)
        out_items[chunk], out_scores[chunk] = ranked.items, ranked.scores
        out_base[chunk], out_reasons[chunk] = ranked.base_scores, reasons

    def with_new_items(
        rows: npt.NDArray[np.int64],
        pool_items: npt.NDArray[np.int64],
        pool_scores: npt.NDArray[np.float32],
        factors: npt.NDArray[np.float32] | None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """The pool with each member's best new items appended (the newest, without factors),
        among those not refused for everyone or blocked by the member."""
        if not new_per_member:
            return pool_items, pool_scores
        m, c = pool_items.shape[0], prepared.new_items.size
        open_ = np.broadcast_to(~catalogue.refused[prepared.new_items], (m, c)).copy()
        blocked = _blocked_rows(prepared, rows)[:, prepared.new_items]
        open_[blocked.nonzero()] = False
        if factors is None:
            scores = np.where(open_, -np.arange(c, dtype=np.float32), -np.inf)
            column, _ = _top_k(scores.astype(np.float32), new_per_member)
            extra_scores = np.where(column >= 0, 0.0, -np.inf).astype(np.float32)
        else:
            scores = np.asarray(factors, dtype=np.float32) @ prepared.new_item_vectors.T
            column, extra_scores = _top_k(np.where(open_, scores, -np.inf), new_per_member)
        extra = np.where(column >= 0, prepared.new_items[np.maximum(column, 0)], -1)
        return (
            np.hstack([pool_items, extra]).astype(np.int64, copy=False),
            np.hstack([pool_scores, extra_scores]).astype(np.float32, copy=False),
        )

    scorable, popularity = prepared.scorable, prepared.popularity
    by_popularity = scorable[np.lexsort((scorable, -popularity[scorable]))]
    counts = popularity[by_popularity].astype(np.float64)
    peak = counts[0] if counts.size else 1.0
    popularity_scores = (counts / peak).astype(np.float32)
    if policy.fallback.kind == "newest" and (route == ROUTE_REFUSING).any():
        fallback_items, fallback_scores, fallback_source = _newest(
            space, prepared.candidates, catalogue
        )
    else:
        fallback_items, fallback_scores = by_popularity, popularity_scores
        fallback_source = Reason.POPULAR
    fallback_ranking = _fallback_params(policy)
    # When every model item may be recommended, say so: implicit's top-k over the whole
    # catalogue is faster than over an explicit list of the same items (same results).
    allowed = None if scorable.size == prepared.n_model_items else scorable

    # The two personalised routes: candidates from the trained factors, and from factors solved
    # now for members left out of training. Each takes absolute rows, gives (items, scores).
    Pool = tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]
    personal: list[tuple[int, Callable[[npt.NDArray[np.int64]], Pool]]] = []
    if model is not None:
        fitted = model

        def trained(rows: npt.NDArray[np.int64]) -> Pool:
            items, scores = fitted.recommend(
                prepared.model_rows[rows],
                _model_query(prepared, fitted, rows),
                pool,
                allowed_items=allowed,
            )
            factors = fitted.user_factors[prepared.model_rows[rows]] if new_per_member else None
            return with_new_items(rows, items, scores, factors)

        def recalculated(rows: npt.NDArray[np.int64]) -> Pool:
            factors = fitted.recalculate_users(csr_matrix(prepared.train[rows]))
            items, scores = _recalculated(fitted, factors, prepared.seen, rows, scorable, pool)
            return with_new_items(rows, items, scores, factors)

        personal = [(ROUTE_TRAINED, trained), (ROUTE_RECALCULATED, recalculated)]

    started = time.perf_counter()
    # Chunks are fixed blocks of absolute positions, not of this slice: BLAS may round a row's
    # dot products differently depending on the other rows of the same product, so a shard that
    # starts on a chunk boundary reproduces the whole run's feeds bit for bit.
    for block in range(start - start % chunk_size, stop if n else start, chunk_size):
        local = np.arange(max(block, start), min(block + chunk_size, stop)) - start
        here = route[local]
        for personal_route, candidates in personal:
            chunk = local[here == personal_route]
            if chunk.size:
                # One row alone would be a matrix-vector product, rounded unlike the same row
                # inside a matrix-matrix product: score it twice and keep one.
                rows = start + (np.repeat(chunk, 2) if chunk.size == 1 else chunk)
                pool_items, pool_scores = candidates(rows)
                finish(
                    chunk,
                    pool_items[: chunk.size],
                    pool_scores[: chunk.size],
                    policy.ranking,
                    Reason.PERSONALISED,
                )
        chunk = local[here == ROUTE_POPULAR]
        if chunk.size:
            pool_items, pool_scores = _ranked_candidates(
                _blocked_rows(prepared, start + chunk), by_popularity, popularity_scores, pool
            )
            pool_items, pool_scores = with_new_items(start + chunk, pool_items, pool_scores, None)
            finish(chunk, pool_items, pool_scores, policy.ranking, Reason.POPULAR)
        chunk = local[here == ROUTE_REFUSING]
        if chunk.size:
            pool_items, pool_scores = _ranked_candidates(
                _blocked_rows(prepared, start + chunk), fallback_items, fallback_scores, pool
            )
            finish(chunk, pool_items, pool_scores, fallback_ranking, fallback_source)
    recommend_seconds = time.perf_counter() - started

    item_out = np.full(out_items.shape, -1, dtype=np.int64)
    filled = out_items >= 0
    item_out[filled] = prepared.space_ids[out_items[filled]]
    return FeedBatch(
        member_ids=prepared.targets[start:stop].copy(),
        item_ids=item_out,
        scores=out_scores,
        base_scores=out_base,
        reasons=out_reasons,
        metadata={**prepared.metadata, "recommend_seconds": round(recommend_seconds, 6)},
    )


def _rows_of(matrix: csr_matrix, rows: npt.NDArray[np.int64]) -> csr_matrix:
    """``matrix[rows]`` with an empty row wherever ``rows`` is negative (canonical CSR)."""
    if matrix.shape[0] == 0 or not (rows >= 0).any():
        return csr_matrix((rows.size, matrix.shape[1]), dtype=np.float32)
    known = rows >= 0
    picked = csr_matrix(matrix[np.maximum(rows, 0)])
    if not known.all():
        picked = csr_matrix(picked.multiply(known[:, None].astype(np.float32)))
        picked.eliminate_zeros()
    picked.sort_indices()
    return csr_matrix(picked, dtype=np.float32)


def _extra_blocks(
    targets: npt.NDArray[np.int64],
    space: Vocabulary,
    member_blocks: tuple[npt.ArrayLike, npt.ArrayLike] | None,
) -> csr_matrix:
    """``[m, len(space)]``: the items each feed member blocked, besides what they saw."""
    m = targets.size
    if member_blocks is None:
        return csr_matrix((m, len(space)), dtype=np.float32)
    who = _as_ids(member_blocks[0], "member_blocks members")
    what = _as_ids(member_blocks[1], "member_blocks items")
    if who.shape != what.shape:
        raise ValueError("member_blocks must be two parallel arrays")
    order = np.argsort(targets, kind="stable")
    position = np.searchsorted(targets[order], who)
    position = np.minimum(position, max(m - 1, 0))
    found = (targets[order][position] == who) if m else np.zeros(who.size, dtype=bool)
    item = space.lookup(what)
    ok = found & (item >= 0)
    extra = csr_matrix(
        (np.ones(int(ok.sum()), dtype=np.float32), (order[position[ok]], item[ok])),
        shape=(m, len(space)),
    )
    extra.sum_duplicates()
    extra.sort_indices()
    return extra


def _blocked_rows(prepared: PreparedFeeds, positions: npt.NDArray[np.int64]) -> csr_matrix:
    """``[len(positions), N]``: every seen or blocked item of those members."""
    picked = csr_matrix(prepared.seen[positions])
    picked.resize((positions.size, len(prepared.space_ids)))
    picked = csr_matrix(picked + prepared.extra_blocks[positions])
    picked.sum_duplicates()
    picked.eliminate_zeros()
    picked.sort_indices()
    return picked


def _model_query(
    prepared: PreparedFeeds, model: ALSModel, positions: npt.NDArray[np.int64]
) -> csr_matrix:
    """A ``[model.n_users, n_items]`` matrix holding the seen rows of ``positions`` at their
    model rows (the only rows :meth:`ALSModel.recommend` reads for them)."""
    rows, first = np.unique(prepared.model_rows[positions], return_index=True)
    seen = csr_matrix(prepared.seen[positions[first]])  # in ascending model-row order
    counts = np.zeros(model.n_users, dtype=np.int64)
    counts[rows] = np.diff(seen.indptr)
    indptr = np.zeros(model.n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return csr_matrix((seen.data, seen.indices, indptr), shape=(model.n_users, seen.shape[1]))


_SOURCE_BITS = int(Reason.PERSONALISED | Reason.POPULAR | Reason.NEWEST)


def _with_published(prepared: PreparedFeeds, published: ItemAttributes) -> PreparedFeeds:
    """``prepared`` with items published since the run in its catalogue and new-item candidates.

    A no-op unless the run does cold start. The items take the next catalogue indices; their
    creators keep the run's dense index where the run knew them, and creators new to the run
    get new ones (long tail: nobody has interacted with them). Refusal rules of the run's
    policy apply to them.
    """
    estimator, policy = prepared.estimator, prepared.policy
    if estimator is None or policy.candidates.new_items == 0 or len(published) == 0:
        return prepared
    space = Vocabulary(prepared.space_ids)
    fresh = np.flatnonzero(space.lookup(published.item_ids) < 0)
    if fresh.size == 0:
        return prepared
    ids = published.item_ids[fresh]
    extended = space.extend(ids)
    index = extended.lookup(ids)
    catalogue = prepared.catalogue

    creator_vocab = Vocabulary(estimator.creator_ids)
    creator_ids = published.creator_ids[fresh]
    dense = np.where(creator_ids >= 0, creator_vocab.lookup(np.maximum(creator_ids, 0)), -1)
    unknown = np.unique(creator_ids[(creator_ids >= 0) & (dense < 0)])
    if unknown.size:
        creator_vocab = creator_vocab.extend(unknown)
        dense = np.where(creator_ids >= 0, creator_vocab.lookup(np.maximum(creator_ids, 0)), -1)
    n_creators = max(catalogue.creator_long_tail.size, int(dense.max(initial=-1)) + 1)
    pad = n_creators - catalogue.creator_long_tail.size
    long_tail = np.append(catalogue.creator_long_tail, np.ones(pad, dtype=bool))
    first_age = np.append(catalogue.creator_first_age_days, np.full(pad, np.nan, np.float32))
    ages = published.age_days[fresh]
    for creator, age in zip(dense.tolist(), ages.tolist(), strict=True):
        if creator >= 0 and not np.isnan(age) and not first_age[creator] >= age:
            first_age[creator] = age

    refused = published.refused_by(policy.refusals)[fresh]
    grown = Catalogue(
        creator=np.append(catalogue.creator, dense).astype(np.int64),
        provenance=np.append(catalogue.provenance, published.provenance[fresh]).astype(np.int8),
        age_days=np.append(catalogue.age_days, ages).astype(np.float32),
        popularity=np.append(catalogue.popularity, np.zeros(ids.size, np.float32)),
        refused=np.append(catalogue.refused, refused),
        creator_long_tail=long_tail,
        creator_first_age_days=first_age.astype(np.float32),
    )
    tags = [
        [str(t) for t in published.tag_names[published.tags[int(row)].indices]] for row in fresh
    ]
    usable = ~refused
    vectors = estimator.estimate(
        dense[usable], [t for t, ok in zip(tags, usable, strict=True) if ok]
    )
    cold = np.concatenate([prepared.new_items, index[usable]])
    cold_vectors = np.vstack(
        [prepared.new_item_vectors.reshape(-1, vectors.shape[1]), vectors]
    ).astype(np.float32)
    age = grown.age_days[cold].astype(np.float64)
    order = np.lexsort((cold, np.where(np.isnan(age), np.inf, age)))[:NEW_ITEMS_CONSIDERED]
    return dataclasses.replace(
        prepared,
        space_ids=np.asarray(extended.ids, dtype=np.int64),
        candidates=np.concatenate([prepared.candidates, ids]),
        catalogue=grown,
        extra_blocks=csr_matrix(
            (
                prepared.extra_blocks.data,
                prepared.extra_blocks.indices,
                prepared.extra_blocks.indptr,
            ),
            shape=(prepared.extra_blocks.shape[0], len(extended)),
        ),
        new_items=cold[order].astype(np.int64),
        new_item_vectors=cold_vectors[order],
        estimator=dataclasses.replace(
            estimator,
            creator_ids=np.asarray(creator_vocab.ids, dtype=np.int64),
            creator_vectors=np.vstack(
                [estimator.creator_vectors, np.zeros((unknown.size, vectors.shape[1]), np.float32)]
            ),
            creator_known=np.append(estimator.creator_known, np.zeros(unknown.size, bool)),
        ),
    )


def _engaged_with_creator(
    seen: csr_matrix, items: npt.NDArray[np.int64], catalogue: Catalogue
) -> npt.NDArray[np.bool_]:
    """Whether each member (row) interacted with an item of the creator of each of ``items``."""
    n_creators = int(catalogue.creator.max(initial=-1)) + 2
    rows = np.repeat(np.arange(seen.shape[0], dtype=np.int64), np.diff(seen.indptr))
    keys = rows * n_creators + catalogue.creator[seen.indices] + 1
    creator = np.where(items >= 0, catalogue.creator[np.maximum(items, 0)], -1)
    query = np.arange(items.shape[0], dtype=np.int64)[:, None] * n_creators + creator + 1
    engaged: npt.NDArray[np.bool_] = np.isin(query, keys) & (creator >= 0)
    return engaged


@dataclass(frozen=True)
class NewItemEstimator:
    """Factors for items the model has never seen, from what it knows of their creator and tags.

    An item's estimate is the mean factors of its creator's scorable items; failing that, the
    mean over its tags of each tag's mean factors over scorable items; failing that,
    :attr:`overall`, the mean factors of all scorable items. Built once per run and kept with it,
    so items published after the run are estimated the same way (:func:`refresh_feeds`).
    """

    creator_ids: npt.NDArray[np.int64]
    """int64 ``[C]``: database id of each creator (the catalogue's dense creator index)."""
    creator_vectors: npt.NDArray[np.float32]
    """float32 ``[C, f]``: mean factors of each creator's scorable items (0 where none)."""
    creator_known: npt.NDArray[np.bool_]
    """bool ``[C]``: whether the creator has a scorable item."""
    tag_names: npt.NDArray[np.str_]
    """str ``[T]``: tags that scorable items carry, sorted."""
    tag_vectors: npt.NDArray[np.float32]
    """float32 ``[T, f]``: mean factors of the scorable items carrying each tag."""
    overall: npt.NDArray[np.float32]
    """float32 ``[f]``: mean factors of every scorable item."""

    def estimate(
        self, creators: npt.NDArray[np.int64], tags: Sequence[Sequence[str]]
    ) -> npt.NDArray[np.float32]:
        """Factors of items with these dense creator indices (``-1``: none, or unknown to the
        run) and these tags."""
        vectors = np.tile(self.overall.astype(np.float64), (creators.size, 1))
        column = {str(name): k for k, name in enumerate(self.tag_names)}
        for row, item_tags in enumerate(tags):
            at = [column[t] for t in item_tags if t in column]
            if at:
                vectors[row] = self.tag_vectors[at].astype(np.float64).mean(axis=0)
        inside = (creators >= 0) & (creators < self.creator_ids.size)
        use = np.zeros(creators.size, dtype=bool)
        use[inside] = self.creator_known[creators[inside]]
        vectors[use] = self.creator_vectors[creators[use]]
        return vectors.astype(np.float32)

    @classmethod
    def empty(cls, factors: int) -> NewItemEstimator:
        return cls(
            creator_ids=np.empty(0, dtype=np.int64),
            creator_vectors=np.empty((0, factors), dtype=np.float32),
            creator_known=np.empty(0, dtype=bool),
            tag_names=np.empty(0, dtype=np.str_),
            tag_vectors=np.empty((0, factors), dtype=np.float32),
            overall=np.zeros(factors, dtype=np.float32),
        )


def _new_item_estimator(
    model: ALSModel | None,
    popularity: npt.NDArray[np.int64],
    catalogue: Catalogue,
    creator_ids: npt.NDArray[np.int64],
    space: Vocabulary,
    attributes: ItemAttributes | None,
    factors: int,
) -> NewItemEstimator:
    if model is None:
        return dataclasses.replace(NewItemEstimator.empty(factors), creator_ids=creator_ids)
    item_factors = model.item_factors.astype(np.float64)
    known = np.flatnonzero(popularity > 0)
    overall = item_factors[known].mean(axis=0) if known.size else np.zeros(factors)

    creator = catalogue.creator[known]
    has = creator >= 0
    n_creators = creator_ids.size
    sums = np.zeros((n_creators, factors), dtype=np.float64)
    np.add.at(sums, creator[has], item_factors[known[has]])
    counts = np.bincount(creator[has], minlength=n_creators)
    creator_vectors = sums / np.maximum(counts, 1)[:, None]

    tag_names = np.empty(0, dtype=np.str_)
    tag_vectors = np.empty((0, factors), dtype=np.float64)
    if attributes is not None and attributes.tag_names.size:
        rows = np.full(len(space), -1, dtype=np.int64)
        at = space.lookup(attributes.item_ids)
        rows[at[at >= 0]] = np.flatnonzero(at >= 0)
        model_rows = rows[known]
        with_row = model_rows >= 0
        model_tags = csr_matrix(attributes.tags[model_rows[with_row]], dtype=np.float64)
        tag_sums = model_tags.T @ item_factors[known[with_row]]
        tag_counts = np.asarray(model_tags.sum(axis=0)).reshape(-1)
        carried = tag_counts > 0
        tag_names = attributes.tag_names[carried]
        tag_vectors = tag_sums[carried] / tag_counts[carried, None]
    return NewItemEstimator(
        creator_ids=creator_ids,
        creator_vectors=creator_vectors.astype(np.float32),
        creator_known=counts > 0,
        tag_names=tag_names,
        tag_vectors=np.asarray(tag_vectors, dtype=np.float32).reshape(-1, factors),
        overall=np.asarray(overall, dtype=np.float32),
    )


def _item_tags(
    attributes: ItemAttributes | None, space: Vocabulary, indices: npt.NDArray[np.int64]
) -> list[list[str]]:
    """The tags of the items at these catalogue indices (none for items without attributes)."""
    if attributes is None:
        return [[] for _ in indices]
    at = space.lookup(attributes.item_ids)
    row_of = np.full(len(space), -1, dtype=np.int64)
    row_of[at[at >= 0]] = np.flatnonzero(at >= 0)
    rows = row_of[indices]
    return [
        [] if row < 0 else [str(t) for t in attributes.tag_names[attributes.tags[int(row)].indices]]
        for row in rows
    ]


def _new_item_candidates(
    policy: Policy,
    space: Vocabulary,
    candidates: npt.NDArray[np.int64],
    popularity: npt.NDArray[np.int64],
    catalogue: Catalogue,
    estimator: NewItemEstimator,
    tags: Callable[[npt.NDArray[np.int64]], Sequence[Sequence[str]]],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The cold-start candidates, newest first, and their estimated factors.

    The candidates nobody interacted with positively and no rule refuses, the
    :data:`NEW_ITEMS_CONSIDERED` newest of them (unknown age last, ties by index), estimated
    by ``estimator``.
    """
    factors = policy.model.factors
    empty = np.empty(0, dtype=np.int64), np.empty((0, factors), dtype=np.float32)
    if policy.candidates.new_items == 0:
        return empty
    index = space.lookup(np.unique(candidates))
    index = index[index >= 0]
    unused = index >= popularity.size
    unused[~unused] = popularity[index[~unused]] == 0
    cold = index[unused]
    cold = cold[~catalogue.refused[cold]]
    if cold.size == 0:
        return empty
    age = catalogue.age_days[cold].astype(np.float64)
    order = np.lexsort((cold, np.where(np.isnan(age), np.inf, age)))
    cold = cold[order][:NEW_ITEMS_CONSIDERED].astype(np.int64)
    return cold, estimator.estimate(catalogue.creator[cold], tags(cold))


def _catalogue(
    space: Vocabulary,
    popularity: npt.NDArray[np.int64],
    policy: Policy,
    attributes: ItemAttributes | None,
    refused_items: npt.ArrayLike | None,
) -> tuple[Catalogue, bool, npt.NDArray[np.int64]]:
    """The :class:`Catalogue` over ``space``, whether diversity needs item vectors, and the
    database id of each dense creator index."""
    size = len(space)
    pop = np.zeros(size, dtype=np.float32)
    pop[: popularity.size] = popularity
    refused = np.zeros(size, dtype=bool)
    if refused_items is not None:
        index = space.lookup(_as_ids(refused_items, "refused_items"))
        refused[index[index >= 0]] = True
    if attributes is None:
        catalogue = Catalogue.build(size, popularity=pop, refused=refused)
        return catalogue, policy.ranking.diversity > 0, np.empty(0, dtype=np.int64)
    at = space.lookup(attributes.item_ids)
    inside = at >= 0
    target = at[inside]
    refused[target] |= attributes.refused_by(policy.refusals)[inside]
    creators = Vocabulary.from_ids(attributes.creator_ids[attributes.creator_ids >= 0])
    creator_of = creators.lookup(attributes.creator_ids)  # -1 where none
    first = np.full(len(creators), -np.inf, dtype=np.float32)
    dated = (creator_of >= 0) & ~np.isnan(attributes.age_days)
    np.maximum.at(first, creator_of[dated], attributes.age_days[dated])
    first[np.isneginf(first)] = np.nan
    creator = np.full(size, -1, dtype=np.int64)
    creator[target] = creator_of[inside]
    provenance = np.full(size, PROVENANCE_CODES["unknown"], dtype=np.int8)
    provenance[target] = attributes.provenance[inside]
    age = np.full(size, np.nan, dtype=np.float32)
    age[target] = attributes.age_days[inside]
    interactions = np.bincount(
        creator[creator >= 0], weights=pop[creator >= 0], minlength=len(creators)
    )
    catalogue = Catalogue.build(
        size,
        creator=creator,
        provenance=provenance,
        age_days=age,
        popularity=pop,
        refused=refused,
        creator_interactions=interactions,
        creator_first_age_days=first,
    )
    return catalogue, policy.ranking.diversity > 0, np.asarray(creators.ids, dtype=np.int64)


def _recalculated(
    model: ALSModel,
    factors: npt.NDArray[np.float32],
    seen: csr_matrix,
    rows: npt.NDArray[np.int64],
    scorable: npt.NDArray[np.int64],
    pool: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """ALS candidates for members left out of training, from factors solved from their rows."""
    scores = factors @ model.item_factors[scorable].T
    seen_rows = csr_matrix(seen[rows])
    mask = np.zeros((rows.size, model.n_items), dtype=bool)
    mask[np.repeat(np.arange(rows.size), np.diff(seen_rows.indptr)), seen_rows.indices] = True
    scores = np.where(mask[:, scorable], -np.inf, scores).astype(np.float32)
    column, top = _top_k(scores, pool)
    items = np.where(column >= 0, scorable[np.maximum(column, 0)], -1)
    return items.astype(np.int64), top


def _newest(
    space: Vocabulary, candidates: npt.NDArray[np.int64], catalogue: Catalogue
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], Reason]:
    """Candidates of known age, youngest first (ties by id), scored ``1 / (1 + age_days)``."""
    index = space.lookup(np.unique(candidates))
    age = catalogue.age_days[index]
    dated = index[~np.isnan(age)]
    age = np.maximum(catalogue.age_days[dated], 0.0)
    order = np.lexsort((space.ids[dated], age))
    scores = (1.0 / (1.0 + age[order].astype(np.float64))).astype(np.float32)
    return dated[order], scores, Reason.NEWEST


def refresh_feeds(
    prepared: PreparedFeeds,
    *,
    feed_members: npt.ArrayLike,
    member_ids: npt.ArrayLike,
    item_ids: npt.ArrayLike,
    weights: npt.ArrayLike,
    member_blocks: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    no_personalisation_members: npt.ArrayLike | None = None,
    refused_items: npt.ArrayLike | None = None,
    published_items: ItemAttributes | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> FeedBatch:
    """Re-rank a few members against a prepared run, from their current histories (fold-in).

    The run's model, catalogue, popularity and policy stay as they are; only the given members'
    rows change. Each member is routed from their current choices: a member who refuses
    personalisation gets the policy's fallback; a member with a positive interaction with one
    of the model's items gets ALS candidates from factors solved from their whole current
    history against the run's item factors (:meth:`ALSModel.recalculate_users`, exactly as
    :data:`ROUTE_RECALCULATED` in :func:`score_feeds`), whether they were trained, recalculated,
    popular or not a member at all when the run was prepared; anyone else gets the popularity
    ranking. Every interaction (whatever its weight) blocks its item, as in a run; items the
    model does not know cannot be ALS candidates, and items outside the run's catalogue cannot
    be recommended at all.

    Parameters
    ----------
    prepared : PreparedFeeds
        The served run (:func:`prepare_feeds` or :meth:`PreparedFeeds.load`).
    feed_members : array_like of int64, shape (m,)
        The members to re-rank; the result has one row per member, in ascending id order.
    member_ids, item_ids : array_like of int64, shape (k,)
        The current interactions of those members (all of them, not only new ones); rows of
        other members are ignored.
    weights : array_like of float32, shape (k,)
        The interactions' weights, as for :func:`prepare_feeds` (pairs whose weights sum to
        zero or less block their item but are no evidence of interest).
    member_blocks : (array_like of int64, array_like of int64), optional
        Parallel ``(member ids, item ids)``: the members' current mutes, resolved to items.
    no_personalisation_members : array_like of int64, optional
        Those of the members who refuse personalisation now.
    refused_items : array_like of int64, optional
        Item ids refused for everyone besides the run's refusals (e.g. creators who opted out,
        items deactivated since the run). Refusals only ever grow: the run's stay.
    published_items : ItemAttributes, optional
        Items published since the run (those already in its catalogue are ignored). With the
        run's policy asking for ``candidates.new_items``, they join the catalogue and the
        cold-start candidates, estimated as the run estimated its own new items; the policy's
        refusal rules apply to them as to any item. Otherwise they are ignored.
    chunk_size : int, default 10_000
        Members ranked per vectorised batch.

    Returns
    -------
    FeedBatch
        As :func:`score_feeds`; ``metadata`` is the run's plus ``refreshed_members``, the
        number of members per route (``refresh_routes``) and ``recommend_seconds``.

    Raises
    ------
    ValueError
        If the interaction arrays differ in length or hold non-finite weights.
    """
    targets = np.unique(_as_ids(feed_members, "feed_members"))
    members = _as_ids(member_ids, "member_ids")
    items = _as_ids(item_ids, "item_ids")
    weight = np.asarray(weights, dtype=np.float32)
    if not (members.shape == items.shape == weight.shape):
        raise ValueError(
            "member_ids, item_ids and weights must be parallel 1-D arrays; got shapes "
            f"{members.shape}, {items.shape}, {weight.shape}"
        )
    if published_items is not None:
        prepared = _with_published(prepared, published_items)
    m, n_model = targets.size, prepared.n_model_items
    space = Vocabulary(prepared.space_ids)
    row = np.searchsorted(targets, members)
    row = np.minimum(row, max(m - 1, 0))
    column = space.lookup(items)
    mine = (targets[row] == members) if m else np.zeros(members.size, dtype=bool)
    mine &= column >= 0  # items outside the run's catalogue cannot be recommended anyway
    row, column, weight = row[mine], column[mine], weight[mine]
    in_model = column < n_model

    # Built exactly as prepare_feeds builds a member's training and seen rows, over the model's
    # items; interactions with catalogue items the model does not know only block them.
    train = interaction_matrix(
        row[in_model], column[in_model], weight[in_model], shape=(m, n_model), weighting="weight"
    )
    if prepared.policy.model.weighting == "binary":
        train.data[:] = 1.0
    seen = interaction_matrix(
        row[in_model], column[in_model], None, shape=(m, n_model), weighting="binary"
    )
    blocks = _extra_blocks(targets, space, member_blocks)
    outside = ~in_model
    if outside.any():
        blocks = csr_matrix(
            blocks
            + csr_matrix(
                (np.ones(int(outside.sum()), dtype=np.float32), (row[outside], column[outside])),
                shape=blocks.shape,
            )
        )
        blocks.data[:] = 1.0
        blocks.sort_indices()

    refusing = np.isin(targets, _member_set(no_personalisation_members, "no_personalisation"))
    personal = ~refusing & (np.diff(train.indptr) > 0) & (prepared.model is not None)
    route = np.full(m, ROUTE_POPULAR, dtype=np.int8)
    route[personal] = ROUTE_RECALCULATED
    route[refusing] = ROUTE_REFUSING
    # Only ROUTE_RECALCULATED rows read ``train``; keep it empty for the others, as a run does.
    train = csr_matrix(train.multiply(personal[:, None].astype(np.float32)))
    train.eliminate_zeros()
    train.sort_indices()

    catalogue = prepared.catalogue
    if refused_items is not None:
        index = space.lookup(_as_ids(refused_items, "refused_items"))
        if (index >= 0).any():
            refused = catalogue.refused.copy()
            refused[index[index >= 0]] = True
            catalogue = dataclasses.replace(catalogue, refused=refused)
    counts = np.bincount(route, minlength=4)
    refreshed = dataclasses.replace(
        prepared,
        targets=targets,
        route=route,
        model_rows=np.full(m, -1, dtype=np.int64),
        seen=seen,
        train=train,
        extra_blocks=blocks,
        catalogue=catalogue,
        metadata={
            **prepared.metadata,
            "refreshed_members": int(m),
            "refresh_routes": {
                "recalculated": int(counts[ROUTE_RECALCULATED]),
                "popular": int(counts[ROUTE_POPULAR]),
                "refusing": int(counts[ROUTE_REFUSING]),
            },
        },
    )
    return score_feeds(refreshed, chunk_size=chunk_size)
