"""The model graph canvas: a Netron-like, zoomable drawing of a `LayerGraph`.

`GraphView` draws the engine's layered layout top to bottom: one rounded box per node,
filled by category colour, and one smooth edge with an arrowhead per tensor. Prunable layers
show their channel count and a thin bar whose filled share is the pruning rate; a finished
run's before → after channels can be laid over them. Selecting a node lights up every node
of its coupled-channel group. The view only emits signals (selection, context-menu edits);
the recipe is changed by whoever listens.

Lay a graph out with `layout_graph` (or pass `node_size` to `layered_layout`) so the boxes
are as wide as their text.
"""
from __future__ import annotations

import math
import threading
from typing import Hashable, Optional

from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import (
    QAction,
    QBrush,
    QColor,
    QFont,
    QFontMetricsF,
    QGuiApplication,
    QKeyEvent,
    QPainter,
    QPainterPath,
    QPainterPathStroker,
    QPen,
    QPolygonF,
    QWheelEvent,
)
from PySide6.QtWidgets import QGraphicsItem, QGraphicsScene, QGraphicsView, QMenu, QStyleOptionGraphicsItem

from studio.app import graph_nav
from studio.app.graph_overview import GraphOverview
from studio.app.sensitivity_view import heat_color
from studio.engine.graph import Layout, layered_layout
from studio.engine.jobs.report import human_count

# Netron-like fills: dark, muted colours that carry white text.
CATEGORY_COLORS: dict[str, str] = {
    "conv": "#2f5d8f",
    "linear": "#3f4f9a",
    "norm": "#2f6e55",
    "activation": "#8c3b2f",
    "pool": "#2d7479",
    "merge": "#5f5577",
    "reshape": "#7b5d4a",
    "attention": "#8f5e1e",
    "dropout": "#4d5282",
    "input": "#3d4450",
    "output": "#3d4450",
    "other": "#626873",
}

# Box geometry in scene units (pixels at 100 % zoom).
PRUNABLE_HEIGHT = 46.0
PLAIN_HEIGHT = 28.0
_PAD = 9.0                 # inner horizontal padding of a box
_LOCK_ROOM = 14.0          # space kept at the right of a prunable title for the lock mark
_HALO = 5.0                # how far the selection halo reaches outside a box
_MIN_PRUNABLE_W, _MAX_W = 150.0, 300.0
_MIN_PLAIN_W = 58.0

READABLE_SCALE = 0.6       # the smallest zoom a graph opens at: 12 px titles drawn at about 7 px

# Level of detail (screen pixels per scene unit) below which parts are skipped.
_LOD_FLAT = 0.14           # below: a plain rectangle, nothing else
_LOD_TEXT = 0.5            # below: shapes and bars but no text (12 px text would be < 6 px)

# Pens and brushes shared by every item (QColor/QPen/QBrush need no QGuiApplication).
_WHITE = QColor(255, 255, 255)
_TEXT_DIM = QColor(255, 255, 255, 175)
_TEXT_CH = QColor(255, 255, 255, 225)
_PLANNED = QColor("#ffc35c")           # "64 → 32": planned by the current rates
_RESULT = QColor("#7df0b9")            # "64 → 40": what a finished run produced
_ACCENT = QColor("#ff7a00")            # selection
_BACKGROUND = QColor("#f4f5f7")
_EDGE = QColor("#8d96a5")

_SELECT_PEN = QPen(_ACCENT, 2.4)
_SELECT_HALO = QBrush(QColor(255, 122, 0, 80))
_GROUP_HALO = QBrush(QColor(255, 178, 30, 120))
_GROUP_PEN = QPen(QColor("#f0a020"), 1.6)
_GROUP_FILL = QColor("#f5b335")
_HOVER_PEN = QPen(QColor(255, 255, 255, 200), 1.4)
_BAR_TRACK = QBrush(QColor(255, 255, 255, 55))
_BAR_FILL = QBrush(_PLANNED)
_BAR_PROTECTED = QBrush(QColor(255, 255, 255, 150), Qt.BrushStyle.BDiagPattern)
_LOCK_PEN = QPen(_WHITE, 1.3)
_NO_PEN = QPen(Qt.PenStyle.NoPen)
_NO_BRUSH = QBrush(Qt.BrushStyle.NoBrush)
_EDGE_PEN = QPen(_EDGE, 1.3)
_EDGE_BRUSH = QBrush(_EDGE)
_EDGE_ACTIVE_PEN = QPen(QColor("#e07000"), 2.2)
_EDGE_ACTIVE_BRUSH = QBrush(QColor("#e07000"))
for _pen in (_EDGE_PEN, _EDGE_ACTIVE_PEN):
    _pen.setCapStyle(Qt.PenCapStyle.RoundCap)
    _pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)

_ALIGN_CENTER = Qt.AlignmentFlag.AlignCenter
_ALIGN_LEFT = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
_ALIGN_RIGHT = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
_ELIDE_RIGHT = Qt.TextElideMode.ElideRight
_ELIDE_MIDDLE = Qt.TextElideMode.ElideMiddle

