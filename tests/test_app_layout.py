"""The window on a laptop and on a desktop screen: room for the graph, nothing out of reach.

The offscreen platform is given two screens by tests/conftest.py (a 1920×1080 desktop and a
1366×768 laptop beside it); the window is moved onto one and sized to fill it. Screenshots
of both, and of a model with a long warning, are written to docs/screenshots/.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, QRect, QSettings, Qt
from PySide6.QtGui import QGuiApplication, QImage
from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

from studio.app import dialogs, graph_nav
from studio.app.graph_view import READABLE_SCALE
from studio.app.main_window import MIN_INSPECTOR_WIDTH, MainWindow
from studio.app.screen_fit import fit_rect, side_widths
from studio.engine.models import demo_model_path

SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
needs_demo = pytest.mark.skipif(not demo_model_path().is_file(), reason="the demo model is not in this checkout")

# A CIFAR ResNet with option-A shortcuts: zero padding in a lambda, which torch-pruning
# mishandles, so the graph comes with a long tracing-hazard warning.
OPTION_A_RESNET = '''
import torch.nn as nn
import torch.nn.functional as F


class LambdaLayer(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class Block(nn.Module):
    def __init__(self, inp, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or inp != planes:
            self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4)))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class OptionA(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = Block(16, 16)
        self.layer2 = Block(16, 32, 2)
        self.linear = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x)))))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))
'''


# ---------------------------------------------------------------------------- helpers

def screen(name: str):
    """The offscreen screen called ``name`` (see tests/offscreen-screens.json), or skip."""
    for candidate in QGuiApplication.screens():
        if candidate.name() == name:
            return candidate
    pytest.skip(f"no '{name}' screen: run with QT_QPA_PLATFORM=offscreen (tests/conftest.py configures it)")


def wait_until(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        QApplication.processEvents()
        time.sleep(0.01)


def settle(seconds: float = 0.3) -> None:
    """Let queued layout passes and timers run."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def place(window: MainWindow, screen_name: str) -> QRect:
    """Put ``window`` on the named screen, filling it; returns the screen's available geometry."""
    available = screen(screen_name).availableGeometry()
    window.move(available.topLeft())
    window.resize(available.size())
    settle()
    assert window.screen().name() == screen_name
    return available


def rect_in_window(widget: QWidget, window: QWidget) -> QRect:
    return QRect(widget.mapTo(window, QPoint(0, 0)), widget.size())


def assert_in_sight(widget: QWidget, window: QWidget) -> None:
    """``widget`` is shown, lies inside the window, and no scroll area hides any of it."""
    assert widget.isVisible()
    assert window.rect().contains(rect_in_window(widget, window)), rect_in_window(widget, window)
    assert widget.visibleRegion().boundingRect() == widget.rect(), "partly scrolled or covered"


def graph_share(window: MainWindow) -> float:
    port = window.graph.viewport()
    return port.width() * port.height() / (window.width() * window.height())


def save_screenshot(window: QWidget, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    assert window.grab().save(str(path)), f"could not write {path}"
    image = QImage(str(path))
    assert (image.width(), image.height()) == (window.width(), window.height())
    assert path.stat().st_size > 40_000, f"{name} looks empty ({path.stat().st_size} bytes)"
    return path


def new_window(tmp: Path) -> MainWindow:
    settings = QSettings(str(tmp / "settings.ini"), QSettings.Format.IniFormat)
    return MainWindow(settings=settings, runs_dir=tmp / "runs", autosave_file=tmp / "autosave.studio")


@pytest.fixture(scope="module")
def demo_window(qapp, tmp_path_factory):
    """One window with the demo open, as `make run` shows it; each test places it on a screen."""
    if not demo_model_path().is_file():
        pytest.skip("the demo model is not in this checkout")
    errors = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dialogs, "show_error", lambda parent, error, details="": errors.append(error))
        window = new_window(tmp_path_factory.mktemp("layout"))
        window.show()
        place(window, "laptop")
        window.open_demo()
        wait_until(lambda: window.document.accuracy is not None)
        wait_until(lambda: not window.runner.busy and not window._prediction_timer.isActive())
        settle(0.5)
        assert not errors, errors
        yield window
        window.runner.shutdown()
        window.close()


