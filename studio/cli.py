"""Command-line interface: `studio inspect | prune | search | sensitivity | run | train | criteria`, and `studio --demo`.

Each command drives the same engine generators as the GUI and shows their events as
progress bars. A `StudioError` is printed as one line and exits with status 2; a traceback
appears only with --debug. Under `torchrun`, every rank runs the job (fine-tuning uses
DistributedDataParallel) and only rank 0 prints and writes.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Optional, Sequence

EXIT_USER_ERROR = 2


def _parse_size(text: str) -> tuple:
    try:
        parts = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"input size must look like 3x32x32, got {text!r}")
    return parts


def _parse_layer_rate(text: str) -> tuple:
    name, sep, value = text.partition("=")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"layer rate must look like NAME=0.3, got {text!r}") from None


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model spec: demo, cifar:resnet20, torchvision:resnet50, file.pt, file.py:Class[:weights.pth]")
    p.add_argument("--arch", help="architecture for a state_dict file, e.g. cifar:resnet20")
    p.add_argument("--num-classes", type=int, help="number of classes of the model's head")
    p.add_argument("--input-size", type=_parse_size, help="input size CxHxW, e.g. 3x32x32")
    p.add_argument("--trust", action="store_true",
                   help="allow loading a full pickled model (runs code from the file: only for files you trust)")


# `studio train` flag → TrainConfig field, and the flag's default when neither it nor a recipe gives one.
TRAIN_FLAGS = {"epochs": "epochs", "lr": "lr", "batch_size": "batch_size", "optimizer": "optimizer",
               "schedule": "schedule", "weight_decay": "weight_decay", "label_smoothing": "label_smoothing",
               "seed": "seed", "max_steps": "max_steps_per_epoch"}
TRAIN_DEFAULTS = {"epochs": 30, "lr": 0.1, "batch_size": 128, "optimizer": "sgd", "schedule": "onecycle",
                  "weight_decay": 5e-4, "label_smoothing": 0.0, "seed": 0, "max_steps": None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="studio", description="Compression Studio: structured pruning of CNNs.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--demo", action="store_true", help="open the studio on the shipped demo model and data")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("inspect", help="print layers, params, MACs and prunable groups")
    _model_args(p)
    p.add_argument("--all-nodes", action="store_true", help="list functional ops too, not only modules")

    p = sub.add_parser("prune", help="prune (and fine-tune) a model, export it and write a report")
    _model_args(p)
    p.add_argument("--criterion", default="l1", help="importance criterion (see `studio criteria`)")
    p.add_argument("--rate", type=float, help="share of channels to remove, in [0, 1) (default 0.5; the demo "
                                                "without plan flags runs the first-run plan of its model card)")
    p.add_argument("--layer-rate", type=_parse_layer_rate, action="append", default=[], metavar="NAME=RATE",
                   help="per-layer rate (repeatable)")
    p.add_argument("--protect", action="append", default=[], metavar="NAME", help="layer never pruned (repeatable)")
    p.add_argument("--global-ranking", action="store_true", help="rank channels across layers instead of per layer")
    p.add_argument("--round-to", type=int, help="keep channel counts multiples of this")
    p.add_argument("--steps", type=int, default=1, help="iterative pruning steps")
    p.add_argument("--sparsity", type=float, default=0.0, help="extra unstructured magnitude sparsity, in [0, 1)")
    p.add_argument("--strict", action="store_true",
                   help="refuse, naming them, when groups must be left unpruned for the model to keep running")
    p.add_argument("--data", help="dataset folder/spec (needed for fine-tuning, accuracy and data-driven criteria)")
    p.add_argument("--reconstruct", choices=["ls", "lasso", "cap"],
                   help="after pruning, refit the layers that lost inputs by least squares (no training); lasso / "
                        "cap also choose the channels (He et al. 2017 / compensation-aware)")
    p.add_argument("--calib-batches", type=int, default=8, help="calibration batches for --reconstruct")
    p.add_argument("--ridge", type=float, default=1e-3, help="ridge term of --reconstruct's fits")
    p.add_argument("--finetune-epochs", type=int)
    p.add_argument("--retrain", action="store_true",
                   help="re-initialise the pruned model and train it from scratch for --finetune-epochs")
    p.add_argument("--sparse-epochs", type=int, default=0, help="sparse training (L1 on BN scales) before pruning")
    p.add_argument("--bn-l1", type=float, default=1e-5, help="L1 strength on BN scales during sparse training")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-steps", type=int, help="limit steps per epoch (smoke runs)")
    p.add_argument("--eval-batches", type=int, help="limit evaluation batches (smoke runs)")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu (training)")
    p.add_argument("--export", default="pt,checkpoint,torchscript,onnx", help="comma-separated export formats")
    p.add_argument("--latency", type=_parse_latency, default=[1], metavar="BATCHES",
                   help="batch sizes to time, e.g. 1,8 (default 1); 'none' skips timing (large models on a CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-recipe", help="also write the recipe built from these flags to this file")
    p.add_argument("--out", required=True, help="new run folder")

    p = sub.add_parser("run", help="run a recipe file: a compression job, or a training job's training.json "
                                   "(works under torchrun for multi-GPU training)")
    p.add_argument("recipe")
    p.add_argument("--out", required=True, help="new run folder")
    p.add_argument("--resume", action="store_true", help="training recipes: continue an interrupted run")

    p = sub.add_parser("train", help="train a model from scratch or continue from its weights")
    p.add_argument("model", nargs="?", help="model spec, e.g. cifar:resnet20 or a studio checkpoint to continue from")
    p.add_argument("--recipe", help="a training recipe (the training.json of an earlier run) instead of the flags")
    p.add_argument("--arch", help="architecture for a state_dict file")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--data", help="dataset folder/spec with a training split")
    # None marks "not given", so flags can be told apart from a --recipe; defaults in TRAIN_DEFAULTS.
    p.add_argument("--epochs", type=int, help=f"default {TRAIN_DEFAULTS['epochs']}")
    p.add_argument("--lr", type=float, help=f"default {TRAIN_DEFAULTS['lr']}")
    p.add_argument("--batch-size", type=int, help=f"default {TRAIN_DEFAULTS['batch_size']}")
    p.add_argument("--optimizer", choices=["sgd", "adam"], help="default sgd")
    p.add_argument("--schedule", choices=["cosine", "onecycle", "constant"], help="default onecycle")
    p.add_argument("--weight-decay", type=float, help=f"default {TRAIN_DEFAULTS['weight_decay']}")
    p.add_argument("--label-smoothing", type=float, help="default 0")
    p.add_argument("--device", help="auto (default), cuda, mps or cpu; may override a --recipe's")
    p.add_argument("--max-steps", type=int, help="limit steps per epoch (smoke runs)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--out", required=True, help="new run folder")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from OUT.train-state.pt (same settings)")

    p = sub.add_parser("sensitivity", help="probe each prunable group alone at a grid of rates (top-1 and loss)")
    _model_args(p)
    p.add_argument("--data", required=True, help="dataset folder/spec with a validation split")
    p.add_argument("--criterion", default="l1", help="how channels are ranked in a group (see `studio criteria`)")
    p.add_argument("--rates", type=_parse_rates, default=None, metavar="R,R,...",
                   help="rates to probe, default 0.1,0.2,...,0.9")
    p.add_argument("--images", type=int, default=1000, help="validation images each probe is scored on")
    p.add_argument("--out", required=True, help="folder for sensitivity.json")

    p = sub.add_parser("search", help="find per-layer rates that meet a target under an accuracy floor")
    _model_args(p)
    p.add_argument("--data", required=True, help="dataset folder/spec (validation split scores, training split tunes)")
    p.add_argument("--target", action="append", default=[], metavar="KIND=VALUE",
                   help="macs=2x, macs=20M, params=0.5x, size=100kB, latency=3ms (repeatable: all must be met); "
                        "size=min (heuristic, grid); macs=1.5x,2x,3x: a family, one model per value")
    p.add_argument("--max-drop", type=float, default=None,
                   help="points of top-1 the result may lose (default 1.0; size=min needs it given)")
    p.add_argument("--method", default="allocate", choices=["allocate", "cap", "heuristic", "grid"],
                   help="allocate: per-layer rates for a target from sensitivity curves; cap: from the error left "
                        "after least-squares compensation, each trial refit before fine-tuning; heuristic / grid: "
                        "structured + unstructured rates pushed to the floor for size=min")
    p.add_argument("--resolution", type=float, default=0.1, help="heuristic and grid: step between rates tried")
    p.add_argument("--sparse-epochs", type=int, default=0,
                   help="sparse training (L1 on BN scales) before the trials, as network slimming does")
    p.add_argument("--bn-l1", type=float, default=1e-4, help="L1 strength on BN scales during sparse training")
    p.add_argument("--trial-epochs", type=int, default=1, help="fine-tuning epochs per trial and for the winner")
    p.add_argument("--max-trials", type=int, default=6)
    p.add_argument("--criterion", default="l1", help="importance criterion (see `studio criteria`)")
    p.add_argument("--protect", action="append", default=[], metavar="NAME", help="layer never pruned (repeatable)")
    p.add_argument("--round-to", type=int, help="keep channel counts multiples of this")
    p.add_argument("--rates", type=_parse_rates, default=None, metavar="R,R,...", help="sensitivity grid")
    p.add_argument("--images", type=int, default=1000, help="validation images per sensitivity probe")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-steps", type=int, help="limit steps per epoch (smoke runs)")
    p.add_argument("--eval-batches", type=int, help="limit evaluation batches (smoke runs)")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu (training)")
    p.add_argument("--latency-device", default="cpu", help="device latency targets are measured on")
    p.add_argument("--latency-batch", type=int, default=1, help="batch size latency targets are measured at")
    p.add_argument("--export", default="pt,checkpoint,torchscript,onnx", help="comma-separated export formats")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-recipe", help="also write the search recipe built from these flags to this file")
    p.add_argument("--out", required=True, help="search folder (the winner's run folder when it finishes)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search in --out")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="run independent trials (grid points, family members) N at a time: one process per GPU "
                        "with --device cuda, else the CPU cores split between N processes")

    sub.add_parser("criteria", help="list the pruning criteria")
    return parser


def _parse_rates(text: str) -> list:
    try:
        return [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"rates must look like 0.1,0.3,0.5, got {text!r}") from None


def _model_source(args):
    """The recipe's model section from the shared model flags (see `_model_args`)."""
    from studio.engine.jobs import ModelSource
    return ModelSource(spec=args.model, arch=args.arch, num_classes=args.num_classes,
                       input_size=list(args.input_size) if args.input_size else None, trust=args.trust)


