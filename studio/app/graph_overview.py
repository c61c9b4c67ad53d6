"""The graph's overview map: a thumbnail of the whole drawing with the part in view marked.

Deep networks are much taller than any screen. As in Netron and Model Explorer, a small map
in the corner of the graph view shows the whole model, the visible part as a rectangle, and
moves the view where it is clicked or dragged. It shows only while part of the graph is out
of view.

The map is a rendered thumbnail rather than a second live view of the scene: a live view
would repaint every node and edge on every scroll step, which on DenseNet-201's thousands
of items costs more than the scroll itself. The thumbnail is re-rendered shortly after the
drawing changes (rates, selection, results), and only the marker is redrawn on scrolling.
"""
from __future__ import annotations

from typing import Optional

from PySide6.QtCore import QPointF, QRectF, QSize, Qt, QTimer
from PySide6.QtGui import QColor, QPainter, QPen, QPixmap
from PySide6.QtWidgets import QGraphicsView, QWidget

MAP_WIDTH = 150             # at most this wide…
MAP_HEIGHT_SHARE = 0.45     # …and this share of the view's height
MAP_MIN = 48                # never smaller than this on either side
MIN_DRAWN_WIDTH = 36        # a very tall graph is stretched sideways to at least this width
MARGIN = 12                 # from the view's edges
RENDER_DELAY_MS = 200       # changes in a burst (a rate drag) render the thumbnail once

_FRAME = QColor(148, 163, 184)
_PANEL = QColor(255, 255, 255, 235)
_MARK_PEN = QPen(QColor("#ff7a00"), 1.5)
_MARK_FILL = QColor(255, 122, 0, 40)


