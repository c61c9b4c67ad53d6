"""The inspector and strategy panels: what they show, which signals user edits emit (and that
programmatic updates emit none), the importance histogram, and the recipe round trip."""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
import pytest
from PySide6.QtCore import QPoint, Qt

from studio.app.inspector import InspectorPanel, cut_count, histogram_bins
from studio.app.strategy import StrategyPanel, unavailable_devices
from studio.engine.graph import build_graph
from studio.engine.jobs import Recipe
from studio.engine.jobs.report import human_count
from studio.engine.models import load_model


@pytest.fixture(scope="module")
def resnet20():
    """(module, LayerGraph) of the CIFAR ResNet-20, traced once for the whole file."""
    loaded = load_model("cifar:resnet20")
    return loaded.module, build_graph(loaded.module, (3, 32, 32))


@pytest.fixture
def inspector(qtbot):
    panel = InspectorPanel()
    qtbot.addWidget(panel)
    panel.resize(340, 700)
    panel.show()
    return panel


@pytest.fixture
def strategy(qtbot):
    panel = StrategyPanel()
    qtbot.addWidget(panel)
    panel.resize(340, 760)
    return panel


def _recorder(*signals):
    calls = []
    for signal in signals:
        signal.connect(lambda *args, _s=signal: calls.append(args))
    return calls


