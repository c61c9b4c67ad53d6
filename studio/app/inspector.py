"""The inspector: facts, pruning rate and channel-importance histogram of the selected nodes.

The panel only shows what it is given (a `LayerGraph`, the effective rate of every prunable
module, the protected set, importance scores computed elsewhere) and reports the user's
edits as signals. The main window owns the recipe and computes the scores on a worker.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QSignalBlocker, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QPainter, QPalette
from PySide6.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QSlider,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from studio.app.sensitivity_view import SensitivityCurve
from studio.engine.graph import output_heads
from studio.engine.jobs.report import human_count

PANEL_WIDTH = 340           # preferred dock width
MAX_RATE_PCT = 95            # the plan refuses 100 %, and beyond ~95 % a layer is all but gone
KEPT_COLOR = "#4a8fd8"
CUT_COLOR = "#e0584f"
PRUNABLE_COLOR = "#3f9a5a"
PROTECTED_COLOR = "#c98a12"
FIXED_COLOR = "#8a8f98"
GROUP_NAMES_SHOWN = 12       # longer groups end in "+N more" (the full list is in the tooltip)


# --------------------------------------------------------------------------------------
# Plain-data helpers
# --------------------------------------------------------------------------------------

def shape_text(shape) -> str:
    """(16, 32, 32) → '16×32×32'; None → '—'."""
    if shape is None:
        return "—"
    shape = tuple(shape)
    return "×".join(str(s) for s in shape) if shape else "scalar"


def not_prunable_reason(layer_graph, name: str) -> str:
    """Why the output channels of node ``name`` cannot be pruned, in plain words ('' if they can)."""
    d = layer_graph.graph.nodes[name]
    if d.get("prunable"):
        return ""
    op, category = d.get("op"), d.get("category")
    if op == "input":
        return "The model input: its channels are set by the data."
    if op == "output":
        return "The model output: its size is set by the task."
    if op != "module":
        return ("An operation, not a layer: it has no weights of its own. Its channels follow "
                "the layers that feed it.")
    if category not in ("conv", "linear"):
        if d.get("group") is not None:
            return ("Not a conv or linear layer: it loses the same channels as the layer it "
                    "follows (see its coupled group).")
        return "Not a conv or linear layer: it has no filters of its own to remove."
    if (d.get("module") or name) in output_heads(layer_graph.graph):
        return "Classifier head: its outputs are the model's predictions, so their number is fixed."
    if d.get("group") is None:
        return ("Not in a coupled group: the pruning library could not follow where its channels "
                "go, so removing them could break the model.")
    return "Its channels are tied to a layer that must keep all of its channels."


def cut_count(n: int, rate: float) -> int:
    """Channels removed from ``n`` at ``rate``: floor(n·rate) (tolerant of float noise like 0.29·100)."""
    return max(0, min(n, math.floor(n * rate + 1e-9)))


def histogram_bins(n: int) -> int:
    """About 2·√n bins: enough shape for 512 channels, not a comb of ones for 16."""
    return int(min(max(n, 1), max(4, min(40, math.ceil(2 * math.sqrt(n))))))


# --------------------------------------------------------------------------------------
# Small widgets
# --------------------------------------------------------------------------------------

def dim_color(widget: QWidget) -> QColor:
    """Secondary-text colour: the text colour faded toward the background (works in dark themes too)."""
    pal = widget.palette()
    fg, bg = pal.color(QPalette.WindowText), pal.color(QPalette.Window)
    return QColor(*(round(0.58 * a + 0.42 * b) for a, b in
                    zip((fg.red(), fg.green(), fg.blue()), (bg.red(), bg.green(), bg.blue()))))


def dim_label(label: QLabel) -> QLabel:
    """Give ``label`` the secondary-text colour."""
    pal = label.palette()
    pal.setColor(QPalette.WindowText, dim_color(label))
    label.setPalette(pal)
    return label


class ElidedLabel(QLabel):
    """A one-line label that elides long text (in the middle by default) instead of widening the panel."""

    def __init__(self, text: str = "", parent: Optional[QWidget] = None, elide: Qt.TextElideMode = Qt.ElideMiddle):
        super().__init__(text, parent)
        self._elide = elide
        self.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.setMinimumWidth(24)

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        rect = self.contentsRect()
        text = self.fontMetrics().elidedText(self.text(), self._elide, rect.width())
        self.style().drawItemText(painter, rect, int(self.alignment() | Qt.AlignVCenter), self.palette(),
                                  self.isEnabled(), text, self.foregroundRole())


def scrolling_body(panel: QWidget) -> tuple[QScrollArea, QWidget]:
    """Fill ``panel`` with a vertically scrolling area and return it and its body widget.

    Side panels scroll rather than squeeze their fields when the window is short.
    """
    outer = QVBoxLayout(panel)
    outer.setContentsMargins(0, 0, 0, 0)
    scroll = QScrollArea()
    scroll.setFrameShape(QFrame.NoFrame)
    scroll.setWidgetResizable(True)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    outer.addWidget(scroll)
    body = QWidget()
    scroll.setWidget(body)
    return scroll, body


def section_label(title: str) -> QLabel:
    """A small uppercase heading that separates the panel's parts."""
    label = QLabel(title.upper())
    font = label.font()
    font.setPointSizeF(font.pointSizeF() * 0.82)
    font.setBold(True)
    font.setLetterSpacing(QFont.PercentageSpacing, 106)
    label.setFont(font)
    label.setContentsMargins(0, 8, 0, 1)
    return dim_label(label)


