"""Benchmark: images/s of the engine's `train` against a plain PyTorch loop doing the same work.

Both train the same ResNet-20-sized CIFAR model (same initial weights) on the same
in-memory random data with the same optimizer, per-step cosine schedule, AMP and
channels_last settings, for one epoch without validation. The two are alternated a few
times and the medians compared; the goal is an engine/plain ratio of at least 0.95.

Images/s come from wall-clock time. On CPU the table also gives images per CPU-second
of this process, which stays meaningful on a machine shared with other jobs (wall time
there mostly measures the neighbours).

    .venv/bin/python bench/finetune_throughput.py [--images 2048] [--batch 128] [--repeats 3]
                                                  [--device auto] [--threads N]
"""
from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.engine.events import run_to_end  # noqa: E402
from studio.engine.training import TrainConfig, select_device, train  # noqa: E402


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """He et al.'s CIFAR ResNet-20 (3 stages × 3 basic blocks, 16/32/64 channels, ~0.27 M params)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                layers.append(Block(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.head(self.layers(self.stem(x)))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(model: nn.Module, data: TensorDataset, cfg: TrainConfig, device: torch.device) -> float:
    """A textbook PyTorch loop with the engine's settings; returns wall seconds for one epoch."""
    cuda = device.type == "cuda"
    amp = cfg.amp and cuda
    channels_last = cfg.channels_last == "force" or (cfg.channels_last is True and cuda)
    sync(device)
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    g = torch.Generator()
    g.manual_seed(cfg.seed)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, generator=g, pin_memory=cuda)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps = len(loader) * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    criterion = nn.CrossEntropyLoss()
    model.train()
    for _ in range(cfg.epochs):
        for x, y in loader:
            x = x.to(device, non_blocking=cuda)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=cuda)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                loss = criterion(model(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
    sync(device)
    return time.perf_counter() - start


def engine_loop(model: nn.Module, data: TensorDataset, cfg: TrainConfig, device: torch.device) -> float:
    """The engine's `train`, events drained as the CLI does; returns wall seconds."""
    sync(device)
    start = time.perf_counter()
    steps = []
    run_to_end(train(model, data, None, cfg), steps.append)
    sync(device)
    return time.perf_counter() - start


def loop_overhead(cfg: TrainConfig, device: torch.device, repeats: int) -> tuple[float, float, int]:
    """Per-step seconds of both loops on a model so small that the loop itself dominates.

    The difference is the engine's own cost per step (events, token checks, stats), an
    upper bound of what it adds to any real model's step.
    """
    g = torch.Generator().manual_seed(1)
    images = cfg.batch_size * 200
    data = TensorDataset(torch.randn(images, 3, 8, 8, generator=g), torch.randint(0, 10, (images,), generator=g))
    torch.manual_seed(0)
    init = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    per_step: dict[str, list[float]] = {"plain": [], "engine": []}
    for r in range(repeats + 1):
        for name, fn in (("plain", plain_loop), ("engine", engine_loop)) if r % 2 else \
                (("engine", engine_loop), ("plain", plain_loop)):
            seconds = fn(copy.deepcopy(init), data, cfg, device)
            if r:                                   # round 0 is the warm-up
                per_step[name].append(seconds / 200)
    return statistics.median(per_step["plain"]), statistics.median(per_step["engine"]), 200


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for PyTorch (0: its default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = select_device(args.device)
    cfg = TrainConfig(epochs=1, lr=0.1, batch_size=args.batch, device=str(device), seed=0)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(args.images, 3, 32, 32, generator=g),
                         torch.randint(0, 10, (args.images,), generator=g))
    torch.manual_seed(0)
    init = ResNet20()

    loops = {"plain PyTorch": plain_loop, "engine train()": engine_loop}
    for fn in loops.values():                       # warm-up: thread pools, cuDNN autotuning
        fn(copy.deepcopy(init), data, cfg, device)
    rates: dict[str, list[float]] = {name: [] for name in loops}
    cpu_rates: dict[str, list[float]] = {name: [] for name in loops}
    for r in range(args.repeats):
        # Alternate the order so drift in machine load does not favour either side.
        order = list(loops.items()) if r % 2 == 0 else list(reversed(loops.items()))
        for name, fn in order:
            cpu_start = time.process_time()
            wall = fn(copy.deepcopy(init), data, cfg, device)
            rates[name].append(args.images / wall)
            cpu_rates[name].append(args.images / (time.process_time() - cpu_start))

    med = {name: statistics.median(v) for name, v in rates.items()}
    cpu_med = {name: statistics.median(v) for name, v in cpu_rates.items()}
    ratio = med["engine train()"] / med["plain PyTorch"]
    cpu_ratio = cpu_med["engine train()"] / cpu_med["plain PyTorch"]
    amp = cfg.amp and device.type == "cuda"
    on_cpu = device.type == "cpu"
    print(f"ResNet-20, {args.images} random 3x32x32 images, batch {args.batch}, 1 epoch, "
          f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}, "
          f"{torch.get_num_threads()} threads), AMP {'on' if amp else 'off'}, torch {torch.__version__}, "
          f"{args.repeats} alternating runs each\n")
    print("| loop | images/s, wall (median) | runs | " + ("images per CPU-s (median) | runs |" if on_cpu else ""))
    print("| --- | ---: | --- | " + ("---: | --- |" if on_cpu else ""))
    for name in loops:
        row = f"| {name} | {med[name]:.1f} | {', '.join(f'{v:.1f}' for v in rates[name])} | "
        if on_cpu:
            row += f"{cpu_med[name]:.1f} | {', '.join(f'{v:.1f}' for v in cpu_rates[name])} |"
        print(row)
    row = f"| **ratio engine/plain** | **{ratio:.3f}** | | "
    if on_cpu:
        row += f"**{cpu_ratio:.3f}** | |"
    print(row)
    plain_step, engine_step, steps = loop_overhead(cfg, device, max(3, args.repeats))
    step_seconds = args.batch / med["plain PyTorch"]
    print(f"\nLoop cost alone (a 1-layer model, {steps} steps of batch {args.batch}): plain "
          f"{plain_step * 1e6:.0f} µs/step, engine {engine_step * 1e6:.0f} µs/step; the engine adds "
          f"{(engine_step - plain_step) * 1e6:.0f} µs/step = {(engine_step - plain_step) / step_seconds:.2%} "
          f"of a ResNet-20 step ({step_seconds * 1e3:.1f} ms).")
    goal = cpu_ratio if on_cpu else ratio
    print(f"\nGoal ≥ 0.95 ({'CPU-time' if on_cpu else 'wall-clock'} ratio): {'met' if goal >= 0.95 else 'NOT met'}")


if __name__ == "__main__":
    main()
