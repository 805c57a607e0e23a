"""A readable diff between two JSON documents (policy or charter versions).

Paths are dotted: ``model.factors``; list elements are addressed by index: ``refusals.2.kind``.

Lists are compared as collections of rules, not as text lines:

1. Elements present in both lists (equal canonical JSON) are unchanged, wherever they sit.
2. The remaining elements are paired in order: the first unmatched element of the old list with
   the first unmatched element of the new list, and so on; each pair is diffed recursively (so an
   edited rule shows the field that changed). Paths use the element's index in the new list.
3. Left-over old elements are reported as removed (new is ``ABSENT``, path uses the old index),
   left-over new elements as added (old is ``ABSENT``).
4. If the lists hold the same elements in a different order, that is one change of the whole list.

``policy_diff(a, b) == []`` exactly when the two documents have the same canonical JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from ranking.policy import canonical_json


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = _Absent()
"""Stands for a key or list element that does not exist on one side (``None`` is JSON null)."""


@dataclass(frozen=True)
class Change:
    path: str
    old: Any
    new: Any

    def __str__(self) -> str:
        if self.old is ABSENT:
            return f"{self.path}: added {canonical_json(self.new)}"
        if self.new is ABSENT:
            return f"{self.path}: removed {canonical_json(self.old)}"
        return f"{self.path}: {canonical_json(self.old)} -> {canonical_json(self.new)}"


def policy_diff(a: dict[str, Any], b: dict[str, Any]) -> list[Change]:
    """Changes that turn document ``a`` into document ``b``, in document order."""
    changes: list[Change] = []
    _diff("", a, b, changes)
    return changes


def _join(path: str, key: str | int) -> str:
    return f"{path}.{key}" if path else str(key)


def _diff(path: str, old: Any, new: Any, out: list[Change]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys()):
            _diff(_join(path, key), old.get(key, ABSENT), new.get(key, ABSENT), out)
    elif isinstance(old, list) and isinstance(new, list):
        _diff_lists(path, old, new, out)
    elif old is ABSENT or new is ABSENT or not _same(old, new):
        out.append(Change(path, old, new))


def _same(old: Any, new: Any) -> bool:
    # 1 and 1.0 and True are different JSON values; canonical JSON tells them apart.
    return canonical_json(old) == canonical_json(new)


def _diff_lists(path: str, old: list[Any], new: list[Any], out: list[Change]) -> None:
    unmatched_new: dict[str, list[int]] = {}
    for index, element in enumerate(new):
        unmatched_new.setdefault(canonical_json(element), []).append(index)
    removed: list[int] = []
    for index, element in enumerate(old):
        slots = unmatched_new.get(canonical_json(element))
        if slots:
            slots.pop(0)
        else:
            removed.append(index)
    added = sorted(index for slots in unmatched_new.values() for index in slots)
    if not removed and not added:
        if not _same(old, new):
            out.append(Change(path, old, new))  # same elements, new order
        return
    for old_index, new_index in zip(removed, added, strict=False):
        _diff(_join(path, new_index), old[old_index], new[new_index], out)
    for old_index in removed[len(added) :]:
        out.append(Change(_join(path, old_index), old[old_index], ABSENT))
    for new_index in added[len(removed) :]:
        out.append(Change(_join(path, new_index), ABSENT, new[new_index]))
