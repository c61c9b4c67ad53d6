"""Screenshots of the main window for the README: the demo as opened, and after a short run.

They are written to docs/screenshots/ on every run so the README always shows the
current window; the assertions check that they show what they claim.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QImage

from studio.app import dialogs
from studio.app.main_window import MainWindow
from studio.engine.models import demo_model_path

PREDICTION_WAIT_MS = 400
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


def save(widget, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    assert widget.grab().save(str(path)), f"could not write {path}"
    image = QImage(str(path))
    assert image.width() >= 1200 and image.height() >= 800
    # A blank or half-drawn window compresses to almost nothing.
    assert path.stat().st_size > 60_000, f"{name} looks empty ({path.stat().st_size} bytes)"
    return path


@pytest.mark.skipif(not demo_model_path().is_file(), reason="the demo model is not in this checkout")
def test_screenshots_of_the_demo(qtbot, tmp_path, monkeypatch):
    errors = []
    monkeypatch.setattr(dialogs, "show_error", lambda parent, error, details="": errors.append(error))
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings=settings, runs_dir=tmp_path / "runs", autosave_file=tmp_path / "a.studio")
    qtbot.addWidget(window)
    window.resize(1600, 1000)
    window.show()
    qtbot.waitExposed(window)
    try:
        window.open_demo()
        qtbot.waitUntil(lambda: window.document.accuracy is not None, timeout=120000)
        qtbot.waitUntil(lambda: not window.runner.busy, timeout=60000)
        window.document.set_layer_rate(["layer3.0.conv1", "layer3.1.conv1", "layer3.2.conv1"], 0.7)
        window.document.set_protected(["layer1.0.conv1"], True)
        window.graph.select_nodes(["layer2.0.conv1"])
        window.graph.centerOn(window.graph.node_item("layer2.0.conv1"))
        qtbot.waitUntil(lambda: not window.runner.busy and not window._prediction_timer.isActive(), timeout=60000)
        qtbot.wait(300)
        assert not errors, errors
        assert "top-1" in window.header.text() and "UNTRAINED" not in window.header.text()
        save(window, "main-window-demo.png")

        recipe = copy.deepcopy(window.document.recipe)
        # The screenshot shows a 50 % prune and a short fine-tune (the first-run plan's refit
        # would only add time here: tests/test_demo.py covers that plan).
        recipe.plan.rate, recipe.plan.layer_rates, recipe.reconstruct = 0.5, {}, None
        recipe.finetune.epochs = 2
        recipe.finetune.max_steps_per_epoch = 12
        recipe.finetune.lr = 0.01
        recipe.data.batch_size = 64
        recipe.data.eval_batches = 4
        recipe.measure.runs = 5
        recipe.exports = ["checkpoint"]
        window.document.replace_recipe(recipe)
        window.run_job()
        qtbot.waitUntil(lambda: not window.runner.busy, timeout=300000)
        assert not errors, errors
        assert len(window.runs_panel.runs()) == 1
        window.plots.refresh()
        window.graph.select_nodes(["layer3.0.conv1"])
        window.graph.centerOn(window.graph.node_item("layer3.0.conv1"))
        qtbot.wait(PREDICTION_WAIT_MS)   # the prediction restarts when the job ends
        qtbot.waitUntil(lambda: not window.runner.busy and not window._prediction_timer.isActive(), timeout=60000)
        qtbot.wait(300)
        save(window, "main-window-after-run.png")
        # A second, gentler run gives the compare view something to compare.
        gentler = copy.deepcopy(window.document.recipe)
        gentler.plan.rate = 0.3
        gentler.plan.layer_rates = {}
        window.document.replace_recipe(gentler)
        window.run_job()
        qtbot.waitUntil(lambda: not window.runner.busy, timeout=300000)
        assert not errors, errors
        assert len(window.runs_panel.runs()) == 2
        window.docks["runs"].raise_()
        window.resizeDocks([window.docks["runs"]], [430], Qt.Orientation.Vertical)
        window.runs_panel.compare()
        qtbot.waitUntil(lambda: not window.runner.busy and not window._prediction_timer.isActive(), timeout=60000)
        qtbot.wait(300)
        save(window, "main-window-runs.png")
    finally:
        window.runner.shutdown()