def _parse_latency(text: str) -> list:
    """'1,8' -> [1, 8]; 'none' -> [] (no latency timing)."""
    if text.strip().lower() in ("none", "0", ""):
        return []
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(b < 1 for b in sizes):
        raise argparse.ArgumentTypeError(f"latency batch sizes must look like 1 or 1,8 or none, got {text!r}")
    return sizes


def _recipe_from_prune_args(args):
    from studio.engine.jobs import DataSource, MeasureOptions, Recipe
    from studio.engine.jobs.recipe import ReconstructOptions
    from studio.engine.pruning import PruningPlan
    from studio.engine.training import TrainConfig

    plan = PruningPlan(criterion=args.criterion, rate=0.5 if args.rate is None else args.rate,
                       layer_rates=dict(args.layer_rate),
                       protected=list(args.protect), global_ranking=args.global_ranking, round_to=args.round_to,
                       iterative_steps=args.steps, unstructured_sparsity=args.sparsity, strict=args.strict)
    common = dict(lr=args.lr, device=args.device, max_steps_per_epoch=args.max_steps)
    recipe = Recipe(
        model=_model_source(args),
        data=DataSource(spec=args.data, batch_size=args.batch_size, eval_batches=args.eval_batches),
        plan=plan,
        sparse_training=TrainConfig(epochs=args.sparse_epochs, bn_l1=args.bn_l1, **common),
        finetune=TrainConfig(epochs=args.finetune_epochs or 0, **common),
        exports=[f.strip() for f in args.export.split(",") if f.strip()],
        measure=MeasureOptions(batch_sizes=list(args.latency)),
        seed=args.seed,
        retrain=args.retrain,
        reconstruct=ReconstructOptions(method=args.reconstruct, batches=args.calib_batches, ridge=args.ridge)
        if args.reconstruct else None,
    )
    recipe.validate()
    return recipe


