"""Benchmark: does a 50 %-channel-pruned ResNet-50 run as much faster on CPU as its MACs say?

Builds torchvision's ResNet-50 (random weights, eval mode, input 3x224x224), prunes a copy
with the studio's engine (`PruningPlan(criterion="l1", rate=0.5)`) and, as a variant, with
channel counts rounded to multiples of 8 and 16 (`round_to`). Then measures CPU forward
latency under `torch.inference_mode` at batch 1 and batch 32: after warm-up, single timed
runs alternate between the contenders (the order rotating each round) so that background
load hits all of them alike, and the median per contender is kept.

The table gives, per batch size: base and pruned median ms, the measured speed-up
(base/pruned), the ideal speed-up (base MACs / pruned MACs) and their ratio (goal >= 0.8).
A CPU-time speed-up (thread CPU time instead of wall time) is shown beside it: it is
immune to the process being descheduled, so it shows whether a gap is load noise.

Then, at the batch sizes that miss the goal (at batch 1 alone when none does; at all of
them with --explain all), every module of base and pruned is timed with forward hooks
(thread-CPU time, alternating runs), the time is grouped by kind of operation (1x1 / 3x3
convs, stem conv, fc, BN, ReLU, residual add, pooling), the gap to the ideal is attributed
to those groups, and a short "why" note reads the numbers out.

    .venv/bin/python bench/latency.py [--runs N] [--threads 1] [--explain auto|all|none]

Takes 3-5 minutes on one busy core (a batch-32 base forward alone is ~10 s).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch_pruning as tp
import torchvision
from torch import nn
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from studio.engine.events import run_to_end  # noqa: E402
from studio.engine.pruning import PruningPlan, prune  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402

INPUT = (3, 224, 224)
GOAL = 0.8           # measured speed-up / ideal speed-up
ROUND_TO = (8, 16)   # channel-rounding variants tried


@dataclass
class Contender:
    name: str
    model: nn.Module
    macs: int                        # per image, torch-pruning's counter
    wall_ms: dict = field(default_factory=lambda: defaultdict(list))   # batch -> timed runs
    cpu_ms: dict = field(default_factory=lambda: defaultdict(list))


# --------------------------------------------------------------------------- set-up


def architecture(model: nn.Module) -> tuple:
    """Parameter shapes: two models with equal tuples have the same channel counts everywhere."""
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def build_contenders() -> list[Contender]:
    """Base, plain pruned, and the round_to variants (merged when they give the same network)."""
    torch.manual_seed(0)
    base = torchvision.models.resnet50().eval()
    x = torch.randn(1, *INPUT)
    plain = run_to_end(prune(base, PruningPlan(criterion="l1", rate=0.5), x))
    contenders = [Contender("base", base, plain.macs_before), Contender("pruned", plain.model, plain.macs_after)]
    variants: dict[tuple, tuple[list, Contender]] = {}
    for r in ROUND_TO:
        res = run_to_end(prune(base, PruningPlan(criterion="l1", rate=0.5, round_to=r), x))
        arch = architecture(res.model)
        if arch in variants:   # same network as another rounding: measuring it twice tells nothing new
            variants[arch][0].append(r)
        else:
            variants[arch] = ([r], Contender("", res.model, res.macs_after))
    for values, c in variants.values():
        c.name = "pruned, round_to=" + "/".join(map(str, values))
        if architecture(c.model) == architecture(plain.model):
            c.name += " (same channels as pruned)"
        contenders.append(c)
    return contenders


# --------------------------------------------------------------------------- timing

def time_forward(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(wall ms, thread-CPU ms) of one forward pass; with 1 thread the work runs on this thread."""
    wall, cpu = time.perf_counter(), time.thread_time()
    model(x)
    return (time.perf_counter() - wall) * 1e3, (time.thread_time() - cpu) * 1e3


def measure(contenders: list[Contender], batch: int, warmup: int, runs: int) -> None:
    """Alternate single runs between contenders, rotating who goes first, so noise is shared.

    Same definition as `studio.engine.metrics.measure_latency` (median of timed forwards
    after warm-up, inference mode), but that function copies and warms the model on every
    call, which rules out alternating single runs; hence this loop.
    """
    x = torch.randn(batch, *INPUT)
    n = len(contenders)
    with torch.inference_mode():
        for _ in range(warmup):   # warm allocator and oneDNN primitive caches of every model
            for c in contenders:
                c.model(x)
        for r in range(runs):
            for i in range(n):
                c = contenders[(i + r) % n]
                wall, cpu = time_forward(c.model, x)
                c.wall_ms[batch].append(wall)
                c.cpu_ms[batch].append(cpu)


