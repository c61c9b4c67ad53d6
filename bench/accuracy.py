"""Benchmark: top-1 accuracy of every pruning criterion at one MACs reduction, before and after fine-tuning.

For each importance criterion of `studio.engine.pruning.CRITERIA` the model is pruned to the
same MACs reduction (base MACs / pruned MACs = --target-macs-reduction, 2.0 by default, within
3 %), evaluated, fine-tuned with the engine's `train` (SGD, per-step cosine schedule) and
evaluated again. The global channel rate that reaches the target is found by bisection: with
`studio.engine.pruning.estimate` (no data) where that is exact, with real prunes where it is
not (global ranking of data-driven criteria), and every pruned model's MACs are counted again
after surgery, so the reported reduction is always measured, never assumed.

The model and data are loaded once (the data is decoded into memory once by `load_data`);
the baseline top-1 is measured once and cached in the results folder as baseline.json. Each
(criterion, ranking) pair writes one result-<criterion>-<ranking>.json, atomically and only
when complete, so the benchmark can be stopped anywhere and resumed by running the same
command again: finished pairs are skipped. Progress goes to stderr, one line per phase.

    # full run (about 3 hours on a 2-core CPU for ResNet-20; minutes on a GPU)
    nohup .venv/bin/python bench/accuracy.py --model demo --data /path/to/cifar10 \\
        --epochs 3 --ranking both-for-top2 > bench/results/accuracy.log 2>&1 &
    # resume after a stop: the same command again
    # smoke run
    .venv/bin/python bench/accuracy.py --model cifar:resnet20 --data synthetic --criteria l1,random \\
        --epochs 1 --max-steps 2 --eval-batches 1 --results /tmp/acc
    # the table, from whatever results exist (works on partial results)
    .venv/bin/python bench/accuracy.py --report [--results DIR] [--markdown FILE]

Options: --target-macs-reduction 2.0, --epochs 3, --lr 0.01, --batch-size 128,
--criteria l1,l2,... (default: all), --ranking local|global|both-for-top2 (default local;
both-for-top2 adds global ranking for the two criteria with the best local top-1 after
fine-tuning), --results bench/results/accuracy, --seed 0, --max-steps N (steps per epoch),
--eval-batches N (evaluate on N batches only), --calibration-batches 4 (seeded training
batches that taylor and hrank score channels on), --device auto, --threads N.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.data import Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.engine.data import DataBundle, check_compatible, load_data  # noqa: E402
from studio.engine.errors import StudioError  # noqa: E402
from studio.engine.events import EpochEnd, Log, run_to_end  # noqa: E402
from studio.engine.files import write_text  # noqa: E402
from studio.engine.jobs import calibration_batches  # noqa: E402
from studio.engine.metrics import count_macs, count_params  # noqa: E402
from studio.engine.models import LoadedModel, load_model  # noqa: E402
from studio.engine.pruning import CRITERIA, PruneResult, PruningPlan, estimate, get_criterion, prune  # noqa: E402  # noqa: E402
from studio.engine.training import TrainConfig, evaluate, seed_everything, select_device, train  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402

DEFAULT_RESULTS = Path(__file__).resolve().parent / "results" / "accuracy"
TOLERANCE = 0.03            # allowed relative miss of the target MACs reduction
GOOD_ENOUGH = 0.005         # bisection stops early once this close to the target
SEARCH_STEPS = 16           # bisection steps at most (rate resolution 0.95 / 2**16)
MAX_RATE = 0.95
SCAN_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))   # 0.05 .. 0.95, when bisection misses
RANKINGS = ("local", "global")
RANKING_MODES = ("local", "global", "both-for-top2")
# Settings that change the numbers: a results folder holds one combination of them.
SETTING_KEYS = ("model", "data", "target_macs_reduction", "epochs", "lr", "batch_size", "seed",
                "max_steps", "eval_batches", "calibration_batches")


# --------------------------------------------------------------------------- small helpers

def say(message: str) -> None:
    """One progress line on stderr, timestamped, flushed at once so a nohup log is current."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def machine_info(device: torch.device) -> dict:
    """Where the numbers were measured: cores, CPU, torch version, device."""
    info = {"cores": os.cpu_count(), "cpu": cpu_model(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_text(m: dict) -> str:
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return (f"{m.get('cpu', '?')} ({m.get('cores', '?')} cores, torch threads: {m.get('torch_threads', '?')}), "
            f"torch {m.get('torch', '?')}, device {m.get('device', '?')}{gpu}")


def write_json(path: Path, data: dict) -> None:
    """Atomic write (temp file + rename): a stopped run never leaves a half-written file."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def result_path(results: Path, criterion: str, ranking: str) -> Path:
    return results / f"result-{criterion}-{ranking}.json"


def human(n: float) -> str:
    """1234567 → '1.23 M': counts short enough for a table column."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


def seconds(s: float) -> str:
    """Wall time for the table: tenths below 10 s, minutes above 2 min."""
    return f"{s:.1f} s" if s < 10 else f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def pct(x: Optional[float]) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


# --------------------------------------------------------------------------- arguments

def parse_args(argv: list) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", help="model spec, e.g. demo or cifar:resnet20")
    ap.add_argument("--data", default="demo", help="data spec: a CIFAR-10 folder, demo, synthetic:...")
    ap.add_argument("--target-macs-reduction", type=float, default=2.0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=128)
    # criteria and ranking default to None so that --report can tell "not given" (then it
    # reads the plan of the last run) from a choice; a run fills in all criteria / local.
    ap.add_argument("--criteria", default=None, help="comma-separated (default: all)")
    ap.add_argument("--ranking", choices=RANKING_MODES, default=None, help="default: local")
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=None, help="training steps per epoch at most (smoke runs)")
    ap.add_argument("--eval-batches", type=int, default=None, help="evaluate on this many batches only (smoke runs)")
    ap.add_argument("--calibration-batches", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--report", action="store_true", help="print the table from the result files and stop")
    ap.add_argument("--markdown", type=Path, default=None, help="with --report: also write the table here")
    args = ap.parse_args(argv)
    if args.criteria is not None:
        args.criteria = [c.strip() for c in args.criteria.split(",") if c.strip()]
        for name in args.criteria:
            get_criterion(name)   # an unknown name is a StudioError listing the valid ones
    if args.target_macs_reduction <= 1.0:
        ap.error("--target-macs-reduction must be above 1")
    return args


def settings_of(args: argparse.Namespace) -> dict:
    return {"model": args.model, "data": args.data, "target_macs_reduction": args.target_macs_reduction,
            "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
            "max_steps": args.max_steps, "eval_batches": args.eval_batches,
            "calibration_batches": args.calibration_batches}


def check_same_settings(results: Path, settings: dict) -> None:
    """Refuse to mix results of different settings in one folder (a resume must repeat the command)."""
    previous = read_json(results / "baseline.json")
    if previous is None:
        return
    old = previous.get("settings", {})
    differ = [f"{k}: {old.get(k)!r} there, {settings[k]!r} now" for k in SETTING_KEYS if old.get(k) != settings[k]]
    if differ:
        raise StudioError(f"{results} holds results made with other settings ({'; '.join(differ)}).",
                          "Resume with the same settings, or pass a new --results folder.")


# --------------------------------------------------------------------------- the benchmark

class RateSearch:
    """Looks for the rate whose MACs reduction is closest to the target; remembers every try.

    ``reduction_at(rate)`` gives base MACs / pruned MACs, or None when the rate empties a
    layer (counted as "too much"). Under local ranking the reduction grows with the rate, so
    bisection finds it. Under global ranking it need not: torch-pruning's global threshold
    can cut fewer channels at a higher rate (seen with HRank, whose integer ranks tie), so
    `scan` tries a grid and bisects every bracket that straddles the target.
    """

    def __init__(self, reduction_at: Callable[[float], Optional[float]], target: float):
        self.reduction_at = reduction_at
        self.target = target
        self.tried: dict = {}   # rate -> reduction, or None

    def at(self, rate: float) -> Optional[float]:
        if rate not in self.tried:
            self.tried[rate] = self.reduction_at(rate)
        return self.tried[rate]

    def side(self, rate: float) -> int:
        """+1 where the rate reaches the target (or empties a layer), -1 below it."""
        reduction = self.at(rate)
        return 1 if reduction is None or reduction >= self.target else -1

    def best(self) -> tuple:
        """(rate, reduction) closest to the target so far."""
        found = [(abs(red / self.target - 1), rate, red) for rate, red in self.tried.items() if red is not None]
        if not found:
            raise StudioError(f"No rate below {MAX_RATE} prunes the model without emptying a layer.",
                              "Use a smaller --target-macs-reduction.")
        _, rate, reduction = min(found)
        return rate, reduction

    def done(self) -> bool:
        return any(red is not None and abs(red / self.target - 1) <= GOOD_ENOUGH for red in self.tried.values())

    def bisect(self, lo: float, hi: float, steps: int, lo_side: int = -1) -> None:
        """Halve [lo, hi] ``steps`` times, keeping the end whose side differs from lo's (rate 0: below)."""
        for _ in range(steps):
            if self.done():
                return
            mid = (lo + hi) / 2
            if self.side(mid) == lo_side:
                lo = mid
            else:
                hi = mid

    def scan(self, grid: tuple, steps: int = 8) -> None:
        """Try every rate of ``grid``; bisect each neighbouring pair on opposite sides of the target."""
        for a, b in zip(grid, grid[1:]):
            if self.done():
                return
            if self.side(a) != self.side(b) and self.at(a) is not None and self.at(b) is not None:
                self.bisect(a, b, steps, self.side(a))


class Bench:
    """The loaded model and data, shared by every run; loaded on first use so that a resumed
    run whose pairs are all done does not decode the data set at all."""

    def __init__(self, args: argparse.Namespace, command: str):
        self.args = args
        self.command = command
        self.results: Path = args.results
        self.settings = settings_of(args)
        self.device = select_device(args.device)
        self._loaded: Optional[LoadedModel] = None
        self._bundle: Optional[DataBundle] = None
        self._calibration: Optional[list] = None
        self._eval_set = None
        self.local_rate: Optional[dict] = None   # the local-ranking rate search, shared by all criteria
        self.baseline: Optional[dict] = None

    # ---- shared inputs

    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            say(f"loading model {self.args.model}")
            # An architecture without weights gets a random init: seeded, so that a resumed
            # invocation prunes the same model the cached baseline was measured on.
            seed_everything(self.args.seed)
            self._loaded = load_model(self.args.model)
            if not self._loaded.trained:
                say("WARNING: the model has random weights (untrained): its accuracy figures mean nothing")
            self._loaded.module.to(self.device).eval()
        return self._loaded

    @property
    def bundle(self) -> DataBundle:
        if self._bundle is None:
            size = tuple(self.loaded.input_size)
            say(f"loading data {self.args.data} (decoded into memory once)")
            t = time.perf_counter()
            self._bundle = load_data(self.args.data, input_size=size, channels=size[0])
            check_compatible(self._bundle, num_classes=self.loaded.num_classes, input_size=size)
            if self._bundle.train is None:
                raise StudioError(f"The data {self.args.data} has no training split to fine-tune on.",
                                  "Pass a folder with train/ and test/ (or val/), e.g. CIFAR-10.")
            say(f"data: {self._bundle.summary()} ({time.perf_counter() - t:.1f} s)")
        return self._bundle

    @property
    def example(self) -> torch.Tensor:
        """One seeded input image: MACs are counted per image, on the model's device."""
        g = torch.Generator().manual_seed(self.args.seed)
        return torch.randn(1, *self.loaded.input_size, generator=g).to(self.device)

    @property
    def calibration(self) -> list:
        """The same few seeded training batches for every data-driven criterion."""
        if self._calibration is None:
            seed_everything(self.args.seed)   # the crops and flips of the batches come from torch's RNG
            self._calibration = calibration_batches(self.bundle, self.args.batch_size,
                                                    self.args.calibration_batches, self.args.seed)
        return self._calibration

    @property
    def eval_set(self):
        """The validation split; with --eval-batches a seeded random sample of that many batches.

        A sample rather than the first batches: ImageFolder splits are sorted by class, so
        their first batches would hold a single class.
        """
        if self._eval_set is None:
            val = self.bundle.val
            self._eval_set = val
            if self.args.eval_batches is not None:
                g = torch.Generator().manual_seed(self.args.seed)
                n = min(len(val), self.args.eval_batches * self.args.batch_size)
                self._eval_set = Subset(val, torch.randperm(len(val), generator=g)[:n].tolist())
        return self._eval_set

    def evaluate(self, model: torch.nn.Module, what: str) -> dict:
        """Top-1/top-5 on the evaluation set (the same images for the baseline and every run)."""
        t = time.perf_counter()
        r = run_to_end(evaluate(model, self.eval_set, device=self.device, batch_size=self.args.batch_size))
        say(f"  {what}: top-1 {100 * r.top1:.2f} % on {r.samples:,} images ({time.perf_counter() - t:.1f} s)")
        return {"top1": r.top1, "top5": r.top5, "loss": r.loss, "samples": r.samples}

    # ---- baseline

    def ensure_baseline(self) -> dict:
        """The unpruned model's numbers: measured once, then read from baseline.json."""
        path = self.results / "baseline.json"
        cached = read_json(path)
        if cached is not None:
            say(f"baseline: cached in {path} (top-1 {100 * cached['top1']:.2f} %)")
            self.baseline = cached
            return cached
        say("baseline: evaluating the unpruned model")
        t = time.perf_counter()
        model = self.loaded.module
        ev = self.evaluate(model, "baseline")
        self.baseline = {
            "model": self.args.model, "data": self.args.data, "trained": self.loaded.trained,
            "params": count_params(model), "macs": count_macs(model, self.loaded.input_size),
            **ev, "seconds": time.perf_counter() - t, "settings": self.settings,
            "command": self.command, "machine": machine_info(self.device), "date": now_iso()}
        write_json(path, self.baseline)
        return self.baseline

    # ---- rate search

    def plan(self, criterion: str, ranking: str, rate: float) -> PruningPlan:
        return PruningPlan(criterion=criterion, rate=rate, global_ranking=ranking == "global")

    def macs_by_estimate(self, criterion: str, ranking: str) -> Callable[[float], int]:
        """MACs after pruning at a rate, predicted without data (exact unless noted in `search`)."""
        def macs(rate: float) -> int:
            seed_everything(self.args.seed)   # the random criterion draws its scores from torch's RNG
            return estimate(self.loaded.module, self.plan(criterion, ranking, rate), self.example)[1]
        return macs

    def macs_by_prune(self, criterion: str, ranking: str) -> Callable[[float], int]:
        """MACs after a real prune at a rate (with calibration data where the criterion needs it)."""
        def macs(rate: float) -> int:
            return self.prune(criterion, ranking, rate, quiet=True).macs_after
        return macs

    def search(self, criterion: str, ranking: str, method: str) -> dict:
        """The global rate for the target MACs reduction: rate, predicted reduction, method, tries."""
        macs_of = self.macs_by_estimate(criterion, ranking) if method == "estimate" \
            else self.macs_by_prune(criterion, ranking)
        base = self.baseline["macs"]

        def reduction_at(rate: float) -> Optional[float]:
            try:
                return base / macs_of(rate)
            except StudioError:
                return None   # the rate empties some layer
        t = time.perf_counter()
        search = RateSearch(reduction_at, self.args.target_macs_reduction)
        search.bisect(0.0, MAX_RATE, SEARCH_STEPS)
        if not self.within(search.best()[1]):
            # MACs need not grow with the rate under global ranking (see RateSearch.scan).
            say(f"  bisection reached only {search.best()[1]:.3f}×; scanning rates "
                f"{SCAN_GRID[0]:.2f}..{SCAN_GRID[-1]:.2f}")
            search.scan(SCAN_GRID)
        rate, reduction = search.best()
        found = {"rate": rate, "predicted_reduction": reduction, "method": method,
                 "steps": len(search.tried), "seconds": time.perf_counter() - t}
        say(f"  rate {rate:.4f} → {reduction:.3f}× MACs reduction "
            f"({found['steps']} {method} steps, {found['seconds']:.1f} s)")
        return found

    def find_rate(self, criterion: str, ranking: str) -> dict:
        """The rate for this pair, searched the cheapest exact way.

        Under local ranking the channel counts depend on the rate only, so one search (by L1
        estimate) serves every criterion. Under global ranking they depend on the scores:
        data-free criteria are estimated exactly, data-driven ones (whose estimate would fall
        back to L1 scores) are pruned for real at every step.
        """
        if ranking == "local":
            if self.local_rate is None:
                say("  searching the local-ranking rate (shared by all criteria)")
                self.local_rate = self.search("l1", "local", "estimate")
            return dict(self.local_rate)
        say(f"  searching the global-ranking rate for {criterion}")
        needs_data = get_criterion(criterion).needs_data
        return self.search(criterion, ranking, "prune" if needs_data else "estimate")

    # ---- one (criterion, ranking) run

    def prune(self, criterion: str, ranking: str, rate: float, quiet: bool = False) -> PruneResult:
        seed_everything(self.args.seed)
        calib = self.calibration if get_criterion(criterion).needs_data else None

        def show(event) -> None:
            if isinstance(event, Log) and not quiet:
                say(f"  {event.message}")
        return run_to_end(prune(self.loaded.module, self.plan(criterion, ranking, rate), self.example,
                                calibration=calib), show)

    def within(self, reduction: float) -> bool:
        return abs(reduction / self.args.target_macs_reduction - 1) <= TOLERANCE

    def fine_tune(self, model: torch.nn.Module) -> float:
        """Fine-tune in place with the engine's `train`; returns its wall seconds."""
        a = self.args
        cfg = TrainConfig(epochs=a.epochs, lr=a.lr, optimizer="sgd", schedule="cosine", batch_size=a.batch_size,
                          device=a.device, seed=a.seed, max_steps_per_epoch=a.max_steps)

        def show(event) -> None:
            if isinstance(event, EpochEnd):
                say(f"  epoch {event.epoch + 1}/{event.epochs}: loss {event.train_loss:.4f}, "
                    f"train top-1 {100 * event.train_accuracy:.2f} %, {event.seconds:.1f} s")
            elif isinstance(event, Log) and event.level != "info":
                say(f"  {event.level}: {event.message}")
        # No validation set here: evaluation is done afterwards with the same --eval-batches as the baseline.
        return run_to_end(train(model, self.bundle.train, None, cfg, phase="fine-tune"), show).seconds

    def run_pair(self, criterion: str, ranking: str) -> dict:
        """Search, prune, evaluate, fine-tune, evaluate; write one result file."""
        t0 = time.perf_counter()
        say(f"{criterion} / {ranking}: start")
        found = self.find_rate(criterion, ranking)
        say(f"{criterion} / {ranking}: pruning at rate {found['rate']:.4f}")
        t = time.perf_counter()
        pruned = self.prune(criterion, ranking, found["rate"])
        prune_seconds = time.perf_counter() - t
        reduction = pruned.macs_before / pruned.macs_after
        if not self.within(reduction) and found["method"] == "estimate":
            # The estimate missed (a criterion that skips some groups, or random scores drawn
            # differently): search again with real prunes, which measure exactly this model.
            say(f"  the estimate missed ({reduction:.3f}×); searching again with real prunes")
            found = self.search(criterion, ranking, "prune")
            pruned = self.prune(criterion, ranking, found["rate"])
            reduction = pruned.macs_before / pruned.macs_after
        if not self.within(reduction):
            say(f"  WARNING: {reduction:.3f}× is outside {self.args.target_macs_reduction}× ± {TOLERANCE:.0%}")
        model = pruned.model
        say(f"{criterion} / {ranking}: evaluating before fine-tuning")
        before = self.evaluate(model, "before fine-tuning")
        say(f"{criterion} / {ranking}: fine-tuning {self.args.epochs} epoch(s)")
        ft_seconds = self.fine_tune(model)
        say(f"{criterion} / {ranking}: evaluating after fine-tuning")
        after = self.evaluate(model, "after fine-tuning")
        result = {
            "criterion": criterion, "ranking": ranking, "rate": found["rate"], "rate_search": found,
            "params_before": pruned.params_before, "params_after": pruned.params_after,
            "macs_before": pruned.macs_before, "macs_after": pruned.macs_after,
            "macs_reduction": reduction, "target_macs_reduction": self.args.target_macs_reduction,
            "within_tolerance": self.within(reduction),
            "top1_before_ft": before["top1"], "top5_before_ft": before["top5"],
            "top1_after_ft": after["top1"], "top5_after_ft": after["top5"], "eval_samples": after["samples"],
            "baseline_top1": self.baseline["top1"],
            "delta_vs_baseline_points": 100 * (after["top1"] - self.baseline["top1"]),
            "prune_seconds": prune_seconds, "finetune_seconds": ft_seconds,
            "wall_seconds": time.perf_counter() - t0,
            "seed": self.args.seed, "settings": self.settings, "command": self.command,
            "machine": machine_info(self.device), "date": now_iso()}
        path = result_path(self.results, criterion, ranking)
        write_json(path, result)
        say(f"{criterion} / {ranking}: done in {result['wall_seconds']:.0f} s → {path}")
        del model, pruned
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return result


# --------------------------------------------------------------------------- plan and runs

def top2_local(results: Path, criteria: list) -> list:
    """The two criteria with the best local top-1 after fine-tuning (among finished results).

    Ties keep the order of ``criteria`` (the sort is stable), so the choice is repeatable.
    """
    done = [r for r in (read_json(result_path(results, c, "local")) for c in criteria) if r]
    done.sort(key=lambda r: -r["top1_after_ft"])
    return [r["criterion"] for r in done[:2]]


def planned_pairs(criteria: list, mode: str, results: Path) -> tuple[list, int]:
    """(pairs known now, how many runs the mode plans in all); top-2 pairs appear once chosen."""
    if mode in RANKINGS:
        pairs = [(c, mode) for c in criteria]
        return pairs, len(pairs)
    pairs = [(c, "local") for c in criteria]
    total = len(pairs) + min(2, len(criteria))
    if all(result_path(results, c, "local").exists() for c in criteria):
        pairs += [(c, "global") for c in top2_local(results, criteria)]
    return pairs, total


def run_benchmark(args: argparse.Namespace, command: str) -> int:
    """Every planned pair not yet done; returns the process exit code."""
    results: Path = args.results
    settings = settings_of(args)
    check_same_settings(results, settings)
    # The plan tells the report how many runs to expect; the latest invocation's plan wins.
    write_json(results / "plan.json", {"criteria": args.criteria, "ranking": args.ranking,
                                       "settings": settings, "command": command, "date": now_iso()})
    bench = Bench(args, command)
    started = time.perf_counter()
    say(f"accuracy benchmark: {command}")
    bench.ensure_baseline()
    failed = []

    def run_all(pairs: list) -> None:
        for criterion, ranking in pairs:
            path = result_path(results, criterion, ranking)
            if path.exists():
                say(f"{criterion} / {ranking}: skip (done: {path.name})")
                continue
            try:
                bench.run_pair(criterion, ranking)
            except StudioError as exc:
                # Keep going: one criterion that cannot prune this model must not cost the others' hours.
                say(f"{criterion} / {ranking}: FAILED: {exc}")
                failed.append(f"{criterion}/{ranking}")

    run_all([(c, "local" if args.ranking != "global" else "global") for c in args.criteria])
    if args.ranking == "both-for-top2":
        top = top2_local(results, args.criteria)
        say(f"top-2 by local top-1 after fine-tuning: {', '.join(top) or 'none'}; adding global ranking")
        run_all([(c, "global") for c in top])
    pairs, total = planned_pairs(args.criteria, args.ranking, results)
    done = sum(result_path(results, c, r).exists() for c, r in pairs)
    say(f"finished: {done} of {total} planned runs done, {len(failed)} failed"
        f"{' (' + ', '.join(failed) + ')' if failed else ''}; {time.perf_counter() - started:.0f} s in this invocation")
    return 1 if failed else 0


# --------------------------------------------------------------------------- report

def load_results(results: Path) -> list:
    rows = [read_json(p) for p in sorted(results.glob("result-*.json"))]
    return [r for r in rows if r is not None]


def report_markdown(results: Path, criteria: Optional[list] = None, mode: Optional[str] = None) -> str:
    """The markdown table of every result file in ``results``, with baseline, plan progress and provenance."""
    baseline = read_json(results / "baseline.json")
    plan = read_json(results / "plan.json") or {}
    rows = load_results(results)
    if baseline is None and not rows:
        return f"No accuracy results in {results} yet.\n"
    criteria = criteria or plan.get("criteria") or list(CRITERIA)
    mode = mode or plan.get("ranking") or "local"
    order = {c: i for i, c in enumerate(CRITERIA)}
    rows.sort(key=lambda r: (RANKINGS.index(r["ranking"]) if r["ranking"] in RANKINGS else 9,
                             -r["top1_after_ft"], order.get(r["criterion"], 99)))
    settings = (baseline or rows[0]).get("settings", {})
    lines = [f"# Pruning accuracy: {settings.get('model', '?')} on {settings.get('data', '?')}", "",
             f"Target MACs reduction {settings.get('target_macs_reduction', '?')}× (± {TOLERANCE:.0%}); "
             f"fine-tuning {settings.get('epochs', '?')} epoch(s), SGD lr {settings.get('lr', '?')} cosine, "
             f"batch {settings.get('batch_size', '?')}"
             + (f", at most {settings['max_steps']} steps/epoch" if settings.get("max_steps") else "")
             + (f"; evaluated on {settings['eval_batches']} batch(es) only" if settings.get("eval_batches") else "")
             + ".", "",
             "| criterion | ranking | rate | params | MACs | MACs reduction | top-1 before FT | top-1 after FT "
             "| Δ vs baseline (points) | FT time |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    if baseline is not None:
        lines.append(f"| baseline (unpruned) | — | 0 | {human(baseline['params'])} | {human(baseline['macs'])} "
                     f"| 1.00× | {pct(baseline['top1'])} | — | — | — |")
    for r in rows:
        mark = "" if r.get("within_tolerance", True) else " †"
        lines.append(f"| {r['criterion']} | {r['ranking']} | {r['rate']:.4f} | {human(r['params_after'])} "
                     f"| {human(r['macs_after'])} | {r['macs_reduction']:.3f}×{mark} | {pct(r['top1_before_ft'])} "
                     f"| {pct(r['top1_after_ft'])} | {r['delta_vs_baseline_points']:+.2f} "
                     f"| {seconds(r['finetune_seconds'])} |")
    pairs, total = planned_pairs(criteria, mode, results)
    present = {(r["criterion"], r["ranking"]) for r in rows}
    missing = [f"{c}/{r}" for c, r in pairs if (c, r) not in present]
    if mode == "both-for-top2" and len(pairs) < total:
        missing.append("global ranking for the top-2 criteria (chosen once all local runs are done)")
    lines += ["", f"**Progress:** {sum(p in present for p in pairs)} of {total} planned runs done "
                  f"(criteria {', '.join(criteria)}; ranking {mode})."]
    if missing:
        lines.append(f"Not done yet: {', '.join(missing)}.")
    if any(not r.get("within_tolerance", True) for r in rows):
        lines.append(f"† MACs reduction outside the target ± {TOLERANCE:.0%}: no rate up to {MAX_RATE} reached it "
                     "(see rate_search in the result file); not comparable with the other rows.")
    if baseline is not None:
        lines.append(f"Baseline top-1 measured on {baseline['samples']:,} images"
                     + ("" if baseline.get("trained", True) else " — the model is untrained (random weights), "
                        "so these accuracies mean nothing") + ".")
    wall = sum(r.get("wall_seconds", 0.0) for r in rows) + (baseline or {}).get("seconds", 0.0)
    provenance = [baseline] + rows if baseline else rows
    commands = sorted({p["command"] for p in provenance if p.get("command")})
    machines = sorted({machine_text(p["machine"]) for p in provenance if p.get("machine")})
    dates = sorted(p["date"] for p in provenance if p.get("date"))
    lines += ["", f"- Command{'s' if len(commands) > 1 else ''}: " + "; ".join(f"`{c}`" for c in commands),
              f"- Seed: {settings.get('seed', '?')}",
              f"- Machine{'s' if len(machines) > 1 else ''}: " + "; ".join(machines),
              f"- Total wall time: {seconds(wall)} (the baseline, with the first loading of model and data, "
              "plus every finished run's search, "
              "prune, evaluations and fine-tuning)",
              f"- Dates: {dates[0]} to {dates[-1]}" if dates else "- Dates: —"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- entry point

def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        command = "python bench/accuracy.py " + shlex.join(argv)
        if args.report:
            text = report_markdown(args.results, args.criteria, args.ranking)
            print(text, end="")
            if args.markdown is not None:
                write_text(args.markdown, text)
                say(f"report written to {args.markdown}")
            return 0
        args.criteria = args.criteria or list(CRITERIA)
        args.ranking = args.ranking or "local"
        return run_benchmark(args, command)
    except StudioError as exc:
        say(f"error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
