"""Structured + unstructured pruning pushed to an accuracy floor: a heuristic, and the brute-force grid.

Tian, Yamagiwa and Wada ("Heuristic Method for Minimizing Model Size of CNN by Combining
Multiple Pruning Techniques", Sensors 22(15):5874, 2022) combine network slimming (sparse
training on the BatchNorm scales γ, then removing the channels with the smallest γ) with
deep compression's magnitude pruning of what remains, and push both rates as far as an
accuracy floor allows, to minimise the size on disk (``size=min``). Both methods here share
that chain (sparse training once, then per trial: prune channels by γ at rate s, zero the
smallest remaining weights at rate u, fine-tune with the zeros held, evaluate, measure the
compressed size) and differ only in which (s, u) pairs they try:

- ``grid`` tries every pair of the grid at the stated resolution: the reference.
- ``heuristic`` raises s in steps that halve after each failure (start 4 grid steps: try
  s + step; if the floor holds keep it, else halve the step) until the step is below the
  resolution, then does the same for u with s fixed. Each phase needs about
  log2(range / resolution) + a few trials, so at resolution 0.1 it takes some 8-12 trials
  where the grid takes 100: the floor is a threshold along each axis, and a halving search
  finds a threshold in logarithmically many probes. It assumes, as the paper does, that
  accuracy falls with each rate, so the best s is found first and u on top of it.

Trials are recorded in ``trials.jsonl`` and replayed by their (s, u) on a resumed search.
The grid's trials do not depend on each other, so with ``parallel`` N they run N at a time
(`studio.engine.training.pool`); the heuristic's each depend on the last, and run in turn.
"""
from __future__ import annotations

import copy
import time
from dataclasses import replace
from typing import Generator, Optional

import torch

from studio.engine.errors import StudioError
from studio.engine.events import Log, Phase, TrialEnd
from studio.engine.methods.base import Method, MethodInput, MethodResult, Option, register
from studio.engine.methods.search import read_trials, write_trials
from studio.engine.methods.sensitivity import calibration_split
from studio.engine.methods.targets import parse_targets
from studio.engine.metrics import compressed_size_bytes
from studio.engine.pruning import PruningPlan
from studio.engine.pruning.protection import RunsAsBefore, prune_with_protection
from studio.engine.training import FixedZeros, TrainConfig, evaluate, train
from studio.engine.training.pool import describe, run_parallel, worker_devices

STRUCTURED_CRITERION = "bn_scale"   # network slimming removes the channels with the smallest |γ|
HEURISTIC_START_STEPS = 4           # the heuristic's first step, in grid steps


def grid_points(resolution: float, top: float) -> list[float]:
    """0, resolution, 2·resolution, ... up to ``top`` (rounded so keys compare exactly)."""
    n = int(round(top / resolution + 1e-9))
    return [round(i * resolution, 4) for i in range(n + 1)]


