"""Three-way merge of policy documents, for ratifying a proposal drafted on an older version.

A proposal's changes are ``policy_diff(base, proposed)``; the changes ratified since it was drafted
are ``policy_diff(base, current)``. Each change is reduced to its *root*: its dotted path, cut at
the first list, because list elements are addressed by index and an index means nothing once the
other side has added or removed elements (a list is merged as a whole). Two roots clash when one
is a prefix of the other (or they are equal) and the two sides did not make the same change there.
Without clashes the proposal's roots are copied from ``proposed`` onto ``current``; with any, the
merge refuses and reports every clashing path. It never overwrites a ratified change.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from governance.diff import ABSENT, policy_diff
from ranking.policy import canonical_json


@dataclass(frozen=True)
class MergeResult:
    document: dict[str, Any] | None
    """The merged document, or ``None`` when there were conflicts."""
    conflicts: list[str] = field(default_factory=list)
    """Clashing dotted paths (sorted), empty on success."""


def _lookup(document: Any, parts: tuple[str, ...]) -> Any:
    node = document
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return ABSENT
    return node


def _root(path: str, *documents: dict[str, Any]) -> tuple[str, ...]:
    parts = tuple(path.split(".")) if path else ()
    for end in range(len(parts) + 1):
        prefix = parts[:end]
        if any(isinstance(_lookup(doc, prefix), list) for doc in documents):
            return prefix
    return parts


def _same_at(a: dict[str, Any], b: dict[str, Any], parts: tuple[str, ...]) -> bool:
    left, right = _lookup(a, parts), _lookup(b, parts)
    if left is ABSENT or right is ABSENT:
        return left is right
    return canonical_json(left) == canonical_json(right)


def _is_prefix(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    return b[: len(a)] == a


def three_way_merge(
    *, base: dict[str, Any], proposed: dict[str, Any], current: dict[str, Any]
) -> MergeResult:
    """Apply the changes ``base -> proposed`` on top of ``current`` (see the module docstring)."""
    ours = {_root(c.path, base, proposed, current) for c in policy_diff(base, proposed)}
    theirs = {_root(c.path, base, proposed, current) for c in policy_diff(base, current)}
    conflicts = set()
    for mine in ours:
        for other in theirs:
            overlapping = _is_prefix(mine, other) or _is_prefix(other, mine)
            if overlapping and not _same_at(proposed, current, min(mine, other, key=len)):
                conflicts.add(".".join(mine))
                conflicts.add(".".join(other))
    if conflicts:
        return MergeResult(document=None, conflicts=sorted(conflicts))
    merged = copy.deepcopy(current)
    # Shorter roots first: a deeper root is never inside a shorter one of the same side, because
    # a diff never reports both a path and one below it.
    for parts in sorted(ours, key=len):
        _assign(merged, parts, _lookup(proposed, parts))
    return MergeResult(document=merged)


def _assign(document: dict[str, Any], parts: tuple[str, ...], value: Any) -> None:
    if not parts:
        document.clear()
        document.update(copy.deepcopy(value))
        return
    node: Any = document
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if value is ABSENT:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = copy.deepcopy(value)
