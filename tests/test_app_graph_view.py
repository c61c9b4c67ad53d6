"""GraphView: drawing a real layer graph, selection with coupled groups, rates, find, menus.

Runs offscreen on the untrained CIFAR ResNet-20 graph; one graph and layout are built for
the whole module.
"""
from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent

from studio.app.graph_view import (
    CATEGORY_COLORS,
    PLAIN_HEIGHT,
    PRUNABLE_HEIGHT,
    EdgeItem,
    GraphView,
    NodeItem,
    layout_graph,
    node_size,
)
from studio.engine.graph import CATEGORIES, build_graph
from studio.engine.models import load_model


@pytest.fixture(scope="module")
def resnet20():
    loaded = load_model("cifar:resnet20")
    return build_graph(loaded.module, (3, 32, 32))


@pytest.fixture(scope="module")
def layout(resnet20, qapp):
    return layout_graph(resnet20)


@pytest.fixture
def view(qtbot, resnet20, layout):
    v = GraphView()
    qtbot.addWidget(v)
    v.resize(900, 700)
    v.set_graph(resnet20, layout)
    v.set_rates({m: 0.0 for m in resnet20.prunable}, set())
    return v


def _shown(qtbot, view):
    view.show()
    qtbot.waitExposed(view)
    return view


def _viewport_pos(view, name: str) -> QPoint:
    """Centre the node and return its centre in viewport coordinates."""
    item = view.node_item(name)
    view.centerOn(item)
    return view.mapFromScene(item.sceneBoundingRect().center())


def test_every_category_has_a_colour():
    assert set(CATEGORIES) <= set(CATEGORY_COLORS)


def test_one_item_per_node_and_edge_at_the_layout_positions(view, resnet20, layout):
    items = view.scene().items()
    nodes = [i for i in items if isinstance(i, NodeItem)]
    edges = [i for i in items if isinstance(i, EdgeItem)]
    assert len(nodes) == resnet20.graph.number_of_nodes()
    assert len(edges) == resnet20.graph.number_of_edges()
    assert {(e.source, e.target) for e in edges} == set(resnet20.graph.edges)
    for name in ("input", "conv1", "layer2.0.shortcut.0", "add_3", "output"):
        pos = view.node_item(name).pos()
        assert (pos.x(), pos.y()) == pytest.approx(layout.positions[name])
    # Prunable layers get the taller box that holds their channel line.
    assert view.node_item("conv1").rect.height() == PRUNABLE_HEIGHT
    assert view.node_item("bn1").rect.height() == PLAIN_HEIGHT
    # Boxes are wide enough for their text: nothing was elided on ResNet-20.
    for item in nodes:
        assert "…" not in item._title and "…" not in item._subtitle, item.name


def test_node_size_fits_the_text(qapp):
    w_short, h = node_size("relu", {"label": "ReLU", "prunable": False})
    w_long, _ = node_size("x", {"label": "AdaptiveAvgPool → 1×1", "prunable": False})
    assert h == PLAIN_HEIGHT and w_long > w_short
    w, h = node_size("layer4.2.downsample.0", {"label": "Conv 1×1 → 2048", "prunable": True,
                                               "out_channels": 2048})
    assert h == PRUNABLE_HEIGHT and w > w_long