class _PairTrials:
    """Runs (or replays) one trial of the chain at a (structured, unstructured) pair."""

    def __init__(self, inputs: MethodInput, options: dict, slim, floor: float, original_size: float):
        self.inputs, self.options, self.slim = inputs, options, slim
        self.floor, self.original_size = floor, original_size
        self.recorded = {(t["structured"], t["unstructured"]): t for t in read_trials(inputs.work_dir)
                         if "structured" in t}
        self.done: list[dict] = []
        self.ran = "one at a time"
        data = inputs.data
        self.calibration = calibration_split(data.train if data.train is not None else data.val, 64, 32, inputs.seed)

    def plan(self, s: float, u: float) -> PruningPlan:
        base = self.inputs.plan or PruningPlan()
        return PruningPlan(criterion=STRUCTURED_CRITERION, rate=s, protected=list(base.protected),
                           round_to=base.round_to, unstructured_sparsity=u)

    def evaluate(self, model) -> Generator[object, None, float]:
        cfg = self.inputs.finetune or TrainConfig()
        result = yield from evaluate(model, self.inputs.data.val, batch_size=cfg.batch_size, device=cfg.device,
                                     max_batches=self.options["eval_batches"] or None, token=self.inputs.token,
                                     phase="trial")
        return result.top1

    def feasible(self, s: float, u: float) -> Generator[object, None, bool]:
        """Run the trial at (s, u) (or take its record) and say whether it holds the floor."""
        key = (round(s, 4), round(u, 4))
        known = self._find(key)
        if known is None:
            known = self.recorded.get(key)
            if known is not None:
                yield Log(f"Trial s={key[0]:.2f}, u={key[1]:.2f}: recorded earlier, not run again.")
            else:
                self.inputs.token.check("trial")
                known = yield from self._run(*key)
            known = yield from self._keep(known, len(self.done))
        return known["floor_ok"]

    def every(self, points: list[tuple[float, float]], devices: list[str]) -> Generator[object, None, None]:
        """Every point, in turn or ``len(devices)`` at a time; trial k is the k-th point either way."""
        keys = [(round(s, 4), round(u, 4)) for s, u in points]
        if len(devices) <= 1:
            for key in keys:
                yield from self.feasible(*key)
            return
        for k, key in enumerate(keys):
            if key in self.recorded and self._find(key) is None:
                yield from self._keep(self.recorded[key], k)
        todo = [(k, key) for k, key in enumerate(keys) if self._find(key) is None]
        self.ran = describe(devices)
        yield Log(f"{len(todo)} trial(s) to run, {self.ran}.")
        shared = copy.copy(self)
        shared.inputs = replace(self.inputs, token=None)   # each worker gets a token shared with this process
        yield from run_parallel(_pair_trial, shared, [key for _, key in todo], devices, self.inputs.token,
                                lambda i, record: self._keep(record, todo[i][0]))

    def _find(self, key) -> Optional[dict]:
        return next((t for t in self.done if (t["structured"], t["unstructured"]) == key), None)

    def _keep(self, record: dict, trial: int) -> Generator[object, None, dict]:
        """Add a finished trial as number ``trial``, record it, and announce it."""
        record = {**record, "trial": trial}
        self.done = sorted([*self.done, record], key=lambda t: t["trial"])
        write_trials(self.inputs.work_dir, self.done)
        best = best_pair(self.done)
        yield TrialEnd(trial, record, best["trial"] if best else None)
        return record

    def _run(self, s: float, u: float) -> Generator[object, None, dict]:
        started = time.perf_counter()
        token = self.inputs.token
        yield Phase("trial", f"Trial: {s:.0%} of channels by γ, then {u:.0%} of the remaining weights")
        plan = self.plan(s, u)
        try:
            example = self._example()
            pruned, _ = yield from prune_with_protection(self.slim, plan, example, check=RunsAsBefore(self.slim, example),
                                                         calibration=self.calibration, token=token)
        except StudioError as exc:   # e.g. a rate that would empty a layer: this pair is infeasible
            yield Log(f"Trial s={s:.2f}, u={u:.2f} cannot be pruned: {exc.problem}", "warning")
            return self._record(s, u, plan, None, 0.0, 0.0, started, note=exc.problem)
        model = pruned.model.cpu().eval()
        cfg = self.inputs.finetune
        if cfg is not None and cfg.epochs > 0:
            yield from train(model, self.inputs.data.train, None, replace(cfg, seed=self.inputs.seed),
                             phase="trial", token=token, fixed_zeros=FixedZeros.of(model))
            model = model.cpu().eval()
        top1 = yield from self.evaluate(model)
        return self._record(s, u, plan, float(compressed_size_bytes(model)), top1, pruned.sparsity, started)

    def _example(self):
        return torch.randn(1, *self.inputs.input_size, generator=torch.Generator().manual_seed(self.inputs.seed))

    def _record(self, s, u, plan, size, top1, zeros, started, note: str = "") -> dict:
        ok = size is not None and top1 >= self.floor
        return {"structured": s, "unstructured": u, "layer_rates": {}, "plan": plan.to_dict(),
                "figures": {"size": size} if size is not None else {},
                "ratios": {"size": self.original_size / size} if size else {},
                "top1": top1, "zeros": zeros, "met": size is not None, "floor_ok": ok, "note": note,
                "seconds": round(time.perf_counter() - started, 2)}


def _pair_trial(trials: _PairTrials, key: tuple, device: str, token) -> Generator[object, None, dict]:
    """One grid trial in a worker process, on that worker's device."""
    cfg = replace(trials.inputs.finetune or TrainConfig(epochs=0), device=device)
    trials.inputs = replace(trials.inputs, token=token, finetune=cfg)
    return (yield from trials._run(*key))


def best_pair(trials: list[dict]) -> Optional[dict]:
    """The smallest model that holds the floor."""
    ok = [t for t in trials if t["floor_ok"]]
    return min(ok, key=lambda t: t["figures"]["size"]) if ok else None


