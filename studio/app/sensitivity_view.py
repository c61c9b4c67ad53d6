"""How the window shows a sensitivity analysis: heat colours, their legend, and one group's curve.

The graph colours each prunable node by the top-1 its group loses when only that group is
pruned at `HEAT_RATE` (green: harmless, red: the model breaks); `HeatLegend` explains the
scale beside the graph; `SensitivityCurve` in the inspector draws the selected layer's
group: measured top-1 at each probed rate, the fit the allocation reads, and the layer's
current rate. All numbers come from the engine's `SensitivityResult` as plain data.
"""
from __future__ import annotations

from typing import Optional

import pyqtgraph as pg
from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QLinearGradient, QPainter, QPalette
from PySide6.QtWidgets import QWidget

HEAT_RATE = 0.5                                   # the rate whose loss colours the graph
_STOPS = ((0.0, "#2f9e44"), (0.5, "#f2c230"), (1.0, "#d9480f"))   # harmless → breaks the model
FIT_COLOR = "#2563eb"
PROBE_COLOR = "#6b7280"
RATE_COLOR = "#d9480f"


def heat_color(value: float) -> QColor:
    """Colour of a 0..1 heat value on the green-yellow-red scale."""
    v = min(1.0, max(0.0, float(value)))
    for (p0, c0), (p1, c1) in zip(_STOPS, _STOPS[1:]):
        if v <= p1:
            t = (v - p0) / (p1 - p0)
            a, b = QColor(c0), QColor(c1)
            return QColor(round(a.red() + (b.red() - a.red()) * t), round(a.green() + (b.green() - a.green()) * t),
                          round(a.blue() + (b.blue() - a.blue()) * t))
    return QColor(_STOPS[-1][1])


def heat_values(result: dict, rate: float = HEAT_RATE) -> tuple[dict, float]:
    """``({layer: 0..1}, worst loss in points)``: each member layer of a group gets its group's loss at ``rate``,
    scaled by the worst group's, from a `SensitivityResult.to_dict()`."""
    rates, base = result.get("rates") or [], result.get("base_top1") or 0.0
    losses = {}
    for g in result.get("groups") or []:
        fit = [g.get("fit_base", base), *(g.get("fit") or [])]
        losses[g["root"]] = (base - _interp(rate, [0.0, *rates], fit), g.get("layers") or [g["root"]])
    worst = max((loss for loss, _ in losses.values()), default=0.0)
    scale = worst if worst > 1e-9 else 1.0
    values = {name: max(0.0, loss) / scale for loss, names in losses.values() for name in names}
    return values, 100 * worst


def _interp(x: float, xs: list, ys: list) -> float:
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / ((x1 - x0) or 1.0)
    return ys[-1]


class HeatLegend(QWidget):
    """'Top-1 lost at 50 %: [gradient] 0 … N pts' beside the graph toolbar."""

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.worst = 0.0
        self.setToolTip("Each prunable layer is coloured by the top-1 its coupled group loses when only that "
                        f"group is pruned at {HEAT_RATE:.0%} (sensitivity analysis, no training).")

    def set_worst(self, points: float) -> None:
        self.worst = points
        self.update()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(300, 22)

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt override
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        fm = p.fontMetrics()
        label = f"top-1 lost at {HEAT_RATE:.0%}:"
        x = 0
        text_color = self.palette().color(QPalette.WindowText)
        p.setPen(text_color)
        p.drawText(QRectF(0, 0, fm.horizontalAdvance(label) + 4, self.height()), Qt.AlignVCenter, label)
        x += fm.horizontalAdvance(label) + 8
        bar = QRectF(x, self.height() / 2 - 5, 90, 10)
        gradient = QLinearGradient(bar.topLeft(), bar.topRight())
        for stop, colour in _STOPS:
            gradient.setColorAt(stop, QColor(colour))
        p.fillRect(bar, gradient)
        p.drawText(QRectF(bar.right() + 6, 0, 120, self.height()), Qt.AlignVCenter,
                   f"0 … {self.worst:.0f} pts")
        p.end()


class SensitivityCurve(pg.PlotWidget):
    """Top-1 of one group against its rate: probes (dots), fit (line) and the layer's rate (dashed)."""

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent, background=None)
        self.setMenuEnabled(False)
        self.setMouseEnabled(x=False, y=False)
        self.hideButtons()
        item = self.getPlotItem()
        item.setContentsMargins(2, 4, 8, 2)
        small = QFont(self.font())
        small.setPointSizeF(small.pointSizeF() * 0.8)
        for name in ("left", "bottom"):
            axis = item.getAxis(name)
            axis.setTickFont(small)
            axis.setStyle(tickLength=4, maxTickLevel=0)
        item.getAxis("left").setWidth(30)
        item.getAxis("bottom").setHeight(20)
        item.showGrid(x=False, y=True, alpha=0.15)
        self.setFixedHeight(140)
        self._fit = item.plot([], [], pen=pg.mkPen(FIT_COLOR, width=2))
        self._probes = item.plot([], [], pen=None, symbol="o", symbolSize=5, symbolBrush=PROBE_COLOR,
                                 symbolPen=None)
        self._rate = pg.InfiniteLine(angle=90, pen=pg.mkPen(RATE_COLOR, width=1.5, style=Qt.DashLine))
        item.addItem(self._rate)
        self.points: list = []          # (rate %, top-1 %) of the probes shown, for tests

    def show_curve(self, result: dict, group: dict, rate: float) -> None:
        """Draw ``group`` (one entry of ``result['groups']``) with the layer's current ``rate``."""
        rates = [0.0, *(result.get("rates") or [])]
        base = result.get("base_top1") or 0.0
        top1 = [base, *(group.get("top1") or [])]
        fit = [group.get("fit_base", base), *(group.get("fit") or [])]
        xs = [100 * r for r in rates]
        self.points = list(zip(xs, [100 * v for v in top1]))
        self._probes.setData(xs, [100 * v for v in top1])
        self._fit.setData(xs, [100 * v for v in fit])
        self._rate.setValue(100 * rate)
        self.getPlotItem().setXRange(0, 100, padding=0.02)