def _drive(job):
    """Run an engine job with a terminal progress bar (rank 0 only); leave a torchrun group after it."""
    from studio.engine.events import run_to_end
    from studio.engine.training import cleanup_distributed, is_main_process
    from studio.progress import TerminalProgress

    show = TerminalProgress(enabled=is_main_process())
    finished = False
    try:
        result = run_to_end(job, show)
        finished = True
    finally:
        show.close()
        cleanup_distributed(after_error=not finished)
    return result


def _print_outcome(metrics: dict) -> None:
    """Params, MACs, compressed size and top-1 before → after, as a finished job prints them."""
    b, a = metrics["before"], metrics["after"]
    size = ""
    if b.get("compressed_bytes") and a.get("compressed_bytes"):
        size = (f"   size {b['compressed_bytes'] / 1e3:,.0f} kB → {a['compressed_bytes'] / 1e3:,.0f} kB "
                f"({b['compressed_bytes'] / a['compressed_bytes']:.2f}× smaller)")
    print(f"params {b['params']:,} → {a['params']:,}   MACs {b['macs']:,} → {a['macs']:,} "
          f"({b['macs'] / max(a['macs'], 1):.2f}× fewer){size}")
    if a.get("top1") is not None:
        steps = [("pruned", "after pruning"), ("reconstructed", "after reconstruction")]
        between = ", ".join(f"{(metrics.get(k) or {})['top1'] * 100:.2f}% {label}" for k, label in steps
                            if k in metrics and (metrics.get(k) or {}).get("top1") is not None)
        print(f"top-1 {b['top1'] * 100:.2f}% → {a['top1'] * 100:.2f}%" + (f"   ({between})" if between else ""))


