"""bench/accuracy.py on a tiny setup: one result file per criterion, resumable, and a report.

The script runs in-process (imported from its path) on an untrained ResNet-20 and 64
synthetic images, one training step and one evaluation batch, so only the plumbing is
checked here: MACs reduction on target, skipping finished pairs, the table.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "bench" / "accuracy.py"

torch.set_num_threads(1)


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_accuracy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


accuracy = _load_script()


def _argv(results: Path, *extra: str) -> list:
    return ["--model", "cifar:resnet20", "--data", "synthetic:classes=10,size=3x32x32,train=64,val=32",
            "--criteria", "l1,random", "--epochs", "1", "--max-steps", "1", "--eval-batches", "1",
            "--batch-size", "32", "--threads", "1", "--results", str(results), *extra]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A results folder after one complete tiny run."""
    results = tmp_path_factory.mktemp("accuracy")
    assert accuracy.main(_argv(results)) == 0
    return results


def test_one_result_per_criterion_at_the_target_reduction(finished: Path):
    files = sorted(p.name for p in finished.glob("result-*.json"))
    assert files == ["result-l1-local.json", "result-random-local.json"]
    baseline = json.loads((finished / "baseline.json").read_text())
    for name in files:
        r = json.loads((finished / name).read_text())
        assert abs(r["macs_reduction"] / 2.0 - 1) <= 0.03
        assert r["within_tolerance"] is True
        assert r["macs_before"] == baseline["macs"]   # the same counter for baseline and pruned model
        assert r["macs_reduction"] == pytest.approx(r["macs_before"] / r["macs_after"])
        assert r["delta_vs_baseline_points"] == pytest.approx(100 * (r["top1_after_ft"] - baseline["top1"]))
        assert r["params_after"] < r["params_before"]
        assert r["eval_samples"] == 32 and r["seed"] == 0
        assert {"cores", "cpu", "torch", "device"} <= set(r["machine"])
        assert "--criteria l1,random" in r["command"]
    # Under local ranking the rate does not depend on the criterion: searched once, shared.
    rates = {json.loads((finished / n).read_text())["rate"] for n in files}
    assert len(rates) == 1


def test_rerun_skips_finished_pairs(finished: Path, capsys):
    mtimes = {p: p.stat().st_mtime_ns for p in finished.glob("*.json") if p.name != "plan.json"}
    capsys.readouterr()
    assert accuracy.main(_argv(finished)) == 0
    err = capsys.readouterr().err
    assert "l1 / local: skip" in err and "random / local: skip" in err
    assert "baseline: cached" in err
    assert "loading data" not in err   # nothing left to do: the data set is not even decoded
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_report_lists_runs_and_baseline(finished: Path, tmp_path: Path, capsys):
    capsys.readouterr()
    md = tmp_path / "report.md"
    assert accuracy.main(["--report", "--results", str(finished), "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    assert md.read_text() == out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| criterion | ranking")
    assert any(line.startswith("| baseline (unpruned)") for line in rows)
    assert any(line.startswith("| l1 | local |") for line in rows)
    assert any(line.startswith("| random | local |") for line in rows)
    assert "2 of 2 planned runs done" in out
    assert "Seed: 0" in out and "Machine" in out and "Total wall time" in out


def test_report_on_partial_results_and_other_settings_refused(finished: Path, tmp_path: Path, capsys):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("baseline.json", "plan.json", "result-l1-local.json"):
        (partial / name).write_text((finished / name).read_text())
    capsys.readouterr()
    assert accuracy.main(["--report", "--results", str(partial)]) == 0
    out = capsys.readouterr().out
    assert "1 of 2 planned runs done" in out and "random/local" in out
    # A resume with other settings would mix incomparable numbers in one folder.
    assert accuracy.main(_argv(partial, "--lr", "0.05")) == 2
    assert "other settings" in capsys.readouterr().err


def test_rate_search_finds_a_target_that_bisection_misses():
    """Global ranking can make MACs fall again at higher rates; the grid scan still finds the target."""
    import math

    def hump(rate: float):
        return 1 + 1.2 * math.sin(math.pi * rate / 0.5) if rate < 0.5 else 1.1

    search = accuracy.RateSearch(hump, 2.0)
    search.bisect(0.0, accuracy.MAX_RATE, accuracy.SEARCH_STEPS)
    assert abs(search.best()[1] / 2.0 - 1) > accuracy.TOLERANCE
    search.scan(accuracy.SCAN_GRID)
    assert abs(search.best()[1] / 2.0 - 1) <= accuracy.GOOD_ENOUGH


def test_a_second_session_reproduces_the_numbers(finished: Path, tmp_path: Path):
    """Seeded init, pruning and fine-tuning: a resumed session continues on the same model."""
    again = tmp_path / "again"
    assert accuracy.main(_argv(again, "--criteria", "l1")) == 0
    keys = ("rate", "macs_after", "params_after", "top1_before_ft", "top1_after_ft", "top5_after_ft")
    first = json.loads((finished / "result-l1-local.json").read_text())
    second = json.loads((again / "result-l1-local.json").read_text())
    assert {k: first[k] for k in keys} == {k: second[k] for k in keys}
    assert json.loads((again / "baseline.json").read_text())["top1"] == \
        json.loads((finished / "baseline.json").read_text())["top1"]
