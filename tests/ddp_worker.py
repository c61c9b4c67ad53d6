"""DDP worker for tests/test_training.py: each torchrun rank trains a tiny model and writes what it saw.

Run as ``python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py OUT_DIR [device-batches]``;
rank r writes ``OUT_DIR/rank{r}.json`` with its initial and final weights and event counts.
With ``device-batches`` the data is a uint8 image set fed through `DeviceBatches` (which
`train` otherwise picks only on CUDA), to check its sharding under real DDP on the CPU.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from studio.engine.events import EpochEnd, Log, TrainStep, run_to_end
from studio.engine.metrics import measure
from studio.engine.training import TrainConfig, cleanup_distributed, evaluate, init_distributed, train


def datasets(device_batches: bool) -> tuple:
    g = torch.Generator().manual_seed(0)   # the same data on every rank
    y = torch.randint(0, 3, (96,), generator=g)
    if not device_batches:
        x = torch.randn(96, 3, 6, 6, generator=g)
        return TensorDataset(x[:56], y[:56]), TensorDataset(x[56:], y[56:])
    import studio.engine.training.loop as training
    from studio.engine.data import Augment, TensorImageDataset
    training.fits_on_device = lambda *a: True
    x = torch.randint(0, 256, (96, 3, 6, 6), generator=g, dtype=torch.uint8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    return (TensorImageDataset(x[:56], y[:56], list("abc"), mean, std, augment=Augment(1, True)),
            TensorImageDataset(x[56:], y[56:], list("abc"), mean, std))


def main(out_dir: Path, device_batches: bool) -> None:
    rank, world = init_distributed()
    # Rank-dependent initial weights: DDP must start every rank from rank 0's.
    torch.manual_seed(100 + rank)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    initial = [round(v, 6) for v in torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()]
    train_set, val_set = datasets(device_batches)
    # DeviceBatches runs whole epochs: 28 images per rank, 4 steps of 8.
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=8, device="cpu",
                      max_steps_per_epoch=None if device_batches else 3)
    events: list = []
    result = run_to_end(train(model, train_set, val_set, cfg, token=None), events.append)
    state = {k: v.flatten().tolist() for k, v in model.state_dict().items()}
    alone = run_to_end(evaluate(model, val_set))                      # each rank on its own
    shared = run_to_end(evaluate(model, val_set, distributed=True))   # split over the ranks
    # As the job runner does: only rank 0 measures, the other ranks must not be needed.
    measured = run_to_end(measure(model, (3, 6, 6), eval_set=val_set)) if rank == 0 else None
    record = {
        "rank": rank, "world_size": world, "initial": initial, "state": state,
        "train_steps": sum(isinstance(e, TrainStep) for e in events),
        "epoch_ends": sum(isinstance(e, EpochEnd) for e in events),
        "device_batches": any(isinstance(e, Log) and "data and augmentation on" in e.message for e in events),
        "val_samples": result.final.samples, "val_top1": result.final.top1,
        "train_loss": result.history[-1]["train_loss"],
        "alone": alone.to_dict(), "shared": shared.to_dict(),
        "measured_top1": measured.top1 if measured else None,
    }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(record))
    cleanup_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:] == ["device-batches"])