def _run_job(recipe, out) -> int:
    from studio.engine.jobs import run_recipe
    result = _drive(run_recipe(recipe, out))
    if result.run_dir is not None:
        _print_outcome(result.metrics)
        print(f"run folder: {result.run_dir}  (open report.html)")
    return 0


def cmd_inspect(args) -> int:
    from studio.engine.graph import build_graph
    from studio.engine.metrics import count_macs, count_params
    from studio.engine.models import load_model
    from studio.engine.pruning.preflight import preflight

    loaded = load_model(args.model, arch=args.arch, num_classes=args.num_classes, trust=args.trust,
                        input_size=args.input_size)
    print(loaded.summary())
    lg = build_graph(loaded.module, loaded.input_size, with_groups=loaded.prunable)
    rows = [d for _, d in lg.graph.nodes(data=True)
            if args.all_nodes or d.get("op") == "module"]
    print(f"\n{'layer':40s} {'type':18s} {'output':16s} {'params':>10s} {'MACs':>13s}  group")
    for d in rows:
        shape = "x".join(str(s) for s in d.get("out_shape") or ())
        group = "" if d.get("group") is None else str(d["group"])
        mark = "*" if d.get("prunable") else " "
        print(f"{d['name'][:40]:40s} {d['type'][:18]:18s} {shape:16s} {d.get('params', 0):>10,} "
              f"{d.get('macs', 0):>13,} {mark}{group}")
    print(f"\ntotal params {count_params(loaded.module):,}   MACs {count_macs(loaded.module, loaded.input_size):,}"
          f"   graph: {lg.graph.number_of_nodes()} nodes, {lg.graph.number_of_edges()} edges ({lg.traced_with})")
    if loaded.prunable:
        print(f"{len(lg.prunable)} prunable layers in {len(lg.groups)} coupled groups (* = prunable):")
        for i, members in enumerate(lg.groups):
            print(f"  group {i}: {', '.join(members)}")
        _print_preflight(preflight(loaded.module, loaded.input_size))
    else:
        print(f"not prunable: {loaded.why_not_prunable}")
    for w in lg.warnings:
        print(f"warning: {w}")
    return 0


