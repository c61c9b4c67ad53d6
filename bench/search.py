"""Benchmark: sensitivity analysis time, and allocated per-layer rates against one uniform rate.

1. The full sensitivity analysis of the model (every prunable group, the rate grid, N
   validation images), timed from scratch (no cache), with the time per probe.
2. At the same MACs reduction (--target, default macs=2x) and the same fine-tuning budget,
   the rates the allocation chooses against one uniform rate for every layer (found by
   bisection so that its MACs match the target as closely as the allocation's), for each
   seed: prune, top-1 with no training, fine-tune (--epochs, SGD cosine), top-1 again.
   Both arms use the same seed, data order and schedule; only the rates differ.

    .venv/bin/python bench/search.py --model demo --data demo --epochs 2 --seeds 0,1,2 \\
        --results bench/results/search.json
    # smoke run
    .venv/bin/python bench/search.py --model cifar:resnet20 --data synthetic --images 64 \\
        --rates 0.3,0.6 --epochs 1 --max-steps 2 --seeds 0 --results /tmp/search.json

3. With --size-min: the brute-force grid and the heuristic of Tian et al. (2022) for
   ``size=min`` (structured rate by BN γ, then unstructured magnitude sparsity, pushed to the
   accuracy floor) at the same resolution and per-trial budget: trials, wall time, and the
   smallest size each finds that holds the floor; from the grid's own trials, the smallest
   with structured pruning alone (u = 0) and with unstructured pruning alone (s = 0).

    .venv/bin/python bench/search.py --size-min --model demo --data demo --resolution 0.1 \
        --epochs 1 --max-steps 10 --max-drop 2 --results bench/results/size-min.json

4. With --family T1,T2,...: the family job for the targets (one shared analysis) against
   one separate search per target, each with an empty analysis cache, same trial budget:
   total wall time and each member's top-1.

    .venv/bin/python bench/search.py --family 1.5x,2x,3x --model demo --data demo --epochs 0 \
        --results bench/results/family.json

5. With --parallel-grid N: the size=min grid run once one trial at a time and once N at a
   time (N processes, the cores split between them), same settings: wall times, and whether
   every trial came out the same.

    .venv/bin/python bench/search.py --parallel-grid 2 --model demo --data demo --resolution 0.3 \
        --epochs 1 --max-steps 10 --max-drop 2 --results bench/results/parallel-grid.json

Results go to --results as JSON (written when complete) and a Markdown table on stdout.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.engine.data import check_compatible, load_data  # noqa: E402
from studio.engine.events import Log, run_to_end  # noqa: E402
from studio.engine.files import write_text  # noqa: E402
from studio.engine.methods.allocate import FigureMeter, allocate, plan_for  # noqa: E402
from studio.engine.methods.sensitivity import DEFAULT_RATES, analyse, calibration_split  # noqa: E402
from studio.engine.methods.targets import LatencySetting, parse_targets  # noqa: E402
from studio.engine.models import load_model  # noqa: E402
from studio.engine.pruning import PruningPlan, estimate, prune  # noqa: E402
from studio.engine.training import TrainConfig, evaluate, seed_everything, train  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402


def log(text: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def uniform_rate_for(model, example, goal_macs: float) -> float:
    """The one per-layer rate whose MACs are closest to ``goal_macs`` (bisection, then the nearer end)."""
    low, high = 0.0, 0.95
    for _ in range(20):
        mid = (low + high) / 2
        _, macs = estimate(model, PruningPlan(rate=mid), example)
        low, high = (low, mid) if macs <= goal_macs else (mid, high)
    ends = [(abs(estimate(model, PruningPlan(rate=r), example)[1] - goal_macs), r) for r in (low, high)]
    return round(min(ends)[1], 4)


def arm(model, plan, example, bundle, cfg, seed, eval_batches, calibration) -> dict:
    """Prune by ``plan``, then top-1 before and after fine-tuning with ``cfg`` and ``seed``."""
    pruned = run_to_end(prune(model, plan, example, calibration=calibration))
    net = pruned.model.cpu()

    def top1() -> float:
        return run_to_end(evaluate(net, bundle.val, device="cpu", batch_size=cfg.batch_size,
                                   max_batches=eval_batches)).top1
    before = top1()
    seed_everything(seed)
    started = time.perf_counter()
    run_to_end(train(net, bundle.train, None, replace(cfg, seed=seed), phase="fine-tune"))
    net = net.cpu()
    return {"macs": pruned.macs_after, "params": pruned.params_after, "top1_pruned": before, "top1": top1(),
            "finetune_seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--data", default="demo")
    p.add_argument("--target", default="macs=2x")
    p.add_argument("--criterion", default="l1")
    p.add_argument("--rates", default=",".join(map(str, DEFAULT_RATES)))
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--eval-batches", type=int)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--results", default="bench/results/search.json")
    p.add_argument("--size-min", action="store_true", help="compare the heuristic and the grid for size=min")
    p.add_argument("--resolution", type=float, default=0.1)
    p.add_argument("--max-drop", type=float, default=2.0)
    p.add_argument("--family", help="MACs reductions, e.g. 1.5x,2x,3x: family job against separate searches")
    p.add_argument("--parallel-grid", type=int, help="the grid one trial at a time against N at a time")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.parallel_grid:
        parallel_grid(args)
        return
    if args.size_min:
        size_min(args)
        return
    if args.family:
        family(args)
        return

    loaded = load_model(args.model)
    size = tuple(loaded.input_size)
    bundle = load_data("synthetic:classes=10,size=3x32x32,train=256,val=128" if args.data == "synthetic"
                       else args.data, input_size=size, channels=size[0])
    check_compatible(bundle, num_classes=loaded.num_classes, input_size=size)
    model = loaded.module.eval()
    example = torch.randn(1, *size, generator=torch.Generator().manual_seed(0))
    rates = [float(r) for r in args.rates.split(",")]

    log(f"sensitivity: {args.model}, {args.images} images, rates {rates}")
    batches = calibration_split(bundle.val, args.images, 250)
    curves = run_to_end(analyse(model, size, batches, criterion=args.criterion, rates=rates),
                        lambda e: log(e.message) if isinstance(e, Log) else None)

    targets = parse_targets([args.target])
    meter = FigureMeter(model, size, targets, LatencySetting())
    met, _ = allocate(curves, meter, PruningPlan(criterion=args.criterion, rate=0.0))
    allocated = plan_for(curves, met.group_rates, PruningPlan(criterion=args.criterion, rate=0.0))
    uniform_rate = uniform_rate_for(model, example, met.figures[targets[0].kind])
    uniform = PruningPlan(criterion=args.criterion, rate=uniform_rate)
    log(f"allocated MACs {met.figures['macs']:,.0f}; uniform rate {uniform_rate}")

    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                      max_steps_per_epoch=args.max_steps, device="cpu")
    calibration = calibration_split(bundle.train, 128, 32)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name, plan in (("uniform", uniform), ("allocated", allocated)):
            log(f"seed {seed}: {name}")
            rows.append({"seed": seed, "arm": name,
                         **arm(model, plan, example, bundle, cfg, seed, args.eval_batches, calibration)})
            log(f"  {rows[-1]}")
    original = run_to_end(evaluate(model, bundle.val, device="cpu", max_batches=args.eval_batches)).top1
    result = {
        "command": " ".join(sys.argv), "date": datetime.date.today().isoformat(),
        "machine": {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__,
                    "python": platform.python_version()},
        "sensitivity": {"groups": len(curves.groups), "rates": rates, "images": curves.images,
                        "probes": curves.probes, "seconds": curves.seconds,
                        "seconds_per_probe": curves.seconds_per_probe},
        "original_top1": original, "uniform_rate": uniform_rate,
        "allocated_layer_rates": allocated.layer_rates, "rows": rows,
    }
    out = Path(args.results)
    write_text(out, json.dumps(result, indent=2) + "\n")
    print(markdown(result))


def size_min_recipe(args, method: str, parallel: int = 1):
    """The size=min search both size-min benchmarks run: same data, budget, floor and resolution."""
    from studio.engine.jobs import DataSource, ModelSource, Recipe
    from studio.engine.jobs.recipe import SearchOptions
    return Recipe(model=ModelSource(args.model), data=DataSource(args.data, batch_size=args.batch_size,
                                                                 eval_batches=args.eval_batches),
                  finetune=TrainConfig(epochs=args.epochs, lr=args.lr, max_steps_per_epoch=args.max_steps,
                                       device="cpu"),
                  exports=["checkpoint"],
                  search=SearchOptions(method=method, targets=["size=min"], max_drop=args.max_drop,
                                       resolution=args.resolution, parallel=parallel))


def size_min(args) -> None:
    """The grid and the heuristic for size=min on the same model, data, resolution and trial budget."""
    from studio.engine.jobs.search import run_search

    out = {"command": " ".join(sys.argv), "date": datetime.date.today().isoformat(),
           "machine": {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__},
           "resolution": args.resolution, "max_drop": args.max_drop, "epochs": args.epochs,
           "max_steps": args.max_steps}
    root = Path(tempfile.mkdtemp(prefix="size-min-"))
    for method in ("heuristic", "grid"):
        recipe = size_min_recipe(args, method)
        log(f"{method}: searching")
        started = time.perf_counter()
        result = run_to_end(run_search(recipe, root / method),
                            lambda e: log(e.message) if isinstance(e, Log) and "Trial" in e.message else None)
        search = result.metrics["search"]
        trials = search["trials"]
        ok = [t for t in trials if t["floor_ok"]]
        winner = next(t for t in trials if t["trial"] == search["winner"])
        out[method] = {"trials": len(trials), "wall_seconds": round(time.perf_counter() - started, 1),
                       "trial_seconds": round(sum(t["seconds"] for t in trials), 1),
                       "best": {k: winner[k] for k in ("structured", "unstructured", "top1", "figures")},
                       "original_size": search["original"]["size"], "floor": search["floor"]}
        if method == "grid":
            for name, axis in (("structured_only", lambda t: t["unstructured"] == 0),
                               ("unstructured_only", lambda t: t["structured"] == 0)):
                alone = [t for t in ok if axis(t)]
                best = min(alone, key=lambda t: t["figures"]["size"]) if alone else None
                out[name] = None if best is None else {k: best[k] for k in ("structured", "unstructured", "top1",
                                                                              "figures")}
            out["grid_trials"] = trials
        log(f"{method}: {out[method]}")
    write_text(Path(args.results), json.dumps(out, indent=2) + "\n")
    h, g = out["heuristic"], out["grid"]
    print("| method | trials | wall s | smallest size at the floor | s | u | top-1 |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in (("heuristic", h), ("grid", g)):
        b = r["best"]
        print(f"| {name} | {r['trials']} | {r['wall_seconds']:.0f} | {b['figures']['size'] / 1e3:.1f} kB | "
              f"{b['structured']:.2f} | {b['unstructured']:.2f} | {b['top1'] * 100:.1f} % |")
    for name in ("structured_only", "unstructured_only"):
        b = out[name]
        print(f"| grid, {name.replace('_', ' ')} | | | "
              + (f"{b['figures']['size'] / 1e3:.1f} kB | {b['structured']:.2f} | {b['unstructured']:.2f} | "
                 f"{b['top1'] * 100:.1f} % |" if b else "none holds the floor | | | |"))
    print(f"\nheuristic/grid: trials {h['trials'] / g['trials']:.3f}, wall time {h['wall_seconds'] / g['wall_seconds']:.3f} "
          f"(trials alone {h['trial_seconds'] / max(g['trial_seconds'], 1e-9):.3f}), "
          f"size {h['best']['figures']['size'] / g['best']['figures']['size']:.3f} "
          f"(original {h['original_size'] / 1e3:.1f} kB, floor {h['floor'] * 100:.2f} %)")


def parallel_grid(args) -> None:
    """The same size=min grid, one trial at a time and ``--parallel-grid`` at a time."""
    from studio.engine.jobs.search import run_search

    root = Path(tempfile.mkdtemp(prefix="parallel-grid-"))
    runs = {}
    for parallel in (1, args.parallel_grid):
        recipe = size_min_recipe(args, "grid", parallel)
        log(f"grid, {parallel} at a time")
        started = time.perf_counter()
        search = run_to_end(run_search(recipe, root / f"p{parallel}")).metrics["search"]
        runs[parallel] = {"wall_seconds": round(time.perf_counter() - started, 1), "ran": search["ran"],
                          "winner": search["winner"],
                          "trials": [{k: t[k] for k in ("trial", "structured", "unstructured", "top1", "figures",
                                                                  "floor_ok")} for t in search["trials"]]}
        log(f"  {runs[parallel]['wall_seconds']} s, {search['ran']}")
    one, many = runs[1], runs[args.parallel_grid]
    pairs = [(a, b) for a, b in zip(one["trials"], many["trials"])]
    out = {"command": " ".join(sys.argv), "date": datetime.date.today().isoformat(),
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__},
           "runs": {str(k): v for k, v in runs.items()}, "trials": len(pairs),
           "same_pairs": all((a["structured"], a["unstructured"]) == (b["structured"], b["unstructured"])
                             for a, b in pairs),
           "same_floor_decisions": sum(a["floor_ok"] == b["floor_ok"] for a, b in pairs),
           "max_size_difference": max(abs(a["figures"]["size"] / b["figures"]["size"] - 1) for a, b in pairs),
           "max_top1_difference": max(abs(a["top1"] - b["top1"]) for a, b in pairs),
           "same_winner": one["winner"] == many["winner"]}
    write_text(Path(args.results), json.dumps(out, indent=2) + "\n")
    print(f"| at a time | trials | wall s |\n| ---: | ---: | ---: |\n| 1 | {len(one['trials'])} | "
          f"{one['wall_seconds']:.0f} |\n| {args.parallel_grid} ({many['ran']}) | {len(many['trials'])} | "
          f"{many['wall_seconds']:.0f} |")
    print(f"\nparallel / sequential wall time {many['wall_seconds'] / one['wall_seconds']:.2f}; same pairs "
          f"{out['same_pairs']}, same floor decision in {out['same_floor_decisions']} of {len(pairs)}, largest "
          f"difference: size {out['max_size_difference']:.2%}, top-1 {out['max_top1_difference'] * 100:.2f} points; "
          f"same winner: {out['same_winner']}")


def family(args) -> None:
    """One family job against one search per target, each search with a cold analysis cache."""
    from studio.engine.jobs import DataSource, ModelSource, Recipe
    from studio.engine.jobs.family import run_family
    from studio.engine.jobs.recipe import SearchOptions
    from studio.engine.jobs.search import run_search

    root = Path(tempfile.mkdtemp(prefix="family-"))
    values = [v.strip() for v in args.family.split(",")]

    def recipe(targets: list) -> Recipe:
        return Recipe(model=ModelSource(args.model), data=DataSource(args.data, batch_size=args.batch_size,
                                                                     eval_batches=args.eval_batches),
                      finetune=TrainConfig(epochs=args.epochs, lr=args.lr, max_steps_per_epoch=args.max_steps,
                                           device="cpu"),
                      exports=["checkpoint"], search=SearchOptions(targets=targets, max_drop=100.0))
    os.environ["STUDIO_CACHE_DIR"] = str(root / "cache-family")
    started = time.perf_counter()
    fam = run_to_end(run_family(recipe([f"macs={','.join(values)}"]), root / "family"))
    family_seconds = time.perf_counter() - started
    separate, separate_seconds = [], 0.0
    for value in values:
        os.environ["STUDIO_CACHE_DIR"] = str(root / f"cache-{value}")   # a cold cache: each search analyses
        started = time.perf_counter()
        one = run_to_end(run_search(recipe([f"macs={value}"]), root / f"alone-{value}"))
        separate_seconds += time.perf_counter() - started
        separate.append({"target": f"macs={value}", "top1": one.metrics["after"]["top1"],
                         "ratio": one.metrics["before"]["macs"] / one.metrics["after"]["macs"]})
        log(f"alone {value}: {separate[-1]}")
    out = {"command": " ".join(sys.argv), "date": datetime.date.today().isoformat(),
           "machine": {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__},
           "family_seconds": round(family_seconds, 1), "separate_seconds": round(separate_seconds, 1),
           "family": fam.metrics["family"]["members"], "separate": separate}
    write_text(Path(args.results), json.dumps(out, indent=2) + "\n")
    print("| target | family: reduction | family: top-1 | alone: reduction | alone: top-1 |\n"
          "| --- | ---: | ---: | ---: | ---: |")
    for member, alone in zip(out["family"], separate):
        print(f"| {member['target']} | {member['ratio']:.2f}× | {member['top1'] * 100:.1f} % | "
              f"{alone['ratio']:.2f}× | {alone['top1'] * 100:.1f} % |")
    print(f"\nwall time: family {family_seconds:.0f} s, separate searches {separate_seconds:.0f} s "
          f"(family / separate {family_seconds / separate_seconds:.2f})")


def markdown(result: dict) -> str:
    s = result["sensitivity"]
    lines = [f"Sensitivity: {s['groups']} groups × {len(s['rates'])} rates on {s['images']} images: "
             f"{s['seconds']:.1f} s ({s['seconds_per_probe'] * 1000:.0f} ms per probe).", "",
             "| seed | arm | MACs | top-1 pruned | top-1 fine-tuned | fine-tune s |",
             "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        lines.append(f"| {r['seed']} | {r['arm']} | {r['macs']:,} | {r['top1_pruned'] * 100:.2f} | "
                     f"{r['top1'] * 100:.2f} | {r['finetune_seconds']:.0f} |")
    by_arm = {a: [r["top1"] for r in result["rows"] if r["arm"] == a] for a in ("uniform", "allocated")}
    mean = {a: sum(v) / len(v) for a, v in by_arm.items() if v}
    gains = [b["top1"] - a["top1"] for a, b in zip(result["rows"][::2], result["rows"][1::2])]
    lines.append("")
    lines.append(f"Mean top-1 after fine-tuning: uniform {mean['uniform'] * 100:.2f} %, allocated "
                 f"{mean['allocated'] * 100:.2f} %; allocated − uniform per seed: "
                 + ", ".join(f"{g * 100:+.2f}" for g in gains) + " points "
                 f"(original {result['original_top1'] * 100:.2f} %, uniform rate {result['uniform_rate']}).")
    return "\n".join(lines)


if __name__ == "__main__":
    tempfile.tempdir = tempfile.gettempdir()
    main()