# ---------------------------------------------------------------------------- layout

@pytest.mark.parametrize("screen_name, size", [("laptop", (1366, 768)), ("desktop", (1920, 1080))])
def test_the_graph_has_half_the_window_and_the_prediction_stays_in_sight(demo_window, screen_name, size):
    window = demo_window
    available = place(window, screen_name)
    window.graph.select_nodes([])
    window.graph._initial_view()       # as the demo opens on a window of this size
    settle(0.5)
    assert (window.width(), window.height()) == size
    assert available.contains(window.frameGeometry())
    share = graph_share(window)
    print(f"{size[0]}x{size[1]}: graph viewport {window.graph.viewport().size().toTuple()}, {share:.1%} of the window")
    assert share >= 0.5
    # Predicted params/MACs and Run: pinned under the strategy form, never scrolled away.
    for widget in (window.strategy._pred_params, window.strategy._pred_macs, window.strategy.run_button):
        assert_in_sight(widget, window)
    assert "→" in window.strategy._pred_macs.text()
    assert window.strategy.run_button.isEnabled() and "Run" in window.strategy.run_button.text()
    # Nothing ran yet: the plots, runs, trials and log are collapsed into the status bar's buttons.
    for key in ("plots", "runs", "trials", "log"):
        assert not window.docks[key].isVisible()
        assert_in_sight(window.panel_buttons[key], window)
    assert window.docks["inspector"].width() >= MIN_INSPECTOR_WIDTH
    # Opened readable, at the top: the input in view, text drawn at a legible size.
    assert window.graph.transform().m11() >= READABLE_SCALE
    visible = window.graph.mapToScene(window.graph.viewport().rect()).boundingRect()
    assert visible.contains(window.graph.node_item("input").sceneBoundingRect())
    # The window asks for no more than the screen, however its panels are filled.
    assert window.minimumSize().width() <= available.width()
    assert window.minimumSize().height() <= available.height()
    save_screenshot(window, f"main-window-{size[0]}x{size[1]}.png")


def test_a_run_opens_the_plots_under_the_graph(demo_window, qtbot):
    window = demo_window
    place(window, "laptop")
    assert not window.docks["plots"].isVisible()
    window.run_job()
    try:
        assert window.docks["plots"].isVisible()
        assert all(window.docks[k].isVisible() for k in ("runs", "trials", "log"))   # tabs beside it
        # At a modest height, so that the graph keeps most of the window during the run.
        qtbot.waitUntil(lambda: window.docks["plots"].height() <= 0.35 * window.height(), timeout=5000)
        assert window.panel_buttons["plots"].isChecked()
    finally:
        window.cancel_job()
        qtbot.waitUntil(lambda: not window.runner.busy, timeout=120000)
    window.panel_buttons["plots"].click()          # the plots are in front: the click collapses them
    assert not any(window.docks[k].isVisible() for k in ("plots", "runs", "trials", "log"))
    window.panel_buttons["log"].click()
    assert window.docks["log"].isVisible() and window.panel_buttons["log"].isChecked()
    window.collapse_bottom()


def test_side_panels_make_room_for_the_graph():
    # On a laptop both panels come down to their minimums; on a desktop they keep their widths.
    assert side_widths(1366, (340, 360), (250, 240)) == (251, 241)
    assert side_widths(1920, (340, 360), (250, 240)) == (336, 355)
    assert side_widths(2560, (340, 360), (250, 240)) == (340, 360)
    assert side_widths(900, (340, 360), (250, 240)) == (250, 240)     # never under the minimums
    assert fit_rect(QRect(100, 50, 1600, 1000), QRect(0, 0, 1366, 728)) == QRect(0, 0, 1366, 728)
    assert fit_rect(QRect(1900, 0, 800, 600), QRect(1920, 0, 1366, 768)) == QRect(1920, 0, 800, 600)


