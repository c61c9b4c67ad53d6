"""How long the UI thread's event loop goes without turning: the measure of "never freezes".

A 5 ms timer ticks on the UI thread. Between two ticks we record the wall time (what the
user feels) and the UI thread's own CPU time (the part our code is responsible for: a slot,
a repaint). On a machine whose cores are busy with other processes the wall gap also
contains time the OS gave to them, which no application can avoid, hence both figures.
"""
from __future__ import annotations

import time
from typing import Optional

from PySide6.QtCore import QObject, QTimer


class StallMeter(QObject):
    """Start it, run the work, stop it, then read `longest_wall` and `longest_busy` (seconds)."""

    def __init__(self, interval_ms: int = 5, parent: Optional[QObject] = None):
        super().__init__(parent)
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self.ticks = 0
        self.longest_wall = 0.0
        self.longest_busy = 0.0
        self._last: Optional[tuple[float, float]] = None

    def start(self) -> None:
        self.ticks, self.longest_wall, self.longest_busy = 0, 0.0, 0.0
        self._last = (time.perf_counter(), time.thread_time())
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()
        self._tick()

    def _tick(self) -> None:
        now = (time.perf_counter(), time.thread_time())
        if self._last is not None:
            self.longest_wall = max(self.longest_wall, now[0] - self._last[0])
            self.longest_busy = max(self.longest_busy, now[1] - self._last[1])
        self._last = now
        self.ticks += 1