# Font specs: (pixel size, weight). QFont objects need a QGuiApplication, so they are built
# on first use: once for painting (GUI thread) and once per thread for measuring, because a
# QFont shared across threads races on its per-thread font-engine cache.
_TITLE_SPEC = (12, QFont.Weight.DemiBold)
_SMALL_SPEC = (10, QFont.Weight.Normal)
_CH_SPEC = (10, QFont.Weight.Bold)
_PLAIN_SPEC = (11, QFont.Weight.DemiBold)


def _make_font(spec: tuple[int, QFont.Weight]) -> QFont:
    font = QFont(QGuiApplication.font())
    font.setPixelSize(spec[0])
    font.setWeight(spec[1])
    return font


class _Fonts:
    """The fonts of one thread and their metrics."""

    def __init__(self) -> None:
        self.title, self.small, self.ch, self.plain = (
            _make_font(s) for s in (_TITLE_SPEC, _SMALL_SPEC, _CH_SPEC, _PLAIN_SPEC))
        self.title_fm, self.small_fm, self.ch_fm, self.plain_fm = (
            QFontMetricsF(f) for f in (self.title, self.small, self.ch, self.plain))
        self._elided: dict[tuple, str] = {}

    def elide(self, kind: str, text: str, width: float, mode=None) -> str:
        """``text`` elided to ``width`` in font ``kind``; cached, as labels repeat a lot."""
        key = (kind, text, round(width))
        found = self._elided.get(key)
        if found is None:
            fm = getattr(self, kind + "_fm")
            found = self._elided[key] = fm.elidedText(text, mode or _ELIDE_RIGHT, width)
        return found


_local = threading.local()


def _fonts() -> Optional[_Fonts]:
    """This thread's fonts, or None without a QGuiApplication (then widths are estimated)."""
    fonts = getattr(_local, "fonts", None)
    if fonts is None and QGuiApplication.instance() is not None:
        fonts = _local.fonts = _Fonts()
    return fonts


def _width(fm: Optional[QFontMetricsF], text: str, px: float) -> float:
    return fm.horizontalAdvance(text) if fm is not None else 0.62 * px * len(text)


def _channel_texts(channels: int) -> tuple[str, str]:
    return f"{channels} ch", f"{channels} → {channels}"


def node_size(node: Hashable, data: dict) -> tuple[float, float]:
    """Box (width, height) for a graph node: pass as ``layered_layout(g, node_size=node_size)``.

    Prunable layers get a taller box with the layer name and channel count under the label;
    other nodes a one-line box. Safe to call from a worker thread.
    """
    fonts = _fonts()
    label = str(data.get("label") or node)
    if data.get("prunable"):
        title = _width(fonts and fonts.title_fm, label, _TITLE_SPEC[0]) + _LOCK_ROOM
        name = _width(fonts and fonts.small_fm, str(node), _SMALL_SPEC[0])
        ch = _width(fonts and fonts.ch_fm, _channel_texts(int(data.get("out_channels") or 0))[1],
                    _CH_SPEC[0])
        width = max(title, name + 12.0 + ch) + 2 * _PAD
        return min(_MAX_W, max(_MIN_PRUNABLE_W, math.ceil(width))), PRUNABLE_HEIGHT
    width = _width(fonts and fonts.plain_fm, label, _PLAIN_SPEC[0]) + 2 * _PAD + 4
    return min(_MAX_W, max(_MIN_PLAIN_W, math.ceil(width))), PLAIN_HEIGHT


def layout_graph(layer_graph) -> Layout:
    """The engine's layered layout of ``layer_graph`` with boxes sized for `GraphView`."""
    return layered_layout(layer_graph.graph, node_size=node_size)


def _lod(painter: QPainter) -> float:
    return QStyleOptionGraphicsItem.levelOfDetailFromTransform(painter.worldTransform())


# --------------------------------------------------------------------------------------
# Items
# --------------------------------------------------------------------------------------

