"""Benchmark: recovering accuracy without training, against fine-tuning.

For each model (an untrained one is first trained briefly on the training split), at one
uniform channel rate giving --macs× fewer MACs:

1. top-1 with no training after: plain surgery (L1), least squares (LS), LASSO + LS, CaP + LS;
   wall time of each (channel selection, surgery and refit) and the calibration images used;
2. one epoch of fine-tuning on top of each;
3. fine-tuning alone (from plain surgery, SGD as the engine's fine-tune, evaluated every
   --eval-every steps) until it reaches the best no-training top-1 of step 1: the training
   time it needed, against the time of that reconstruction.

    .venv/bin/python bench/reconstruction.py --models demo --data demo --results bench/results/reconstruction-demo.json
    .venv/bin/python bench/reconstruction.py --models cifar:vgg16_bn,cifar:mobilenetv2 --data demo --train-epochs 3 \\
        --results bench/results/reconstruction-others.json
    # smoke run
    .venv/bin/python bench/reconstruction.py --models cifar:resnet20 --data synthetic --calib-images 64 \\
        --finetune-epochs 0 --max-finetune-epochs 0 --results /tmp/rec.json

Results go to --results as JSON and a Markdown table on stdout.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.engine.data import check_compatible, load_data, make_loader  # noqa: E402
from studio.engine.events import run_to_end  # noqa: E402
from studio.engine.files import write_text  # noqa: E402
from studio.engine.methods import MethodInput, get_method  # noqa: E402
from studio.engine.methods.sensitivity import calibration_split  # noqa: E402
from studio.engine.models import load_model  # noqa: E402
from studio.engine.pruning import PruningPlan, estimate, prune  # noqa: E402
from studio.engine.training import TrainConfig, evaluate, seed_everything, train  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402

ARMS = (("surgery", "l1", None), ("ls", "l1", "ls"), ("lasso", "lasso", "lasso"), ("cap", "cap", "cap"))


def log(text: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def uniform_rate_for(model, example, ratio: float) -> float:
    """The one per-layer rate whose MACs come closest to 1/ratio of the model's (bisection)."""
    _, macs0 = estimate(model, PruningPlan(rate=0.0), example)
    goal, low, high = macs0 / ratio, 0.0, 0.95
    for _ in range(16):
        mid = (low + high) / 2
        low, high = (low, mid) if estimate(model, PruningPlan(rate=mid), example)[1] <= goal else (mid, high)
    return round(high, 4)


def top1(model, bundle) -> float:
    return run_to_end(evaluate(model, bundle.val, device="cpu", batch_size=250)).top1


def train_briefly(model, bundle, epochs: int) -> float:
    started = time.perf_counter()
    cfg = TrainConfig(epochs=epochs, lr=0.05, batch_size=128, device="cpu")
    run_to_end(train(model, bundle.train, None, cfg, phase="train"))
    model.cpu().eval()
    return time.perf_counter() - started


def run_arm(model, bundle, rate, criterion, method, calibration, example, batch) -> tuple:
    """Prune (and reconstruct); returns (model, seconds, images, summary)."""
    started = time.perf_counter()
    pruned = run_to_end(prune(model, PruningPlan(criterion=criterion, rate=rate), example,
                              calibration=calibration if criterion != "l1" else None))
    net, summary = pruned.model.cpu().eval(), None
    if method is not None:
        recon = get_method("reconstruct")
        found = run_to_end(recon.run(MethodInput(model=net, input_size=tuple(example.shape[1:]), data=bundle,
                                                 reference=model, history=pruned.history,
                                                 finetune=TrainConfig(batch_size=batch)),
                                     recon.resolve_options({"method": method, "batches": len(calibration)})))
        net, summary = found.model, found.summary
    images = sum(len(y) for _, y in calibration) if method is not None or criterion != "l1" else 0
    return net, time.perf_counter() - started, images, summary


def finetune_to(net, bundle, goal: float, max_epochs: int, eval_every: int, seed: int) -> dict:
    """Fine-tune (SGD lr 0.01, momentum 0.9, wd 5e-4, cosine over max_epochs) until top-1 ≥ goal."""
    net = copy.deepcopy(net).train()
    seed_everything(seed)
    loader = make_loader(bundle.train, 128, shuffle=True, seed=seed)
    steps = max(1, max_epochs * len(loader))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    trained, step, curve = 0.0, 0, []
    for _ in range(max_epochs):
        for x, y in loader:
            started = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()
            sched.step()
            trained += time.perf_counter() - started
            step += 1
            if step % eval_every == 0:
                acc = top1(net.eval(), bundle)
                net.train()
                curve.append((step, round(trained, 1), acc))
                log(f"  fine-tune alone: step {step}, {trained:.0f} s, top-1 {acc:.3f}")
                if acc >= goal:
                    return {"reached": True, "steps": step, "train_seconds": trained, "curve": curve}
    return {"reached": False, "steps": step, "train_seconds": trained, "curve": curve}


