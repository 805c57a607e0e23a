"""Why an item is in a feed: reason codes as bits of an int32 mask, and their sentences.

Every feed entry carries a bitmask (see :attr:`ranking.pipeline.FeedBatch.reasons`): one *source*
bit (how the candidate was found) plus any number of *effect* bits (what the community's policy
did to it). :func:`explain` turns a mask into the sentences shown to members.
"""

from __future__ import annotations

from enum import IntFlag

import numpy as np
import numpy.typing as npt

__all__ = ["SENTENCES", "Reason", "explain", "explain_many"]


class Reason(IntFlag):
    """Reason bits; combine with ``|``."""

    PERSONALISED = 1 << 0
    POPULAR = 1 << 1
    NEWEST = 1 << 2
    RAISED_LONG_TAIL = 1 << 3
    RAISED_NEW_CREATOR = 1 << 4
    RAISED_BY_CAP = 1 << 5
    DIVERSIFIED = 1 << 6
    LABELLED_HUMAN = 1 << 7
    LABELLED_AI_ASSISTED = 1 << 8
    LABELLED_AI_GENERATED = 1 << 9
    LABELLED_UNKNOWN_PROVENANCE = 1 << 10
    DOWNRANKED_PROVENANCE = 1 << 11
    POPULARITY_PENALISED = 1 << 12
    FRESHNESS_DECAYED = 1 << 13
    NEW_FROM_KNOWN_CREATOR = 1 << 14
    NEW_FROM_UNSEEN_CREATOR = 1 << 15


SENTENCES: dict[Reason, str] = {
    Reason.PERSONALISED: "Members with similar taste engaged with this.",
    Reason.POPULAR: "Popular in this community.",
    Reason.NEWEST: "New in this community.",
    Reason.RAISED_LONG_TAIL: "Raised: the community reserves slots for long-tail creators.",
    Reason.RAISED_NEW_CREATOR: "Raised: the community reserves slots for new creators.",
    Reason.RAISED_BY_CAP: "Raised: the community caps how often one creator or kind of item "
    "appears, so a higher-scored item made room for this one.",
    Reason.DIVERSIFIED: "Chosen for variety: it differs from the items above it.",
    Reason.LABELLED_HUMAN: "Labelled: declared as made by people.",
    Reason.LABELLED_AI_ASSISTED: "Labelled: made with AI assistance.",
    Reason.LABELLED_AI_GENERATED: "Labelled: AI-generated.",
    Reason.LABELLED_UNKNOWN_PROVENANCE: "Labelled: how this was made is unknown.",
    Reason.DOWNRANKED_PROVENANCE: "Lowered: the community downranks items made this way.",
    Reason.POPULARITY_PENALISED: "Lowered a little: the community offsets popularity.",
    Reason.FRESHNESS_DECAYED: "Lowered a little: the community favours recent items.",
    Reason.NEW_FROM_KNOWN_CREATOR: "New from a creator you have engaged with; nobody has "
    "engaged with this item yet.",
    Reason.NEW_FROM_UNSEEN_CREATOR: "New from a creator you haven't seen yet; nobody has "
    "engaged with this item yet.",
}
"""The sentence shown to members for each bit."""

LABEL_BY_PROVENANCE: tuple[Reason, ...] = (
    Reason.LABELLED_HUMAN,
    Reason.LABELLED_AI_ASSISTED,
    Reason.LABELLED_AI_GENERATED,
    Reason.LABELLED_UNKNOWN_PROVENANCE,
)
"""The label bit of each provenance code (order of :data:`ranking.policy.PROVENANCE_CLASSES`)."""


def explain(mask: int) -> list[str]:
    """The sentences for every bit set in ``mask``, in bit order.

    Parameters
    ----------
    mask : int
        A reason bitmask (e.g. one entry of :attr:`ranking.pipeline.FeedBatch.reasons`).

    Returns
    -------
    list of str
        One sentence per known bit; unknown bits are ignored.

    Examples
    --------
    >>> explain(Reason.PERSONALISED | Reason.LABELLED_AI_GENERATED)
    ['Members with similar taste engaged with this.', 'Labelled: AI-generated.']
    """
    value = int(mask)
    return [sentence for bit, sentence in SENTENCES.items() if value & int(bit)]


def explain_many(masks: npt.ArrayLike) -> list[list[str]]:
    """:func:`explain` for every entry of a 1-D array of masks."""
    return [explain(int(m)) for m in np.asarray(masks, dtype=np.int64).ravel()]