class NodeItem(QGraphicsItem):
    """One graph node: a rounded box with its label, channels and pruning-rate bar."""

    def __init__(self, name: str, data: dict, centre: tuple[float, float],
                 size: tuple[float, float], fonts: _Fonts):
        super().__init__()
        self.name = name
        self.data = data
        self.module: Optional[str] = data.get("module")
        self.prunable = bool(data.get("prunable"))
        self.channels = int(data.get("out_channels") or 0)
        w, h = size
        self.rect = QRectF(-w / 2, -h / 2, w, h)
        self._bounds = self.rect.adjusted(-_HALO - 1, -_HALO - 1, _HALO + 1, _HALO + 1)
        category = data.get("category") or "other"
        self.fill = QColor(CATEGORY_COLORS.get(category, CATEGORY_COLORS["other"]))
        self._brush = QBrush(self.fill)
        self._border = QPen(self.fill.darker(135), 1.0)
        # Ops and endpoints are pills, layers are boxes, as in Netron.
        self._radius = h / 2 if category in ("merge", "input", "output") else 5.0
        self._path = QPainterPath()
        self._path.addRoundedRect(self.rect, self._radius, self._radius)
        self.rate = 0.0
        self.protected = False
        self.result: Optional[tuple[int, int]] = None
        self.highlighted = False
        self._hover = False
        self._fonts = fonts
        self._title = ""
        self._subtitle = ""
        self._ch_text = ""
        self._ch_color = _TEXT_CH
        self._elide_texts(str(data.get("label") or name))
        self._update_channel_text()
        self.setPos(*centre)
        self.setZValue(2)   # above the edges
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIsSelectable, True)
        self.setAcceptHoverEvents(True)

    # Text is elided once here rather than measured in paint().
    def _elide_texts(self, label: str) -> None:
        f = self._fonts
        inner = self.rect.width() - 2 * _PAD
        if self.prunable:
            self._title = f.elide("title", label, inner - _LOCK_ROOM)
            ch_w = f.ch_fm.horizontalAdvance(_channel_texts(self.channels)[1])
            self._subtitle = f.elide("small", self.name, max(10.0, inner - ch_w - 8), _ELIDE_MIDDLE)
        else:
            self._title = f.elide("plain", label, inner)

    def _update_channel_text(self) -> None:
        if self.result is not None:
            before, after = self.result
            self._ch_text, self._ch_color = f"{before} → {after}", _RESULT
        elif self.protected or self.rate <= 0:
            self._ch_text, self._ch_color = f"{self.channels} ch", _TEXT_CH
        else:
            kept = self.channels - math.floor(self.channels * self.rate)
            self._ch_text, self._ch_color = f"{self.channels} → {kept}", _PLANNED

    def channel_text(self) -> str:
        """The channel text drawn on the box ('' for nodes that show none)."""
        return self._ch_text if self.prunable or self.result is not None else ""

    def set_state(self, rate: float, protected: bool) -> None:
        if (rate, protected) != (self.rate, self.protected):
            self.rate, self.protected = rate, protected
            self._update_channel_text()
            self.update()

    def set_result(self, result: Optional[tuple[int, int]]) -> None:
        if result != self.result:
            self.result = result
            self._update_channel_text()
            self.update()

    def set_heat(self, colour: Optional[QColor]) -> None:
        """Fill with a sensitivity colour instead of the category colour; None restores it."""
        fill = colour if colour is not None else self.fill
        if fill != self._brush.color():
            self._brush = QBrush(fill)
            self._border = QPen(fill.darker(135), 1.0)
            self.update()

    @property
    def heat(self) -> Optional[QColor]:
        """The sensitivity colour drawn, or None when the category colour shows."""
        return None if self._brush.color() == self.fill else self._brush.color()

    def set_highlighted(self, on: bool) -> None:
        if on != self.highlighted:
            self.highlighted = on
            self.update()

    def boundingRect(self) -> QRectF:
        return self._bounds

    def shape(self) -> QPainterPath:
        return self._path

    def paint(self, painter: QPainter, option, widget=None) -> None:
        lod = _lod(painter)
        selected = self.isSelected()
        rect = self.rect
        if lod < _LOD_TEXT and (selected or self.highlighted):
            # Zoomed out, a halo a few scene units wide is about one pixel: the selection and
            # its group are filled with a colour of their own instead (no text shows anyway).
            colour = _ACCENT if selected else _GROUP_FILL
            if lod < _LOD_FLAT:
                painter.fillRect(rect.adjusted(-_HALO, -_HALO, _HALO, _HALO), colour)
            else:
                painter.setPen(_NO_PEN)
                painter.setBrush(colour)
                painter.drawRoundedRect(rect.adjusted(-2, -2, 2, 2), self._radius + 2, self._radius + 2)
            return
        if lod < _LOD_FLAT:
            painter.fillRect(rect, self.fill)   # overview: a plain rectangle, nothing else
            return
        if selected or self.highlighted:
            painter.setPen(_NO_PEN)
            painter.setBrush(_SELECT_HALO if selected else _GROUP_HALO)
            r = self._radius + _HALO
            painter.drawRoundedRect(rect.adjusted(-_HALO, -_HALO, _HALO, _HALO), r, r)
        painter.setPen(self._border)
        painter.setBrush(self._brush)
        painter.drawPath(self._path)
        if self.prunable:
            self._paint_bar(painter)
        if lod >= _LOD_TEXT:
            self._paint_text(painter)
        if selected or self.highlighted or self._hover:
            painter.setPen(_SELECT_PEN if selected else (_GROUP_PEN if self.highlighted else _HOVER_PEN))
            painter.setBrush(_NO_BRUSH)
            r = self._radius + 1.5
            painter.drawRoundedRect(rect.adjusted(-1.5, -1.5, 1.5, 1.5), r, r)

    def _paint_bar(self, painter: QPainter) -> None:
        rect = self.rect
        bar = QRectF(rect.left() + _PAD, rect.bottom() - 8.0, rect.width() - 2 * _PAD, 3.5)
        painter.setPen(_NO_PEN)
        if self.protected:
            painter.setBrush(_BAR_TRACK)
            painter.drawRoundedRect(bar, 1.75, 1.75)
            painter.setBrush(_BAR_PROTECTED)
            painter.drawRect(bar)
            return
        painter.setBrush(_BAR_TRACK)
        painter.drawRoundedRect(bar, 1.75, 1.75)
        if self.rate > 0:
            painter.setBrush(_BAR_FILL)
            painter.drawRoundedRect(QRectF(bar.left(), bar.top(), max(3.5, bar.width() * min(1.0, self.rate)),
                                           bar.height()), 1.75, 1.75)

    def _paint_text(self, painter: QPainter) -> None:
        f = self._fonts
        rect = self.rect
        if not self.prunable:
            painter.setFont(f.plain)
            painter.setPen(_WHITE)
            painter.drawText(rect, _ALIGN_CENTER, self._title)
            return
        left, inner = rect.left() + _PAD, rect.width() - 2 * _PAD
        painter.setFont(f.title)
        painter.setPen(_WHITE)
        painter.drawText(QRectF(left, rect.top() + 4.0, inner, 17.0),
                         _ALIGN_LEFT, self._title)
        line = QRectF(left, rect.top() + 21.0, inner, 14.0)
        painter.setFont(f.small)
        painter.setPen(_TEXT_DIM)
        painter.drawText(line, _ALIGN_LEFT, self._subtitle)
        painter.setFont(f.ch)
        painter.setPen(self._ch_color)
        painter.drawText(line, _ALIGN_RIGHT, self._ch_text)
        if self.protected:
            self._paint_lock(painter, rect.right() - _PAD - 4.5, rect.top() + 13.5)

    @staticmethod
    def _paint_lock(painter: QPainter, x: float, y: float) -> None:
        """A padlock about 9 × 11 units with its body centred at (x, y)."""
        painter.setPen(_LOCK_PEN)
        painter.setBrush(_NO_BRUSH)
        painter.drawArc(QRectF(x - 3.0, y - 7.5, 6.0, 7.0), 0, 180 * 16)
        painter.drawLine(QPointF(x - 3.0, y - 4.0), QPointF(x - 3.0, y - 2.0))
        painter.drawLine(QPointF(x + 3.0, y - 4.0), QPointF(x + 3.0, y - 2.0))
        painter.setPen(_NO_PEN)
        painter.setBrush(_WHITE)
        painter.drawRoundedRect(QRectF(x - 4.5, y - 2.0, 9.0, 6.5), 1.2, 1.2)

    def hoverEnterEvent(self, event) -> None:
        if not self.toolTip():    # built on first hover: set_graph stays fast on big models
            self.setToolTip(_node_tooltip(self.name, self.data))
        self._hover = True
        self.update()

    def hoverLeaveEvent(self, event) -> None:
        self._hover = False
        self.update()

    # Shift- and Ctrl-click toggle this node in the selection. Qt's own handling toggles
    # only with Ctrl and, on release, clears every other node, so both events are taken here.
    def mousePressEvent(self, event) -> None:
        if event.button() == Qt.MouseButton.LeftButton and _adds_to_selection(event.modifiers()):
            self.setSelected(not self.isSelected())
            event.accept()
            return
        super().mousePressEvent(event)

    def mouseReleaseEvent(self, event) -> None:
        if event.button() == Qt.MouseButton.LeftButton and _adds_to_selection(event.modifiers()):
            event.accept()
            return
        super().mouseReleaseEvent(event)


