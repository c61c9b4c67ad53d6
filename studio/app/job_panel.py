"""The running job's strip: phase, progress bar, time left, and Pause / Resume / Cancel."""
from __future__ import annotations

import time
from typing import Optional

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QSizePolicy, QWidget

from studio.engine.events import EpochEnd, Phase, Progress, TrainStep

REDRAW_MS = 500
PHASE_TITLES = {"analyse": "Analysing", "sparse-train": "Sparse training", "prune": "Pruning",
                "fine-tune": "Fine-tuning", "retrain": "Retraining", "evaluate": "Evaluating",
                "measure": "Measuring", "export": "Exporting", "report": "Writing report"}


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class PhaseClock:
    """Progress within the current phase and the time left, from the job's events.

    The estimate is the phase's elapsed time scaled by what remains. It ignores time
    spent paused, so pausing does not inflate the estimate.
    """

    def __init__(self, phase_epochs: Optional[dict] = None) -> None:
        self.phase_epochs = dict(phase_epochs or {})   # training phase -> epochs, from the recipe
        self.phase = ""
        self.message = ""
        self.done = 0
        self.total = 0
        self._started = time.monotonic()
        self._paused_at: Optional[float] = None
        self._paused_total = 0.0

    def feed(self, event) -> None:
        if isinstance(event, Phase):
            self.phase, self.message = event.name, event.message
            self.done = self.total = 0
            self._started, self._paused_total = time.monotonic(), 0.0
        elif isinstance(event, TrainStep):
            self.total = max(1, event.steps_per_epoch) * max(1, self.phase_epochs.get(event.phase, 1))
            self.done = event.epoch * event.steps_per_epoch + event.step + 1
            self.message = f"epoch {event.epoch + 1}, loss {event.loss:.3f}, {event.images_per_s:,.0f} img/s"
        elif isinstance(event, EpochEnd):
            self.phase_epochs[event.phase] = event.epochs
            if event.val_top1 is not None:
                self.message = f"epoch {event.epoch + 1}/{event.epochs}: val top-1 {event.val_top1:.1%}"
        elif isinstance(event, Progress):
            self.done, self.total = event.done, event.total
            if event.message:
                self.message = event.message

    def pause(self) -> None:
        self._paused_at = time.monotonic()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._paused_total += time.monotonic() - self._paused_at
            self._paused_at = None

    def seconds_left(self) -> Optional[float]:
        if self.total <= 0 or self.done <= 0 or self.done >= self.total:
            return None
        now = self._paused_at or time.monotonic()
        elapsed = now - self._started - self._paused_total
        return elapsed / self.done * (self.total - self.done)


class JobPanel(QWidget):
    """Shows where the job is; its buttons ask the window to pause, resume or cancel."""
    pauseRequested = Signal()
    resumeRequested = Signal()
    cancelRequested = Signal()

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.clock = PhaseClock()
        self.phase_label = QLabel("Idle")
        self.bar = QProgressBar()
        self.bar.setMaximumWidth(240)
        self.bar.setTextVisible(True)
        self.detail = QLabel("")
        self.eta = QLabel("")
        self.pause_button = QPushButton("Pause")
        self.pause_button.setToolTip("Pause the job after the current batch; Resume continues it.")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the job after the current batch. Nothing it did is kept.")
        self.pause_button.clicked.connect(self._toggle_pause)
        self.cancel_button.clicked.connect(self.cancelRequested)
        for button in (self.pause_button, self.cancel_button):
            button.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
        # Fixed-size labels: a label whose size may change asks the whole window to lay itself
        # out again on every setText, which costs ~15 ms plus a full repaint during a run.
        for label, width in ((self.phase_label, 170), (self.detail, 360), (self.eta, 90)):
            label.setFixedSize(width, label.sizeHint().height())
        row = QHBoxLayout(self)
        row.setContentsMargins(4, 0, 4, 0)
        for w in (self.phase_label, self.bar, self.detail, self.eta):
            row.addWidget(w)
        row.addStretch(1)
        row.addWidget(self.pause_button)
        row.addWidget(self.cancel_button)
        self._paused = False
        self._redraw = QTimer(self)
        self._redraw.setSingleShot(True)
        self._redraw.setInterval(REDRAW_MS)
        self._redraw.timeout.connect(self._render)
        self.set_running(False)

    def set_running(self, running: bool, phase_epochs: Optional[dict] = None) -> None:
        self._paused = False
        self.pause_button.setText("Pause")
        self.pause_button.setEnabled(running)
        self.cancel_button.setEnabled(running)
        self.bar.setVisible(running)
        self.eta.setText("")
        if running:
            self.clock = PhaseClock(phase_epochs)
            self.phase_label.setText("Starting…")
            self.detail.setText("")
            self.bar.setRange(0, 0)

    def finish(self, title: str, detail: str = "") -> None:
        """The job ended: ``title`` is one word ("Done", "Cancelled", "Failed"), ``detail`` the outcome."""
        self._redraw.stop()
        self.set_running(False)
        self.phase_label.setText(title)
        self.detail.setText(detail)

    def feed(self, events: list) -> None:
        """Take the job's events; the strip is redrawn at most `REDRAW_MS` apart (repaints cost CPU
        that training on the same cores would miss)."""
        for e in events:
            self.clock.feed(e)
        if not self._redraw.isActive():
            self._render()
            self._redraw.start()

    def _render(self) -> None:
        c = self.clock
        title = PHASE_TITLES.get(c.phase, c.phase.capitalize() or "Working")
        self.phase_label.setText(f"Paused ({title.lower()})" if self._paused else title)
        self.detail.setText(c.message)
        if c.total > 0:
            self.bar.setRange(0, c.total)
            self.bar.setValue(min(c.done, c.total))
        else:
            self.bar.setRange(0, 0)   # busy indicator while a phase has no countable steps
        left = c.seconds_left()
        self.eta.setText(f"{format_duration(left)} left" if left is not None else "")

    @property
    def paused(self) -> bool:
        return self._paused

    def _toggle_pause(self) -> None:
        self._paused = not self._paused
        if self._paused:
            self.clock.pause()
            self.pause_button.setText("Resume")
            self.phase_label.setText("Paused")
            self.pauseRequested.emit()
        else:
            self.clock.resume()
            self.pause_button.setText("Pause")
            self.resumeRequested.emit()
