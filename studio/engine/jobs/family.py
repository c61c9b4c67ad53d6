"""A family of models in one job: one verified, exported model per target (``macs=1.5x,2x,3x,4x``).

Our reading of CACP (Liu et al., "Conditional Automated Channel Pruning for Deep Neural
Networks", arXiv:2009.09724, 2020): one process gives models at several compression rates,
because the per-layer allocation is a function of the target rate computed from shared
sensitivity curves. Here the first member analyses sensitivity and the others read the
analysis back from the cache; each member's rates come from the same curves at its own
threshold, and each is verified, fine-tuned and exported by the ordinary search job into
``members/<target>/``, a run folder of its own. ``family.json`` and ``report.html`` in the
family folder give the front. A member whose target cannot be met under the floor is
recorded as such and the family goes on. With ``resume`` finished members are kept and an
interrupted one continues. With ``parallel`` N the analysis runs once, then the members run
N at a time, each in its own process (`studio.engine.training.pool`).
"""
from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path
from typing import Generator, Optional

from studio.engine.data import DataBundle
from studio.engine.errors import StudioError
from studio.engine.events import CancelToken, Log, Phase, TrialEnd
from studio.engine.files import write_text
from studio.engine.jobs.pipeline import RunResult, json_safe, load_job_inputs
from studio.engine.jobs.recipe import Recipe
from studio.engine.jobs.report_format import escape, human_pct
from studio.engine.jobs.report_search import xy_chart
from studio.engine.jobs.search import SEARCH_FILE, run_search, search_inputs
from studio.engine.methods.targets import family_targets
from studio.engine.models import LoadedModel
from studio.engine.training import is_main_process, seed_everything
from studio.engine.training.pool import describe, run_parallel, worker_devices

FAMILY_FILE = "family.json"
MEMBERS_FOLDER = "members"


def is_family(recipe: Recipe) -> bool:
    return recipe.search is not None and family_targets(recipe.search.targets) is not None


def member_folder(out_dir: Path, target: str) -> Path:
    return Path(out_dir) / MEMBERS_FOLDER / re.sub(r"[^A-Za-z0-9.]+", "-", target)


def run_family(recipe: Recipe, out_dir, *, token: Optional[CancelToken] = None, resume: bool = False,
               loaded: Optional[LoadedModel] = None, bundle: Optional[DataBundle] = None
               ) -> Generator[object, None, RunResult]:
    """Every member's search and run folder, then the family's summary and report."""
    recipe.validate()
    out_dir = Path(out_dir)
    members = family_targets(recipe.search.targets)
    if not resume and out_dir.exists() and any(out_dir.iterdir()):
        raise StudioError(f"The output folder {out_dir} already exists and is not empty.",
                          "Add --resume to continue the family recorded there, or choose a new folder.")
    devices = worker_devices(recipe.search.parallel, recipe.finetune.device)
    if len(devices) > 1:
        rows = yield from _side_by_side(recipe, out_dir, members, token, resume, loaded, bundle, devices)
    else:
        rows = []
        for i, target in enumerate(members):
            yield Phase("family", f"Member {i + 1} of {len(members)}: {target}")
            rows.append((yield from _member(recipe, out_dir, target, token, resume, loaded, bundle)))
            if is_main_process():
                _write_summary(out_dir, recipe, rows)
    met = [r for r in rows if r["outcome"] == "met"]
    yield Log(f"Family written: {out_dir} ({len(met)} of {len(members)} members met their target and the floor).")
    return RunResult(run_dir=out_dir if is_main_process() else None,
                     metrics={"family": {"targets": members, "members": rows}}, model=None)


def _side_by_side(recipe: Recipe, out_dir: Path, members: list, token, resume: bool, loaded, bundle,
                  devices: list) -> Generator[object, None, list]:
    """The members ``len(devices)`` at a time, after one shared sensitivity analysis."""
    token = token or CancelToken()
    seed_everything(recipe.seed)   # as each member's search does before it loads: the same initial weights
    loaded, bundle = yield from load_job_inputs(recipe, loaded, bundle)
    yield Phase("family", f"Analysing sensitivity once for {len(members)} members")
    method, inputs, options = search_inputs(_for_target(recipe, members[0]), loaded, bundle, None, token)
    yield from method.prepare(inputs, options)
    yield Phase("family", f"{len(members)} members, {describe(devices)}")
    # Spawned (GPU) workers load the model and data from the recipe; forked ones inherit them.
    inherit = not devices[0].startswith("cuda")
    shared = (recipe, out_dir, resume, loaded if inherit else None, bundle if inherit else None)
    rows: dict = {}

    def finished(i: int, row: dict) -> list:
        rows[members[i]] = row
        if is_main_process():
            _write_summary(out_dir, recipe, [rows[t] for t in members if t in rows])
        return []

    yield from run_parallel(_member_in_worker, shared, members, devices, token, finished)
    return [rows[t] for t in members]


def _member_in_worker(shared: tuple, target: str, device: str, token) -> Generator[object, None, dict]:
    """One member in a worker process (its GPU, if any, is the only one it sees)."""
    recipe, out_dir, resume, loaded, bundle = shared
    return (yield from _member(recipe, out_dir, target, token, resume, loaded, bundle))


