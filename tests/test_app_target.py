"""The window's target mode: sensitivity overlay and curve, a live search, and rates landing on the graph."""
from __future__ import annotations

import copy
import json

import pytest
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QMessageBox

from studio.app import dialogs
from studio.app.main_window import MainWindow
from studio.engine.jobs.recipe import SearchOptions

SYNTHETIC = "synthetic:classes=10,size=3x32x32,train=64,val=64"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def errors(monkeypatch):
    shown = []
    monkeypatch.setattr(dialogs, "show_error", lambda parent, error, details="": shown.append(error))
    monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text, *a: shown.append(text))
    return shown


@pytest.fixture
def window(qtbot, tmp_path, errors):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    w = MainWindow(settings=settings, runs_dir=tmp_path / "runs", autosave_file=tmp_path / "autosave.studio")
    qtbot.addWidget(w)
    w.resize(1400, 900)
    w.show()
    qtbot.waitExposed(w)
    w.open_model({"spec": "cifar:resnet20"})
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=60000)
    w.open_data(SYNTHETIC)
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=60000)
    yield w
    w.runner.shutdown()


def wait_job(qtbot, window, timeout=120000):
    qtbot.waitUntil(lambda: not window.job_running and not window.runner.busy, timeout=timeout)


def small_search(window) -> None:
    """Target mode with a quick search: 2 rates, 64 images, one short trial."""
    recipe = copy.deepcopy(window.document.recipe)
    recipe.search = SearchOptions(targets=["macs=2x"], max_drop=100.0, rates=[0.3, 0.6], images=64)
    recipe.data.batch_size = 32
    recipe.finetune.epochs = 1
    recipe.finetune.max_steps_per_epoch = 1
    recipe.measure.runs = 3
    recipe.exports = ["checkpoint"]
    window.document.replace_recipe(recipe)


def test_analysing_sensitivity_colours_the_graph_and_draws_the_curve(qtbot, window, errors):
    small_search(window)
    window.analyse_sensitivity()
    wait_job(qtbot, window)
    assert not errors
    target = window.target
    assert target.sensitivity is not None and len(target.sensitivity["groups"]) == 12
    assert target.overlay.isVisible() and target.overlay.isChecked() and target.legend.isVisible()
    assert window.graph.node_item("layer1.0.conv1").heat is not None
    assert window.graph.node_item("add").heat is None                 # not prunable: category colour
    window.graph.select_nodes(["layer2.1.conv1"])
    assert window.inspector._sens_box.isVisible()
    assert len(window.inspector.sensitivity_curve.points) == 3        # rate 0 and the two probed rates
    target.overlay.setChecked(False)
    assert window.graph.node_item("layer1.0.conv1").heat is None and not target.legend.isVisible()


def test_target_mode_hides_manual_rates_and_says_what_it_aims_for(qtbot, window):
    strategy = window.strategy
    strategy.set_target_mode(True)
    strategy.target_form.value.setText("3x")
    strategy.target_form.value.editingFinished.emit()
    recipe = window.document.recipe
    assert recipe.search is not None and recipe.search.targets == ["macs=3x"]
    assert not strategy._pruning_form.isRowVisible(strategy._rate)
    window._predict()
    assert "Target mode: macs=3x: at most" in strategy._pred_message.text()
    strategy.target_form.value.setText("3 apples")
    strategy.target_form.value.editingFinished.emit()
    assert strategy.target_form.error.isVisible() and "unit" in strategy.target_form.error.text()
    strategy.set_target_mode(False)
    assert window.document.recipe.search is None and strategy._pruning_form.isRowVisible(strategy._rate)


def test_a_search_fills_the_trials_and_lands_its_rates_on_the_graph(qtbot, window, errors):
    small_search(window)
    window.run_job()
    wait_job(qtbot, window)
    assert not errors, errors
    trials = window.target.trials
    assert trials.table.rowCount() == 1 and len(trials.plotted()) == 1 and trials.best == 0
    plan = window.document.recipe.plan
    assert window.document.recipe.search is None and plan.layer_rates and plan.rate == 0.0
    assert not window.strategy.target_mode
    some = next(iter(plan.layer_rates))
    assert window.graph.node_item(some).rate == pytest.approx(plan.layer_rates[some])
    run = window.document.runs[-1]
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["search"]["winner"] == 0 and 1.96 <= run.speedup_macs <= 2.2
    assert (run.path / "report.pdf").is_file()
    assert window.target.overlay.isVisible()          # the search's analysis colours the graph


def test_the_target_form_takes_size_min_and_the_pair_methods(qtbot):
    from studio.app.target_panel import TargetForm
    form = TargetForm()
    qtbot.addWidget(form)
    form.set_search(SearchOptions(method="heuristic", targets=["size=min"], max_drop=1.5))
    assert form.target_error() == "" and not form.error.isVisible()
    options = form.search_options()
    assert (options.method, options.targets, options.max_drop) == ("heuristic", ["size=min"], 1.5)
    assert [form.method.itemData(i) for i in range(form.method.count())] == ["allocate", "cap", "heuristic", "grid"]
    form.kind.setCurrentIndex(form.kind.findData("macs"))
    assert "push to the floor" in form.target_error()


def test_the_target_form_sets_how_many_trials_run_at_once(qtbot):
    from studio.app.target_panel import TargetForm
    form = TargetForm()
    qtbot.addWidget(form)
    assert form.parallel.minimum() == 1 and form.parallel.maximum() >= 1
    form.set_search(SearchOptions(method="grid", targets=["size=min"], parallel=form.parallel.maximum()))
    assert form.search_options().parallel == form.parallel.maximum()
    with qtbot.waitSignal(form.changed):
        form.parallel.setValue(1)
    assert form.search_options().parallel == 1
