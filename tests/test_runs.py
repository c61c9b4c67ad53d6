"""Reading run folders back for the runs table, and the Pareto front of the compare view."""
import json

import pytest

from studio.engine.errors import StudioError
from studio.engine.jobs import pareto_front, read_run


def write_run(folder, *, macs_after=500, top1_after=0.8, plan=None):
    folder.mkdir(parents=True)
    stage = {"params": 1000, "macs": 1000, "dense_bytes": 4000, "compressed_bytes": 3000,
             "latency": {"cpu/bs1": {"median_ms": 2.0}}, "top1": 0.9}
    metrics = {"created": "2026-11-22T10:00:00", "wall_seconds": 12.5,
               "model": {"spec": "demo", "arch": "cifar:resnet20", "trained": True},
               "plan": plan or {"criterion": "l1", "rate": 0.5, "layer_rates": {"conv1": 0.2}, "global_ranking": False},
               "before": stage, "after": {**stage, "macs": macs_after, "top1": top1_after, "latency": {}},
               "layers": [{"name": "conv1", "channels_before": 16, "channels_after": 8}]}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_read_run_summarises_the_folder(tmp_path):
    run = read_run(write_run(tmp_path / "r1"))
    assert run.name == "r1" and run.model == "cifar:resnet20" and run.criterion == "l1"
    assert run.rate == 0.5 and run.layer_rates == 1 and not run.global_ranking
    assert run.before["latency_ms"] == 2.0 and run.after["latency_ms"] is None
    assert run.after["top1"] == 0.8 and run.speedup_macs == 2.0
    assert run.layers[0]["channels_after"] == 8


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "not found"),
    (lambda p: (p.mkdir(), p)[1], "no metrics.json"),
    (lambda p: (p.mkdir(), (p / "metrics.json").write_text("{broken"), p)[2], "damaged"),
    (lambda p: (p.mkdir(), (p / "metrics.json").write_text('{"epochs": 3}'), p)[2], "not a compression run"),
])
def test_bad_run_folders_are_explained(tmp_path, make, message):
    with pytest.raises(StudioError, match=message):
        read_run(make(tmp_path / "run"))


def test_pareto_front_keeps_only_unbeaten_points():
    points = [(10, 0.90), (5, 0.85), (7, 0.80), (5, 0.85), (3, 0.70), (12, 0.89)]
    # (7, .80) is beaten by (5, .85); (12, .89) by (10, .90); the second (5, .85) duplicates the first
    assert pareto_front(points) == [4, 1, 0]
    assert pareto_front([]) == []