def _indicator(checkbox):
    """Where a user clicks a check box: on its box, not in the empty space right of its text."""
    return QPoint(8, checkbox.height() // 2)


def _plot_items(panel, kind):
    return [i for i in panel._plot.getPlotItem().items if isinstance(i, kind)]


# --------------------------------------------------------------------------------------
# Inspector
# --------------------------------------------------------------------------------------

def test_inspector_shows_a_convs_facts_and_its_coupled_group(inspector, resnet20):
    _, lg = resnet20
    rates = {m: 0.5 for m in lg.prunable}
    inspector.show_selection(lg, ["layer1.0.conv1"], rates, set())
    node = lg.graph.nodes["layer1.0.conv1"]
    assert inspector.fact("Type") == "Conv2d"
    assert inspector.fact("Module") == "layer1.0.conv1"
    assert inspector.fact("Input") == "16×32×32"
    assert inspector.fact("Output") == "16×32×32"
    assert inspector.fact("Channels") == "16 → 16"
    assert inspector.fact("Params") == human_count(node["params"]) == "2.30 K"
    assert inspector.fact("MACs") == human_count(node["macs"])
    assert inspector._badge.text() == "PRUNABLE"
    assert not inspector._reason.isVisibleTo(inspector)
    members = lg.groups[lg.group_of["layer1.0.conv1"]]
    assert members == ["layer1.0.conv1", "layer1.0.bn1"]
    assert all(m in inspector._group_text.text() for m in members)
    assert f"{len(members)} LAYERS" in inspector._group_head.text()
    assert inspector._pruning.isVisibleTo(inspector)
    assert inspector._spin.value() == pytest.approx(50.0)
    assert inspector._slider.value() == 50
    assert "Keeps 8 of 16 channels" in inspector._rate_note.text()


def test_inspector_explains_why_a_node_is_not_prunable(inspector, resnet20):
    _, lg = resnet20
    cases = {"fc": "Classifier head", "layer1.0.bn1": "Not a conv or linear layer",
             "add": "operation, not a layer", "input": "model input"}
    for name, why in cases.items():
        inspector.show_selection(lg, [name], {}, set())
        assert why in inspector._reason.text(), name
        assert inspector._badge.text() == "NOT PRUNABLE"
        assert not inspector._pruning.isVisibleTo(inspector)
        assert not inspector._hist_box.isVisibleTo(inspector)


def test_inspector_totals_a_multiple_selection(inspector, resnet20):
    _, lg = resnet20
    names = ["layer1.0.conv1", "layer1.0.bn1", "layer1.1.conv1", "fc"]
    inspector.show_selection(lg, names, {m: 0.5 for m in lg.prunable}, set())
    g = lg.graph
    assert inspector._title.text() == "4 nodes selected"
    assert inspector.fact("Params") == human_count(sum(g.nodes[n]["params"] for n in names))
    assert inspector.fact("MACs") == human_count(sum(g.nodes[n]["macs"] for n in names))
    assert inspector.fact("Prunable") == "2 of 4"
    assert inspector.fact("Types") == "2× Conv2d, 1× BatchNorm2d, 1× Linear"
    assert not inspector._hist_box.isVisibleTo(inspector)     # histograms are for one layer


def test_user_rate_edits_emit_all_editable_selected_modules(inspector, resnet20, qtbot):
    _, lg = resnet20
    rates = {m: 0.5 for m in lg.prunable}
    rates["layer1.1.conv1"] = 0.3
    names = ["layer1.0.conv1", "layer1.0.bn1", "layer1.1.conv1", "conv1"]
    inspector.show_selection(lg, names, rates, {"conv1"})
    assert inspector._spin.text() == "mixed"                  # two different rates selected
    with qtbot.waitSignal(inspector.rateChanged, timeout=1000) as blocker:
        inspector._spin.setValue(40)
    # the BatchNorm is not a target and the protected conv1 is skipped
    assert blocker.args == [["layer1.0.conv1", "layer1.1.conv1"], pytest.approx(0.40)]
    assert inspector._slider.value() == 40
    assert inspector._spin.text() != "mixed"

    # the slider, moved from the keyboard, reports the same way
    inspector._slider.setFocus()
    with qtbot.waitSignal(inspector.rateChanged, timeout=1000) as blocker:
        qtbot.keyClick(inspector._slider, Qt.Key_Right)
    assert blocker.args == [["layer1.0.conv1", "layer1.1.conv1"], pytest.approx(0.41)]
    assert inspector._spin.value() == pytest.approx(41)


def test_programmatic_updates_emit_no_edit_signals(inspector, resnet20):
    _, lg = resnet20
    edits = _recorder(inspector.rateChanged, inspector.protectChanged)
    requests = _recorder(inspector.histogramRequested)
    rates = {m: 0.5 for m in lg.prunable}
    inspector.show_selection(lg, ["layer1.0.conv1"], rates, set())
    inspector.show_selection(lg, ["layer1.0.conv1"], {**rates, "layer1.0.conv1": 0.25}, {"layer1.0.conv1"})
    inspector.show_selection(lg, ["layer1.0.conv1", "layer1.1.conv1"], {**rates, "layer1.1.conv1": 0.1},
                             {"layer1.0.conv1"})
    inspector.show_selection(lg, ["fc"], rates, set())
    inspector.show_selection(lg, ["layer2.0.conv1"], rates, set())
    inspector.show_selection(lg, [], rates, set())
    assert edits == []
    # scores are requested once per newly shown single layer, not on every refresh
    assert requests == [("layer1.0.conv1",), ("layer2.0.conv1",)]


def test_protect_checkbox_emits_and_locks_the_rate(inspector, resnet20, qtbot):
    _, lg = resnet20
    rates = {m: 0.5 for m in lg.prunable}
    inspector.show_selection(lg, ["layer1.0.conv1", "layer1.1.conv1"], rates, {"layer1.1.conv1"})
    assert inspector._protect.checkState() == Qt.PartiallyChecked
    with qtbot.waitSignal(inspector.protectChanged, timeout=1000) as blocker:
        qtbot.mouseClick(inspector._protect, Qt.LeftButton, pos=_indicator(inspector._protect))
    assert blocker.args == [["layer1.0.conv1", "layer1.1.conv1"], True]
    assert inspector._protect.checkState() == Qt.Checked
    assert not inspector._spin.isEnabled() and not inspector._slider.isEnabled()
    with qtbot.waitSignal(inspector.protectChanged, timeout=1000) as blocker:
        qtbot.mouseClick(inspector._protect, Qt.LeftButton, pos=_indicator(inspector._protect))
    assert blocker.args == [["layer1.0.conv1", "layer1.1.conv1"], False]
    assert inspector._spin.isEnabled()


def test_histogram_bars_and_cut_line(inspector, resnet20):
    _, lg = resnet20
    layer = "layer3.0.conv1"
    rates = {m: 0.5 for m in lg.prunable}
    inspector.show_selection(lg, [layer], rates, set())
    scores = np.random.default_rng(0).gamma(2.0, 1.0, size=64)
    inspector.show_histogram("layer2.0.conv1", scores[:8], 0.5)     # stale answer: ignored
    assert inspector._hist_stack.currentWidget() is inspector._hist_message
    inspector.show_histogram(layer, scores, 0.5)
    assert inspector._hist_stack.currentWidget() is inspector._plot

    removed, kept = _plot_items(inspector, pg.BarGraphItem)
    bins = histogram_bins(64)
    assert len(removed.opts["height"]) == len(kept.opts["height"]) == bins
    assert np.sum(removed.opts["height"]) + np.sum(kept.opts["height"]) == 64
    assert np.sum(removed.opts["height"]) == cut_count(64, 0.5) == 32
    (line,) = _plot_items(inspector, pg.InfiniteLine)
    assert line.value() == pytest.approx(np.sort(scores)[31])
    assert inspector.histogram_title() == "Channel importance (64 channels, 32 cut)"

    # a rate edit moves the cut without asking for new scores
    inspector._spin.setValue(25)
    (line,) = _plot_items(inspector, pg.InfiniteLine)
    assert line.value() == pytest.approx(np.sort(scores)[15])
    assert inspector.histogram_title() == "Channel importance (64 channels, 16 cut)"
    inspector._spin.setValue(0)
    assert _plot_items(inspector, pg.InfiniteLine) == []
    assert inspector.histogram_title() == "Channel importance (64 channels, none cut)"

    inspector.show_histogram_message("Taylor needs data: open a dataset")
    assert inspector._hist_stack.currentWidget() is inspector._hist_message
    assert inspector._hist_message.text() == "Taylor needs data: open a dataset"


def test_histogram_of_real_scores(inspector, resnet20):
    import torch

    from studio.engine.pruning import channel_importance

    model, lg = resnet20
    inspector.show_selection(lg, ["layer1.0.conv1"], {m: 0.3 for m in lg.prunable}, set())
    scores = channel_importance(model, "layer1.0.conv1", "l1", torch.randn(1, 3, 32, 32))
    inspector.show_histogram("layer1.0.conv1", scores, 0.3)
    (line,) = _plot_items(inspector, pg.InfiniteLine)
    assert line.value() == pytest.approx(float(np.sort(scores)[cut_count(16, 0.3) - 1]))
    assert inspector.histogram_title() == "Channel importance (16 channels, 4 cut)"


def test_set_editable_disables_the_controls(inspector, resnet20):
    _, lg = resnet20
    inspector.show_selection(lg, ["layer1.0.conv1"], {m: 0.5 for m in lg.prunable}, set())
    inspector.set_editable(False)
    assert not any(w.isEnabled() for w in (inspector._slider, inspector._spin, inspector._protect))
    inspector.set_editable(True)
    assert all(w.isEnabled() for w in (inspector._slider, inspector._spin, inspector._protect))


# --------------------------------------------------------------------------------------
# Strategy
# --------------------------------------------------------------------------------------

def _custom_recipe() -> Recipe:
    r = Recipe()
    p = r.plan
    p.criterion, p.rate, p.global_ranking, p.round_to = "fpgm", 0.35, True, 8
    p.iterative_steps, p.unstructured_sparsity, p.strict = 3, 0.2, True
    r.sparse_training.epochs, r.sparse_training.bn_l1 = 5, 3e-5
    r.retrain = True
    r.finetune.epochs, r.finetune.lr, r.finetune.device, r.finetune.amp = 12, 0.05, "cpu", False
    r.data.batch_size = 64
    return r


def _strategy_fields(r: Recipe) -> dict:
    p = r.plan
    return dict(criterion=p.criterion, rate=p.rate, global_ranking=p.global_ranking, round_to=p.round_to,
                steps=p.iterative_steps, sparsity=p.unstructured_sparsity, strict=p.strict,
                sparse_epochs=r.sparse_training.epochs, bn_l1=r.sparse_training.bn_l1,
                retrain=getattr(r, "retrain", False), epochs=r.finetune.epochs, lr=r.finetune.lr,
                batch=r.data.batch_size, device=r.finetune.device, amp=r.finetune.amp)


def test_strategy_round_trips_every_field(strategy):
    for source in (_custom_recipe(), Recipe()):
        strategy.set_recipe(source)
        fresh = Recipe()
        fresh.finetune.device, fresh.finetune.amp = "mps", not source.finetune.amp   # must be overwritten
        strategy.apply_to(fresh)
        assert _strategy_fields(fresh) == _strategy_fields(source)
        assert fresh.sparse_training.device == source.finetune.device
    fresh.validate()


def test_strategy_user_edits_emit_changed(strategy, qtbot):
    strategy.set_recipe(_custom_recipe())
    with qtbot.waitSignal(strategy.changed, timeout=1000):
        strategy._rate.setValue(60)
    with qtbot.waitSignal(strategy.changed, timeout=1000):
        strategy._criterion.setCurrentIndex(strategy._criterion.findData("taylor"))
    assert "needs data" in strategy._criterion_info.text()
    # λ in scientific notation, typed and committed with Enter
    strategy._bn_l1.selectAll()
    with qtbot.waitSignal(strategy.changed, timeout=1000):
        qtbot.keyClicks(strategy._bn_l1, "2e-4")
        qtbot.keyClick(strategy._bn_l1, Qt.Key_Return)
    r = Recipe()
    strategy.apply_to(r)
    assert (r.plan.rate, r.plan.criterion, r.sparse_training.bn_l1) == (0.6, "taylor", 2e-4)


def test_strategy_set_recipe_emits_nothing(strategy):
    calls = _recorder(strategy.changed)
    strategy.set_recipe(_custom_recipe())
    strategy.set_recipe(Recipe())
    assert calls == []


def test_strategy_prediction_text(strategy):
    strategy.show_prediction((272_474, 41_000_000), (140_000, 20_700_000), "estimating…")
    assert strategy._pred_params.text() == "272 K → 140 K  (1.95×)"
    assert strategy._pred_macs.text() == "41.0 M → 20.7 M  (1.98×)"
    assert strategy._pred_message.text() == "estimating…"
    strategy.show_prediction(None, None, "The model could not be traced.")
    assert strategy._pred_params.text() == "—"


def test_strategy_devices_and_editable(strategy):
    model = strategy._device.model()
    for key, why in unavailable_devices().items():
        item = model.item(strategy._device.findData(key))
        assert not item.isEnabled() and why in item.toolTip()
    assert model.item(strategy._device.findData("cpu")).isEnabled()
    strategy.set_editable(False)
    assert not strategy._rate.isEnabled() and not strategy._criterion.isEnabled()
    strategy.set_editable(True)
    assert strategy._rate.isEnabled()


def test_scientific_field_keeps_the_last_good_value(strategy, qtbot):
    from PySide6.QtCore import QEvent
    from PySide6.QtGui import QFocusEvent
    from PySide6.QtWidgets import QApplication

    strategy.set_recipe(_custom_recipe())
    calls = _recorder(strategy.changed)
    edit = strategy._bn_l1
    assert edit.text() == "3e-5"
    edit.selectAll()
    qtbot.keyClicks(edit, "2")            # above λ's upper bound of 1: never accepted
    QApplication.sendEvent(edit, QFocusEvent(QEvent.FocusOut))
    assert edit.text() == "3e-5" and calls == []
    r = Recipe()
    strategy.apply_to(r)
    assert r.sparse_training.bn_l1 == 3e-5


def test_strategy_offers_reconstruction_after_pruning(strategy, qtbot):
    from studio.engine.jobs.recipe import ReconstructOptions
    source = Recipe()
    source.finetune.epochs = 2
    source.reconstruct = ReconstructOptions(method="cap", batches=5, ridge=0.01)
    strategy.set_recipe(source)
    assert strategy._mode.currentData() == "reconstruct+finetune"
    assert strategy._after_form.isRowVisible(strategy._recon_method)
    fresh = Recipe()
    strategy.apply_to(fresh)
    assert fresh.reconstruct == source.reconstruct and fresh.finetune.epochs == 2 and not fresh.retrain
    # No training: the epochs field is off and the recipe fine-tunes for 0 epochs.
    with qtbot.waitSignal(strategy.changed):
        strategy._mode.setCurrentIndex(strategy._mode.findData("reconstruct"))
    assert not strategy._epochs.isEnabled()
    strategy.apply_to(fresh)
    assert fresh.reconstruct.method == "cap" and fresh.finetune.epochs == 0
    strategy._mode.setCurrentIndex(strategy._mode.findData("finetune"))
    assert not strategy._after_form.isRowVisible(strategy._recon_method)
    strategy.apply_to(fresh)
    assert fresh.reconstruct is None
    strategy.grab().save("/tmp/strategy_reconstruct.png")


def test_lasso_and_cap_take_the_place_of_the_criterion(strategy):
    from studio.engine.jobs.recipe import ReconstructOptions
    source = Recipe()
    source.reconstruct = ReconstructOptions(method="lasso")
    strategy.set_recipe(source)
    assert not strategy._criterion.isEnabled()
    strategy._recon_method.setCurrentIndex(strategy._recon_method.findData("ls"))
    assert strategy._criterion.isEnabled()