def _print_preflight(found) -> None:
    """The pre-flight report: prunable and blocked groups, and the MACs range a plan can reach."""
    print(f"pre-flight: {found.groups - len(found.blocked)} of {found.groups} groups can be pruned")
    for b in found.blocked:
        print(f"  blocked: the group of {b.root} ({', '.join(b.layers)}): {b.why}")
    smallest, largest = found.macs_range
    if largest:
        print(f"MACs a plan can reach: {smallest:,} (every group at 90 %) to {largest:,} (unpruned), "
              f"{largest / max(smallest, 1):.1f}× at most")


def _wants_demo_plan(args) -> bool:
    """`studio prune demo` with no plan of its own: the demo's first-run plan (the window opens it too)."""
    return args.model == "demo" and args.rate is None and not args.layer_rate and args.reconstruct is None \
        and args.finetune_epochs is None and not args.sparse_epochs


def cmd_prune(args) -> int:
    from studio.engine.jobs import save_recipe
    recipe = _recipe_from_prune_args(args)
    if _wants_demo_plan(args):
        from studio.engine.jobs.demo_plan import with_demo_plan
        recipe = with_demo_plan(recipe)
        print("demo: the first-run plan of its model card (2x fewer MACs by allocation, least-squares refit); "
              "give --rate or --layer-rate for your own plan")
    if args.save_recipe:
        save_recipe(recipe, args.save_recipe)
    return _run_job(recipe, args.out)


def cmd_run(args) -> int:
    from studio.engine.errors import StudioError
    from studio.engine.jobs import Recipe, TrainingRecipe, is_training_recipe, read_recipe_json
    data = read_recipe_json(args.recipe)
    if is_training_recipe(data):
        return _run_training(TrainingRecipe.from_dict(data), args.out, args.resume)
    recipe = Recipe.from_dict(data)
    if recipe.search is not None:
        return _run_search(recipe, args.out, args.resume)
    if args.resume:
        raise StudioError("--resume applies to training and search recipes only.",
                          "Run the compression recipe again without --resume, into a new folder.")
    return _run_job(recipe, args.out)


def _training_recipe_from_args(args):
    """The training job the flags (or --recipe, with an optional --device) describe."""
    from studio.engine.errors import StudioError
    from studio.engine.jobs import TrainingRecipe, read_recipe_json
    from studio.engine.training import TrainConfig
    if args.recipe:
        clashing = [f"--{name.replace('_', '-')}" for name in (*TRAIN_FLAGS, "arch", "num_classes", "data")
                    if getattr(args, name) is not None] + (["MODEL"] if args.model else [])
        if clashing:
            raise StudioError(f"--recipe already sets what {', '.join(clashing)} would.",
                              "Give either --recipe (plus --out, and --device or --resume if needed) or the flags.")
        recipe = TrainingRecipe.from_dict(read_recipe_json(args.recipe))
        if args.device:
            recipe.train.device = args.device
            recipe.train.validate()
        return recipe
    if not args.model or not args.data:
        raise StudioError("studio train needs a MODEL and --data (or a --recipe).",
                          "For example: studio train cifar:resnet20 --data path/to/cifar10 --out runs/base")
    given = {field: getattr(args, flag) for flag, field in TRAIN_FLAGS.items()}
    settings = {field: TRAIN_DEFAULTS[flag] if given[field] is None else given[field]
                for flag, field in TRAIN_FLAGS.items()}
    cfg = TrainConfig(**settings, device=args.device or "auto")
    cfg.validate()
    return TrainingRecipe(model=args.model, data=args.data, train=cfg, arch=args.arch,
                          num_classes=args.num_classes)


def cmd_train(args) -> int:
    return _run_training(_training_recipe_from_args(args), args.out, args.resume)


def _run_training(recipe, out: str, resume: bool) -> int:
    from studio.engine.jobs import run_training
    result = _drive(run_training(recipe, out, resume=resume))
    if result.run_dir is not None:
        final = result.metrics.get("final") or {}
        if final:
            print(f"top-1 {final['top1'] * 100:.2f}%  top-5 {final['top5'] * 100:.2f}%")
        print(f"run folder: {result.run_dir}  (model.ckpt.pt)")
    return 0