def test_the_window_fits_a_smaller_screen_it_is_told_of(qtbot, tmp_path):
    window = new_window(tmp_path)
    qtbot.addWidget(window)
    try:
        window.resize(1600, 1000)
        window.show()
        qtbot.waitExposed(window)
        laptop = QRect(0, 0, 1366, 728)     # a 768-pixel screen less its task bar
        window.fit_to_screen(laptop)
        assert laptop.contains(window.frameGeometry())
        assert window.minimumSize().width() <= laptop.width()
        assert window.minimumSize().height() <= laptop.height()
    finally:
        window.runner.shutdown()


# ---------------------------------------------------------------------------- warnings

@pytest.mark.parametrize("screen_name, size", [("desktop", (1600, 1000)), ("laptop", (1366, 768))])
def test_a_long_warning_wraps_and_keeps_the_window_on_the_screen(qtbot, tmp_path, monkeypatch, screen_name,
                                                                   size):
    shown = []
    monkeypatch.setattr(dialogs, "show_error", lambda parent, error, details="": shown.append(error))
    (tmp_path / "option_a.py").write_text(OPTION_A_RESNET)
    window = new_window(tmp_path)
    qtbot.addWidget(window)
    try:
        available = screen(screen_name).availableGeometry()
        window.move(available.topLeft())
        window.resize(*size)
        window.show()
        qtbot.waitExposed(window)
        window.open_model({"spec": f"{tmp_path / 'option_a.py'}:OptionA"})
        qtbot.waitUntil(lambda: window.document.model is not None and not window.runner.busy, timeout=60000)
        settle(0.5)
        assert not shown, shown
        hazard = max(window.document.layer_graph.warnings, key=len)     # the zero padding's hazard
        assert len(hazard) > 150
        assert window.width() == size[0] and window.frameGeometry().width() <= available.width()
        assert window.docks["inspector"].width() >= MIN_INSPECTOR_WIDTH
        # One elided line, the whole text a click away, and in the log.
        strip = window.warnings
        assert_in_sight(strip, window)
        assert strip.text.text().startswith(hazard[:40]) and strip.height() < 40
        assert hazard in window.log.toPlainText()
        box = strip.show_details()
        qtbot.waitUntil(box.isVisible)
        assert hazard in box.informativeText()
        assert box.frameGeometry().width() <= available.width()
        box.done(QMessageBox.StandardButton.Close)
        if screen_name == "desktop":
            save_screenshot(window, "main-window-long-warning.png")
    finally:
        window.runner.shutdown()


def test_data_that_does_not_fit_is_said_in_the_warning_strip(qtbot, tmp_path, monkeypatch):
    told = []
    monkeypatch.setattr(dialogs, "show_error", lambda parent, error, details="": told.append(error))
    monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text, *a: told.append(text))
    window = new_window(tmp_path)
    qtbot.addWidget(window)
    try:
        window.resize(1366, 768)
        window.show()
        qtbot.waitExposed(window)
        window.open_model({"spec": "cifar:resnet20"})
        qtbot.waitUntil(lambda: window.document.model is not None and not window.runner.busy, timeout=60000)
        assert not window.warnings.isVisible()          # ResNet-20 has no hazards
        window.open_data("synthetic:classes=3,size=3x32x32,train=12,val=6")
        qtbot.waitUntil(lambda: window.document.data is not None and not window.runner.busy, timeout=60000)
        assert len(told) == 1                           # the dialog, once, as before
        assert window.warnings.isVisible() and window._data_warning in window.warnings.full_text()
        assert "does not fit the model" in window.header.text()
        assert window.width() == 1366
    finally:
        window.runner.shutdown()


# ---------------------------------------------------------------------------- graph navigation

