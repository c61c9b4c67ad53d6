"""Which node an arrow key moves the graph's selection to.

Plain data in, a node name out, so the rules can be read and tested without a view:
Down follows an edge to a successor and Up to a predecessor, preferring the one straight
below or above (the same lane of the drawing); Left and Right move among siblings, the
other branches that leave the same node or join the same node, and otherwise to the
nearest node on the same row.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

Point = tuple[float, float]

DIRECTIONS = ("up", "down", "left", "right")
_OPPOSITE = {"up": "down", "down": "up", "left": "right", "right": "left"}


def step(current: str, direction: str, successors: Mapping[str, Sequence[str]],
         predecessors: Mapping[str, Sequence[str]], position: Mapping[str, Point],
         came_from: Optional[tuple[str, str, str]] = None) -> Optional[str]:
    """The node ``direction`` leads to from ``current``, or None when there is none that way.

    ``came_from`` is the last step taken, (from, to, direction): stepping straight back
    returns to where the user came from rather than to another branch.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}")
    if came_from is not None:
        origin, target, taken = came_from
        if target == current and direction == _OPPOSITE[taken] and origin in position:
            return origin
    if direction in ("up", "down"):
        candidates = (successors if direction == "down" else predecessors).get(current, ())
        return _nearest_in_lane(current, [c for c in candidates if c in position], position)
    return _sideways(current, direction, successors, predecessors, position)


def _nearest_in_lane(current: str, candidates: Sequence[str], position: Mapping[str, Point]) -> Optional[str]:
    """The candidate closest in x to ``current`` (ties: the first listed)."""
    if not candidates:
        return None
    x = position[current][0]
    return min(candidates, key=lambda c: abs(position[c][0] - x))


def siblings(current: str, successors: Mapping[str, Sequence[str]],
             predecessors: Mapping[str, Sequence[str]]) -> list[str]:
    """Nodes that share a parent or a child with ``current``: the alternatives beside it."""
    found: dict[str, None] = {}
    for parent in predecessors.get(current, ()):
        found.update(dict.fromkeys(successors.get(parent, ())))
    for child in successors.get(current, ()):
        found.update(dict.fromkeys(predecessors.get(child, ())))
    found.pop(current, None)
    return list(found)


def _sideways(current: str, direction: str, successors: Mapping[str, Sequence[str]],
              predecessors: Mapping[str, Sequence[str]], position: Mapping[str, Point]) -> Optional[str]:
    x, y = position[current]
    sign = -1.0 if direction == "left" else 1.0

    def on_side(name: str) -> bool:
        return sign * (position[name][0] - x) > 0.5

    def distance(name: str) -> tuple[float, float]:
        nx, ny = position[name]
        return abs(nx - x), abs(ny - y)

    near = [s for s in siblings(current, successors, predecessors) if s in position and on_side(s)]
    if not near:
        # No branch beside it: the nearest node drawn on the same row, if any.
        near = [n for n, (_, ny) in position.items() if n != current and abs(ny - y) < 1.0 and on_side(n)]
    return min(near, key=distance) if near else None
