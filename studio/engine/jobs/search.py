"""The search job: find per-layer rates for a target, then run the winner as an ordinary job.

A recipe with a ``search`` section runs here. The search folder is a workspace that
survives interruptions: ``search.json`` (the search recipe), ``sensitivity.json`` and
``trials.jsonl`` are written as the search goes, and `run_search` with ``resume=True``
continues from them. When a trial meets the targets and the floor, the winner's recipe
(the plan with its rates, no search section) runs through `run_recipe`, and its run folder
(model exports, metrics.json, report, recipe.json) is moved into the search folder, so the
result is an ordinary run folder that `studio run recipe.json` reproduces.
"""
from __future__ import annotations

import copy
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Generator, Optional

from studio.engine.data import DataBundle
from studio.engine.errors import StudioError
from studio.engine.events import CancelToken, Log
from studio.engine.files import write_text
from studio.engine.jobs.pipeline import RunResult, json_safe, load_job_inputs, run_recipe
from studio.engine.jobs.recipe import Recipe, ReconstructOptions
from studio.engine.jobs.report import write_report
from studio.engine.methods import MethodInput, get_method
from studio.engine.methods.search import TRIALS_FILE
from studio.engine.methods.sensitivity import FILE_NAME as SENSITIVITY_FILE
from studio.engine.models import LoadedModel
from studio.engine.pruning.protection import without_hazards
from studio.engine.training import is_main_process, seed_everything
from studio.engine.training.pool import worker_devices

SEARCH_FILE = "search.json"
SEARCH_FORMAT = "studio-search-1"
WINNER_FOLDER = "winner"


def prepare_search_folder(out_dir: Path, recipe: Recipe, resume: bool) -> None:
    """Make ``out_dir`` the search's workspace; a resume must find the same search there."""
    marker = out_dir / SEARCH_FILE
    if not resume:
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
            hint = ("Add --resume to continue the search recorded there, or choose a new folder."
                    if marker.is_file() else "Choose a new folder; the studio never overwrites an earlier run.")
            raise StudioError(f"The output folder {out_dir} already exists and is not empty.", hint)
        write_text(marker, json.dumps({"format": SEARCH_FORMAT, "recipe": recipe.to_dict()}, indent=2) + "\n")
        return
    if not marker.is_file():
        raise StudioError(f"There is no search to resume in {out_dir} (no {SEARCH_FILE}).",
                          "Run the same command without --resume to start the search.")
    try:
        saved = json.loads(marker.read_text())
    except ValueError as exc:
        raise StudioError(f"{marker} is damaged.", "Start the search again in a new folder.") from exc
    now, then = _comparable(recipe.to_dict()), _comparable(saved.get("recipe") or {})
    if then != now:
        changed = sorted(k for k, v in now.items() if then.get(k) != v)
        raise StudioError(f"The search in {out_dir} was started with other settings ({', '.join(changed)}).",
                          "Resume with the settings it started with, or start a new search in a new folder.")
    if (out_dir / "metrics.json").is_file():
        raise StudioError(f"The search in {out_dir} has already finished.", "Open its report.html, or start a new one.")


def _comparable(recipe: dict) -> dict:
    """A recipe as a resume compares it: how many trials run at once does not change the result."""
    search = {k: v for k, v in (recipe.get("search") or {}).items() if k != "parallel"}
    return {**recipe, "search": search} if "search" in recipe else recipe


def winner_recipe(recipe: Recipe, plan, reconstruct: Optional[dict] = None) -> Recipe:
    """The search recipe with the winner's plan (and the refit its trials made, if any) and no search:
    what `studio run` repeats."""
    winner = copy.deepcopy(recipe)
    winner.plan, winner.search = plan, None
    if reconstruct:
        winner.reconstruct = ReconstructOptions(**reconstruct)
    return winner


def _adopt(run_dir: Path, out_dir: Path) -> None:
    """Move a finished run folder's files up into the search folder."""
    for item in run_dir.iterdir():
        target = out_dir / item.name
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        item.rename(target)
    run_dir.rmdir()