def _recipe_from_search_args(args):
    from studio.engine.errors import StudioError
    from studio.engine.jobs import DataSource, MeasureOptions, Recipe
    from studio.engine.jobs.recipe import SearchOptions
    from studio.engine.methods.sensitivity import DEFAULT_RATES
    from studio.engine.pruning import PruningPlan
    from studio.engine.training import TrainConfig

    if not args.target:
        raise StudioError("studio search needs at least one --target.",
                          "For example --target macs=2x (or params=0.5M, size=100kB, latency=3ms).")
    recipe = Recipe(
        model=_model_source(args),
        data=DataSource(spec=args.data, batch_size=args.batch_size, eval_batches=args.eval_batches),
        plan=PruningPlan(criterion=args.criterion, rate=0.0, protected=list(args.protect), round_to=args.round_to),
        finetune=TrainConfig(epochs=args.trial_epochs, lr=args.lr, device=args.device,
                             max_steps_per_epoch=args.max_steps),
        sparse_training=TrainConfig(epochs=args.sparse_epochs, bn_l1=args.bn_l1, lr=args.lr, device=args.device,
                                    max_steps_per_epoch=args.max_steps),
        measure=MeasureOptions(device=args.latency_device, batch_sizes=[args.latency_batch]),
        exports=[f.strip() for f in args.export.split(",") if f.strip()],
        seed=args.seed,
        search=SearchOptions(method=args.method, targets=list(args.target), max_drop=args.max_drop,
                             max_trials=args.max_trials, rates=list(args.rates or DEFAULT_RATES),
                             images=args.images, latency_batch=args.latency_batch, resolution=args.resolution,
                             parallel=args.parallel),
    )
    recipe.validate()
    return recipe


def cmd_search(args) -> int:
    from studio.engine.jobs import save_recipe
    recipe = _recipe_from_search_args(args)
    if args.save_recipe:
        save_recipe(recipe, args.save_recipe)
    return _run_search(recipe, args.out, args.resume)


def _run_search(recipe, out, resume: bool) -> int:
    from studio.engine.jobs.family import is_family, run_family
    from studio.engine.jobs.search import run_search
    if is_family(recipe):
        result = _drive(run_family(recipe, out, resume=resume))
        for row in result.metrics["family"]["members"] if result.run_dir is not None else []:
            figures = (f"{row['ratio']:.2f}× fewer, top-1 {row['top1'] * 100:.2f}%" if row["outcome"] == "met"
                       else row.get("note", ""))
            print(f"{row['target']:>14s}: {row['outcome']:8s} {figures}   {Path(out) / row['folder']}")
        if result.run_dir is not None:
            print(f"family folder: {result.run_dir}  (report.html: the front; each member is a run folder)")
        return 0
    result = _drive(run_search(recipe, out, resume=resume))
    if result.run_dir is not None:
        search = result.metrics["search"]
        print(f"winner: trial {search['winner']} of {len(search['trials'])}")
        _print_outcome(result.metrics)
        print(f"run folder: {result.run_dir}  (report.html; `studio run {result.run_dir}/recipe.json` repeats it)")
    return 0


