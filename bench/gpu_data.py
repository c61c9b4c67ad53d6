"""Benchmark: training images/s with batches from the host DataLoader against `DeviceBatches`.

Both paths feed the engine's `train` the same in-memory CIFAR-size data with the same
random crop and flip, the same model (cifar:resnet20 by default) and settings; only where
the batches are cut differs: a DataLoader that crops on the host and copies each batch
over, or `DeviceBatches`, which keeps the data on the device and crops there. `train`
picks `DeviceBatches` by itself on a GPU; this script builds both explicitly, so it runs
on any device. Each path runs --steps steps per round, alternated over --repeats rounds,
after one warm-up round; the medians and their ratio are printed.

    python bench/gpu_data.py --data /path/to/cifar10 [--model cifar:resnet20] [--steps 200]
                             [--batch 128] [--repeats 3] [--device auto]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_model  # noqa: E402

from studio.engine.data import (  # noqa: E402
    DeviceBatches,  # noqa: E402
    load_data,
    make_loader,
)
from studio.engine.events import run_to_end  # noqa: E402
from studio.engine.models import load_model  # noqa: E402
from studio.engine.training import TrainConfig, select_device, train  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_round(model, loader, cfg: TrainConfig, device: torch.device) -> float:
    """Images/s of one epoch of ``cfg.max_steps_per_epoch`` steps, wall clock."""
    sync(device)
    start = time.perf_counter()
    run_to_end(train(model, None, None, cfg, loaders=(loader, None)))
    sync(device)
    return cfg.max_steps_per_epoch * cfg.batch_size / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a CIFAR-10 folder or any in-memory data spec")
    ap.add_argument("--model", default="cifar:resnet20")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    device = select_device(args.device)
    torch.manual_seed(0)
    init = load_model(args.model).module
    bundle = load_data(args.data, input_size=(3, 32, 32), channels=3)
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=args.batch, device=str(device),
                      max_steps_per_epoch=args.steps, seed=0)
    paths = {
        "host DataLoader": make_loader(bundle.train, args.batch, shuffle=True, seed=0),
        "DeviceBatches": DeviceBatches(bundle.train, device, args.batch, shuffle=True, seed=0),
    }
    if min(len(p) for p in paths.values()) < args.steps:
        sys.exit(f"--steps {args.steps} is more than one epoch of this data; lower it.")
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(args.repeats + 1):
        order = list(paths.items()) if r % 2 == 0 else list(reversed(paths.items()))
        for name, loader in order:
            rate = one_round(copy.deepcopy(init), loader, cfg, device)
            if r:                                        # round 0 warms up cuDNN and the caches
                rates[name].append(rate)

    med = {name: statistics.median(v) for name, v in rates.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(f"# {args.model}, {bundle.summary()}")
    print(f"# device {device} ({name}), torch {torch.__version__}, batch {args.batch}, "
          f"{args.steps} steps x {args.repeats} rounds, AMP {'on' if device.type == 'cuda' else 'off'}")
    for label, values in rates.items():
        print(f"{label:16s} median {med[label]:9.0f} img/s   rounds: {', '.join(f'{v:.0f}' for v in values)}")
    print(f"DeviceBatches / host DataLoader: {med['DeviceBatches'] / med['host DataLoader']:.2f}x")


if __name__ == "__main__":
    main()