def test_arrow_keys_walk_the_graph_and_enter_opens_the_inspector(demo_window, qtbot):
    window = demo_window
    place(window, "laptop")
    graph, g = window.graph, window.document.layer_graph.graph
    first = next(iter(g.nodes))
    graph.select_nodes([first])
    graph.setFocus()
    qtbot.keyClick(graph, Qt.Key.Key_Down)
    (below,) = graph.selected_nodes()
    assert below in g.successors(first)
    qtbot.keyClick(graph, Qt.Key.Key_Up)
    assert graph.selected_nodes() == [first]
    # Down to the first conv of a downsampling block, then Right to its shortcut conv beside it.
    graph.select_nodes(["layer2.0.conv1"])
    qtbot.keyClick(graph, Qt.Key.Key_Right)
    assert graph.selected_nodes() == ["layer2.0.shortcut.0"]
    qtbot.keyClick(graph, Qt.Key.Key_Left)
    assert graph.selected_nodes() == ["layer2.0.conv1"]
    # The node reached by the keys is scrolled into view.
    visible = graph.mapToScene(graph.viewport().rect()).boundingRect()
    assert visible.contains(graph.node_item("layer2.0.conv1").sceneBoundingRect())
    window.docks["inspector"].hide()
    qtbot.keyClick(graph, Qt.Key.Key_Return)
    assert window.docks["inspector"].isVisible()
    assert window.inspector._names == ["layer2.0.conv1"]
    assert window.inspector.isAncestorOf(window.focusWidget())
    # At its laptop width the inspector shows the layer whole: nothing cut off at its right edge.
    qtbot.waitUntil(lambda: not window.runner.busy, timeout=60000)     # the importance histogram
    settle(0.3)
    inspector = window.inspector
    assert inspector.width() < 300
    assert inspector._body.width() <= inspector._scroll.viewport().width()
    graph.select_nodes([])


def test_the_overview_map_marks_the_visible_part_and_moves_the_view(demo_window, qtbot):
    window = demo_window
    place(window, "laptop")
    graph, overview = window.graph, window.graph.overview
    graph._initial_view()
    settle(0.4)
    assert overview.isVisible()            # ResNet-20 is far taller than the view
    assert graph.viewport().geometry().contains(overview.geometry())
    scene = graph.sceneRect()
    visible = graph.mapToScene(graph.viewport().rect()).boundingRect().intersected(scene)
    marker, content = overview.marker_rect(), overview._content_rect()
    # The marker is the visible part at the map's scale: same place, same share of the height.
    assert marker.top() == pytest.approx(content.top(), abs=1.5)     # the view opened at the top
    assert marker.height() / content.height() == pytest.approx(visible.height() / scene.height(), rel=0.02)
    assert marker.width() / content.width() == pytest.approx(visible.width() / scene.width(), rel=0.02)
    back = overview.map_to_scene(marker.center())
    assert (back.x(), back.y()) == pytest.approx((visible.center().x(), visible.center().y()), abs=2)
    # A click near the map's bottom brings the output into view, and the marker follows.
    qtbot.mouseClick(overview, Qt.MouseButton.LeftButton, pos=QPoint(overview.width() // 2, overview.height() - 4))
    settle(0.2)
    visible = graph.mapToScene(graph.viewport().rect()).boundingRect()
    assert visible.contains(graph.node_item("output").sceneBoundingRect())
    assert overview.marker_rect().bottom() == pytest.approx(content.bottom(), abs=1.5)
    graph.fit()                            # all of it in view: nothing for a map to show
    settle(0.2)
    assert not overview.isVisible()
    graph._initial_view()


def test_arrow_key_rules_on_a_small_graph():
    #      a
    #    /   \
    #   b     c      b and c: two branches of a
    #    \   /
    #      d
    succ = {"a": ["b", "c"], "b": ["d"], "c": ["d"]}
    pred = {"b": ["a"], "c": ["a"], "d": ["b", "c"]}
    pos = {"a": (50.0, 0.0), "b": (0.0, 100.0), "c": (100.0, 100.0), "d": (50.0, 200.0)}
    assert graph_nav.step("a", "down", succ, pred, pos) in ("b", "c")
    assert graph_nav.step("b", "right", succ, pred, pos) == "c"
    assert graph_nav.step("c", "left", succ, pred, pos) == "b"
    assert graph_nav.step("c", "right", succ, pred, pos) is None
    assert graph_nav.step("d", "down", succ, pred, pos) is None
    # Straight back up returns where the step came from, not to the other branch.
    assert graph_nav.step("d", "up", succ, pred, pos, came_from=("c", "d", "down")) == "c"
    assert graph_nav.step("d", "up", succ, pred, pos, came_from=("b", "d", "down")) == "b"