def bench_model(spec: str, args) -> dict:
    loaded = load_model(spec)
    size = tuple(loaded.input_size)
    bundle = load_data("synthetic:classes=10,size=3x32x32,train=256,val=128" if args.data == "synthetic"
                       else args.data, input_size=size, channels=size[0])
    check_compatible(bundle, num_classes=loaded.num_classes, input_size=size)
    model = loaded.module.eval()
    row = {"model": spec, "trained": loaded.trained}
    if not loaded.trained and args.train_epochs > 0:
        log(f"{spec}: training {args.train_epochs} epoch(s) first")
        row["train_seconds"] = round(train_briefly(model, bundle, args.train_epochs), 1)
        row["train_epochs"] = args.train_epochs
    example = torch.randn(1, *size, generator=torch.Generator().manual_seed(0))
    rate = uniform_rate_for(model, example, args.macs)
    _, macs0 = estimate(model, PruningPlan(rate=0.0), example)
    _, macs1 = estimate(model, PruningPlan(rate=rate), example)
    row.update(rate=rate, macs_ratio=macs0 / macs1, original_top1=top1(model, bundle),
               train_images=len(bundle.train))
    batch = args.calib_batch
    calibration = calibration_split(bundle.train, args.calib_images, batch, 0)
    row["arms"] = {}
    for name, criterion, method in ARMS:
        log(f"{spec}: {name}")
        net, seconds, images, summary = run_arm(model, bundle, rate, criterion, method, calibration, example, batch)
        arm = {"top1": top1(net, bundle), "seconds": round(seconds, 1), "images": images}
        if summary:
            fitted = [r for r in summary["layers"] if r["fitted"]]
            arm.update(layers=len(summary["layers"]), fitted=len(fitted))
        if args.finetune_epochs > 0:
            tuned = copy.deepcopy(net)
            started = time.perf_counter()
            run_to_end(train(tuned, bundle.train, None, TrainConfig(epochs=args.finetune_epochs, lr=0.01,
                                                                   batch_size=128, device="cpu"), phase="fine-tune"))
            arm.update(finetuned_top1=top1(tuned.cpu().eval(), bundle),
                       finetune_seconds=round(time.perf_counter() - started, 1))
        row["arms"][name] = arm
        if name == "surgery":
            surgery_net = net
        log(f"  {arm}")
    best = max(("ls", "lasso", "cap"), key=lambda k: row["arms"][k]["top1"])
    goal = row["arms"][best]["top1"]
    if args.max_finetune_epochs > 0:
        log(f"{spec}: fine-tuning alone to {goal:.3f} (the {best} arm without training)")
        row["finetune_alone"] = {"goal_arm": best, "goal": goal,
                                 **finetune_to(surgery_net, bundle, goal, args.max_finetune_epochs, args.eval_every, 0)}
    return row


def markdown(out: dict) -> str:
    lines = []
    for row in out["models"]:
        arms = row["arms"]
        lost = row["original_top1"] - arms["surgery"]["top1"]
        lines += [f"**{row['model']}** at {row['macs_ratio']:.2f}× fewer MACs (rate {row['rate']}), original top-1 "
                  f"{row['original_top1'] * 100:.1f} %" + (f" (trained {row['train_epochs']} epochs here)"
                                                             if "train_epochs" in row else ""), "",
                  "| arm | top-1, no training | share of the loss recovered | wall s | images | top-1 after 1 epoch |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for name, arm in arms.items():
            share = (arm["top1"] - arms["surgery"]["top1"]) / lost if lost > 0 else float("nan")
            tuned = f"{arm['finetuned_top1'] * 100:.1f} %" if "finetuned_top1" in arm else "—"
            lines.append(f"| {name} | {arm['top1'] * 100:.1f} % | {share:.2f} | {arm['seconds']:.1f} | "
                         f"{arm['images']} | {tuned} |")
        alone = row.get("finetune_alone")
        if alone:
            rec = arms[alone["goal_arm"]]["seconds"]
            reached = (f"reached {alone['goal'] * 100:.1f} % after {alone['steps']} steps, "
                       f"{alone['train_seconds']:.0f} s of training: {alone['train_seconds'] / rec:.1f}× the "
                       f"{alone['goal_arm']} arm's {rec:.1f} s" if alone["reached"] else
                       f"did not reach {alone['goal'] * 100:.1f} % in {alone['steps']} steps "
                       f"({alone['train_seconds']:.0f} s): more than {alone['train_seconds'] / rec:.1f}× the "
                       f"{alone['goal_arm']} arm's {rec:.1f} s")
            lines += ["", f"Fine-tuning alone (from plain surgery) {reached}."]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="demo")
    p.add_argument("--data", default="demo")
    p.add_argument("--macs", type=float, default=2.0, help="MACs reduction of the uniform rate")
    p.add_argument("--calib-images", type=int, default=500, help="calibration images (demo: 10 %% of training)")
    p.add_argument("--calib-batch", type=int, default=125)
    p.add_argument("--train-epochs", type=int, default=3, help="brief training of untrained models first")
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--max-finetune-epochs", type=int, default=3, help="fine-tuning alone: at most this long")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--results", default="bench/results/reconstruction.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = {"command": " ".join(sys.argv), "date": datetime.date.today().isoformat(),
           "machine": {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__},
           "models": []}
    for spec in [s.strip() for s in args.models.split(",") if s.strip()]:
        out["models"].append(bench_model(spec, args))
        write_text(Path(args.results), json.dumps(out, indent=2) + "\n")
    print(markdown(out))


if __name__ == "__main__":
    main()