# --------------------------------------------------------------------------------------
# The panel
# --------------------------------------------------------------------------------------

class InspectorPanel(QWidget):
    """Details and per-layer pruning controls for the nodes selected in the graph."""

    rateChanged = Signal(list, float)        # (module names, rate) edited with the slider/spin box
    protectChanged = Signal(list, bool)      # (module names, protected) edited with the check box
    histogramRequested = Signal(str)         # module name whose channel scores the panel wants

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self._graph = None                   # the LayerGraph shown
        self._names: list[str] = []          # selected graph nodes
        self._targets: list[str] = []        # prunable modules among them (what the controls edit)
        self._rates: dict[str, float] = {}
        self._protected: set[str] = set()
        self._blocked: dict[str, str] = {}   # layer -> why the pre-flight blocks its group
        self._editable = True
        self._mixed = False
        self._press_rate: Optional[float] = None
        self._last_emitted: Optional[tuple] = None   # (names, rate): one signal per edit
        self._hist_layer: Optional[str] = None    # module whose histogram is shown or awaited
        self._scores: Optional[np.ndarray] = None
        self._hist_title_text = "Channel importance"
        self._build()
        self.show_selection(None, [], {}, set())

    # ---- construction ------------------------------------------------------------
    def _build(self) -> None:
        self._scroll, self._body = scrolling_body(self)
        body = self._body
        lay = QVBoxLayout(body)
        lay.setContentsMargins(10, 8, 10, 10)
        lay.setSpacing(4)

        self._empty = dim_label(QLabel("Select a layer in the graph to see its details and set its pruning rate."))
        self._empty.setWordWrap(True)
        self._empty.setAlignment(Qt.AlignCenter)
        self._empty.setContentsMargins(8, 24, 8, 24)
        lay.addWidget(self._empty)

        self._details = QWidget()
        lay.addWidget(self._details)
        lay.addStretch(1)
        dl = QVBoxLayout(self._details)
        dl.setContentsMargins(0, 0, 0, 0)
        dl.setSpacing(4)

        # Header: name, status chip, label.
        head = QHBoxLayout()
        head.setSpacing(6)
        self._title = ElidedLabel()
        font = self._title.font()
        font.setPointSizeF(font.pointSizeF() * 1.15)
        font.setBold(True)
        self._title.setFont(font)
        self._badge = QLabel()
        badge_font = self._badge.font()
        badge_font.setPointSizeF(badge_font.pointSizeF() * 0.8)
        badge_font.setBold(True)
        self._badge.setFont(badge_font)
        head.addWidget(self._title, 1)
        head.addWidget(self._badge, 0, Qt.AlignVCenter)
        dl.addLayout(head)
        self._subtitle = dim_label(ElidedLabel())
        dl.addWidget(self._subtitle)

        # Facts, rebuilt for each selection.
        self._facts = QFormLayout()
        self._facts.setContentsMargins(0, 6, 0, 0)
        self._facts.setHorizontalSpacing(12)
        self._facts.setVerticalSpacing(3)
        self._facts.setLabelAlignment(Qt.AlignLeft | Qt.AlignVCenter)
        self._facts.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        dl.addLayout(self._facts)
        self._fact_values: dict[str, QLabel] = {}

        self._reason = dim_label(QLabel())
        self._reason.setWordWrap(True)
        self._reason.setContentsMargins(0, 4, 0, 0)
        dl.addWidget(self._reason)

        # Pruning controls.
        self._pruning = QWidget()
        pl = QVBoxLayout(self._pruning)
        pl.setContentsMargins(0, 0, 0, 0)
        pl.setSpacing(4)
        pl.addWidget(section_label("Pruning"))
        row = QHBoxLayout()
        row.setSpacing(8)
        rate_label = QLabel("Rate")
        self._slider = QSlider(Qt.Horizontal)
        self._slider.setRange(0, MAX_RATE_PCT)
        self._slider.setSingleStep(1)
        self._slider.setPageStep(5)
        self._spin = QDoubleSpinBox()
        self._spin.setRange(0, MAX_RATE_PCT)
        self._spin.setDecimals(1)
        self._spin.setSingleStep(1)
        self._spin.setSuffix(" %")
        self._spin.setKeyboardTracking(False)     # one edit per Enter, not one per keystroke
        self._spin.setAlignment(Qt.AlignRight)
        self._spin.setFixedWidth(self._spin.fontMetrics().horizontalAdvance("00.0 %") + 40)
        tip = ("Share of this layer's output channels to remove (its filters), overriding the global "
               "rate. Applies to every selected prunable layer.")
        for w in (rate_label, self._slider, self._spin):
            w.setToolTip(tip)
        row.addWidget(rate_label)
        row.addWidget(self._slider, 1)
        row.addWidget(self._spin)
        pl.addLayout(row)
        self._protect = QCheckBox("Protect (never prune)")
        self._protect.setToolTip("Keep every channel of the selected layers, whatever the rates say. "
                                 "Useful for sensitive layers such as the first conv.")
        pl.addWidget(self._protect)
        self._rate_note = dim_label(QLabel())
        self._rate_note.setWordWrap(True)
        pl.addWidget(self._rate_note)
        dl.addWidget(self._pruning)

        # Coupled groups.
        self._group_box = QWidget()
        gl = QVBoxLayout(self._group_box)
        gl.setContentsMargins(0, 0, 0, 0)
        gl.setSpacing(3)
        self._group_head = section_label("Coupled group")
        self._group_head.setToolTip("Layers whose output channels are removed together: cutting channel i "
                                    "of one removes channel i from all of them, so they share one rate.")
        gl.addWidget(self._group_head)
        self._group_text = QLabel()
        self._group_text.setWordWrap(True)
        self._group_text.setTextFormat(Qt.RichText)
        self._group_text.setTextInteractionFlags(Qt.TextSelectableByMouse)
        gl.addWidget(self._group_text)
        dl.addWidget(self._group_box)

        # Channel-importance histogram.
        self._hist_box = QWidget()
        hl = QVBoxLayout(self._hist_box)
        hl.setContentsMargins(0, 0, 0, 0)
        hl.setSpacing(3)
        self._hist_title = section_label("Channel importance")
        # These two headings carry counts ("CHANNEL IMPORTANCE (64 CHANNELS, 44 CUT)"): on one
        # line they would set the panel's narrowest width, so they wrap instead.
        for heading in (self._group_head, self._hist_title):
            heading.setWordWrap(True)
        self._hist_title.setToolTip("How many of the layer's output channels have each importance score. "
                                    "Red: channels removed at the current rate (the lowest scores); "
                                    "the dashed line is the cut.")
        hl.addWidget(self._hist_title)
        self._hist_stack = QStackedWidget()
        self._plot = self._make_plot()
        self._hist_message = dim_label(QLabel())
        self._hist_message.setWordWrap(True)
        self._hist_message.setAlignment(Qt.AlignCenter)
        self._hist_stack.addWidget(self._plot)
        self._hist_stack.addWidget(self._hist_message)
        self._hist_stack.setFixedHeight(150)
        hl.addWidget(self._hist_stack)
        self._hist_legend = dim_label(QLabel(
            f"<span style='color:{CUT_COLOR}'>■</span> removed&nbsp;&nbsp;"
            f"<span style='color:{KEPT_COLOR}'>■</span> kept&nbsp;&nbsp;"
            "<b>┆</b> cut"))
        small = self._hist_legend.font()
        small.setPointSizeF(small.pointSizeF() * 0.88)
        self._hist_legend.setFont(small)
        hl.addWidget(self._hist_legend)
        dl.addWidget(self._hist_box)

        # The group's sensitivity curve, once an analysis exists.
        self._sens_box = QWidget()
        sl = QVBoxLayout(self._sens_box)
        sl.setContentsMargins(0, 0, 0, 0)
        sl.setSpacing(3)
        self._sens_title = section_label("Sensitivity")
        self._sens_title.setToolTip("Top-1 on the validation images with only this layer's coupled group pruned "
                                    "at each rate, no training (dots), its fit (line) and the layer's rate (dashed).")
        sl.addWidget(self._sens_title)
        self.sensitivity_curve = SensitivityCurve()
        sl.addWidget(self.sensitivity_curve)
        self._sens_note = dim_label(QLabel())
        self._sens_note.setWordWrap(True)
        sl.addWidget(self._sens_note)
        self._sens_box.hide()
        dl.addWidget(self._sens_box)
        self._sensitivity: Optional[dict] = None

        self._spin.valueChanged.connect(self._on_spin)
        self._slider.valueChanged.connect(self._on_slider)
        self._slider.sliderPressed.connect(self._on_slider_pressed)
        self._slider.sliderReleased.connect(self._on_slider_released)
        self._protect.clicked.connect(self._on_protect_clicked)

    def _make_plot(self) -> pg.PlotWidget:
        bg = self.palette().color(QPalette.Base)
        plot = pg.PlotWidget(background=bg)
        plot.setMenuEnabled(False)
        plot.setMouseEnabled(x=False, y=False)
        plot.hideButtons()
        item = plot.getPlotItem()
        item.setContentsMargins(2, 4, 8, 2)
        dim = dim_color(self)
        small = QFont(self.font())
        small.setPointSizeF(small.pointSizeF() * 0.8)
        for name in ("left", "bottom"):
            axis = item.getAxis(name)
            axis.setPen(pg.mkPen(dim))
            axis.setTextPen(pg.mkPen(dim))
            axis.setTickFont(small)
            axis.setStyle(tickLength=4, maxTickLevel=0)     # major ticks only: a 150 px plot has no room
        item.getAxis("left").setWidth(28)
        item.getAxis("bottom").setHeight(20)
        item.showGrid(x=False, y=True, alpha=0.15)
        return plot

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(PANEL_WIDTH, 600)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        # Horizontal scrolling is off, so never get narrower than the fields need.
        self._scroll.setMinimumWidth(self._body.minimumSizeHint().width()
                                     + self._scroll.verticalScrollBar().sizeHint().width())
        super().showEvent(event)

    # ---- public interface --------------------------------------------------------
    def show_selection(self, layer_graph, names: list[str], rates: dict[str, float],
                       protected: set[str]) -> None:
        """Show the nodes ``names`` of ``layer_graph``; emits only `histogramRequested` (for a new layer)."""
        graph_changed = layer_graph is not self._graph
        self._graph = layer_graph
        self._names = [n for n in names if layer_graph is not None and n in layer_graph.graph]
        self._rates = dict(rates)
        self._protected = set(protected)
        self._last_emitted = None
        g = layer_graph.graph if layer_graph is not None else None
        targets: list[str] = []
        for n in self._names:
            d = g.nodes[n]
            module = d.get("module") or n
            if d.get("prunable") and module not in targets:
                targets.append(module)
        self._targets = targets

        self._empty.setVisible(not self._names)
        self._details.setVisible(bool(self._names))
        if self._names:
            if len(self._names) == 1:
                self._show_single(self._names[0])
            else:
                self._show_many()
            self._show_groups()
        self._pruning.setVisible(bool(targets))
        self._show_rate()
        self._refresh_enabled()
        self._show_sensitivity()

        # The histogram is for exactly one prunable layer; ask for scores only when that layer
        # (or the model) changed, since rate edits re-show the same selection.
        wanted = targets[0] if len(targets) == 1 else None
        self._hist_box.setVisible(wanted is not None)
        if wanted is None:
            self._hist_layer, self._scores = None, None
        elif wanted != self._hist_layer or graph_changed:
            self._hist_layer, self._scores = wanted, None
            self._set_hist_title(None)
            self.show_histogram_message("Scoring channels…")
            self.histogramRequested.emit(wanted)
        elif self._scores is not None:
            self._draw_histogram()

    def set_blocked(self, blocked: dict[str, str]) -> None:
        """Layers the pre-flight blocks (a hazard feeds on their group) -> why; shown as BLOCKED."""
        self._blocked = dict(blocked)

    def set_sensitivity(self, result: Optional[dict]) -> None:
        """A sensitivity analysis (`SensitivityResult.to_dict()`) to draw for the selected layer; None hides it."""
        self._sensitivity = result
        self._show_sensitivity()

    def _show_sensitivity(self) -> None:
        layer = self._targets[0] if len(self._targets) == 1 else None
        result = self._sensitivity
        group = next((g for g in (result or {}).get("groups") or [] if layer in (g.get("layers") or [])), None)
        self._sens_box.setVisible(group is not None)
        if group is None:
            return
        rate = float(self._rates.get(layer, 0.0))
        self.sensitivity_curve.show_curve(result, group, rate)
        base = result.get("base_top1") or 0.0
        at = [(r, base - v) for r, v in zip(result.get("rates") or [], group.get("fit") or [])]
        safe = max((r for r, loss in at if loss <= 0.01), default=0.0)
        self._sens_title.setText(f"Sensitivity of group {group['root']}")
        self._sens_note.setText(f"Rate now {rate:.0%}. Alone, this group can lose up to {safe:.0%} of its channels "
                                "for at most 1 point of top-1 (before fine-tuning).")

    def show_histogram(self, layer: str, scores, rate: float) -> None:
        """Draw the importance ``scores`` of ``layer``'s channels with the cut at ``rate`` (stale layers are ignored)."""
        if layer != self._hist_layer:
            return
        values = np.asarray(scores, dtype=float).ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            self._scores = None
            self.show_histogram_message("The criterion gave no usable scores for this layer.")
            return
        self._scores = values
        self._rates[layer] = float(rate)
        self._draw_histogram()

    def show_histogram_message(self, text: str) -> None:
        """Show ``text`` in place of the plot (e.g. 'Taylor needs data: open a dataset')."""
        self._hist_message.setText(text)
        self._hist_stack.setCurrentWidget(self._hist_message)
        self._hist_legend.hide()

    def invalidate_histogram(self) -> None:
        """Forget the scores (the criterion or weights changed) and ask for them again."""
        self._scores = None
        if self._hist_layer is not None:
            self._set_hist_title(None)
            self.show_histogram_message("Scoring channels…")
            self.histogramRequested.emit(self._hist_layer)

    def set_editable(self, editable: bool) -> None:
        """Enable or disable the rate and protect controls (disabled while a job runs)."""
        self._editable = bool(editable)
        self._refresh_enabled()

    def focus_controls(self) -> None:
        """Give the keyboard to the panel: the rate box when the selection can be pruned, else the panel."""
        self._scroll.ensureVisible(0, 0)
        if self._pruning.isVisibleTo(self) and self._spin.isEnabled():
            self._spin.setFocus(Qt.OtherFocusReason)
            self._spin.selectAll()
        else:
            self._scroll.setFocus(Qt.OtherFocusReason)

    # ---- selection display -------------------------------------------------------
    def _set_facts(self, rows: list[tuple[str, str, str]]) -> None:
        """Replace the fact rows with (key, value, tooltip) triples."""
        while self._facts.rowCount():
            self._facts.removeRow(0)
        self._fact_values = {}
        for key, value, tip in rows:
            k = dim_label(QLabel(key))
            v = ElidedLabel(value)
            v.setTextInteractionFlags(Qt.TextSelectableByMouse)
            v.setToolTip(tip or value)
            k.setToolTip(tip or value)
            self._facts.addRow(k, v)
            self._fact_values[key] = v

    def fact(self, key: str) -> Optional[str]:
        """The value shown for fact ``key`` ('Type', 'Params', ...), or None (for tests and tools)."""
        label = self._fact_values.get(key)
        return label.text() if label is not None else None

    def _set_badge(self, text: str, color: str) -> None:
        self._badge.setStyleSheet(f"QLabel {{ color: white; background: {color}; border-radius: 3px; "
                                  "padding: 1px 6px; }")
        self._badge.setText(text)
        self._badge.setVisible(bool(text))

    def _show_single(self, name: str) -> None:
        g = self._graph.graph
        d = g.nodes[name]
        module = d.get("module")
        self._title.setText(name)
        self._title.setToolTip(name)
        self._subtitle.setText(d.get("label") or d.get("type", ""))
        inputs = [shape_text(g.edges[p, name].get("shape")) for p in g.predecessors(name)]
        cin, cout = d.get("in_channels"), d.get("out_channels")
        params, macs = d.get("params") or 0, d.get("macs") or 0
        module_text = module or "— (functional op)"
        if module and module != name:
            module_text = f"{module} (called again)"
        self._set_facts([
            ("Type", str(d.get("type", "—")), f"Category: {d.get('category', '—')}"),
            ("Module", module_text, "Qualified name of the module in the model (model.get_submodule)."),
            ("Input", " + ".join(inputs) or "—", "Shape of each input tensor, batch excluded."),
            ("Output", shape_text(d.get("out_shape")), "Shape of the output tensor, batch excluded."),
            ("Channels", f"{'—' if cin is None else cin} → {'—' if cout is None else cout}",
             "Input channels → output channels. Pruning removes output channels."),
            ("Params", human_count(params), f"{params:,} parameters (counted at the module's first call)."),
            ("MACs", human_count(macs), f"{macs:,} multiply-accumulates for one input."),
        ])
        reason = not_prunable_reason(self._graph, name)
        blocked = self._blocked.get(module or name)
        if reason:
            self._set_badge("NOT PRUNABLE", FIXED_COLOR)
        elif blocked:
            self._set_badge("BLOCKED", FIXED_COLOR)
            reason = f"Left unpruned when the plan runs, with its whole group: {blocked}"
        elif (module or name) in self._protected:
            self._set_badge("PROTECTED", PROTECTED_COLOR)
        else:
            self._set_badge("PRUNABLE", PRUNABLE_COLOR)
        self._reason.setText(reason)
        self._reason.setVisible(bool(reason))

    def _show_many(self) -> None:
        g = self._graph.graph
        nodes = [g.nodes[n] for n in self._names]
        self._title.setText(f"{len(nodes)} nodes selected")
        self._title.setToolTip("\n".join(self._names))
        self._subtitle.setText(", ".join(self._names))
        types = Counter(str(d.get("type", "?")) for d in nodes).most_common()
        type_text = ", ".join(f"{c}× {t}" for t, c in types[:3]) + (", …" if len(types) > 3 else "")
        params = sum(d.get("params") or 0 for d in nodes)
        macs = sum(d.get("macs") or 0 for d in nodes)
        protected = sum(1 for m in self._targets if m in self._protected)
        prunable_text = f"{len(self._targets)} of {len(nodes)}"
        if protected:
            prunable_text += f" ({protected} protected)"
        self._set_facts([
            ("Types", type_text, "\n".join(f"{c}× {t}" for t, c in types)),
            ("Params", human_count(params), f"{params:,} parameters in the selected nodes."),
            ("MACs", human_count(macs), f"{macs:,} multiply-accumulates in the selected nodes."),
            ("Prunable", prunable_text, "Selected layers whose output channels can be pruned."),
        ])
        if not self._targets:
            self._set_badge("NOT PRUNABLE", FIXED_COLOR)
        elif protected == len(self._targets):
            self._set_badge("PROTECTED", PROTECTED_COLOR)
        else:
            self._set_badge(f"{len(self._targets)} PRUNABLE", PRUNABLE_COLOR)
        self._reason.setText("" if self._targets else "None of the selected nodes can be pruned; "
                             "select one at a time to see why.")
        self._reason.setVisible(not self._targets)

    def _show_groups(self) -> None:
        g = self._graph.graph
        groups: list[int] = []
        for n in self._names:
            gi = g.nodes[n].get("group")
            if gi is not None and gi not in groups and gi < len(self._graph.groups):
                groups.append(gi)
        self._group_box.setVisible(bool(groups))
        if not groups:
            return
        selected = {g.nodes[n].get("module") or n for n in self._names}
        total = len(self._graph.groups)
        if len(groups) == 1:
            members = self._graph.groups[groups[0]]
            self._group_head.setText(f"COUPLED GROUP {groups[0] + 1} OF {total} · {len(members)} LAYERS")
        else:
            self._group_head.setText(f"COUPLED GROUPS · {len(groups)} OF {total}")
        dim = dim_color(self).name()
        rows = []
        for gi in groups[:4]:
            members = self._graph.groups[gi]
            shown = [f"<b>{m}</b>" if m in selected else m for m in members[:GROUP_NAMES_SHOWN]]
            more = len(members) - len(shown)
            text = ", ".join(shown) + (f", <i>+{more} more</i>" if more > 0 else "")
            tag = f"<td style='color:{dim}; padding-right:6px'>G{gi + 1}</td>" if len(groups) > 1 else ""
            rows.append(f"<tr>{tag}<td>{text}</td></tr>")
        if len(groups) > 4:
            rows.append(f"<tr><td></td><td><i>+{len(groups) - 4} more groups</i></td></tr>")
        self._group_text.setText(f"<table cellspacing='0' cellpadding='1'>{''.join(rows)}</table>")
        self._group_text.setToolTip("\n\n".join(
            f"Group {gi + 1}: " + ", ".join(self._graph.groups[gi]) for gi in groups))

    # ---- rate and protect controls ----------------------------------------------
    def _editable_targets(self) -> list[str]:
        return [m for m in self._targets if m not in self._protected]

    def _show_rate(self) -> None:
        """Put the selection's rate into the slider and spin box without emitting anything."""
        editable = self._editable_targets()
        values = [float(self._rates.get(m, 0.0)) for m in editable]
        distinct = sorted({round(v * 100, 1) for v in values})
        blockers = (QSignalBlocker(self._spin), QSignalBlocker(self._slider), QSignalBlocker(self._protect))
        if len(distinct) > 1:
            # "mixed" is the spin box's special text, shown at a value just below the real range.
            self._mixed = True
            self._spin.setMinimum(-1)
            self._spin.setSpecialValueText("mixed")
            self._spin.setValue(-1)
            self._slider.setValue(round(sum(values) / len(values) * 100))
        else:
            self._mixed = False
            self._spin.setSpecialValueText("")
            self._spin.setMinimum(0)
            pct = distinct[0] if distinct else 0.0
            self._spin.setValue(pct)
            self._slider.setValue(round(pct))
        protected = [m for m in self._targets if m in self._protected]
        if protected and len(protected) < len(self._targets):
            self._protect.setTristate(True)
            self._protect.setCheckState(Qt.PartiallyChecked)
        else:
            self._protect.setTristate(False)
            self._protect.setChecked(bool(protected))
        del blockers
        self._update_rate_note(distinct)

    def _update_rate_note(self, distinct: Optional[list[float]] = None) -> None:
        editable = self._editable_targets()
        if distinct is None:
            distinct = sorted({round(float(self._rates.get(m, 0.0)) * 100, 1) for m in editable})
        parts = []
        skipped = len(self._targets) - len(editable)
        if not editable and self._targets:
            parts.append("Protected: all channels are kept. Untick Protect to set a rate.")
        elif len(distinct) > 1:
            parts.append(f"Rates differ ({distinct[0]:g}–{distinct[-1]:g} %).")
        if len(self._targets) > 1 and editable:
            parts.append(f"A new rate applies to {len(editable)} layer{'s' if len(editable) > 1 else ''}"
                         + (f"; {skipped} protected {'is' if skipped == 1 else 'are'} skipped." if skipped else "."))
        if len(editable) == 1:
            cout = self._out_channels(editable[0])
            if cout:
                rate = float(self._rates.get(editable[0], 0.0))
                parts.append(f"Keeps {cout - cut_count(cout, rate)} of {cout} channels.")
        self._rate_note.setText(" ".join(parts))
        self._rate_note.setVisible(bool(parts))

    def _out_channels(self, module: str) -> Optional[int]:
        g = self._graph.graph if self._graph is not None else None
        if g is None or module not in g:
            return None
        return g.nodes[module].get("out_channels")

    def _refresh_enabled(self) -> None:
        can_rate = self._editable and bool(self._editable_targets())
        self._slider.setEnabled(can_rate)
        self._spin.setEnabled(can_rate)
        self._protect.setEnabled(self._editable and bool(self._targets))

    def _leave_mixed(self) -> None:
        if self._mixed:
            self._mixed = False
            with QSignalBlocker(self._spin):
                self._spin.setSpecialValueText("")
                self._spin.setMinimum(0)

    def _on_spin(self, value: float) -> None:
        if value < 0:        # the "mixed" placeholder itself
            return
        self._leave_mixed()
        with QSignalBlocker(self._slider):
            self._slider.setValue(round(value))
        self._emit_rate(value / 100)

    def _on_slider(self, value: int) -> None:
        self._leave_mixed()
        with QSignalBlocker(self._spin):
            self._spin.setValue(value)
        if self._slider.isSliderDown():
            self._preview(value / 100)      # dragging: show the cut live, report on release
        else:
            self._emit_rate(value / 100)

    def _on_slider_pressed(self) -> None:
        self._press_rate = self._slider.value() / 100

    def _on_slider_released(self) -> None:
        rate, pressed = self._slider.value() / 100, self._press_rate
        self._press_rate = None
        if pressed is not None and rate == pressed:     # a click on the handle that moved nothing
            return
        self._emit_rate(rate)

    def _preview(self, rate: float) -> None:
        for m in self._editable_targets():
            self._rates[m] = rate
        self._update_rate_note()
        if self._scores is not None:
            self._draw_histogram()

    def _emit_rate(self, rate: float) -> None:
        names = self._editable_targets()
        rate = round(rate, 4)
        if not names or self._last_emitted == (tuple(names), rate):
            return
        self._last_emitted = (tuple(names), rate)
        self._preview(rate)
        self.rateChanged.emit(list(names), rate)

    def _on_protect_clicked(self) -> None:
        protect = self._protect.checkState() != Qt.Unchecked   # from "mixed" a click means protect all
        with QSignalBlocker(self._protect):
            self._protect.setTristate(False)
            self._protect.setChecked(protect)
        names = list(self._targets)
        if protect:
            self._protected.update(names)
        else:
            self._protected.difference_update(names)
        self._show_rate()
        self._refresh_enabled()
        if len(self._names) == 1:
            self._show_single(self._names[0])
        elif self._names:
            self._show_many()
        if self._scores is not None:
            self._draw_histogram()
        self.protectChanged.emit(names, protect)

    # ---- histogram ---------------------------------------------------------------
    def _set_hist_title(self, text: Optional[str]) -> None:
        self._hist_title_text = "Channel importance" + (f" ({text})" if text else "")
        self._hist_title.setText(self._hist_title_text.upper())

    def histogram_title(self) -> str:
        """The histogram's title, e.g. 'Channel importance (64 channels, 32 cut)'."""
        return self._hist_title_text

    def _draw_histogram(self) -> None:
        scores = self._scores
        layer = self._hist_layer
        protected = layer in self._protected
        rate = 0.0 if protected else float(self._rates.get(layer, 0.0))
        n = scores.size
        k = cut_count(n, rate)
        order = np.argsort(scores, kind="stable")
        edges = np.histogram_bin_edges(scores, bins=histogram_bins(n))
        total, _ = np.histogram(scores, bins=edges)
        removed, _ = np.histogram(scores[order[:k]], bins=edges)
        kept = total - removed
        width = edges[1:] - edges[:-1]
        x0, x1 = edges[:-1] + 0.06 * width, edges[1:] - 0.06 * width

        item = self._plot.getPlotItem()
        item.clear()
        item.addItem(pg.BarGraphItem(x0=x0, x1=x1, y0=np.zeros_like(removed), height=removed,
                                     brush=pg.mkBrush(CUT_COLOR), pen=pg.mkPen(None), name="removed"))
        item.addItem(pg.BarGraphItem(x0=x0, x1=x1, y0=removed, height=kept,
                                     brush=pg.mkBrush(KEPT_COLOR), pen=pg.mkPen(None), name="kept"))
        cut = float(np.sort(scores)[k - 1]) if k > 0 else None
        if cut is not None:
            line = pg.InfiniteLine(pos=cut, angle=90, movable=False,
                                   pen=pg.mkPen(dim_color(self).darker(150), width=1.5, style=Qt.DashLine))
            line.setToolTip(f"Cut at score {cut:.4g}: channels at or below it are removed.")
            item.addItem(line)
        item.setXRange(float(edges[0]), float(edges[-1]), padding=0.02)
        item.setYRange(0, max(1, int(total.max())), padding=0.05)
        label = "protected" if protected else ("none cut" if k == 0 else f"{k} cut")
        self._set_hist_title(f"{n} channels, {label}")
        self._hist_stack.setCurrentWidget(self._plot)
        self._hist_legend.show()
