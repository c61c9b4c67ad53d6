"""The demo's first run: the plan its model card recommends, shared by `studio prune demo` and the window.

A first run should show the product at its best, so the demo opens with the plan the card
records (measured on the shipped model and data, see docs/BENCHMARKS.md): per-layer rates
for 2× fewer MACs from the sensitivity allocation and a least-squares refit of the layers that
lost inputs (its fine-tune settings too, none at present: on the shipped 5,000 images a gentle
epoch after the refit lowered top-1). `studio prune demo` without plan flags and the window's
Open Demo both read it from here, so they agree.
"""
from __future__ import annotations

import copy
import json

from studio.engine.demo_files import CARD, demo_file, missing_demo_file
from studio.engine.errors import StudioError
from studio.engine.jobs.recipe import Recipe, ReconstructOptions
from studio.engine.pruning import PruningPlan


def demo_first_run() -> dict:
    """The card's ``first_run`` section: plan, reconstruct, finetune, data, and what it gave."""
    path = demo_file(CARD)
    if not path.is_file():
        raise missing_demo_file(path, "demo model card", "`make demo` rebuilds it")
    try:
        return json.loads(path.read_text(encoding="utf-8"))["first_run"]
    except (ValueError, KeyError) as exc:
        raise StudioError(f"The demo model card {path} has no readable first_run plan ({exc}).",
                          "Reinstall the studio, or rebuild the demo files with `make demo`.") from exc


def with_demo_plan(recipe: Recipe) -> Recipe:
    """``recipe`` with the demo's first-run plan, refit and fine-tune (and the demo data if it had none)."""
    first = demo_first_run()
    out = copy.deepcopy(recipe)
    out.plan = PruningPlan.from_dict(first["plan"])
    out.reconstruct = ReconstructOptions(**first["reconstruct"]) if first.get("reconstruct") else None
    for key, value in first.get("finetune", {}).items():
        setattr(out.finetune, key, value)
    if not out.data.spec:
        out.data.spec = "demo"
    out.data.batch_size = first.get("batch_size", out.data.batch_size)
    out.validate()
    return out