class GraphOverview(QWidget):
    """The overview map of ``view``'s scene, drawn over the view's bottom-right corner.

    It is a child of the view itself, not of its viewport: the viewport's children scroll
    with the drawing.
    """

    def __init__(self, view: QGraphicsView):
        super().__init__(view)
        self._view = view
        self._pixmap: Optional[QPixmap] = None
        self._dirty = True
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(RENDER_DELAY_MS)
        self._timer.timeout.connect(self._render)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setToolTip("Overview: the whole graph, the part in view marked. Click or drag to move there.")
        self.hide()

    # ---- what the view tells the map ---------------------------------------------------
    def schedule_render(self) -> None:
        """The drawing changed: render the thumbnail again soon (once for a burst of changes)."""
        self._dirty = True
        self._timer.start()

    def view_changed(self) -> None:
        """The view scrolled, zoomed or resized: place the map, show or hide it, move the marker."""
        scene = self._scene_rect()
        port = self._view.viewport().geometry()
        if self.graph_fits() or port.width() < 3 * MAP_MIN or port.height() < 3 * MAP_MIN:
            self.hide()
            return
        size = self._map_size(scene, port.size())
        if size != self.size():
            self.resize(size)
            self._dirty = True
        self.move(port.right() - MARGIN - size.width(), port.bottom() - MARGIN - size.height())
        self.show()
        self.raise_()
        if self._dirty and not self._timer.isActive():
            self._render()
        self.update()

    # ---- geometry ---------------------------------------------------------------------
    def _scene_rect(self) -> QRectF:
        return self._view.sceneRect()

    def graph_fits(self) -> bool:
        """True when the whole drawing is in view (then there is nothing for a map to show)."""
        scene = self._scene_rect()
        if scene.isEmpty():
            return True
        drawn = self._view.mapFromScene(scene).boundingRect()    # in viewport pixels
        return self._view.viewport().rect().adjusted(-2, -2, 2, 2).contains(drawn)

    def visible_scene_rect(self) -> QRectF:
        """The part of the scene the view shows now, in scene coordinates."""
        return self._view.mapToScene(self._view.viewport().rect()).boundingRect()

    @staticmethod
    def _map_size(scene: QRectF, port: QSize) -> QSize:
        """The map's size: the scene's shape within MAP_WIDTH × a share of the view's height."""
        max_w, max_h = MAP_WIDTH, max(MAP_MIN, int(port.height() * MAP_HEIGHT_SHARE))
        scale = min(max_w / scene.width(), max_h / scene.height())
        return QSize(max(MAP_MIN, round(scene.width() * scale)), max(MAP_MIN, round(scene.height() * scale)))

    def _content_rect(self) -> QRectF:
        """Where the scene is drawn inside the map: centred inside a 1 px frame, its aspect kept,
        except that a very tall graph is stretched sideways (a 3-pixel-wide map shows no branches)."""
        scene = self._scene_rect()
        inner = QRectF(self.rect()).adjusted(2, 2, -2, -2)
        if scene.isEmpty() or inner.isEmpty():
            return inner
        scale = min(inner.width() / scene.width(), inner.height() / scene.height())
        w, h = scene.width() * scale, scene.height() * scale
        w = max(w, min(inner.width(), MIN_DRAWN_WIDTH))
        return QRectF(inner.center().x() - w / 2, inner.center().y() - h / 2, w, h)

    def scene_to_map(self, point: QPointF) -> QPointF:
        scene, content = self._scene_rect(), self._content_rect()
        return QPointF(content.left() + (point.x() - scene.left()) / scene.width() * content.width(),
                       content.top() + (point.y() - scene.top()) / scene.height() * content.height())

    def map_to_scene(self, point: QPointF) -> QPointF:
        scene, content = self._scene_rect(), self._content_rect()
        return QPointF(scene.left() + (point.x() - content.left()) / content.width() * scene.width(),
                       scene.top() + (point.y() - content.top()) / content.height() * scene.height())

    def marker_rect(self) -> QRectF:
        """The rectangle drawn for the visible part, in the map's own coordinates (clipped to the drawing)."""
        visible = self.visible_scene_rect().intersected(self._scene_rect())
        return QRectF(self.scene_to_map(visible.topLeft()), self.scene_to_map(visible.bottomRight()))

    # ---- drawing ------------------------------------------------------------------------
    def _render(self) -> None:
        """Draw the whole scene once into a pixmap the size of the map."""
        if not self.isVisible():
            return                     # still dirty: rendered when it is next shown
        self._dirty = False
        content = self._content_rect()
        ratio = self.devicePixelRatioF()
        pixmap = QPixmap(max(1, round(content.width() * ratio)), max(1, round(content.height() * ratio)))
        pixmap.setDevicePixelRatio(ratio)
        pixmap.fill(self._view.backgroundBrush().color())
        painter = QPainter(pixmap)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        self._view.scene().render(painter, QRectF(0, 0, content.width(), content.height()), self._scene_rect(),
                                  Qt.AspectRatioMode.IgnoreAspectRatio)
        painter.end()
        self._pixmap = pixmap
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        painter.setPen(QPen(_FRAME, 1.0))
        painter.setBrush(_PANEL)
        painter.drawRoundedRect(QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5), 4, 4)
        if self._pixmap is not None:
            painter.drawPixmap(self._content_rect().topLeft(), self._pixmap)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(_MARK_PEN)
        painter.setBrush(_MARK_FILL)
        painter.drawRect(self.marker_rect())
        painter.end()

    # ---- moving the view -----------------------------------------------------------------
    def mousePressEvent(self, event) -> None:  # noqa: N802 - Qt override
        if event.button() == Qt.MouseButton.LeftButton:
            self._centre_on(event.position())
            event.accept()

    def mouseMoveEvent(self, event) -> None:  # noqa: N802 - Qt override
        if event.buttons() & Qt.MouseButton.LeftButton:
            self._centre_on(event.position())
            event.accept()

    def wheelEvent(self, event) -> None:  # noqa: N802 - Qt override
        event.accept()                 # a wheel over the map must not zoom the view under it

    def _centre_on(self, pos: QPointF) -> None:
        self._view.centerOn(self.map_to_scene(pos))
        self.view_changed()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(MAP_WIDTH, MAP_WIDTH)