class _RatePairSearch(Method):
    """What ``heuristic`` and ``grid`` share: the options, the sparse training, the outcome."""
    needs_data = True
    paper = ("Tian, Yamagiwa, Wada, \"Heuristic Method for Minimizing Model Size of CNN by Combining Multiple "
             "Pruning Techniques\", Sensors 22(15):5874, 2022")
    options = (
        Option("targets", "texts", ["size=min"], "size=min: the smallest compressed size the floor allows"),
        Option("max_drop", "float", 1.0, "points of top-1 the result may lose against the original", minimum=0.0,
               maximum=100.0),
        Option("resolution", "float", 0.1, "step between the rates tried", minimum=0.01, maximum=0.5),
        Option("max_structured", "float", 0.9, "the largest channel rate tried", minimum=0.0, maximum=0.95),
        Option("max_unstructured", "float", 0.9, "the largest weight sparsity tried", minimum=0.0, maximum=0.99),
        Option("eval_batches", "int", 0, "validation batches per trial evaluation (0: all)", minimum=0),
    )

    def pairs(self, trials: _PairTrials, options: dict, devices: list[str]) -> Generator[object, None, None]:
        raise NotImplementedError

    def run(self, inputs: MethodInput, options: dict) -> Generator[object, None, MethodResult]:
        self.check_input(inputs)
        targets = parse_targets(options["targets"])
        if len(targets) != 1 or not targets[0].minimize:
            raise StudioError(f"The {self.name} method pushes the size to the accuracy floor: its target is size=min "
                              f"(got {', '.join(t.text for t in targets)}).",
                              "Use --target size=min, or --method allocate for a fixed target such as macs=2x.")
        devices = worker_devices(inputs.parallel, (inputs.finetune or TrainConfig()).device)
        model = copy.deepcopy(inputs.model).cpu().eval()
        original_size = float(compressed_size_bytes(model))
        slim = yield from self._sparse_train(inputs, model)
        trials = _PairTrials(replace(inputs, model=model), options, slim, 0.0, original_size)
        original_top1 = yield from trials.evaluate(model)
        trials.floor = original_top1 - options["max_drop"] / 100
        yield Log(f"Original: {original_size / 1e3:.1f} kB compressed, top-1 {original_top1:.2%}; "
                  f"floor {trials.floor:.2%}; {self.name} over rates at resolution {options['resolution']:g}.")
        yield from self.pairs(trials, options, devices)
        summary = {"targets": ["size=min"], "max_drop": options["max_drop"], "floor": trials.floor,
                   "original": {"top1": original_top1, "size": original_size}, "trials": trials.done,
                   "resolution": options["resolution"], "ran": trials.ran,
                   "grid_size": len(grid_points(options["resolution"], options["max_structured"]))
                   * len(grid_points(options["resolution"], options["max_unstructured"]))}
        best = best_pair(trials.done)
        if best is None:
            summary.update(outcome="not met", winner=None)
            top = max(trials.done, key=lambda t: t["top1"])
            raise StudioError(f"No trial holds the floor of {trials.floor:.2%} (at most {options['max_drop']:g} "
                              f"point(s) lost): the best reached {top['top1']:.2%} at s={top['structured']:.2f}, "
                              f"u={top['unstructured']:.2f}.",
                              "Allow a larger drop (--max-drop), shorten or drop sparse training, or give each "
                              "trial more fine-tuning. The trials are kept in trials.jsonl.")
        summary.update(outcome="met", winner=best["trial"])
        return MethodResult(model=None, plan=PruningPlan.from_dict(best["plan"]), summary=summary)

    def _sparse_train(self, inputs: MethodInput, model) -> Generator[object, None, object]:
        """Network slimming's sparse training (L1 on γ), once for every trial; the model itself otherwise."""
        cfg = inputs.sparse_training
        if cfg is None or cfg.epochs <= 0:
            return model
        if inputs.data.train is None:
            raise StudioError("Sparse training needs a training split, and the data has none.",
                              "Use data with a training split, or set the sparse-training epochs to 0.")
        slim = copy.deepcopy(model)
        yield from train(slim, inputs.data.train, None, replace(cfg, seed=inputs.seed), phase="sparse-train",
                         token=inputs.token, fixed_zeros=FixedZeros.of(slim))
        return slim.cpu().eval()


@register
class GridSearch(_RatePairSearch):
    """Every (structured, unstructured) pair at the resolution: the brute-force reference."""
    name = "grid"
    title = "Size to the floor: brute-force grid"

    def pairs(self, trials: _PairTrials, options: dict, devices: list[str]) -> Generator[object, None, None]:
        yield from trials.every([(s, u) for s in grid_points(options["resolution"], options["max_structured"])
                                 for u in grid_points(options["resolution"], options["max_unstructured"])], devices)


@register
class HeuristicSearch(_RatePairSearch):
    """Structured rate first, then unstructured, each by a step that halves after each failure."""
    name = "heuristic"
    title = "Size to the floor: structured, then unstructured (Tian et al. 2022)"

    def pairs(self, trials: _PairTrials, options: dict, devices: list[str]) -> Generator[object, None, None]:
        if len(devices) > 1:
            yield Log("The heuristic's trials each depend on the one before, so they run one at a time.")
        res = options["resolution"]
        s = yield from self._push(trials, res, options["max_structured"], lambda v: (v, 0.0))
        yield from self._push(trials, res, options["max_unstructured"], lambda v: (s, v))

    @staticmethod
    def _push(trials: _PairTrials, res: float, top: float, pair) -> Generator[object, None, float]:
        """The largest grid value along one axis that holds the floor, by a halving step."""
        grid = grid_points(res, top)
        at, step = 0, HEURISTIC_START_STEPS        # indices into the grid
        yield from trials.feasible(*pair(grid[0]))  # the start (already known in the second phase)
        while step >= 1:
            nxt = min(at + step, len(grid) - 1)
            if nxt == at:
                step //= 2
                continue
            ok = yield from trials.feasible(*pair(grid[nxt]))
            if ok:
                at = nxt
            else:
                step //= 2
        return grid[at]
