"""Compress to a target under an accuracy floor: sensitivity, allocation, then verified trials.

The ``allocate`` method analyses sensitivity (or reuses a cached analysis), allocates
per-layer rates for the targets (`studio.engine.methods.allocate`), and verifies the
allocation with a trial: it prunes for real, measures the target figures, fine-tunes for
the per-trial budget and evaluates. A trial whose measured figures miss a goal (latency
is measured, not predicted) tightens that goal by the ratio it missed by and allocates
again; the first trial that meets every target within the tolerance ends the search. If
its top-1 is under the floor the targets cannot be met under it at this budget (pruning
more would only lower accuracy), and the search says so, naming the best point reached.

Every finished trial is appended to ``trials.jsonl`` in the work folder. A search started
again on the same folder replays the recorded trials instead of running them, so it
continues after Ctrl-C, a crash or a closed window and ends with the same result.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Generator, Optional

from studio.engine.errors import StudioError
from studio.engine.events import Log, Phase, TrialEnd
from studio.engine.files import write_text
from studio.engine.methods.allocate import FigureMeter, allocate, figures_text, plan_for
from studio.engine.methods.base import Method, MethodInput, MethodResult, Option, register
from studio.engine.methods.sensitivity import DEFAULT_RATES, calibration_split, data_id, load_or_analyse
from studio.engine.methods.targets import LatencySetting, measure_figure, parse_targets
from studio.engine.pruning import PruningPlan
from studio.engine.pruning.protection import RunsAsBefore, protected_layers, prune_with_protection
from studio.engine.training import FixedZeros, TrainConfig, evaluate, is_main_process, train

TRIALS_FILE = "trials.jsonl"


def read_trials(work_dir: Optional[Path]) -> list[dict]:
    """The finished trials recorded in ``work_dir`` (a torn last line, from a crash, is dropped)."""
    path = Path(work_dir) / TRIALS_FILE if work_dir else None
    if path is None or not path.is_file():
        return []
    trials = []
    for line in path.read_text().splitlines():
        try:
            trials.append(json.loads(line))
        except ValueError:
            break
    return trials


def write_trials(work_dir: Optional[Path], trials: list[dict]) -> None:
    """Rewrite ``trials.jsonl`` with every finished trial (torchrun: rank 0 only)."""
    if work_dir and is_main_process():
        write_text(Path(work_dir) / TRIALS_FILE, "".join(json.dumps(t) + "\n" for t in trials))


def best_trial(trials: list[dict]) -> Optional[dict]:
    """The most accurate trial that meets the targets and the floor; else the most accurate that meets the targets."""
    for ok in (lambda t: t["met"] and t["floor_ok"], lambda t: t["met"]):
        found = [t for t in trials if ok(t)]
        if found:
            return max(found, key=lambda t: t["top1"])
    return None


class _Trials:
    """Runs (or replays) one trial: prune, measure, fine-tune, evaluate."""

    def __init__(self, inputs: MethodInput, options: dict, meter: FigureMeter, recorded: list[dict],
                 recover=None):
        self.inputs, self.options, self.meter = inputs, options, meter
        self.recover = recover     # an optional step between surgery and fine-tuning (CaP: the refit)
        self.recorded = recorded
        self.example = meter.example
        data = inputs.data
        self.calibration = calibration_split(data.train if data.train is not None else data.val, 128, 32, inputs.seed)
        self.eval_batches = options["eval_batches"] or None
        self.check = RunsAsBefore(inputs.model, self.example)

    def evaluate(self, model) -> Generator[object, None, float]:
        cfg = self.inputs.finetune or TrainConfig()
        result = yield from evaluate(model, self.inputs.data.val, batch_size=cfg.batch_size, device=cfg.device,
                                     max_batches=self.eval_batches, token=self.inputs.token, phase="trial")
        return result.top1

    def run(self, k: int, tau: float, plan: PruningPlan, predicted: dict, floor: float
            ) -> Generator[object, None, dict]:
        if k < len(self.recorded):
            record = self.recorded[k]
            if abs(record["tau"] - tau) > 1e-9 or record["layer_rates"] != plan.layer_rates:
                raise StudioError(f"The recorded trial {k} in {TRIALS_FILE} does not match this search.",
                                  "Resume with the settings the search started with, or use a new folder.")
            yield Log(f"Trial {k}: recorded earlier, not run again.")
            return record
        started = time.perf_counter()
        token = self.inputs.token
        yield Phase("trial", f"Trial {k}: pruning and measuring")
        pruned, protected = yield from prune_with_protection(self.inputs.model, plan, self.example, check=self.check,
                                                             calibration=self.calibration, token=token)
        model = pruned.model.cpu().eval()
        figures = {t.kind: measure_figure(t.kind, model, self.inputs.input_size, self.meter.latency)
                   for t in self.meter.targets}
        top1_pruned = yield from self.evaluate(model)
        extra = {}
        if self.recover is not None:
            model = yield from self.recover(model, pruned, self.calibration)
            extra["top1_reconstructed"] = yield from self.evaluate(model)
        cfg = self.inputs.finetune
        if cfg is not None and cfg.epochs > 0:
            yield from train(model, self.inputs.data.train, None, replace(cfg, seed=self.inputs.seed),
                             phase=f"trial {k}", token=token, fixed_zeros=FixedZeros.of(model))
            model = model.cpu().eval()
        top1 = yield from self.evaluate(model)
        original = self.meter.original
        return {"trial": k, "tau": tau, "layer_rates": dict(plan.layer_rates),
                "figures": figures, "predicted": predicted,
                "ratios": {kind: original[kind] / max(v, 1e-12) for kind, v in figures.items()},
                "top1_pruned": top1_pruned, **extra, "top1": top1, "protected": protected_layers(protected),
                "met": self.meter.met(figures, self.options["tolerance"]), "floor_ok": top1 >= floor,
                "seconds": round(time.perf_counter() - started, 2)}


@register
class TargetSearch(Method):
    """Per-layer rates for targets under an accuracy floor, verified by trials."""
    name = "allocate"
    title = "Compress to a target (sensitivity allocation)"
    paper = "binary structural search as in CaP (Xie et al., 2021) and FastNAS; AIMET-style equal-accuracy allocation"
    needs_data = True
    options = (
        Option("targets", "texts", ["macs=2x"], "what to reach: macs=2x, params=0.5M, size=100kB, latency=3ms"),
        Option("max_drop", "float", 1.0, "points of top-1 the result may lose against the original", minimum=0.0,
               maximum=100.0),
        Option("max_trials", "int", 6, "verified trials at most", minimum=1),
        Option("tolerance", "float", 0.02, "how far above a goal a measured figure may be (0.02: 2 %)",
               minimum=0.0, maximum=0.5),
        Option("rates", "floats", list(DEFAULT_RATES), "sensitivity grid", minimum=0.01, maximum=0.99),
        Option("images", "int", 1000, "validation images per sensitivity probe", minimum=10),
        Option("eval_batches", "int", 0, "validation batches per trial evaluation (0: all)", minimum=0),
        Option("latency_device", "str", "cpu", "device latency targets are measured on"),
        Option("latency_batch", "int", 1, "batch size latency targets are measured at", minimum=1),
    )

    def run(self, inputs: MethodInput, options: dict) -> Generator[object, None, MethodResult]:
        self.check_input(inputs)
        targets = parse_targets(options["targets"])
        if any(t.minimize for t in targets):
            raise StudioError("size=min is pushed to the accuracy floor by the heuristic or grid methods; the "
                              "allocation needs a goal such as size=100kB or macs=2x.",
                              "Use --method heuristic (or grid) with --target size=min.")
        latency = LatencySetting(options["latency_device"], options["latency_batch"])
        if any(t.kind == "latency" for t in targets):
            latency.check()
        if inputs.data.val is None or len(inputs.data.val) == 0:
            raise StudioError("A target search evaluates every trial, and the data has no validation split.",
                              "Use data with a validation (test) split.")
        if (inputs.finetune is not None and inputs.finetune.epochs > 0) and inputs.data.train is None:
            raise StudioError("Trials fine-tune, and the data has no training split.",
                              "Use data with a training split, or set the trial epochs to 0.")
        base = inputs.plan or PruningPlan()
        base.validate(inputs.model)
        model = copy.deepcopy(inputs.model).cpu().eval()
        inputs = replace(inputs, model=model)
        curves = yield from self._curves(inputs, options)
        yield Phase("allocate", f"Allocating rates for {', '.join(t.text for t in targets)}")
        meter = FigureMeter(model, inputs.input_size, targets, latency)
        trials = _Trials(inputs, options, meter, read_trials(inputs.work_dir), self.recover(inputs, options))
        original_top1 = yield from trials.evaluate(model)
        floor = original_top1 - options["max_drop"] / 100
        yield Log(f"Original: {', '.join(t.describe(meter.original[t.kind]) for t in targets)}, "
                  f"top-1 {original_top1:.2%}; floor {floor:.2%}.")

        done: list[dict] = []
        scale: dict = {}
        for k in range(options["max_trials"]):
            met, _ = allocate(curves, meter, base, scale)
            plan = plan_for(curves, met.group_rates, base)
            yield Log(f"Trial {k}: threshold {met.tau:.4f} per group, predicted {figures_text(meter, met.figures)}.")
            record = yield from trials.run(k, met.tau, plan, met.figures, floor)
            done.append(record)
            write_trials(inputs.work_dir, done)
            best = best_trial(done)
            yield TrialEnd(k, record, best["trial"] if best and best["floor_ok"] else None)
            if record["met"]:
                break
            # A measured figure above its goal: ask the allocator for that much less next time.
            for t in targets:
                goal = t.goal(meter.original[t.kind]) * scale.get(t.kind, 1.0)
                if record["figures"][t.kind] > goal * (1 + options["tolerance"]):
                    scale[t.kind] = scale.get(t.kind, 1.0) * goal / record["figures"][t.kind]
        summary = {"targets": [t.text for t in targets], "max_drop": options["max_drop"], "floor": floor,
                   "original": {"top1": original_top1, **meter.original}, "trials": done,
                   "sensitivity_key": curves.key}
        return self._outcome(done, summary, base, meter, options["tolerance"])

    def recover(self, inputs: MethodInput, options: dict):
        """A step each trial runs between surgery and fine-tuning, or None (here: none)."""
        return None

    def prepare(self, inputs: MethodInput, options: dict) -> Generator[object, None, None]:
        """The sensitivity analysis, into the user's cache, where each member of a family finds it."""
        self.check_input(inputs)
        model = copy.deepcopy(inputs.model).cpu().eval()
        yield from self._curves(replace(inputs, model=model, work_dir=None), options)

    def _curves(self, inputs: MethodInput, options: dict) -> Generator[object, None, object]:
        base = inputs.plan or PruningPlan()
        batches = calibration_split(inputs.data.val, options["images"], 250, inputs.seed)
        return (yield from load_or_analyse(inputs.model, inputs.input_size, batches, data_id=data_id(inputs.data),
                                           criterion=base.criterion, rates=options["rates"], round_to=base.round_to,
                                           work_dir=inputs.work_dir, token=inputs.token))

    def _outcome(self, done, summary, base, meter, tolerance) -> MethodResult:
        """The winner's plan, or a `StudioError` naming the best point when no trial meets targets and floor."""
        best = best_trial(done)
        if best is not None and best["floor_ok"]:
            summary.update(outcome="met", winner=best["trial"])
            plan = copy.deepcopy(base)
            plan.rate, plan.layer_rates, plan.global_ranking = 0.0, dict(best["layer_rates"]), False
            return MethodResult(model=None, plan=plan, summary=summary)
        point = best or min(done, key=lambda t: max(t["figures"][k] / meter.original[k] for k in t["figures"]))
        ratios = ", ".join(f"{v:.2f}× {k}" for k, v in point["ratios"].items())
        why = ("its top-1 is under the floor" if point["met"] else
               f"{len(done)} trial(s) did not bring the measured figures within {tolerance:.0%} of the goal")
        summary.update(outcome="not met", winner=None)
        raise StudioError(
            f"{', '.join(summary['targets'])} cannot be met with at most {summary['max_drop']:g} point(s) of top-1 "
            f"lost ({summary['floor']:.2%} floor): {why}. Best point reached: trial {point['trial']}, {ratios}, "
            f"top-1 {point['top1']:.2%}.",
            "Lower the target, allow a larger drop (--max-drop), or give each trial more fine-tuning "
            "(--trial-epochs). The trials are kept in trials.jsonl.")
