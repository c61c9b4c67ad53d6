"""LivePlots: engine events in, point counts, phases, size bars and restore after a cancelled run."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

from studio.engine.events import EpochEnd, MetricsSnapshot, TrainStep

pytest.importorskip("pyqtgraph")
from studio.app.plots import LivePlots  # noqa: E402

# the widgets need no display: render offscreen unless the caller chose a platform (read when
# pytest-qt creates the QApplication, after these imports)
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="module")
def run_events(tiny_pruning_run):
    """The events of one real, tiny pruning run (2 fine-tune steps, 1 epoch)."""
    return tiny_pruning_run[1]


def _steps(phase, epochs, steps, val=0.5):
    events = []
    for epoch in range(epochs):
        for step in range(steps):
            events.append(TrainStep(phase, epoch, step, steps, 2.0 - 0.1 * step, 0.3 + 0.01 * step, 0.1, 100.0))
        events.append(EpochEnd(phase, epoch, epochs, 1.0, 0.4, 1.1, val + 0.01 * epoch, 0.9, 0.1, 1.0))
    return events


@pytest.fixture
def plots(qtbot):
    widget = LivePlots()
    qtbot.addWidget(widget)
    widget.resize(1000, 300)
    return widget


def _of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def test_real_run_events_give_one_point_per_step_and_epoch(plots, run_events):
    steps, epochs = _of(run_events, TrainStep), _of(run_events, EpochEnd)
    assert steps and epochs
    plots.start_run(None)
    plots.add_events(run_events)
    # add_events only buffers: nothing is drawn before a refresh
    assert plots.point_counts() == {"loss": 0, "train_acc": 0, "val_acc": 0}
    plots.refresh()
    assert plots.point_counts() == {"loss": len(steps), "train_acc": len(steps),
                                    "val_acc": sum(e.val_top1 is not None for e in epochs)}


def test_size_bars_show_after_over_before(plots, run_events):
    plots.start_run(None)
    plots.add_events(run_events)
    plots.refresh()
    snaps = {e.label: e.values for e in _of(run_events, MetricsSnapshot)}
    percent = plots.size_percent()
    assert set(percent) == {"params", "macs", "dense_bytes"}
    for key in percent:
        assert percent[key] == pytest.approx(snaps["after"][key] / snaps["before"][key] * 100)
    assert percent["params"] < 60   # rate 0.5 removes about three quarters of resnet20's weights


def test_start_run_reference_and_pruned_snapshot(plots):
    plots.start_run({"params": 1000, "macs": 4000, "dense_bytes": 8000})
    assert plots.size_percent() == {}   # reference only: no "now" bars yet
    plots.add_events([MetricsSnapshot("pruned", {"params": 250, "macs": 2000, "dense_bytes": 4000})])
    plots.refresh()
    assert plots.size_percent() == pytest.approx({"params": 25.0, "macs": 50.0, "dense_bytes": 50.0})


def test_phases_continue_along_the_epoch_axis(plots):
    plots.start_run(None)
    plots.add_events(_steps("sparse-train", 2, 4) + _steps("fine-tune", 3, 4))
    plots.refresh()
    assert plots.point_counts() == {"loss": 20, "train_acc": 20, "val_acc": 5}
    sparse = plots._curves[("loss", "sparse-train")].xData
    tune = plots._curves[("loss", "fine-tune")].xData
    assert sparse[0] == 0 and sparse[-1] == pytest.approx(1.75)
    assert tune[0] == pytest.approx(2.0) and tune[-1] == pytest.approx(4.75)   # starts where sparse training ended
    val = plots._curves[("val_acc", "fine-tune")]
    assert list(val.xData) == pytest.approx([3.0, 4.0, 5.0])
    assert list(val.yData) == pytest.approx([50.0, 51.0, 52.0])   # percent


def test_a_restarted_phase_opens_a_new_segment(plots):
    # iterative pruning fine-tunes again from epoch 0: drawn after the first round, with a gap
    plots.start_run(None)
    plots.add_events(_steps("fine-tune", 1, 4) + _steps("fine-tune", 1, 4))
    plots.refresh()
    x = plots._curves[("loss", "fine-tune")].xData
    assert plots.point_counts()["loss"] == 8
    assert np.isnan(x).sum() == 1
    assert x[~np.isnan(x)][4] == pytest.approx(1.0)


def test_non_finite_and_missing_values_are_skipped(plots):
    plots.start_run(None)
    plots.add_events([TrainStep("fine-tune", 0, 0, 2, math.nan, 0.5, 0.1, 1.0),
                      TrainStep("fine-tune", 0, 1, 2, 1.5, 0.5, 0.1, 1.0),
                      EpochEnd("fine-tune", 0, 1, 1.5, 0.5, None, None, None, 0.1, 1.0)])
    plots.refresh()
    assert plots.point_counts() == {"loss": 1, "train_acc": 2, "val_acc": 0}


def test_restore_previous_brings_back_the_last_run(plots, run_events):
    plots.start_run(None)
    plots.add_events(run_events)
    plots.refresh()
    before_counts, before_sizes = plots.point_counts(), plots.size_percent()
    plots.start_run({"params": 10, "macs": 10, "dense_bytes": 10})
    plots.add_events(_steps("fine-tune", 1, 3))
    plots.refresh()
    assert plots.point_counts() == {"loss": 3, "train_acc": 3, "val_acc": 1}
    plots.restore_previous()   # the new run was cancelled
    assert plots.point_counts() == before_counts
    assert plots.size_percent() == pytest.approx(before_sizes)
    # more events after the restore extend the restored curves, not a fresh run
    plots.add_events(_steps("fine-tune", 1, 2))
    plots.refresh()
    assert plots.point_counts()["loss"] == before_counts["loss"] + 2


def test_restore_only_undoes_the_last_start_run(plots):
    plots.add_events(_steps("fine-tune", 1, 3))
    plots.refresh()
    plots.restore_previous()   # no start_run to undo: nothing changes
    assert plots.point_counts()["loss"] == 3
    plots.start_run(None)
    plots.restore_previous()
    plots.restore_previous()   # a second call (cancel and error both reported) keeps the restored curves
    assert plots.point_counts()["loss"] == 3


def test_timer_refreshes_while_events_arrive_then_stops(plots, qtbot):
    plots.start_run(None)
    plots.add_events(_steps("fine-tune", 1, 5))
    assert plots.is_refreshing()
    qtbot.waitUntil(lambda: plots.point_counts()["loss"] == 5, timeout=2000)
    qtbot.waitUntil(lambda: not plots.is_refreshing(), timeout=5000)


def test_refresh_only_touches_changed_curves(plots):
    plots.start_run(None)
    plots.add_events(_steps("sparse-train", 1, 3) + _steps("fine-tune", 1, 3))
    plots.refresh()
    calls = []
    sparse = plots._curves[("loss", "sparse-train")]
    original = sparse.setData
    sparse.setData = lambda *a, **k: (calls.append(1), original(*a, **k))
    plots.add_events(_steps("fine-tune", 1, 2))   # a new fine-tune segment only
    plots.refresh()
    assert calls == []
    assert plots.point_counts()["loss"] == 8


def test_screenshot(plots, run_events, tmp_path):
    plots.start_run(None)
    plots.add_events([e for e in run_events if isinstance(e, MetricsSnapshot)] + _steps("sparse-train", 2, 50)
                     + _steps("fine-tune", 3, 50, val=0.6))
    plots.refresh()
    plots.show()
    image = plots.grab()
    assert image.save(str(tmp_path / "plots.png"))
    assert image.width() == plots.width()