def med(values) -> float:
    return statistics.median(values)


# --------------------------------------------------------------------------- explaining a gap

def _group(name: str, module: nn.Module) -> str:
    """Kind of operation a module's own (self) time belongs to."""
    if isinstance(module, nn.Conv2d):
        if name == "conv1":
            return "stem conv 7x7 (3 input channels)"
        return f"conv {module.kernel_size[0]}x{module.kernel_size[1]}"
    if isinstance(module, nn.Linear):
        return "fc (protected head)"
    if isinstance(module, nn.BatchNorm2d):
        return "batch norm"
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, (nn.MaxPool2d, nn.AdaptiveAvgPool2d)):
        return "pooling"
    if isinstance(module, torchvision.models.resnet.Bottleneck):
        return "residual add (+ block overhead)"
    return "other (flatten, python)"


def _work(module: nn.Module, out: torch.Tensor) -> float:
    """Work of one call: MACs for conv/fc, output elements (memory traffic) for the rest."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out.numel() * module.in_channels // module.groups * kh * kw
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return out.numel()


class ModuleTimer:
    """Thread-CPU time and work per group of operations, from forward hooks on every module."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.inclusive: dict[str, float] = defaultdict(float)   # name -> ms, module and its children
        self.work: dict[str, float] = defaultdict(float)
        self._stack: list[float] = []
        self._handles = []
        for name, m in model.named_modules():
            self._handles.append(m.register_forward_pre_hook(self._start))
            self._handles.append(m.register_forward_hook(self._stop(name)))

    def _start(self, module, inputs):
        self._stack.append(time.thread_time_ns())

    def _stop(self, name):
        def hook(module, inputs, output):
            self.inclusive[name] += (time.thread_time_ns() - self._stack.pop()) / 1e6
            if isinstance(output, torch.Tensor):
                self.work[name] += _work(module, output)
        return hook

    def reset(self):
        self.inclusive.clear()
        self.work.clear()

    def remove(self):
        for h in self._handles:
            h.remove()

    def by_group(self) -> tuple[dict, dict]:
        """(ms, work) per group; a module's self time is its time minus its direct children's."""
        ms, work = defaultdict(float), defaultdict(float)
        for name, m in self.model.named_modules():
            kids = [f"{name}.{k}" if name else k for k, _ in m.named_children()]
            group = _group(name, m)
            ms[group] += self.inclusive[name] - sum(self.inclusive[k] for k in kids)
            if not kids:
                work[group] += self.work[name]
        for name, m in self.model.named_modules():   # residual add: elements of the block's output
            if isinstance(m, torchvision.models.resnet.Bottleneck):
                work[_group(name, m)] += self.work[name]
        return ms, work