def _for_target(recipe: Recipe, target: str) -> Recipe:
    member = copy.deepcopy(recipe)
    member.search.targets = [target]
    return member


def _member(recipe: Recipe, out_dir: Path, target: str, token, resume: bool, loaded, bundle
            ) -> Generator[object, None, dict]:
    """One member's search (resumed or skipped when a resumed family already has it)."""
    folder = member_folder(out_dir, target)
    started = time.perf_counter()
    if resume and (folder / "metrics.json").is_file():
        yield Log(f"{target}: finished earlier, kept.")
        return _row(target, folder, json.loads((folder / "metrics.json").read_text()), 0.0)
    job = run_search(_for_target(recipe, target), folder, token=token, resume=resume and (folder / SEARCH_FILE).is_file(),
                     loaded=loaded, bundle=bundle)
    try:
        result = yield from _labelled(job, target)
    except StudioError as exc:
        if "cannot be met" not in exc.problem and "cannot be reached" not in exc.problem:
            raise
        yield Log(f"{target}: {exc.problem}", "warning")
        return {"target": target, "folder": str(folder.relative_to(out_dir)), "outcome": "not met",
                "note": exc.problem, "seconds": round(time.perf_counter() - started, 1)}
    return _row(target, folder, result.metrics, time.perf_counter() - started)


def _labelled(job, target: str):
    """The member's events, with its target added to every finished trial (the window's table)."""
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        yield TrialEnd(event.trial, {**event.values, "member": target}, event.best) \
            if isinstance(event, TrialEnd) else event


def _row(target: str, folder: Path, metrics: dict, seconds: float) -> dict:
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    kind = target.partition("=")[0]
    key = {"size": "compressed_bytes"}.get(kind, kind)
    figure_b, figure_a = before.get(key), after.get(key)
    return {"target": target, "folder": f"{MEMBERS_FOLDER}/{folder.name}", "outcome": "met",
            "ratio": figure_b / figure_a if figure_b and figure_a else None,
            "macs_ratio": before["macs"] / after["macs"] if before.get("macs") and after.get("macs") else None,
            "top1": after.get("top1"), "original_top1": before.get("top1"),
            "trials": len((metrics.get("search") or {}).get("trials") or []), "seconds": round(seconds, 1)}


def _write_summary(out_dir: Path, recipe: Recipe, rows: list) -> None:
    write_text(out_dir / FAMILY_FILE, json.dumps(json_safe({"recipe": recipe.to_dict(), "members": rows}),
                                                 indent=2) + "\n")
    parallel = recipe.search.parallel
    write_text(out_dir / "report.html", family_report(recipe.search.targets[0], rows,
                                                      "one at a time" if parallel == 1 else f"{parallel} at a time"))


def _member_row(r: dict) -> str:
    ratio = "" if r.get("ratio") is None else f"{r['ratio']:.2f}×"
    cells = [escape(r["target"]), escape(r["outcome"]), ratio, human_pct(r.get("top1")), str(r.get("trials", "")),
             f"{r.get('seconds', 0):.0f} s"]
    link = f'<a href="{escape(r["folder"])}/report.html">{escape(r["folder"])}</a> {escape(r.get("note", ""))}'
    return ("<tr>" + "".join(f'<td class="{"n" if 2 <= i <= 5 else ""}">{c}</td>' for i, c in enumerate(cells))
            + f"<td>{link}</td></tr>")


def family_report(family: str, rows: list, ran: str = "one at a time") -> str:
    """The family's page: its front (top-1 against each member's reduction) and one row per member."""
    met = [r for r in rows if r["outcome"] == "met"]
    original = next((r["original_top1"] for r in met if r.get("original_top1") is not None), None)
    chart = xy_chart(f"Family {family}: top-1 against reduction",
                     [("members", [(r["ratio"], 100 * r["top1"]) for r in met if r.get("top1") is not None])],
                     x_label="reduction", x_unit="×", y_unit="%", lines=True,
                     marks=[("original", 1.0, 100 * original)] if original is not None else [])
    body = "".join(_member_row(r) for r in rows)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Family "
            f"{escape(family)}</title><style>body{{font-family:system-ui,sans-serif;margin:24px;color:#1f2937}}"
            "td,th{padding:4px 10px;border-bottom:1px solid #e5e7eb}.n{text-align:right}"
            ".ct{font-weight:600;font-size:13px}.tick{font-size:11px;fill:#6b7280}.grid{stroke:#e5e7eb}"
            ".axis{stroke:#9ca3af}</style></head><body>"
            f"<h1>Family {escape(family)}</h1><p>{len(rows)} member(s), run {escape(ran)} after one shared "
            f"sensitivity analysis.</p>{chart}<table><thead><tr><th>Target</th><th>Outcome</th>"
            "<th>Reduction</th><th>Top-1</th><th>Trials</th><th>Time</th><th>Run folder</th></tr></thead>"
            f"<tbody>{body}</tbody></table></body></html>\n")