def cmd_sensitivity(args) -> int:
    from studio.engine.data import check_compatible, load_data
    from studio.engine.methods import MethodInput, get_method
    from studio.engine.methods.sensitivity import DEFAULT_RATES, SensitivityResult
    from studio.engine.models import load_model

    loaded = load_model(args.model, arch=args.arch, num_classes=args.num_classes, trust=args.trust,
                        input_size=args.input_size)
    input_size = tuple(loaded.input_size)
    bundle = load_data(args.data, input_size=input_size, channels=input_size[0])
    check_compatible(bundle, num_classes=loaded.num_classes, input_size=input_size)
    method = get_method("sensitivity")
    options = method.resolve_options({"criterion": args.criterion, "rates": list(args.rates or DEFAULT_RATES),
                                      "images": args.images})
    out = _drive(method.run(MethodInput(loaded.module, input_size, data=bundle, work_dir=Path(args.out)), options))
    result = SensitivityResult.from_dict(out.summary["sensitivity"])
    print(f"unpruned top-1 {result.base_top1:.2%} on {result.images} images; "
          f"{result.probes} probes, {result.seconds_per_probe * 1000:.0f} ms each")
    print(f"\n{'group (root layer)':32s} {'ch':>4s}  " + "  ".join(f"{r:>5.0%}" for r in result.rates) + "   (top-1 lost, points)")
    for g in result.groups:
        drops = "  ".join(f"{100 * (result.base_top1 - v):5.1f}" for v in g.top1)
        print(f"{g.root[:32]:32s} {g.channels:4d}  {drops}")
    print(f"\nwritten: {Path(args.out) / 'sensitivity.json'}")
    return 0


def cmd_criteria(args) -> int:
    from studio.engine.pruning import CRITERIA
    for c in CRITERIA.values():
        needs = [n for n, flag in (("data", c.needs_data), ("gradients", c.needs_gradients)) if flag]
        print(f"{c.name:10s} {c.description}  [{c.paper}]" + (f"  needs {', '.join(needs)}" if needs else ""))
    return 0


def cmd_gui(args) -> int:
    try:
        from studio.app import main as gui_main
    except ImportError as exc:
        # Without Qt (PySide6 or pyqtgraph not installed, e.g. an engine-only install) the
        # demo still runs end to end in the terminal rather than failing.
        print(f"The desktop window is not available ({exc}); running the demo job in the terminal instead.")
        return _run_demo_headless()
    return gui_main(demo=args.demo)


def _run_demo_headless() -> int:
    """Prune the shipped demo model to half its channels, fine-tune briefly, and report."""
    import tempfile

    from studio.engine.jobs import DataSource, MeasureOptions, ModelSource, Recipe
    from studio.engine.models import demo_model_path
    from studio.engine.training import TrainConfig
    model = "demo" if demo_model_path().is_file() else "cifar:resnet20"
    out = Path(tempfile.mkdtemp(prefix="studio-demo-")) / "run"
    recipe = Recipe(model=ModelSource(spec=model),
                    data=DataSource(spec="demo", batch_size=64),
                    finetune=TrainConfig(epochs=1, lr=0.01, max_steps_per_epoch=40),
                    measure=MeasureOptions(batch_sizes=[1]),
                    exports=["checkpoint", "onnx"])
    print(f"Demo: pruning {model} by 50% with L1 on the CIFAR-10 demo subset; the run folder goes to {out}")
    return _run_job(recipe, out)


COMMANDS = {"inspect": cmd_inspect, "prune": cmd_prune, "run": cmd_run, "train": cmd_train,
            "sensitivity": cmd_sensitivity, "search": cmd_search, "criteria": cmd_criteria}


def _interrupted_note(args) -> str:
    """What an interrupted command left: nothing, or (for `train`) a state to resume from."""
    if args.command in ("search", "run"):
        from studio.engine.jobs.search import SEARCH_FILE
        from studio.engine.methods.search import read_trials
        if (Path(args.out) / SEARCH_FILE).is_file():
            kept = len(read_trials(Path(args.out)))
            return f"the search folder {args.out} keeps the analysis and {kept} finished trial(s); " \
                   "the same command with --resume continues from there"
    if args.command in ("train", "run"):
        from studio.engine.jobs import train_state_path
        state = train_state_path(args.out)
        if state.exists():
            return f"no run folder was written; the last finished epoch is saved in {state}, " \
                   "so the same command with --resume continues from there"
    return "nothing was written"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from studio.engine.errors import StudioError
    handler = COMMANDS.get(args.command, cmd_gui)
    try:
        return handler(args)
    except StudioError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"interrupted: {_interrupted_note(args)}", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so plainly, keep the traceback for --debug
        if args.debug:
            traceback.print_exc()
        print(f"internal error: {type(exc).__name__}: {exc} (run again with --debug for the traceback)",
              file=sys.stderr)
        return 1
