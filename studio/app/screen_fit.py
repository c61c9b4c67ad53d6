"""Keeping the window within the screen it is on, and its side panels within the window.

Plain geometry, no widgets: the main window asks these functions where to go and how wide
its panels may be, so the rules can be read (and tested) apart from the window's wiring.
"""
from __future__ import annotations

from PySide6.QtCore import QRect, QSize

PREFERRED_SIZE = QSize(1600, 1000)   # the window's size on a screen with room for it
SIDE_SHARE = 0.36                    # the side panels together take at most this share of the width


def fit_size(wanted: QSize, room: QSize) -> QSize:
    """``wanted`` shrunk, side by side, to fit in ``room``."""
    return QSize(min(wanted.width(), room.width()), min(wanted.height(), room.height()))


def fit_rect(frame: QRect, available: QRect) -> QRect:
    """``frame`` shrunk to fit ``available`` and moved inside it, as little as possible."""
    size = fit_size(frame.size(), available.size())
    x = min(max(frame.x(), available.left()), available.left() + available.width() - size.width())
    y = min(max(frame.y(), available.top()), available.top() + available.height() - size.height())
    return QRect(x, y, size.width(), size.height())


def centred_rect(size: QSize, available: QRect) -> QRect:
    """A rect of ``size`` (shrunk to fit) in the middle of ``available``."""
    size = fit_size(size, available.size())
    return QRect(available.left() + (available.width() - size.width()) // 2,
                 available.top() + (available.height() - size.height()) // 2, size.width(), size.height())


def side_widths(window_width: int, current: tuple[int, int], minimum: tuple[int, int]) -> tuple[int, int]:
    """Widths for the (left, right) side panels so that the graph between them keeps the room.

    Panels that together take more than `SIDE_SHARE` of the window are narrowed, each in
    proportion to what it has above its minimum; narrower panels are left as the user set them.
    """
    cap = max(round(SIDE_SHARE * window_width), sum(minimum))
    total = sum(current)
    if total <= cap:
        return current
    spare = [max(0, c - m) for c, m in zip(current, minimum)]
    cut = min(total - cap, sum(spare))
    if not sum(spare):
        return current
    return tuple(c - round(cut * s / sum(spare)) for c, s in zip(current, spare))  # type: ignore[return-value]