def test_click_selects_a_conv_and_lights_up_its_coupled_group(qtbot, view):
    _shown(qtbot, view)
    with qtbot.waitSignal(view.selectionChanged) as signal:
        qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=_viewport_pos(view, "conv1"))
    assert signal.args == [["conv1"]]
    assert view.selected_nodes() == ["conv1"]
    lit = view.highlighted_nodes()
    # conv1's output channels feed every residual add of layer1.
    assert {"conv1", "bn1", "layer1.0.conv2", "layer1.0.bn2", "layer1.2.conv2"} <= lit
    assert "layer1.0.conv1" not in lit and "layer2.0.conv2" not in lit
    assert view.node_item("layer1.0.conv2").highlighted
    assert not view.node_item("layer1.0.conv1").highlighted

    # Shift-click adds a node, and its group joins the highlight.
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ShiftModifier,
                     _viewport_pos(view, "layer1.0.conv1"))
    assert view.selected_nodes() == ["conv1", "layer1.0.conv1"]
    assert {"layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2"} <= view.highlighted_nodes()
    # Ctrl-click toggles it off again.
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier,
                     _viewport_pos(view, "layer1.0.conv1"))
    assert view.selected_nodes() == ["conv1"]

    # A plain click on another node replaces the selection; non-prunable nodes are selectable.
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=_viewport_pos(view, "add_3"))
    assert view.selected_nodes() == ["add_3"]
    assert view.highlighted_nodes() == set()     # an add belongs to no group

    # A click on the background clears the selection.
    view.centerOn(view.sceneRect().topLeft())
    corner = view.mapFromScene(view.sceneRect().topLeft() + QPointF(5, 5))
    assert view._node_at(corner) is None
    with qtbot.waitSignal(view.selectionChanged) as signal:
        qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=corner)
    assert signal.args == [[]]
    assert view.highlighted_nodes() == set()


def test_shift_drag_rubber_band_selects_many(qtbot, view):
    _shown(qtbot, view)
    view.resetTransform()
    conv = view.node_item("layer2.0.conv1")
    view.centerOn(conv)
    box = conv.sceneBoundingRect().united(view.node_item("layer2.0.shortcut.0").sceneBoundingRect())
    start = view.mapFromScene(box.topLeft() - QPointF(12, 12))
    end = view.mapFromScene(box.bottomRight() + QPointF(12, 12))
    assert view._node_at(start) is None
    qtbot.mousePress(view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ShiftModifier, start)
    qtbot.mouseMove(view.viewport(), (start + end) / 2)
    qtbot.mouseMove(view.viewport(), end)
    qtbot.mouseRelease(view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ShiftModifier, end)
    assert set(view.selected_nodes()) == {"layer2.0.conv1", "layer2.0.shortcut.0"}
    assert view.dragMode() == view.DragMode.ScrollHandDrag   # back to panning


def test_set_rates_changes_the_drawn_rate(qtbot, view):
    _shown(qtbot, view)
    item = view.node_item("layer1.0.conv1")
    view.resetTransform()
    view.centerOn(item)
    area = view.mapFromScene(item.sceneBoundingRect()).boundingRect()
    before = view.viewport().grab(area).toImage()
    assert item.channel_text() == "16 ch"

    view.set_rates({"layer1.0.conv1": 0.5}, {"conv1"})
    assert item.rate == 0.5 and item.channel_text() == "16 → 8"
    assert view.node_item("conv1").protected
    assert view.node_item("conv1").channel_text() == "16 ch"     # protected: nothing removed
    qtbot.wait(10)
    after = view.viewport().grab(area).toImage()
    assert after != before     # the bar and the channel text were redrawn

    view.set_rates({}, set())
    assert item.rate == 0.0 and not view.node_item("conv1").protected


def test_find_selects_and_centres_matches(qtbot, view):
    _shown(qtbot, view)
    view.fit()
    with qtbot.waitSignal(view.selectionChanged):
        found = view.find("Layer2.0.SHORTCUT")
    assert found == ["layer2.0.shortcut.0", "layer2.0.shortcut.1"]
    assert view.selected_nodes() == found
    visible = view.mapToScene(view.viewport().rect()).boundingRect()
    assert visible.contains(view.node_item(found[0]).sceneBoundingRect())
    assert view.transform().m11() >= 0.8        # zoomed in far enough to read

    assert len(view.find("add")) == 9          # by type/label, every residual add
    assert view.find("no such layer") == []
    assert len(view.selected_nodes()) == 9    # a miss keeps the selection


