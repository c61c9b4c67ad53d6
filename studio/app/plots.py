"""Live charts of a running job: training loss, accuracy and model size before vs now.

`LivePlots` only renders engine events (`TrainStep`, `EpochEnd`, `MetricsSnapshot`); it never
trains. Events are appended to plain Python lists by `add_events`, which is cheap enough to
call for every event batch a worker thread delivers; drawing happens in `refresh`, which pushes
only the curves whose buffers changed. An internal QTimer calls `refresh` about four times a
second while events keep arriving and stops itself after a couple of seconds without any, so
an idle window does no work. The owner may also call `refresh` directly (tests do).

The x axis of the training charts is the fractional epoch ``epoch + step / steps_per_epoch``,
counted across the whole job: each training segment (sparse training, then fine-tuning or
retraining, or another fine-tuning round of iterative pruning) starts where the previous one
ended, in its own colour.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QHBoxLayout, QWidget

from studio.engine.events import EpochEnd, MetricsSnapshot, TrainStep
from studio.engine.jobs.report import finite, human_bytes, human_count

PHASE_COLORS = {"sparse-train": "#9333ea", "fine-tune": "#2563eb", "retrain": "#ea580c", "train": "#16a34a"}
PHASE_TITLES = {"sparse-train": "Sparse training", "fine-tune": "Fine-tuning", "retrain": "Retraining",
                "train": "Training"}
OTHER_COLORS = ("#0891b2", "#be185d", "#65a30d", "#a16207")
BEFORE_COLOR = "#cbd5e1"
NOW_COLOR = "#2563eb"
TEXT_COLOR = "#374151"
# (metrics key, axis label, formatter) of the size chart's bar groups
SIZE_KEYS = (("params", "Params", human_count), ("macs", "MACs", human_count),
             ("dense_bytes", "Size", human_bytes))
CHARTS = ("loss", "acc", "size")
# While events come in, each chart is redrawn every 2 s, one chart per tick. A chart's
# repaint costs ~15-25 ms of UI CPU, which training on the same cores pays for, and charts
# changed together are painted in one pass (bench/gui_responsiveness.py on 2 cores: redrawing
# all charts each second cost ~6 % of fine-tuning throughput; this is within the noise).
CHART_PERIOD_MS = 2000
REFRESH_MS = CHART_PERIOD_MS // len(CHARTS)
IDLE_TICKS_BEFORE_STOP = 3000 // REFRESH_MS   # stop the timer after ~3 s without new events


def _chart_of(key) -> str:
    """Which chart a dirty key belongs to: 'loss', 'acc' or 'size'."""
    if key == "size":
        return "size"
    if key == "ref":
        return "acc"
    return "loss" if key[0] == "loss" else "acc"


@dataclass
class _Series:
    """x/y buffers of one curve; NaN entries split segments (drawn with connect='finite')."""
    x: list = field(default_factory=list)
    y: list = field(default_factory=list)
    points: int = 0

    def add(self, x: float, y: float) -> None:
        self.x.append(x)
        self.y.append(y)
        self.points += 1

    def gap(self) -> None:
        if self.x and not math.isnan(self.x[-1]):
            self.x.append(math.nan)
            self.y.append(math.nan)


@dataclass
class _Buffers:
    """Everything the charts show for one run; swapped whole by start_run / restore_previous."""
    loss: dict = field(default_factory=dict)        # phase -> _Series
    train_acc: dict = field(default_factory=dict)   # phase -> _Series (percent)
    val_acc: dict = field(default_factory=dict)     # phase -> _Series (percent)
    phase: Optional[str] = None                     # phase of the current training segment
    local: float = -1.0                             # last fractional epoch inside the segment
    offset: float = 0.0                             # global x where the segment started
    max_x: float = 0.0
    before: dict = field(default_factory=dict)      # reference sizes (params, macs, dense_bytes)
    now: dict = field(default_factory=dict)
    before_top1: Optional[float] = None

    def segment_x(self, phase: str, local: float) -> float:
        """Global x of ``local`` (epoch + step fraction), opening a new segment when the phase changes or restarts."""
        if phase != self.phase or local < self.local - 1e-9:
            self.offset = float(math.ceil(self.max_x - 1e-9)) if self.phase is not None else 0.0
            for series in (self.loss, self.train_acc, self.val_acc):
                if phase in series:
                    series[phase].gap()
            self.phase = phase
        self.local = local
        x = self.offset + local
        self.max_x = max(self.max_x, x)
        return x



def _phase_color(phase: str, known: dict) -> str:
    if phase in PHASE_COLORS:
        return PHASE_COLORS[phase]
    if phase not in known:
        known[phase] = OTHER_COLORS[len(known) % len(OTHER_COLORS)]
    return known[phase]


def _make_plot(title: str, y_label: str) -> pg.PlotWidget:
    widget = pg.PlotWidget(background="w")
    widget.setAntialiasing(True)
    item = widget.getPlotItem()
    item.setTitle(title, color=TEXT_COLOR, size="10pt")
    item.showGrid(x=False, y=True, alpha=0.15)   # vertical grid lines cost ~10 ms per refresh
    for side in ("left", "bottom"):
        axis = item.getAxis(side)
        axis.setPen(pg.mkPen("#9ca3af"))
        axis.setTextPen(pg.mkPen(TEXT_COLOR))
        axis.enableAutoSIPrefix(False)   # "epoch (x0.001)" early in a run reads as a bug
    # Fixed axis room: an axis that resizes when its tick labels change re-lays out and
    # repaints the whole plot several times per refresh.
    item.getAxis("left").setWidth(48)
    item.getAxis("bottom").setHeight(36)
    item.setLabel("left", y_label, color=TEXT_COLOR)
    # long runs have 100k+ steps: draw at most a few points per pixel, only the visible range
    item.setDownsampling(auto=True, mode="peak")
    item.setClipToView(True)
    item.setMenuEnabled(False)
    widget.setMinimumSize(220, 160)
    return widget


class LivePlots(QWidget):
    """Loss, accuracy and model-size charts fed with engine events during a job."""

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self._buf = _Buffers()
        self._previous: Optional[_Buffers] = None
        self._dirty: set = set()           # ('loss'|'train_acc'|'val_acc', phase) or 'size' / 'ref'
        self._curves: dict = {}            # same keys -> PlotDataItem
        self._other_colors: dict = {}
        self._idle_ticks = 0

        self.loss_plot = _make_plot("Training loss", "loss")
        self.acc_plot = _make_plot(
            "Accuracy <span style='color:#6b7280'>(line: train, running · dots: validation)</span>", "top-1 %")
        self.size_plot = _make_plot("Model size", "% of before")
        # loss falls to the bottom right and accuracy rises to the top right: legends go opposite
        for plot, corner in ((self.loss_plot, (-8, 8)), (self.acc_plot, (-8, -8))):
            plot.getPlotItem().setLabel("bottom", "epoch", color=TEXT_COLOR)
            plot.getPlotItem().addLegend(offset=corner, labelTextColor=TEXT_COLOR, labelTextSize="8pt",
                                         brush=pg.mkBrush(255, 255, 255, 210), pen=pg.mkPen("#e5e7eb"))
            plot.getPlotItem().legend.setVisible(False)   # shown with the first curve
        self.loss_plot.setLabel("left", "loss", color=TEXT_COLOR)
        self.acc_plot.setYRange(0, 100, padding=0.02)
        self.acc_plot.getPlotItem().getViewBox().setLimits(yMin=-5, yMax=105)
        self._before_line = pg.InfiniteLine(angle=0, movable=False,
                                            pen=pg.mkPen("#6b7280", width=1, style=Qt.PenStyle.DashLine),
                                            label="before {value:.1f}%",
                                            labelOpts={"position": 0.06, "color": "#4b5563",
                                                       "anchors": [(0, 1), (0, 1)]})
        self._before_line.setVisible(False)
        self.acc_plot.addItem(self._before_line, ignoreBounds=True)
        self._setup_size_plot()

        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.loss_plot, 3)
        layout.addWidget(self.acc_plot, 3)
        layout.addWidget(self.size_plot, 2)

        self._next_chart = 0
        self._timer = QTimer(self)
        self._timer.setInterval(REFRESH_MS)
        self._timer.timeout.connect(self._tick)

    # ------------------------------------------------------------------------------- public API

    def start_run(self, before: Optional[dict] = None) -> None:
        """Clear the charts for a new run, keeping the old buffers for `restore_previous`.

        ``before`` (params, macs, dense_bytes) is the size reference, if known up front.
        """
        self._previous = self._buf
        self._buf = _Buffers()
        if before:
            self._buf.before = {k: before.get(k) for k, _, _ in SIZE_KEYS}
        self._reset_drawing()
        self.refresh()

    def add_events(self, events: list) -> None:
        """Append the chartable events to the buffers (no drawing; the timer refreshes)."""
        buf = self._buf
        for event in events:
            if isinstance(event, TrainStep):
                spe = max(1, int(event.steps_per_epoch or 1))
                x = buf.segment_x(event.phase, event.epoch + event.step / spe)
                loss, acc = finite(event.loss), finite(event.accuracy)
                if loss is not None:
                    buf.loss.setdefault(event.phase, _Series()).add(x, loss)
                    self._dirty.add(("loss", event.phase))
                if acc is not None:
                    buf.train_acc.setdefault(event.phase, _Series()).add(x, acc * 100)
                    self._dirty.add(("train_acc", event.phase))
            elif isinstance(event, EpochEnd):
                # validation happens at the end of the epoch: plot it at epoch + 1
                x = buf.segment_x(event.phase, event.epoch + 1.0)
                top1 = finite(event.val_top1)
                if top1 is not None:
                    buf.val_acc.setdefault(event.phase, _Series()).add(x, top1 * 100)
                    self._dirty.add(("val_acc", event.phase))
            elif isinstance(event, MetricsSnapshot):
                values = event.values or {}
                sizes = {k: finite(values.get(k)) for k, _, _ in SIZE_KEYS}
                if event.label == "before":
                    buf.before = sizes
                    buf.before_top1 = finite(values.get("top1"))
                    self._dirty.update(("size", "ref"))
                elif event.label in ("pruned", "reconstructed", "after"):
                    buf.now = sizes
                    self._dirty.add("size")
        if self._dirty and not self._timer.isActive():
            self._idle_ticks = 0
            self._timer.start()

    def restore_previous(self) -> None:
        """Bring back the charts as they were before the last `start_run` (a cancelled run).

        Only the last start_run can be undone: a second call, or one without a start_run, does nothing.
        """
        if self._previous is None:
            return
        self._buf, self._previous = self._previous, None
        self._reset_drawing()
        self.refresh()

    def refresh(self) -> None:
        """Push every changed buffer to its curves now; untouched curves are not redrawn."""
        dirty, self._dirty = self._dirty, set()
        self._draw(dirty)

    def _refresh_next_chart(self) -> None:
        """Redraw the changed parts of one chart, taking the charts in turn."""
        for _ in CHARTS:
            chart = CHARTS[self._next_chart]
            self._next_chart = (self._next_chart + 1) % len(CHARTS)
            keys = {key for key in self._dirty if _chart_of(key) == chart}
            if keys:
                self._dirty -= keys
                self._draw(keys)
                return

    def _draw(self, keys: set) -> None:
        # curves are created on first draw: go in job order so legends list phases as they ran
        for key in sorted(keys, key=self._draw_order):
            if key == "size":
                self._draw_size()
            elif key == "ref":
                self._draw_reference()
            else:
                self._draw_curve(*key)

    def _draw_order(self, key) -> tuple:
        if isinstance(key, str):
            return (-1, key, "")
        kind, phase = key
        first_seen = list(self._buf.loss) + list(self._buf.train_acc) + list(self._buf.val_acc)
        return (first_seen.index(phase), phase, kind)

    def point_counts(self) -> dict:
        """Points drawn per chart (segment separators excluded): loss, train_acc, val_acc."""
        counts = {"loss": 0, "train_acc": 0, "val_acc": 0}
        for (kind, _), curve in self._curves.items():
            x = curve.xData
            if x is not None:
                counts[kind] += int(np.count_nonzero(np.isfinite(x)))
        return counts

    def size_percent(self) -> dict:
        """The "now" bars as drawn, in percent of before: {'params': .., 'macs': .., 'dense_bytes': ..}."""
        drawn = self._now_bars.opts.get("width")
        return {key: float(h) for (key, _, _), h, known in zip(SIZE_KEYS, drawn, self._now_heights)
                if not math.isnan(known)}

    def is_refreshing(self) -> bool:
        """Whether the internal refresh timer is running (events arrived recently)."""
        return self._timer.isActive()

    # ------------------------------------------------------------------------------- drawing

    def _tick(self) -> None:
        if self._dirty:
            self._idle_ticks = 0
            self._refresh_next_chart()
        else:
            self._idle_ticks += 1
            if self._idle_ticks >= IDLE_TICKS_BEFORE_STOP:
                self._timer.stop()

    def _reset_drawing(self) -> None:
        """Drop every curve (and its legend entry) and mark all buffers as changed."""
        for (kind, _), curve in self._curves.items():
            plot = self.loss_plot if kind == "loss" else self.acc_plot
            plot.getPlotItem().removeItem(curve)   # also removes the legend entry
        self._curves.clear()
        for plot in (self.loss_plot, self.acc_plot):
            plot.getPlotItem().legend.setVisible(False)   # an empty legend is a stray white box
        buf = self._buf
        self._dirty = {("loss", p) for p in buf.loss} | {("train_acc", p) for p in buf.train_acc}
        self._dirty |= {("val_acc", p) for p in buf.val_acc} | {"size", "ref"}
        self.loss_plot.enableAutoRange()
        self.acc_plot.enableAutoRange(axis="x")

    def _curve(self, kind: str, phase: str) -> pg.PlotDataItem:
        curve = self._curves.get((kind, phase))
        if curve is not None:
            return curve
        color = _phase_color(phase, self._other_colors)
        title = PHASE_TITLES.get(phase, phase)
        if kind == "loss":
            curve = self.loss_plot.plot(pen=pg.mkPen(color, width=1.5), name=title)
        elif kind == "train_acc":
            faint = pg.mkColor(color)
            faint.setAlpha(150)
            # unnamed: the legend lists one entry per phase, the title explains line vs dots
            curve = self.acc_plot.plot(pen=pg.mkPen(faint, width=1))
        else:
            curve = self.acc_plot.plot(pen=pg.mkPen(color, width=2.2), symbol="o", symbolSize=7,
                                       symbolBrush=pg.mkBrush(color), symbolPen=pg.mkPen("w", width=1),
                                       name=title)
        curve.setDownsampling(auto=True, method="peak")
        curve.setClipToView(True)
        (self.loss_plot if kind == "loss" else self.acc_plot).getPlotItem().legend.setVisible(True)
        self._curves[(kind, phase)] = curve
        return curve

    def _draw_curve(self, kind: str, phase: str) -> None:
        series = getattr(self._buf, kind).get(phase)
        if series is None:
            return
        self._curve(kind, phase).setData(np.asarray(series.x, dtype=float), np.asarray(series.y, dtype=float),
                                         connect="finite")

    def _draw_reference(self) -> None:
        top1 = self._buf.before_top1
        self._before_line.setVisible(top1 is not None)
        if top1 is not None:
            self._before_line.setValue(top1 * 100)

    # ------------------------------------------------------------------------------- size chart

    def _setup_size_plot(self) -> None:
        # horizontal bars: the real numbers fit as text at the bar ends, whatever the panel width
        item = self.size_plot.getPlotItem()
        item.setMouseEnabled(x=False, y=False)
        item.hideButtons()
        item.showGrid(x=True, y=False, alpha=0.15)
        item.setLabel("left", "")
        item.setLabel("bottom", "% of before", color=TEXT_COLOR)
        item.invertY(True)   # Params on top, as in the tables
        item.setYRange(-0.55, len(SIZE_KEYS) - 0.45, padding=0)
        item.getAxis("left").setTicks([[(i, label) for i, (_, label, _) in enumerate(SIZE_KEYS)]])
        item.getAxis("left").setWidth(50)   # labels wider than the axis are silently dropped
        thick = 0.34
        ys = np.arange(len(SIZE_KEYS), dtype=float)
        self._before_bars = pg.BarGraphItem(x0=0, y=ys - thick / 2, height=thick, width=np.zeros(len(ys)),
                                            brush=BEFORE_COLOR, pen=pg.mkPen("#94a3b8"))
        self._now_bars = pg.BarGraphItem(x0=0, y=ys + thick / 2, height=thick, width=np.zeros(len(ys)),
                                         brush=NOW_COLOR, pen=pg.mkPen("#1d4ed8"))
        item.addItem(self._before_bars)
        item.addItem(self._now_bars)
        self._before_labels, self._now_labels = [], []
        for y in ys:
            # "before" inside the end of its 100 % bar, "now" after its bar: a label right of
            # the 100 % bar would be cut off when the chart is narrow (the panel under the graph).
            for labels, dy, color, anchor in ((self._before_labels, -thick / 2, "#475569", (1, 0.5)),
                                              (self._now_labels, thick / 2, "#1e3a8a", (0, 0.5))):
                text = pg.TextItem("", color=color, anchor=anchor)
                text.setPos(0, y + dy)
                item.addItem(text)
                labels.append(text)
        self._size_hint = pg.TextItem("Model sizes appear when a run starts", color="#9ca3af", anchor=(0.5, 0.5))
        self._size_hint.setPos(87.5, (len(SIZE_KEYS) - 1) / 2)   # centre of the empty 0–175 % range
        item.addItem(self._size_hint)
        self._draw_size()

    def _draw_size(self) -> None:
        before, now = self._buf.before, self._buf.now
        ref, cur = [], []
        for i, (key, _, fmt) in enumerate(SIZE_KEYS):
            b, n = finite(before.get(key)), finite(now.get(key))
            known = b is not None and b > 0
            pct = n / b * 100 if known and n is not None else math.nan
            ref.append(100.0 if known else 0.0)
            cur.append(pct)
            self._before_labels[i].setText(f"before {fmt(b)}" if known else "")
            self._before_labels[i].setPos(ref[-1] - 1, self._before_labels[i].pos().y())
            self._now_labels[i].setText("" if math.isnan(pct) else f"now {fmt(n)} · {pct:.0f}%")
            self._now_labels[i].setPos(0 if math.isnan(pct) else pct + 1, self._now_labels[i].pos().y())
        self._before_bars.setOpts(width=np.asarray(ref))
        # a NaN width would not draw: missing "now" values are zero-length bars (and no label)
        self._now_bars.setOpts(width=np.nan_to_num(np.asarray(cur), nan=0.0))
        self._now_heights = cur
        widest = max([100.0] + [c for c in cur if not math.isnan(c)])
        self.size_plot.setXRange(0, widest * 1.75, padding=0)   # room for the text right of the bars
        step = 50 if widest <= 200 else 100
        self.size_plot.getPlotItem().getAxis("bottom").setTicks(
            [[(v, f"{v}%") for v in range(0, int(widest) + 1, step)]])
        self._size_hint.setVisible(not any(ref))
        self._before_bars.setVisible(any(ref))
        self._now_bars.setVisible(any(not math.isnan(c) for c in cur))
