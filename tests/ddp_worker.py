"""DDP worker for tests/test_training.py: each torchrun rank trains a tiny model and writes what it saw.

Run as ``python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py OUT_DIR``;
rank r writes ``OUT_DIR/rank{r}.json`` with its initial and final weights and event counts.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from studio.engine.events import EpochEnd, TrainStep, run_to_end
from studio.engine.metrics import measure
from studio.engine.training import TrainConfig, cleanup_distributed, evaluate, init_distributed, train


def main(out_dir: Path) -> None:
    rank, world = init_distributed()
    # Rank-dependent initial weights: DDP must start every rank from rank 0's.
    torch.manual_seed(100 + rank)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    initial = [round(v, 6) for v in torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()]
    g = torch.Generator().manual_seed(0)   # the same data on every rank
    x, y = torch.randn(96, 3, 6, 6, generator=g), torch.randint(0, 3, (96,), generator=g)
    train_set, val_set = TensorDataset(x[:56], y[:56]), TensorDataset(x[56:], y[56:])
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=8, device="cpu", max_steps_per_epoch=3)
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
        "val_samples": result.final.samples, "val_top1": result.final.top1,
        "train_loss": result.history[-1]["train_loss"],
        "alone": alone.to_dict(), "shared": shared.to_dict(),
        "measured_top1": measured.top1 if measured else None,
    }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(record))
    cleanup_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