_ARROWS = {Qt.Key.Key_Up: "up", Qt.Key.Key_Down: "down", Qt.Key.Key_Left: "left", Qt.Key.Key_Right: "right"}


def _adds_to_selection(modifiers) -> bool:
    return bool(modifiers & (Qt.KeyboardModifier.ShiftModifier | Qt.KeyboardModifier.ControlModifier))


def _node_tooltip(name: str, data: dict) -> str:
    lines = [name, f"{data.get('type', '')} · {data.get('label', '')}"]
    shape = data.get("out_shape")
    facts = []
    if shape:
        facts.append("out " + "×".join(str(s) for s in shape))
    if data.get("params"):
        facts.append(f"{human_count(data['params'])} params")
    if data.get("macs"):
        facts.append(f"{human_count(data['macs'])} MACs")
    if facts:
        lines.append(" · ".join(facts))
    if data.get("group") is not None:
        lines.append(f"coupled group {data['group']}")
    if data.get("prunable"):
        lines.append("prunable output channels")
    return "\n".join(lines)


class EdgeItem(QGraphicsItem):
    """One edge: the layout's polyline drawn as vertical runs joined by S-curves, with an arrowhead."""

    def __init__(self, source: str, target: str, points: list[tuple[float, float]], shape_text: str = ""):
        super().__init__()
        self.source, self.target = source, target
        self.path = _smooth_path(points)
        (_, y0), (x1, y1) = points[-2] if len(points) > 1 else points[0], points[-1]
        down = 1.0 if y1 >= y0 else -1.0
        self.arrow = QPolygonF([QPointF(x1, y1), QPointF(x1 - 4.0, y1 - 7.5 * down),
                                QPointF(x1 + 4.0, y1 - 7.5 * down)])
        self._bounds = self.path.boundingRect().united(self.arrow.boundingRect()).adjusted(-3, -3, 3, 3)
        self._hit: Optional[QPainterPath] = None
        self.active = False
        self._tip = f"{source} → {target}\n{shape_text}" if shape_text else ""
        self.setAcceptedMouseButtons(Qt.MouseButton.NoButton)   # drags on an edge pan the view
        self.setAcceptHoverEvents(bool(shape_text))

    def hoverEnterEvent(self, event) -> None:
        if not self.toolTip():    # built on first hover, like the nodes' tooltips
            self.setToolTip(self._tip)

    def set_active(self, on: bool) -> None:
        if on != self.active:
            self.active = on
            self.setZValue(1 if on else 0)
            self.update()

    def boundingRect(self) -> QRectF:
        return self._bounds

    def shape(self) -> QPainterPath:
        if self._hit is None:   # only needed for tooltips; built on first hover
            stroker = QPainterPathStroker()
            stroker.setWidth(6.0)
            self._hit = stroker.createStroke(self.path)
        return self._hit

    def paint(self, painter: QPainter, option, widget=None) -> None:
        painter.setPen(_EDGE_ACTIVE_PEN if self.active else _EDGE_PEN)
        painter.setBrush(_NO_BRUSH)
        painter.drawPath(self.path)
        if _lod(painter) >= _LOD_FLAT:
            painter.setPen(_NO_PEN)
            painter.setBrush(_EDGE_ACTIVE_BRUSH if self.active else _EDGE_BRUSH)
            painter.drawPolygon(self.arrow)


