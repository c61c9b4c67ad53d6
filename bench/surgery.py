"""Benchmark: the studio's `prune` against a direct torch-pruning call, on ResNet-50.

Both prune torchvision's ResNet-50 (random weights, 3x224x224 example input) with the L1
criterion at rate 0.5, per-layer ranking, classifier protected. The direct call deep-copies
the model first, as the studio must (it never mutates the user's model); a second baseline
without the copy is shown too. Runs alternate between the contenders in one process so
machine load hits them alike; medians are reported. Goal: studio / direct ≤ 1.1.

    .venv/bin/python bench/surgery.py [--reps 5] [--threads N]
"""
from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import time
from pathlib import Path

import torch
import torch_pruning as tp
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from studio.engine.events import run_to_end  # noqa: E402
from studio.engine.pruning import PruningPlan, prune  # noqa: E402


def studio_prune(model, x):
    return run_to_end(prune(model, PruningPlan(criterion="l1", rate=0.5), x)).model


def direct_prune(model, x, copy_first=True):
    work = copy.deepcopy(model) if copy_first else model
    pruner = tp.pruner.MetaPruner(work, x, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=0.5, global_pruning=False, ignored_layers=[work.fc])
    pruner.step()
    return work


def timed(fn):
    """(wall seconds, CPU seconds of this process) for one call of ``fn``."""
    gc.collect()   # the previous run's reference cycles (dependency graphs) are freed outside the clock
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.randn(1, 3, 224, 224)

    # Warm-up, and a check that both produce the same architecture.
    ours = studio_prune(model, x)
    theirs = direct_prune(model, x)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
           {k: v.shape for k, v in theirs.state_dict().items()}, "studio and direct results differ"

    names = ["studio prune", "direct (deepcopy + MetaPruner)", "direct, no copy (mutates the model)"]
    times = {name: [] for name in names}
    for rep in range(args.reps):
        fresh = copy.deepcopy(model)   # for the no-copy baseline, made outside its timed region
        runs = [lambda: studio_prune(model, x), lambda: direct_prune(model, x),
                lambda: direct_prune(fresh, x, copy_first=False)]
        # Rotate the order so no contender always runs first (caches, background load).
        for i in range(len(names)):
            k = (i + rep) % len(names)
            times[names[k]].append(timed(runs[k]))

    wall = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
    cpu = {k: statistics.median(t[1] for t in v) for k, v in times.items()}
    base = names[1]
    print(f"ResNet-50 (random init), input 1x3x224x224, L1, rate 0.5, per-layer ranking, {args.reps} repetitions, "
          f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, torch-pruning {tp.__version__}\n")
    print("| contender | median wall s | min wall s | median CPU s | wall ratio | CPU ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        print(f"| {name} | {wall[name]:.3f} | {min(t[0] for t in times[name]):.3f} | {cpu[name]:.3f} | "
              f"{wall[name] / wall[base]:.2f}x | {cpu[name] / cpu[base]:.2f}x |")

    macs0, params0 = tp.utils.count_ops_and_params(model, x)
    macs1, params1 = tp.utils.count_ops_and_params(ours, x)
    print(f"\nparams {params0 / 1e6:.2f} M -> {params1 / 1e6:.2f} M, "
          f"MACs {macs0 / 1e9:.2f} G -> {macs1 / 1e9:.2f} G")
    ratio = wall[names[0]] / wall[base]
    print(f"\nstudio / direct (median wall) = {ratio:.2f}x ({'within' if ratio <= 1.1 else 'OVER'} the 1.1x goal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
