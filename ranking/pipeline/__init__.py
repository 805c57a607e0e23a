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

Cold start (:mod:`ranking.pipeline.new_items`). ALS can only score items somebody interacted
with; with ``candidates.new_items`` above 0, the newest candidates nobody has interacted with
positively are candidates too, scored from factors estimated from their creator or tags.

Modules: :mod:`~ranking.pipeline.common` (:class:`FeedBatch`, member routes),
:mod:`~ranking.pipeline.prepare` (training stage, :func:`compute_feeds`),
:mod:`~ranking.pipeline.prepared` (:class:`PreparedFeeds` and its archive),
:mod:`~ranking.pipeline.score` (ranking stage), :mod:`~ranking.pipeline.new_items` (cold start)
and :mod:`~ranking.pipeline.refresh` (fold-in, :func:`refresh_feeds`).
"""

from ranking.pipeline.common import (
    DEFAULT_CHUNK_SIZE,
    ROUTE_POPULAR,
    ROUTE_RECALCULATED,
    ROUTE_REFUSING,
    ROUTE_TRAINED,
    FeedBatch,
)
from ranking.pipeline.prepare import compute_feeds, prepare_feeds
from ranking.pipeline.prepared import PreparedFeeds
from ranking.pipeline.refresh import refresh_feeds
from ranking.pipeline.score import score_feeds

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