def _smooth_path(points: list[tuple[float, float]]) -> QPainterPath:
    path = QPainterPath(QPointF(*points[0]))
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if abs(x1 - x0) < 0.5:
            path.lineTo(x1, y1)
        else:
            # Vertical tangents at both ends: the edge leaves and enters boxes straight.
            mid = (y1 - y0) / 2
            path.cubicTo(x0, y0 + mid, x1, y1 - mid, x1, y1)
    return path


# --------------------------------------------------------------------------------------
# The view
# --------------------------------------------------------------------------------------

class GraphView(QGraphicsView):
    """Zoomable, selectable drawing of a model's layer graph.

    Wheel zooms under the mouse, dragging the background pans, Shift+drag draws a rubber
    band, Shift/Ctrl-click adds a node to the selection, F fits, Esc clears the selection.
    The arrow keys walk the selection along the edges (see `graph_nav`) and Enter asks for
    the selected node's details (`nodeActivated`). While part of the graph is out of view,
    an overview map in the corner shows where the view is (`GraphOverview`).
    """

    selectionChanged = Signal(list)          # names of the selected nodes, in graph order
    nodeActivated = Signal(str)              # Enter on this selected node: show its details
    rateRequested = Signal(list)             # "Set rate…" on these prunable module names
    protectRequested = Signal(list, bool)    # "Protect" (True) / "Unprotect" (False)
    resetRequested = Signal(list)            # "Reset to global rate"

    MAX_SCALE = 4.0

    def __init__(self, parent=None):
        super().__init__(parent)
        self._fonts = _fonts()
        self.setScene(QGraphicsScene(self))
        self.setBackgroundBrush(_BACKGROUND)
        self.setRenderHints(QPainter.RenderHint.Antialiasing | QPainter.RenderHint.TextAntialiasing)
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.SmartViewportUpdate)
        # Every paint() sets its own pen, brush and font, so Qt need not save and restore them.
        self.setOptimizationFlag(QGraphicsView.OptimizationFlag.DontSavePainterState, True)
        self.setOptimizationFlag(QGraphicsView.OptimizationFlag.DontAdjustForAntialiasing, True)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setRubberBandSelectionMode(Qt.ItemSelectionMode.IntersectsItemShape)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.scene().selectionChanged.connect(self._on_scene_selection)
        self.overview = GraphOverview(self)
        for bar in (self.horizontalScrollBar(), self.verticalScrollBar()):
            # Every scroll and zoom moves a scroll bar (or its range): the map follows.
            bar.valueChanged.connect(self._view_changed)
            bar.rangeChanged.connect(self._view_changed)
        self._successors: dict[str, list[str]] = {}     # drawn edges, for the arrow keys
        self._predecessors: dict[str, list[str]] = {}
        self._last_step: Optional[tuple[str, str, str]] = None   # (from, to, direction) of the last arrow key
        self._layer_graph = None
        self._nodes: dict[str, NodeItem] = {}
        self._edges: list[EdgeItem] = []
        self._order: dict[str, int] = {}
        self._edges_of: dict[str, list[EdgeItem]] = {}
        self._nodes_of_group: dict[int, list[str]] = {}
        self._selected: list[str] = []
        self._highlighted: set[str] = set()
        self._active_edges: set[EdgeItem] = set()
        self._rates: dict[str, float] = {}
        self._protected: set[str] = set()
        self._result: Optional[dict[str, tuple[int, int]]] = None
        self._heat: Optional[dict[str, float]] = None    # module -> 0..1 sensitivity colour
        self._editable = True
        self._quiet = False          # True while select_nodes() changes the selection in bulk
        self._banding = False        # True during a Shift+drag rubber band
        self._pending_view = False   # set_graph ran while hidden; zoom on the first show

    # ---- content ----------------------------------------------------------------------

    def set_graph(self, layer_graph, layout: Optional[Layout] = None) -> None:
        """Draw ``layer_graph`` at ``layout`` (computed with `layout_graph` when None).

        Rates, protection and results set before are kept for the modules that still exist.
        Small graphs are fitted; tall ones open at their top at a readable zoom.
        """
        had_selection = bool(self._selected)
        self._clear_items()
        if layout is None:
            layout = layout_graph(layer_graph)
        self._layer_graph = layer_graph
        g = layer_graph.graph
        scene = self.scene()
        # Insert without an index and build the BSP tree once at the end, not per item.
        scene.setItemIndexMethod(QGraphicsScene.ItemIndexMethod.NoIndex)
        for i, (name, data) in enumerate(g.nodes(data=True)):
            if name not in layout.positions:
                continue
            item = NodeItem(name, data, layout.positions[name], layout.sizes[name], self._fonts)
            self._apply_state(item)
            scene.addItem(item)
            self._nodes[name] = item
            self._order[name] = i
            if data.get("group") is not None:
                self._nodes_of_group.setdefault(data["group"], []).append(name)
        for (u, v), points in layout.edges.items():
            if len(points) < 2 or u not in self._nodes or v not in self._nodes:
                continue
            shape = g.edges[u, v].get("shape") if g.has_edge(u, v) else None
            edge = EdgeItem(u, v, points, "×".join(map(str, shape)) if shape else "")
            scene.addItem(edge)
            self._edges.append(edge)
            self._successors.setdefault(u, []).append(v)
            self._predecessors.setdefault(v, []).append(u)
            self._edges_of.setdefault(u, []).append(edge)
            self._edges_of.setdefault(v, []).append(edge)
        scene.setItemIndexMethod(QGraphicsScene.ItemIndexMethod.BspTreeIndex)
        margin = 40.0
        scene.setSceneRect(QRectF(-margin, -margin, layout.width + 2 * margin, layout.height + 2 * margin))
        # A hidden view has no final size yet: choose the zoom when it is first shown.
        self._pending_view = not self.isVisible()
        if not self._pending_view:
            self._initial_view()
        self.overview.schedule_render()
        self._view_changed()
        if had_selection:
            self.selectionChanged.emit([])

    def clear_graph(self) -> None:
        """Remove the drawing (selection, if any, becomes empty)."""
        had_selection = bool(self._selected)
        self._clear_items()
        self._layer_graph = None
        self.scene().setSceneRect(QRectF())
        self._view_changed()
        if had_selection:
            self.selectionChanged.emit([])

    def _clear_items(self) -> None:
        self._quiet = True
        try:
            self._nodes.clear()
            self._edges.clear()
            self._order.clear()
            self._edges_of.clear()
            self._nodes_of_group.clear()
            self._successors.clear()
            self._predecessors.clear()
            self._last_step = None
            self._selected = []
            self._highlighted = set()
            self._active_edges = set()
            self.scene().clear()
        finally:
            self._quiet = False

    def set_rates(self, rates: dict[str, float], protected: set[str]) -> None:
        """Draw each prunable module's effective pruning rate; protected modules show a lock."""
        self._rates = dict(rates)
        self._protected = set(protected)
        for item in self._nodes.values():
            self._apply_state(item)
        self.overview.schedule_render()

    def set_result_channels(self, channels: Optional[dict[str, tuple[int, int]]]) -> None:
        """Show a finished run's (before, after) channels per module name; None hides them."""
        self._result = dict(channels) if channels is not None else None
        for item in self._nodes.values():
            self._apply_state(item)
        self.overview.schedule_render()

    def set_heat(self, values: Optional[dict[str, float]]) -> None:
        """Colour prunable modules by a 0..1 sensitivity (green → red); None shows categories again."""
        self._heat = dict(values) if values is not None else None
        for item in self._nodes.values():
            self._apply_state(item)
        self.overview.schedule_render()

    def _apply_state(self, item: NodeItem) -> None:
        module = item.module
        heat = self._heat
        item.set_heat(heat_color(heat[module]) if heat is not None and module in heat and item.prunable else None)
        if item.prunable and module is not None:
            item.set_state(float(self._rates.get(module, 0.0)), module in self._protected)
        result = self._result.get(module) if self._result is not None and module is not None else None
        # Only prunable boxes have room for a channel line; the others' results are in the report.
        item.set_result(tuple(result) if result is not None and item.prunable else None)

    def set_editable(self, editable: bool) -> None:
        """Allow or forbid context-menu edits (forbidden while a job runs); selection stays."""
        self._editable = bool(editable)

    def is_editable(self) -> bool:
        return self._editable

    # ---- selection --------------------------------------------------------------------

    def select_nodes(self, names: list[str]) -> None:
        """Select exactly these nodes (unknown names are ignored); emits selectionChanged if it changed."""
        wanted = {n for n in names if n in self._nodes}
        self._quiet = True
        try:
            for name, item in self._nodes.items():
                if item.isSelected() != (name in wanted):
                    item.setSelected(name in wanted)
        finally:
            self._quiet = False
        self._on_scene_selection()

    def selected_nodes(self) -> list[str]:
        """Selected node names in graph order."""
        return list(self._selected)

    def selected_modules(self) -> list[str]:
        """Prunable module names among the selected nodes, in graph order, without repeats."""
        prunable = set(self._layer_graph.prunable) if self._layer_graph is not None else set()
        modules = [self._nodes[n].module for n in self._selected]
        return list(dict.fromkeys(m for m in modules if m in prunable))

    def highlighted_nodes(self) -> set[str]:
        """Every node of the coupled groups that the selected nodes' modules belong to."""
        return set(self._highlighted)

    def node_item(self, name: str) -> NodeItem:
        return self._nodes[name]

    def edge_items(self) -> list[EdgeItem]:
        return list(self._edges)

    def _group_of(self, name: str) -> Optional[int]:
        item = self._nodes[name]
        if item.module is not None and self._layer_graph is not None:
            group = self._layer_graph.group_of.get(item.module)
            if group is not None:
                return group
        return item.data.get("group")

    def _on_scene_selection(self) -> None:
        if self._quiet or self._banding or not self._nodes:
            return
        selected = sorted((i.name for i in self.scene().selectedItems() if isinstance(i, NodeItem)),
                          key=self._order.__getitem__)
        if selected == self._selected:
            return
        self._selected = selected
        groups = {g for g in map(self._group_of, selected) if g is not None}
        lit = {n for g in groups for n in self._nodes_of_group.get(g, ())}
        for name in lit ^ self._highlighted:
            self._nodes[name].set_highlighted(name in lit)
        self._highlighted = lit
        active = {e for n in selected for e in self._edges_of.get(n, ())}
        for edge in active ^ self._active_edges:
            edge.set_active(edge in active)
        self._active_edges = active
        self.overview.schedule_render()      # the map marks the selection too
        self.selectionChanged.emit(list(selected))

    def find(self, text: str) -> list[str]:
        """Select and centre the nodes whose name, type or label contains ``text`` (any case)."""
        needle = text.strip().lower()
        if not needle:
            return []
        matches = [n for n, item in self._nodes.items()
                   if any(needle in str(v).lower() for v in (n, item.data.get("type", ""), item.data.get("label", "")))]
        if not matches:
            return []
        self.select_nodes(matches)
        if self._scale() < 0.8:          # a found node should be readable
            self._set_scale(1.0)
        area = QRectF()
        for name in matches:
            area = area.united(self._nodes[name].sceneBoundingRect())
        view = self.mapToScene(self.viewport().rect()).boundingRect()
        if area.width() <= view.width() and area.height() <= view.height():
            self.centerOn(area.center())
        else:
            self.centerOn(self._nodes[matches[0]])
        return matches

    # ---- zoom ---------------------------------------------------------------------------

    def _scale(self) -> float:
        return self.transform().m11()

    def _fit_scale(self) -> float:
        rect = self.sceneRect()
        port = self.viewport().rect()
        if rect.isEmpty() or port.isEmpty():
            return 1.0
        return min(port.width() / rect.width(), port.height() / rect.height())

    def _min_scale(self) -> float:
        return min(0.25, 0.8 * self._fit_scale())

    def _set_scale(self, scale: float) -> None:
        scale = max(self._min_scale(), min(self.MAX_SCALE, scale))
        current = self._scale()
        if current > 0 and abs(scale - current) > 1e-9:
            self.scale(scale / current, scale / current)

    def zoom_by(self, factor: float) -> None:
        """Multiply the zoom by ``factor`` (clamped), keeping the point under the mouse in place."""
        self._set_scale(self._scale() * factor)

    def fit(self) -> None:
        """Show the whole graph (never enlarged beyond 150 %)."""
        self._pending_view = False
        if self.sceneRect().isEmpty():
            return
        self.resetTransform()
        self._set_scale(min(1.5, self._fit_scale()))
        self.centerOn(self.sceneRect().center())

    def _initial_view(self) -> None:
        # A tall network fitted whole has unreadable, pixel-high boxes; open it like Netron,
        # at its top with the width fitted, between a readable zoom and 100 %, and leave the
        # whole to the overview map and fit(). A graph wider than that opens on its input.
        if self._fit_scale() >= READABLE_SCALE:
            self.fit()
            return
        rect = self.sceneRect()
        self.resetTransform()
        self._set_scale(max(READABLE_SCALE, min(1.0, self.viewport().width() / rect.width())))
        self.centerOn(QPointF(self._entry_x(), rect.top()))

    def _entry_x(self) -> float:
        """The x to open the view at: the graph's input when the width does not fit, else its middle."""
        rect = self.sceneRect()
        if rect.width() * self._scale() <= self.viewport().width() or not self._nodes:
            return rect.center().x()
        first = min(self._nodes.values(), key=lambda item: (item.pos().y(), self._order[item.name]))
        return first.pos().x()

    def _view_changed(self, *_) -> None:
        self.overview.view_changed()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self._view_changed()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if self._pending_view:
            self._pending_view = False
            self._initial_view()

    def wheelEvent(self, event: QWheelEvent) -> None:
        delta = event.angleDelta().y() or event.angleDelta().x()
        if delta:
            self.zoom_by(1.0015 ** delta)   # 120 per notch → ×1.2
        event.accept()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        if key in (Qt.Key.Key_Plus, Qt.Key.Key_Equal):
            self.zoom_by(1.25)
        elif key == Qt.Key.Key_Minus:
            self.zoom_by(0.8)
        elif key == Qt.Key.Key_F:
            self.fit()
        elif key == Qt.Key.Key_Escape:
            self.select_nodes([])
        elif key in _ARROWS and self._nodes and not event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier:
            self.step_selection(_ARROWS[key])
        elif key in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self._selected:
            self.nodeActivated.emit(self._current_node())
        else:
            super().keyPressEvent(event)

    # ---- keyboard -----------------------------------------------------------------------

    def step_selection(self, direction: str) -> Optional[str]:
        """Move the selection one step ('up', 'down', 'left', 'right') along the graph; returns the new node.

        With nothing selected, the first step selects the top node in view. The selection
        stays where it is when nothing lies that way.
        """
        current = self._current_node()
        if current is None:
            target = self._top_node_in_view()
        else:
            positions = {name: (item.pos().x(), item.pos().y()) for name, item in self._nodes.items()}
            target = graph_nav.step(current, direction, self._successors, self._predecessors, positions,
                                    self._last_step)
        if target is None:
            return None
        self._last_step = (current, target, direction) if current is not None else None
        self.select_nodes([target])
        self.ensureVisible(self._nodes[target], 60, 60)
        return target

    def _current_node(self) -> Optional[str]:
        """The node the arrow keys move from: the last one they reached, else the first selected."""
        if not self._selected:
            return None
        if self._last_step is not None and self._last_step[1] in self._selected:
            return self._last_step[1]
        return self._selected[0]

    def _top_node_in_view(self) -> Optional[str]:
        visible = self.mapToScene(self.viewport().rect()).boundingRect()
        shown = [item for item in self._nodes.values() if visible.intersects(item.sceneBoundingRect())]
        candidates = shown or list(self._nodes.values())
        if not candidates:
            return None
        return min(candidates, key=lambda item: (item.pos().y(), item.pos().x())).name

    # ---- mouse --------------------------------------------------------------------------

    def _node_at(self, pos) -> Optional[NodeItem]:
        for item in self.items(pos):
            if isinstance(item, NodeItem):
                return item
        return None

    def mousePressEvent(self, event) -> None:
        # Shift+drag on the background draws a rubber band instead of panning.
        if (event.button() == Qt.MouseButton.LeftButton
                and event.modifiers() & Qt.KeyboardModifier.ShiftModifier
                and self._node_at(event.position().toPoint()) is None):
            self.setDragMode(QGraphicsView.DragMode.RubberBandDrag)
            self._banding = True
        super().mousePressEvent(event)

    def mouseReleaseEvent(self, event) -> None:
        super().mouseReleaseEvent(event)
        if self._banding and event.button() == Qt.MouseButton.LeftButton:
            self._banding = False
            self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
            self._on_scene_selection()     # one update for the whole band, not one per move

    def contextMenuEvent(self, event) -> None:
        item = self._node_at(event.pos())
        if item is not None and not item.isSelected():
            self.select_nodes([item.name])
        menu = self.context_menu()
        menu.exec(event.globalPos())
        menu.deleteLater()

    def context_menu(self) -> QMenu:
        """The context menu for the current selection (built here so tests can trigger it)."""
        menu = QMenu(self)
        modules = self.selected_modules()
        can_edit = self._editable and bool(modules)
        count = f" ({len(modules)} layers)" if len(modules) > 1 else ""

        def add(text: str, slot, enabled: bool) -> QAction:
            action = menu.addAction(text)
            action.setEnabled(enabled)
            action.triggered.connect(slot)
            return action

        add(f"Set rate…{count}", lambda: self.rateRequested.emit(list(modules)), can_edit)
        protected = [m for m in modules if m in self._protected]
        unprotected = [m for m in modules if m not in self._protected]
        if unprotected or not modules:
            add("Protect", lambda: self.protectRequested.emit(list(modules), True), can_edit)
        if protected:
            add("Unprotect", lambda: self.protectRequested.emit(list(modules), False), can_edit)
        add("Reset to global rate", lambda: self.resetRequested.emit(list(modules)), can_edit)
        menu.addSeparator()
        groups = {g for g in map(self._group_of, self._selected) if g is not None}
        add("Select coupled group", lambda: self.select_nodes(sorted(self._highlighted, key=self._order.get)),
            bool(groups))
        add("Fit to view", self.fit, bool(self._nodes))
        return menu
