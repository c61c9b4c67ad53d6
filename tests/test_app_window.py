"""The main window end to end: open, select, plan, run, cancel, export, sessions, trust."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QMessageBox

from studio.app import dialogs
from studio.app.main_window import MainWindow
from studio.app.stall_meter import StallMeter
from studio.engine.events import TrainStep
from studio.engine.jobs import Recipe

SYNTHETIC = "synthetic:classes=10,size=3x32x32,train=128,val=64"


@pytest.fixture
def errors(monkeypatch):
    """Dialogs would block a test: record what the window would have shown instead."""
    shown = []
    monkeypatch.setattr(dialogs, "show_error", lambda parent, error, details="": shown.append(error))
    monkeypatch.setattr(dialogs, "ask_trust", lambda parent, path: pytest.fail(f"unexpected trust dialog: {path}"))
    monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text, *a: shown.append(text))
    monkeypatch.setattr(QMessageBox, "question", lambda *a: pytest.fail(f"unexpected question: {a[1:]}"))
    return shown


@pytest.fixture
def window(qtbot, tmp_path, errors):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    w = MainWindow(settings=settings, runs_dir=tmp_path / "runs", autosave_file=tmp_path / "autosave.studio")
    qtbot.addWidget(w)
    w.resize(1400, 900)
    w.show()
    qtbot.waitExposed(w)
    yield w
    w.runner.shutdown()


def wait_idle(qtbot, window, timeout=60000):
    qtbot.waitUntil(lambda: not window.runner.busy, timeout=timeout)


def open_small(qtbot, window, data=True):
    window.open_model({"spec": "cifar:resnet20"})
    wait_idle(qtbot, window)
    if data:
        window.open_data(SYNTHETIC)
        wait_idle(qtbot, window)


def quick_recipe(window, **changes) -> Recipe:
    recipe = copy.deepcopy(window.document.recipe)
    recipe.data.batch_size = 32
    recipe.data.calibration_batches = 1
    recipe.finetune.epochs = 1
    recipe.finetune.lr = 0.02
    recipe.finetune.max_steps_per_epoch = 6
    recipe.measure.runs = 3
    recipe.exports = ["checkpoint"]
    for k, v in changes.items():
        setattr(recipe, k, v)
    window.document.replace_recipe(recipe)
    return recipe


def test_opening_a_model_draws_its_graph(qtbot, window, errors):
    open_small(qtbot, window, data=False)
    graph = window.document.layer_graph.graph
    assert window.graph.node_item("layer1.0.conv1") is not None
    assert window.graph.node_item("add") is not None or any("add" in n for n in graph.nodes)
    scene_items = window.graph.scene().items()
    assert len(scene_items) >= graph.number_of_nodes() + graph.number_of_edges()
    assert "resnet20" in window.windowTitle()
    assert "UNTRAINED" in window.header.text()
    # The pre-flight reach of a plan, beside the model's own figures.
    assert "a plan can reach" in window.header.text()
    assert 0 < window.document.model.facts["macs_reach"] < window.document.model.facts["macs"] / 10
    assert not errors


def test_clicking_a_node_lights_up_its_group(qtbot, window):
    open_small(qtbot, window, data=False)
    window.graph.select_nodes(["layer1.0.conv2"])
    lit = window.graph.highlighted_nodes()
    group = window.document.layer_graph.groups[window.document.layer_graph.group_of["layer1.0.conv2"]]
    assert set(group) <= lit and "conv1" in lit
    assert "layer1.0.conv1" not in lit


def test_a_layer_rate_changes_the_predicted_macs(qtbot, window):
    open_small(qtbot, window, data=False)
    recipe = copy.deepcopy(window.document.recipe)
    recipe.plan.rate = 0.0
    window.document.replace_recipe(recipe)
    wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: not window._prediction_timer.isActive(), timeout=5000)
    wait_idle(qtbot, window)
    before_text = window.strategy.prediction_text()
    window.graph.select_nodes(["layer3.0.conv1"])
    window.inspector.rateChanged.emit(["layer3.0.conv1"], 0.5)
    assert window.document.recipe.plan.layer_rates == {"layer3.0.conv1": 0.5}
    qtbot.waitUntil(lambda: not window._prediction_timer.isActive(), timeout=5000)
    wait_idle(qtbot, window)
    after_text = window.strategy.prediction_text()
    assert after_text != before_text
    assert window.graph.node_item("layer3.0.conv1") is not None


def test_a_run_fills_plots_and_the_runs_table_then_exports(qtbot, window, tmp_path, errors):
    open_small(qtbot, window)
    quick_recipe(window)
    original = {k: v.clone() for k, v in window.document.model.loaded.module.state_dict().items()}
    window.run_job()
    assert window.job_running
    assert not window.actions_by_name["open_model"].isEnabled()
    wait_idle(qtbot, window, timeout=120000)
    assert not errors, errors
    assert not window.job_running
    # The last points are drawn by the plots' timer, a chart per tick, within a chart period.
    expected = {"loss": 4, "val_acc": 1}   # 128 images / batch 32, one epoch
    qtbot.waitUntil(lambda: {k: window.plots.point_counts()[k] for k in expected} == expected, timeout=5000)
    assert len(window.runs_panel.runs()) == 1
    run = window.runs_panel.runs()[0]
    assert run.after["macs"] < run.before["macs"]
    assert (run.path / "report.pdf").read_bytes().startswith(b"%PDF")
    assert window.result_check.isChecked()
    for k, v in window.document.model.loaded.module.state_dict().items():
        assert torch.equal(v, original[k]), k

    target = window.export_run(run, tmp_path / "exported")
    wait_idle(qtbot, window)
    assert not errors, errors
    assert target is not None and target.is_dir()
    names = {p.name for p in target.iterdir()}
    assert {"recipe.json", "metrics.json", "report.html", "report.pdf"} <= names
    assert any(n.endswith(".ckpt.pt") for n in names)
    assert (target / "report.pdf").read_bytes()[:5] == b"%PDF-"
    assert not list((tmp_path / "exported").glob(".*partial"))
    assert window.export_run(run, tmp_path / "exported") is None   # never overwrites
    assert "already exists" in str(errors[-1])


def test_cancel_mid_run_changes_nothing(qtbot, window):
    open_small(qtbot, window)
    recipe = quick_recipe(window)
    recipe.finetune.max_steps_per_epoch = 50
    window.document.replace_recipe(recipe)
    original = {k: v.clone() for k, v in window.document.model.loaded.module.state_dict().items()}
    plot_counts = window.plots.point_counts()
    seen = []

    def cancel_on_training(events):
        seen.extend(events)
        if any(isinstance(e, TrainStep) for e in events):
            window.cancel_job()

    window.run_job()
    window.runner._tasks[max(window.runner._tasks)].on_events = lambda ev: (window._on_job_events(ev),
                                                                            cancel_on_training(ev))
    wait_idle(qtbot, window, timeout=120000)
    assert any(isinstance(e, TrainStep) for e in seen)
    assert window.runs_panel.runs() == []
    assert not any(window.runs_dir.iterdir()) if window.runs_dir.exists() else True
    assert window.plots.point_counts() == plot_counts
    assert "Cancelled" in window.job_panel.phase_label.text()
    assert window.actions_by_name["run"].isEnabled()
    for k, v in window.document.model.loaded.module.state_dict().items():
        assert torch.equal(v, original[k]), k


def test_event_loop_never_stalls_during_a_run(qtbot, window):
    """The UI thread never works 50 ms without returning to its event loop during a run.

    The wall-clock gap is bounded loosely: on a loaded machine it includes time the OS gives
    to other processes (bench/gui_responsiveness.py records it on an idle machine).
    """
    open_small(qtbot, window)
    quick_recipe(window)
    meter = StallMeter()
    window.run_job()
    meter.start()
    wait_idle(qtbot, window, timeout=120000)
    meter.stop()
    assert meter.ticks > 20 and len(window.runs_panel.runs()) == 1
    assert meter.longest_busy < 0.05, f"the UI thread worked {meter.longest_busy * 1000:.0f} ms in one go"
    assert meter.longest_wall < 1.0, f"the event loop stood still for {meter.longest_wall * 1000:.0f} ms"


def test_session_round_trip(qtbot, window, tmp_path):
    open_small(qtbot, window)
    window.document.set_layer_rate(["layer2.0.conv1"], 0.3)
    window.document.set_protected(["layer3.1.conv1"], True)
    path = tmp_path / "work.studio"
    window._write_session(path)
    saved = json.loads(path.read_text())
    assert saved["model"]["spec"] == "cifar:resnet20"

    other = MainWindow(settings=window.settings, runs_dir=tmp_path / "runs2", autosave_file=tmp_path / "a2.studio")
    qtbot.addWidget(other)
    try:
        other.open_session(path)
        wait_idle(qtbot, other)
        wait_idle(qtbot, other)
        assert other.document.model is not None and other.document.data is not None
        assert other.document.recipe.plan.layer_rates == {"layer2.0.conv1": 0.3}
        assert other.document.recipe.plan.protected == ["layer3.1.conv1"]
        assert other.document.recipe.to_dict() == window.document.recipe.to_dict()
    finally:
        other.runner.shutdown()


def test_a_pickled_model_asks_for_trust(qtbot, window, tmp_path, monkeypatch, errors):
    from studio.engine.models import CIFAR_MODELS
    path = tmp_path / "full.pt"
    torch.save(CIFAR_MODELS["resnet20"][0](10), path)
    asked = []
    monkeypatch.setattr(dialogs, "ask_trust", lambda parent, p: asked.append(p) or False)
    window.open_model({"spec": str(path)})
    wait_idle(qtbot, window)
    assert asked == [str(path)] and window.document.model is None and not errors

    monkeypatch.setattr(dialogs, "ask_trust", lambda parent, p: asked.append(p) or True)
    window.open_model({"spec": str(path)})
    wait_idle(qtbot, window)
    wait_idle(qtbot, window)
    assert window.document.model is not None and window.document.model.request["trust"] is True


def test_errors_reach_a_dialog_not_a_crash(qtbot, window, tmp_path, errors):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    window.open_model({"spec": str(bad)})
    wait_idle(qtbot, window)
    assert errors and window.document.model is None
    window.open_data(str(tmp_path / "missing-folder"))
    wait_idle(qtbot, window)
    assert len(errors) == 2


def test_dropped_paths_open_by_kind(qtbot, window, tmp_path, errors):
    """Drag and drop hands each path to open_path: run folders, sessions, data and models."""
    open_small(qtbot, window)
    quick_recipe(window)
    window.run_job()
    wait_idle(qtbot, window, timeout=120000)
    run_dir = window.runs_panel.runs()[0].path
    session = tmp_path / "s.studio"
    window._write_session(session)

    other = MainWindow(settings=window.settings, runs_dir=tmp_path / "runs2", autosave_file=tmp_path / "a2.studio")
    qtbot.addWidget(other)
    try:
        other.open_path(str(run_dir))
        assert [r.path for r in other.runs_panel.runs()] == [run_dir]
        other.open_path(str(session))
        wait_idle(qtbot, other)
        wait_idle(qtbot, other)
        assert other.document.model is not None and other.document.data is not None
        assert other.session_path == session
    finally:
        other.runner.shutdown()
    assert not errors, errors


def test_a_model_with_a_hazard_gets_an_honest_prediction_and_names_its_blocked_groups(qtbot, window, errors):
    from pathlib import Path

    import hard_nets
    window.open_model({"spec": f"{Path(hard_nets.__file__)}:Stacked", "input_size": list(hard_nets.INPUT)})
    wait_idle(qtbot, window)
    assert "1 of 3 groups blocked" in window.header.text()
    qtbot.waitUntil(lambda: not window._prediction_timer.isActive(), timeout=5000)
    wait_idle(qtbot, window)
    # The stacked branches stay whole, so the prediction counts them as kept.
    from studio.engine.pruning.preflight import predict
    honest = predict(window.document.model.loaded.module, window.document.recipe.plan, hard_nets.INPUT)
    assert window.strategy._pred_macs.text().startswith("375 K") and "Counted as kept: 1 group" in \
        window.strategy._pred_message.text()
    assert honest.kept and str(round(honest.macs / 1e3)) in window.strategy._pred_macs.text()
    window.graph.select_nodes(["left"])
    assert "BLOCKED" in window.inspector._badge.text() and "torch.stack" in window.inspector._reason.text()
    assert not errors


def test_a_plan_whose_surgery_would_fail_says_so_beside_the_figures(qtbot, window):
    from pathlib import Path

    import hard_nets
    window.open_model({"spec": f"{Path(hard_nets.__file__)}:HardReshape", "input_size": list(hard_nets.INPUT)})
    wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: not window._prediction_timer.isActive(), timeout=5000)
    wait_idle(qtbot, window)
    assert "Surgery is likely to fail" in window.strategy._pred_message.text()