def test_context_menu_actions_emit_requests(qtbot, view):
    view.select_nodes(["layer1.0.conv1", "layer1.0.bn1", "layer2.0.conv1", "relu"])
    assert view.selected_modules() == ["layer1.0.conv1", "layer2.0.conv1"]
    menu = view.context_menu()
    actions = {a.text().split(" (")[0]: a for a in menu.actions() if a.text()}
    assert {"Set rate…", "Protect", "Reset to global rate", "Select coupled group"} <= set(actions)
    assert "Unprotect" not in actions

    with qtbot.waitSignal(view.rateRequested) as signal:
        actions["Set rate…"].trigger()
    assert signal.args == [["layer1.0.conv1", "layer2.0.conv1"]]
    with qtbot.waitSignal(view.protectRequested) as signal:
        actions["Protect"].trigger()
    assert signal.args == [["layer1.0.conv1", "layer2.0.conv1"], True]
    with qtbot.waitSignal(view.resetRequested) as signal:
        actions["Reset to global rate"].trigger()
    assert signal.args == [["layer1.0.conv1", "layer2.0.conv1"]]

    view.set_rates({}, {"layer1.0.conv1", "layer2.0.conv1"})
    actions = {a.text(): a for a in view.context_menu().actions() if a.text()}
    assert "Protect" not in actions
    with qtbot.waitSignal(view.protectRequested) as signal:
        actions["Unprotect"].trigger()
    assert signal.args == [["layer1.0.conv1", "layer2.0.conv1"], False]

    with qtbot.waitSignal(view.selectionChanged):
        actions["Select coupled group"].trigger()
    assert {"layer1.0.bn1", "layer2.0.bn1"} <= set(view.selected_nodes())


def test_set_editable_false_disables_edits(qtbot, view):
    view.select_nodes(["conv1"])
    view.set_editable(False)
    actions = {a.text(): a for a in view.context_menu().actions() if a.text()}
    for text in ("Set rate…", "Protect", "Reset to global rate"):
        assert not actions[text].isEnabled(), text
    assert actions["Fit to view"].isEnabled()
    view.set_editable(True)
    actions = {a.text(): a for a in view.context_menu().actions() if a.text()}
    assert actions["Set rate…"].isEnabled()
    # A selection without prunable layers has nothing to edit.
    view.select_nodes(["bn1", "add"])
    actions = {a.text(): a for a in view.context_menu().actions() if a.text()}
    assert not actions["Set rate…"].isEnabled()


def test_result_channels_are_shown_and_hidden(qtbot, view):
    item = view.node_item("layer3.0.conv1")
    view.set_rates({"layer3.0.conv1": 0.25}, set())
    assert item.channel_text() == "64 → 48"
    view.set_result_channels({"layer3.0.conv1": (64, 40), "layer3.0.bn1": (64, 40)})
    assert item.channel_text() == "64 → 40"
    assert item._ch_color != view.node_item("layer3.0.conv2")._ch_color   # another colour
    assert view.node_item("layer3.0.conv2").channel_text() == "64 ch"
    view.set_result_channels(None)
    assert item.channel_text() == "64 → 48"


def test_zoom_is_clamped_and_fit_shows_everything(qtbot, view):
    _shown(qtbot, view)

    def wheel(delta: int) -> None:
        centre = QPointF(view.viewport().rect().center())
        event = QWheelEvent(centre, view.viewport().mapToGlobal(centre), QPoint(), QPoint(0, delta),
                            Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier,
                            Qt.ScrollPhase.NoScrollPhase, False)
        view.wheelEvent(event)

    view.resetTransform()
    wheel(120)
    assert view.transform().m11() == pytest.approx(1.0015 ** 120)
    for _ in range(40):
        wheel(120)
    assert view.transform().m11() == pytest.approx(GraphView.MAX_SCALE)
    for _ in range(80):
        wheel(-120)
    smallest = view.transform().m11()
    assert 0 < smallest < 0.25
    view.fit()
    assert view.transform().m11() >= smallest
    visible = view.mapToScene(view.viewport().rect()).boundingRect()
    assert visible.adjusted(-1, -1, 1, 1).contains(view.scene().itemsBoundingRect())


def test_clear_graph_empties_the_view(qtbot, view):
    view.select_nodes(["conv1"])
    with qtbot.waitSignal(view.selectionChanged) as signal:
        view.clear_graph()
    assert signal.args == [[]]
    assert view.scene().items() == []
    assert view.selected_nodes() == [] and view.highlighted_nodes() == set()
    assert view.find("conv") == []