def _compact_sensitivity(path: Path) -> Optional[dict]:
    """What the report shows of the analysis: per-group curves and fits, and its cost."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    keep = ("criterion", "rates", "images", "base_top1", "seconds", "probes", "seconds_per_probe")
    return {**{k: data.get(k) for k in keep},
            "groups": [{k: g.get(k) for k in ("root", "layers", "channels", "top1", "fit", "fit_base")}
                       for g in data.get("groups") or []]}


def search_inputs(recipe: Recipe, loaded: LoadedModel, bundle: DataBundle, out_dir: Optional[Path],
                  token: CancelToken) -> tuple:
    """The search method, what it works on, and its options, from the recipe."""
    method = get_method(recipe.search.method)
    options = recipe.search.method_options(recipe.measure.device, recipe.data.eval_batches)
    finetune = replace(recipe.finetune, batch_size=recipe.data.batch_size, workers=recipe.data.workers,
                       seed=recipe.seed)
    sparse = replace(recipe.sparse_training, batch_size=recipe.data.batch_size, workers=recipe.data.workers,
                     seed=recipe.seed)
    plan, _ = without_hazards(loaded.module, recipe.plan, tuple(loaded.input_size))
    inputs = MethodInput(model=loaded.module, input_size=tuple(loaded.input_size), data=bundle, plan=plan,
                         token=token, work_dir=out_dir, seed=recipe.seed, finetune=finetune, sparse_training=sparse,
                         parallel=recipe.search.parallel)
    return method, inputs, options


def run_search(recipe: Recipe, out_dir, *, token: Optional[CancelToken] = None, resume: bool = False,
               loaded: Optional[LoadedModel] = None, bundle: Optional[DataBundle] = None
               ) -> Generator[object, None, RunResult]:
    """Search, then run the winner into ``out_dir``. A search that cannot meet its targets raises
    `StudioError` naming the best point; its trials stay in ``out_dir`` either way."""
    if recipe.search is None:
        raise StudioError("This recipe has no search section.", "Run it with `studio run`, or add a search section.")
    token = token or CancelToken()
    recipe.validate()
    worker_devices(recipe.search.parallel, recipe.finetune.device)   # refuse a --parallel too high, first
    out_dir = Path(out_dir)
    main = is_main_process()
    if main:
        prepare_search_folder(out_dir, recipe, resume)
    seed_everything(recipe.seed)
    loaded, bundle = yield from load_job_inputs(recipe, loaded, bundle)
    method, inputs, options = search_inputs(recipe, loaded, bundle, out_dir, token)
    for name in sorted(set(inputs.plan.protected) - set(recipe.plan.protected)):
        yield Log(f"Left unpruned in every trial: {name} (it feeds a pattern pruning would break; see the hazards).",
                  "warning")
    found = yield from method.run(inputs, options)
    # The winner's run finds the same hazards again and reports them as protected groups.
    found.plan.protected = list(recipe.plan.protected)
    winner = winner_recipe(recipe, found.plan, found.summary.get("reconstruct"))
    yield Log(f"Winner: trial {found.summary['winner']}; running its recipe for the final model and report.")
    final = yield from run_recipe(winner, out_dir / WINNER_FOLDER, token=token, loaded=loaded, bundle=bundle)
    if not main:
        return final
    _adopt(out_dir / WINNER_FOLDER, out_dir)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    metrics["search"] = {**found.summary, "method": recipe.search.method,
                         "sensitivity": _compact_sensitivity(out_dir / SENSITIVITY_FILE),
                         "files": {"trials": TRIALS_FILE, "sensitivity": SENSITIVITY_FILE, "search": SEARCH_FILE}}
    write_text(out_dir / "metrics.json", json.dumps(json_safe(metrics), indent=2, allow_nan=False) + "\n")
    write_report(out_dir)
    yield Log(f"Search folder written: {out_dir}")
    return RunResult(run_dir=out_dir, metrics=metrics, model=final.model)
