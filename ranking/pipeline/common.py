"""What every stage of the pipeline shares: the result type, member routes, id checks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

DEFAULT_CHUNK_SIZE = 10_000
"""Members ranked per vectorised batch; bounds peak memory at ``O(chunk x candidates)``."""


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
