"""Reading finished run folders back: the rows of the GUI's runs table and compare view.

A run folder (written by `studio.engine.jobs.run_recipe`, from the GUI, the CLI or a
torchrun job on a cluster) holds ``metrics.json`` and ``recipe.json``. `read_run` turns
one into a small `RunSummary`; `pareto_front` picks the runs no other run beats on both
cost and accuracy.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from studio.engine.errors import StudioError

_STAGE_KEYS = ("params", "macs", "dense_bytes", "compressed_bytes")


@dataclass
class RunSummary:
    """One run, reduced to what a table row and a Pareto plot need."""
    path: Path
    name: str
    created: str
    model: str
    criterion: str
    rate: float
    layer_rates: int              # how many per-layer overrides the plan had
    global_ranking: bool
    before: dict = field(default_factory=dict)   # params, macs, dense_bytes, compressed_bytes, latency_ms, top1
    after: dict = field(default_factory=dict)
    trained: bool = True
    wall_seconds: float = 0.0
    layers: list = field(default_factory=list)   # per-layer before/after channels from metrics.json

    @property
    def speedup_macs(self) -> float:
        """How many times fewer MACs the run's model needs (1.0 when unknown)."""
        before, after = self.before.get("macs"), self.after.get("macs")
        return before / after if before and after else 1.0


def _stage(values: Optional[dict]) -> dict:
    values = values or {}
    out = {k: values.get(k) for k in _STAGE_KEYS}
    latency = values.get("latency") or {}
    first = next(iter(latency.values()), None) if isinstance(latency, dict) else None
    out["latency_ms"] = first.get("median_ms") if isinstance(first, dict) else None
    out["top1"] = values.get("top1")
    return out


def read_run(folder) -> RunSummary:
    """Summarise the run folder ``folder``; a missing or damaged folder is a `StudioError`."""
    path = Path(folder).expanduser()
    metrics_file = path / "metrics.json"
    if not path.is_dir():
        raise StudioError(f"Run folder not found: {path}.", "Pick a folder written by a studio run.")
    if not metrics_file.is_file():
        raise StudioError(f"{path} is not a run folder: it has no metrics.json.",
                          "Pick the folder that holds metrics.json, recipe.json and report.html.")
    try:
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StudioError(f"{metrics_file} is damaged ({exc}).",
                          "Re-run the job, or restore the file from a backup.") from exc
    if not isinstance(metrics, dict) or "before" not in metrics or "after" not in metrics:
        raise StudioError(f"{metrics_file} is not a compression run's metrics (no before/after numbers).",
                          "Training-only runs (studio train) have no comparison; open a pruning run.")
    plan = metrics.get("plan") or {}
    model = metrics.get("model") or {}
    return RunSummary(
        path=path, name=path.name, created=str(metrics.get("created", "")),
        model=str(model.get("arch") or model.get("spec") or "?"),
        criterion=str(plan.get("criterion", "?")), rate=float(plan.get("rate", 0.0)),
        layer_rates=len(plan.get("layer_rates") or {}), global_ranking=bool(plan.get("global_ranking")),
        before=_stage(metrics.get("before")), after=_stage(metrics.get("after")),
        trained=bool(model.get("trained", True)), wall_seconds=float(metrics.get("wall_seconds") or 0.0),
        layers=list(metrics.get("layers") or []))


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, accuracy) points that no other point beats, sorted by cost.

    A point is beaten when another has cost ≤ and accuracy ≥ with at least one strict.
    Of exact duplicates only the first is kept.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front: list[int] = []
    best = float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front
