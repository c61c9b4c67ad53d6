"""RunsPanel: rows from real run folders, duplicates, sorting, selection and the compare (Pareto) view."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from PySide6.QtCore import Qt

pytest.importorskip("pyqtgraph")
from studio.app.runs_panel import COLUMNS, DELTA_COLUMN, RunsPanel  # noqa: E402
from studio.engine.jobs import read_run  # noqa: E402

# the widgets need no display: render offscreen unless the caller chose a platform (read when
# pytest-qt creates the QApplication, after these imports)
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

BEFORE_TOP1 = 0.90


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    """One real tiny pruning run, copied into four runs with edited accuracy/cost (one without accuracy)."""
    from studio.engine.events import run_to_end
    from studio.engine.jobs import DataSource, ModelSource, Recipe, run_recipe
    from studio.engine.pruning import PruningPlan
    from studio.engine.training import TrainConfig

    root = tmp_path_factory.mktemp("runs")
    recipe = Recipe(model=ModelSource(spec="cifar:resnet20"),
                    data=DataSource(spec="synthetic:classes=10,size=3x32x32,train=96,val=48", batch_size=32,
                                    calibration_batches=1),
                    plan=PruningPlan(criterion="l1", rate=0.5),
                    finetune=TrainConfig(epochs=1, lr=0.02, max_steps_per_epoch=2), exports=["checkpoint"])
    run_to_end(run_recipe(recipe, root / "real"))
    # name: (after top-1 or None, factor on after MACs and size, per-layer rates, global ranking)
    variants = {"big": (0.89, 2.0, {}, False), "mid": (0.88, 1.0, {"conv1": 0.1, "fc": 0.0}, True),
                "worse": (0.85, 1.2, {}, False), "noacc": (None, 0.8, {}, False)}
    dirs = {}
    for name, (top1, factor, layer_rates, global_ranking) in variants.items():
        folder = root / name
        shutil.copytree(root / "real", folder)
        metrics = json.loads((folder / "metrics.json").read_text())
        metrics["before"]["top1"] = BEFORE_TOP1
        metrics["after"]["top1"] = top1
        if top1 is None:
            del metrics["after"]["top1"]
        for key in ("macs", "dense_bytes"):
            metrics["after"][key] = int(metrics["after"][key] * factor)
        metrics["plan"].update(layer_rates=layer_rates, global_ranking=global_ranking)
        (folder / "metrics.json").write_text(json.dumps(metrics))
        dirs[name] = folder
    return dirs


@pytest.fixture
def panel(qtbot):
    widget = RunsPanel()
    qtbot.addWidget(widget)
    widget.resize(1300, 700)
    return widget


def _cell(panel, row, column, role=Qt.ItemDataRole.DisplayRole):
    return panel.proxy.index(row, column).data(role)


def _column(name):
    return next(i for i, c in enumerate(COLUMNS) if c[0] == name)


def test_same_folder_twice_keeps_one_row(panel, run_dirs):
    panel.add_run(read_run(run_dirs["big"]))
    panel.add_run(read_run(run_dirs["mid"]))
    panel.add_run(read_run(run_dirs["big"]))
    panel.add_run(read_run(run_dirs["big"] / ".." / "big"))   # the same folder spelt differently
    assert [r.name for r in panel.runs()] == ["big", "mid"]
    assert panel.proxy.rowCount() == 2


def test_table_shows_the_run_numbers(panel, run_dirs):
    run = read_run(run_dirs["mid"])
    panel.add_run(run)
    assert _cell(panel, 0, _column("Run")) == "mid"
    assert _cell(panel, 0, _column("Model")) == "cifar:resnet20"
    assert _cell(panel, 0, _column("Criterion")) == "l1"
    assert _cell(panel, 0, _column("Rate")) == "50%, +2 layer rates, global"
    assert _cell(panel, 0, _column("Params")) == "272 K → 68.8 K"
    macs = _cell(panel, 0, _column("MACs (speed-up)"))
    assert macs.startswith("41.4 M → ") and f"({run.speedup_macs:.2f}×)" in macs
    assert _cell(panel, 0, _column("Top-1 %")) == "90.0 → 88.0"
    assert _cell(panel, 0, DELTA_COLUMN) == "−2.0 pt"
    assert _cell(panel, 0, DELTA_COLUMN, Qt.ItemDataRole.ForegroundRole).color().name() == "#b91c1c"
    assert " → " in _cell(panel, 0, _column("Latency ms"))
    assert _cell(panel, 0, _column("Wall time")).endswith(" s")


def test_missing_accuracy_shows_a_dash(panel, run_dirs):
    panel.add_run(read_run(run_dirs["noacc"]))
    assert _cell(panel, 0, _column("Top-1 %")) == "90.0 → —"
    assert _cell(panel, 0, DELTA_COLUMN) == "—"
    assert _cell(panel, 0, DELTA_COLUMN, Qt.ItemDataRole.ForegroundRole) is None


def test_sorting_by_accuracy(panel, run_dirs):
    for name in ("mid", "big", "worse", "noacc"):
        panel.add_run(read_run(run_dirs[name]))
    panel.table.sortByColumn(_column("Top-1 %"), Qt.SortOrder.DescendingOrder)
    names = [_cell(panel, row, 0) for row in range(panel.proxy.rowCount())]
    assert names[:3] == ["big", "mid", "worse"]
    panel.table.sortByColumn(_column("Top-1 %"), Qt.SortOrder.AscendingOrder)
    names = [_cell(panel, row, 0) for row in range(panel.proxy.rowCount())]
    assert names == ["worse", "mid", "big", "noacc"]   # unknown accuracy last
    assert [r.name for r in panel.runs()] == ["mid", "big", "worse", "noacc"]   # runs() keeps insertion order


def test_multi_row_selection(panel, run_dirs):
    for name in ("big", "mid", "worse"):
        panel.add_run(read_run(run_dirs[name]))
    assert panel.selected_runs() == []
    assert not panel.folder_button.isEnabled()
    panel.select_runs([panel.runs()[2], panel.runs()[0]])
    assert [r.name for r in panel.selected_runs()] == ["big", "worse"]
    assert not panel.folder_button.isEnabled()   # only for exactly one run
    panel.select_runs([panel.runs()[1]])
    assert [r.name for r in panel.selected_runs()] == ["mid"]
    assert panel.folder_button.isEnabled()


def test_compare_draws_points_front_and_notes_missing_accuracy(panel, run_dirs):
    for name in ("big", "mid", "worse", "noacc"):
        panel.add_run(read_run(run_dirs[name]))
    panel.select_runs([panel.runs()[1]])
    panel.compare()
    view = panel.compare_view
    assert not view.isHidden()
    assert view.run_scatter.data.size == 3   # noacc is not drawn
    assert "noacc" in view.note.text()
    assert [r.name for r in view.front_runs()] == ["mid", "big"]   # "worse" costs more than mid and is less accurate
    xs, ys = view.front_curve.getData()
    assert len(xs) == 3   # two points joined by a step
    assert list(ys) == pytest.approx([88.0, 88.0, 89.0])
    assert view.selected_scatter.data.size == 1
    assert view.selected_scatter.data[0]["x"] == pytest.approx(read_run(run_dirs["mid"]).after["macs"] / 1e6)
    # the unpruned model, once: all four runs share it
    assert view.base_scatter.data.size == 1
    assert view.base_scatter.data[0]["y"] == pytest.approx(BEFORE_TOP1 * 100)
    # the selection follows the table while the compare view is open
    panel.select_runs(panel.runs()[:3])
    assert view.selected_scatter.data.size == 3


def test_compare_by_size_and_new_runs_update_the_plot(panel, run_dirs):
    panel.add_run(read_run(run_dirs["big"]))
    panel.compare()
    view = panel.compare_view
    assert view.run_scatter.data.size == 1
    assert "noacc" not in view.note.text()
    panel.add_run(read_run(run_dirs["worse"]))
    assert view.run_scatter.data.size == 2
    view.cost_combo.setCurrentIndex(1)   # dense size
    assert view.cost_key() == "dense_bytes"
    assert [r.name for r in view.front_runs()] == ["worse", "big"]
    label = panel.compare_view.plot.getPlotItem().getAxis("bottom").labelText
    assert "Dense size" in label


def test_signals(panel, run_dirs, qtbot):
    panel.add_run(read_run(run_dirs["big"]))
    panel.add_run(read_run(run_dirs["mid"]))
    panel.show()
    qtbot.waitExposed(panel)
    with qtbot.waitSignal(panel.openRunRequested, timeout=1000):
        qtbot.mouseClick(panel.open_button, Qt.MouseButton.LeftButton)
    rect = panel.table.visualRect(panel.proxy.index(1, 0))
    with qtbot.waitSignal(panel.runActivated, timeout=1000) as blocker:
        # an item view needs the press/release before the double-click event, as a real mouse sends
        qtbot.mouseClick(panel.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
        qtbot.mouseDClick(panel.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert blocker.args[0].name == "mid"


def test_clicking_a_point_selects_its_row(panel, run_dirs):
    panel.add_run(read_run(run_dirs["big"]))
    panel.add_run(read_run(run_dirs["mid"]))
    panel.compare()
    panel.compare_view.pointClicked.emit(panel.runs()[1])
    assert [r.name for r in panel.selected_runs()] == ["mid"]


def test_screenshot(panel, run_dirs, tmp_path):
    for name in ("big", "mid", "worse", "noacc"):
        panel.add_run(read_run(run_dirs[name]))
    panel.select_runs([panel.runs()[1]])
    panel.show()
    panel.compare()
    assert panel.grab().save(str(tmp_path / "runs.png"))