@contextlib.contextmanager
def quiet_stderr():
    """Silence the profiler's C++ start/stop log lines, which bypass Python's sys.stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def conv_kernels(model: nn.Module, x: torch.Tensor) -> dict:
    """Which ATen kernel each conv call dispatched to (oneDNN or native im2col+GEMM)."""
    with quiet_stderr(), torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x)
    wanted = {"aten::mkldnn_convolution": "oneDNN", "aten::_slow_conv2d_forward": "native im2col+GEMM"}
    return {wanted[e.key]: e.count for e in prof.key_averages() if e.key in wanted}


def breakdown(base: Contender, pruned: Contender, batch: int, rounds: int) -> dict:
    """Per-group median ms and work of base and pruned, rounds alternating between them."""
    x = torch.randn(batch, *INPUT)
    kernels = {c.name: conv_kernels(c.model, x) for c in (base, pruned)}   # also one more warm-up
    timers = {c.name: ModuleTimer(c.model) for c in (base, pruned)}
    samples = {c.name: defaultdict(list) for c in (base, pruned)}
    work = {}
    try:
        with torch.inference_mode():
            for r in range(rounds):
                for c in ((base, pruned) if r % 2 == 0 else (pruned, base)):
                    timers[c.name].reset()
                    c.model(x)
                    ms, work[c.name] = timers[c.name].by_group()
                    for g, v in ms.items():
                        samples[c.name][g].append(v)
    finally:
        for t in timers.values():
            t.remove()
    ms = {name: {g: med(v) for g, v in s.items()} for name, s in samples.items()}
    return {"ms": ms, "work": work, "kernels": kernels}


def gmacs(work: float, ms: float) -> float:
    """Throughput in GMAC/s of ``work`` MACs (whole batch) done in ``ms``."""
    return work / ms / 1e6 if ms > 0 else float("nan")


def print_breakdown(base: Contender, pruned: Contender, batch: int, data: dict) -> dict:
    """Print the per-group table; return the groups' share of the gap to the ideal (ms)."""
    ideal = base.macs / pruned.macs
    b_ms, p_ms = data["ms"][base.name], data["ms"][pruned.name]
    b_w, p_w = data["work"][base.name], data["work"][pruned.name]
    b_tot, p_tot = sum(b_ms.values()), sum(p_ms.values())
    print(f"\n#### Where the time goes, batch {batch} (thread-CPU ms per forward, median of "
          f"alternating runs, module hooks)\n")
    print("| part | base ms | pruned ms | speed-up | work shrink | base GMAC/s | pruned GMAC/s | "
          "ms over ideal |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    lost = {}
    for g in sorted(b_ms, key=lambda g: -(p_ms[g] - b_ms[g] / ideal)):
        lost[g] = p_ms[g] - b_ms[g] / ideal   # what this part costs beyond shrinking like the MACs
        is_mac = g.startswith(("conv", "stem", "fc"))
        shrink = f"{b_w[g] / p_w[g]:.2f}x {'MACs' if is_mac else 'elements'}" if p_w.get(g) else ""
        rate = (lambda w, t: f"{gmacs(w, t):.1f}" if is_mac else "")
        print(f"| {g} | {b_ms[g]:.2f} | {p_ms[g]:.2f} | {b_ms[g] / p_ms[g]:.2f}x | "
              f"{shrink} | {rate(b_w[g], b_ms[g])} | "
              f"{rate(p_w[g], p_ms[g])} | {lost[g]:+.2f} |")
    print(f"| **total** | {b_tot:.2f} | {p_tot:.2f} | {b_tot / p_tot:.2f}x | {ideal:.2f}x MACs | | | "
          f"{p_tot - b_tot / ideal:+.2f} |")
    print("\n'ms over ideal' = pruned ms - base ms / ideal speed-up; it sums to the whole gap. "
          "GMAC/s is conv/fc throughput (work per batch / time).")
    for name, k in data["kernels"].items():
        print(f"conv kernels, {name}: " + ", ".join(f"{v} {kind}" for kind, v in sorted(k.items())))
    return lost


def why_note(base: Contender, pruned: Contender, batch: int, data: dict, lost: dict) -> list[str]:
    """Plain-words reading of the breakdown: the biggest contributors to the gap, with numbers."""
    b_ms, p_ms = data["ms"][base.name], data["ms"][pruned.name]
    b_w, p_w = data["work"][base.name], data["work"][pruned.name]
    gap = sum(lost.values())
    notes = [f"batch {batch}: pruned takes {gap:.1f} ms more than an ideal {base.macs / pruned.macs:.2f}x "
             f"shrink would give ({sum(p_ms.values()):.1f} vs {sum(b_ms.values()) / (base.macs / pruned.macs):.1f} "
             f"ms thread-CPU)."]
    memory = [g for g in lost if g in ("batch norm", "relu", "pooling", "residual add (+ block overhead)")]
    mem_lost = sum(lost[g] for g in memory)
    share = (lambda ms: sum(ms[g] for g in memory) / sum(ms.values()))
    notes.append(f"memory-bound elementwise ops (BN, ReLU, residual add, pooling) account for {mem_lost:.1f} ms "
                 f"({mem_lost / gap:.0%}) of it: their work is channels x H x W, so it only halves when channels "
                 f"halve, while conv MACs (in x out channels) quarter; they grow from {share(b_ms):.0%} of the base's "
                 f"time to {share(p_ms):.0%} of the pruned model's. Eager PyTorch runs BN as its own pass "
                 f"(it is not folded into the conv).")
    fixed = [g for g in lost if g.startswith(("stem", "fc"))]
    fixed_lost = sum(lost[g] for g in fixed)
    notes.append(f"the stem conv (3 input channels) and the protected fc only halve their MACs: "
                 f"{fixed_lost:.1f} ms ({fixed_lost / gap:.0%}).")
    for g in sorted((g for g in lost if g.startswith("conv ")), key=lambda g: -lost[g]):
        b_rate, p_rate = gmacs(b_w[g], b_ms[g]), gmacs(p_w[g], p_ms[g])
        head = f"{g} layers: {lost[g]:+.1f} ms ({lost[g] / gap:.0%}); MACs shrink {b_w[g] / p_w[g]:.2f}x, time "
        if lost[g] <= 0:
            notes.append(head + f"{b_ms[g] / p_ms[g]:.2f}x ({b_rate:.1f} -> {p_rate:.1f} GMAC/s): no loss here.")
        else:
            notes.append(head + f"only {b_ms[g] / p_ms[g]:.2f}x: throughput falls {b_rate:.1f} -> {p_rate:.1f} "
                         f"GMAC/s, as halving both channel dims makes each GEMM smaller (less data reuse per "
                         f"byte moved, fixed per-call costs weigh more).")
    return notes


# --------------------------------------------------------------------------- report

def print_table(contenders: list[Contender], batches: list[int]) -> dict:
    """The markdown result table; returns measured/ideal per (batch, contender name)."""
    base, others = contenders[0], contenders[1:]
    print("| batch | variant | base median ms | pruned median ms | measured speed-up | ideal speed-up | "
          f"measured / ideal (goal >= {GOAL}) | CPU-time speed-up | runs |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    ratios = {}
    for b in batches:
        b_wall, b_cpu = med(base.wall_ms[b]), med(base.cpu_ms[b])
        for c in others:
            measured, ideal = b_wall / med(c.wall_ms[b]), base.macs / c.macs
            ratios[b, c.name] = measured / ideal
            print(f"| {b} | {c.name} | {b_wall:.1f} | {med(c.wall_ms[b]):.1f} | {measured:.2f}x | {ideal:.2f}x | "
                  f"{measured / ideal:.2f} {'ok' if measured / ideal >= GOAL else 'BELOW'} | "
                  f"{b_cpu / med(c.cpu_ms[b]):.2f}x | {len(c.wall_ms[b])} |")
    return ratios


def print_channels(contenders: list[Contender]) -> None:
    for c in contenders:
        counts = sorted({m.out_channels for m in c.model.modules() if isinstance(m, nn.Conv2d)})
        print(f"- {c.name}: {c.macs / 1e9:.3f} GMACs, conv output channel counts {counts}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per contender at batch 1")
    parser.add_argument("--runs-large", type=int, default=5, help="timed runs per contender at batch 32")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--batch-sizes", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--explain", choices=("auto", "all", "none"), default="auto",
                        help="per-part breakdown: where below the goal, else batch 1 (auto); every "
                             "batch size (all, ~1 min more); never")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    # batch -> (warm-up, runs): a batch-32 forward of the base takes ~10 s on one busy core
    plan = {b: (5, args.runs) if b == 1 else (2, args.runs_large)
            for b in map(int, args.batch_sizes.split(","))}

    contenders = build_contenders()
    for batch, (warmup, runs) in plan.items():
        measure(contenders, batch, warmup, runs)

    print(f"## CPU latency: ResNet-50 base vs L1-pruned at rate 0.5\n")
    print(f"date {datetime.datetime.now().isoformat(timespec='minutes')}, torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, torch-pruning {tp.__version__}, "
          f"{torch.get_num_threads()} torch thread(s), CPU {cpu_model()} ({os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}), input 3x224x224, random weights, inference_mode\n")
    print_channels(contenders)
    print()
    ratios = print_table(contenders, list(plan))

    base, pruned = contenders[0], contenders[1]
    below = [b for b in plan if ratios[b, pruned.name] < GOAL]
    # auto: the batch sizes below the goal; when all meet it, batch 1 alone (cheap) for the residual gap
    explain = {"auto": below or [min(plan)], "all": list(plan), "none": []}[args.explain]
    notes = []
    for batch in explain:
        data = breakdown(base, pruned, batch, rounds=10 if batch == 1 else 3)
        lost = print_breakdown(base, pruned, batch, data)
        notes += why_note(base, pruned, batch, data, lost)
    rounded = contenders[2:]
    if rounded and all(architecture(c.model) == architecture(pruned.model) for c in rounded):
        notes.append("round_to=8/16 cannot help here: at rate 0.5 every ResNet-50 channel count is already a "
                     "multiple of 32, so rounding yields the same network (its rows differ from 'pruned' only "
                     "by measurement noise).")
    if not below:
        print(f"\nmeasured / ideal >= {GOAL} at every batch size: goal met.")
    if notes:
        print("\n### Why " + ("the pruned model misses the goal" if below else "the rest of the gap remains") + "\n")
        print("\n".join(f"- {n}" for n in notes))
    print(f"\n(total runtime {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
