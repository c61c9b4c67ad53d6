"""The training loop: fine-tune, sparse-train or train from scratch, on one device or under DDP.

`train` is a generator (see `studio.engine.events`): it yields `Phase`, `TrainStep`,
`EpochEnd`, `Progress` and `Log` events and returns a `TrainResult`. It changes the model
it is given in place, so callers pass a copy. It reads as set-up (`_set_up`), then one
`_epoch` per epoch (its `_steps`, each an optimiser `_step`, then validation).

Under torchrun (``WORLD_SIZE`` > 1) the same call trains with DistributedDataParallel:
every rank runs the same number of steps, epoch numbers are averaged over ranks and only
rank 0 yields the events meant for display.
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Optional

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from studio.engine.data.datasets import TensorImageDataset, epoch_seed
from studio.engine.data.device_batches import DeviceBatches, fits_on_device
from studio.engine.errors import StudioError
from studio.engine.events import NEVER_CANCELLED, CancelToken, EpochEnd, Log, Phase, TrainStep
from studio.engine.training.config import TRAIN_STATE_FORMAT, EvalResult, TrainConfig, TrainResult
from studio.engine.training.devices import is_oom, oom_error, seed_everything, select_device
from studio.engine.training.distributed import init_distributed, sync_buffers, unwrap
from studio.engine.training.evaluate import check_not_empty, eval_loop, eval_source, logits_of
from studio.engine.training.fixed_zeros import FixedZeros


def _check_resumable(state: Any, cfg: TrainConfig) -> None:
    """Refuse a saved training state that is damaged or was made with other settings."""
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise StudioError("The saved training state is not one the studio wrote, or it is damaged.",
                          "Delete it and start the training again.")
    if state["config"] != cfg.to_dict():
        changed = sorted(k for k in cfg.to_dict() if state["config"].get(k) != getattr(cfg, k))
        raise StudioError(f"The saved training state was made with other settings ({', '.join(changed)}).",
                          "Resume with the same settings, or delete the saved state to start again.")


def _worker_init(worker_id: int) -> None:
    # Each loader worker gets a distinct, reproducible seed derived from the loader's generator.
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


# --------------------------------------------------------------------------- small helpers

def _loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int, workers: int,
            device: torch.device, distributed: bool = False) -> DataLoader:
    """A DataLoader: seeded shuffling, pinned memory on CUDA, a DistributedSampler under DDP."""
    n = len(dataset)
    sampler = None
    if distributed:
        sampler = torch.utils.data.distributed.DistributedSampler(dataset, shuffle=shuffle, seed=seed)
        n = len(sampler)
    generator = torch.Generator()
    generator.manual_seed(seed)
    # A last batch of one image breaks BatchNorm in train mode; drop it when there is a full batch.
    drop_last = shuffle and n > batch_size and n % batch_size == 1
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
                      drop_last=drop_last, generator=generator, worker_init_fn=_worker_init,
                      persistent_workers=workers > 0)


def _device_loaders(train_set: Dataset, val_set: Optional[Dataset], cfg: TrainConfig,
                    device: torch.device, rank: int, world: int) -> tuple:
    """(train, val) `DeviceBatches` for in-memory image sets that fit on the GPU; None where not.

    Such data is uploaded once and augmented on the device, so the host no longer crops,
    flips and copies every batch while the GPU waits.
    """
    if type(train_set) is not TensorImageDataset or not fits_on_device(train_set, device):
        return None, None
    train_batches = DeviceBatches(train_set, device, cfg.batch_size, shuffle=True, seed=cfg.seed,
                                  rank=rank, world=world)
    val_batches = None
    if type(val_set) is TensorImageDataset and fits_on_device(val_set, device):
        val_batches = DeviceBatches(val_set, device, cfg.batch_size, shuffle=False, augment=False,
                                    rank=rank, world=world)
    return train_batches, val_batches


def _lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    """Multiplier of the base learning rate at global step ``step`` of ``total``."""
    if schedule == "onecycle":
        # As torch's OneCycleLR: cosine ramp from lr/25 to lr, then cosine down to ~0.
        start, end = 1 / 25, 1 / 25 / 1e4
        ramp = warmup if warmup > 0 else max(1, round(0.3 * total))
        if step < ramp:
            return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * step / ramp))
        progress = (step - ramp) / max(1, total - ramp)
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise StudioError("The model has no trainable parameters.",
                          "Unfreeze some layers (requires_grad=True) before training.")
    if cfg.optimizer == "adam":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _bn_scales(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
            and m.weight.requires_grad]


class _StepStats:
    """Per-step (loss, correct) read back without stalling the GPU.

    On CUDA each step's numbers are copied to pinned memory asynchronously and read one
    step later, after the next step is queued, so the host never waits for the GPU to
    drain. On CPU they are read at once (no sync exists there).
    """

    def __init__(self, device: torch.device):
        self.lagged = device.type == "cuda"
        if self.lagged:
            self.host = torch.zeros(2, 2, dtype=torch.float32, pin_memory=True)
            self.events = [torch.cuda.Event(), torch.cuda.Event()]
        self.pending: list[tuple[int, int, int]] = []   # (slot, step, batch)
        self.count = 0

    def push(self, loss: torch.Tensor, correct: torch.Tensor, step: int, batch: int) -> list:
        """Record one step; return the finished steps as (step, batch, loss, correct)."""
        stats = torch.stack((loss.detach().float(), correct.float()))
        if not self.lagged:
            value, hits = stats.tolist()
            return [(step, batch, value, hits)]
        slot = self.count % 2
        self.count += 1
        self.host[slot].copy_(stats, non_blocking=True)
        self.events[slot].record()
        self.pending.append((slot, step, batch))
        return self.drain(keep=1)

    def drain(self, keep: int = 0) -> list:
        out = []
        while len(self.pending) > keep:
            slot, step, batch = self.pending.pop(0)
            self.events[slot].synchronize()
            value, hits = self.host[slot].tolist()
            out.append((step, batch, value, hits))
        return out


# --------------------------------------------------------------------------- training

@dataclass
class _Run:
    """Everything one training run sets up before its first step, shared by the step loop."""
    cfg: TrainConfig
    phase: str
    token: CancelToken
    model: nn.Module                  # the caller's model, trained in place
    net: nn.Module                    # the model, or its DDP wrapper
    device: torch.device
    rank: int
    world: int
    train_loader: Any
    val_loader: Any
    eval_batch: int                   # validation uses the training batch size (an OOM cure covers both)
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    base_lrs: list
    scaler: Any
    criterion: nn.Module
    bn_scales: list
    use_amp: bool
    channels_last: bool
    stats: _StepStats
    zeros: list = field(default_factory=list)   # (parameter, mask) pairs held at zero (FixedZeros)

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class _Progress:
    """What the run has done so far; saved after every epoch and restored by ``resume``."""
    history: list = field(default_factory=list)
    final: Optional[EvalResult] = None
    train_seconds: float = 0.0
    train_images: int = 0
    first_epoch: int = 0


def train(model: nn.Module, train_set: Optional[Dataset], val_set: Optional[Dataset], cfg: TrainConfig, *,
          phase: str = "fine-tune", token: Optional[CancelToken] = None,
          loaders: Optional[tuple] = None, resume: Optional[dict] = None,
          save_state: Optional[Callable[[dict], None]] = None,
          fixed_zeros: Optional[FixedZeros] = None) -> Generator[Any, None, TrainResult]:
    """Train ``model`` in place with ``cfg``; yield progress events and return a `TrainResult`.

    ``fixed_zeros`` (from `FixedZeros.of`, taken before any re-initialisation) holds those
    weights at zero throughout: a sparse model stays exactly as sparse.

    ``loaders`` = ``(train_loader, val_loader_or_None)`` replaces the loaders built from
    ``train_set`` / ``val_set`` (under DDP the caller then shards them; validation sums
    are still all-reduced). The model stays on the training device and is left in
    eval mode. `token.check()` runs before every batch: pause blocks, cancel raises.

    ``save_state`` is called (on rank 0) after every epoch with a `torch.save`-able dict;
    passing that dict back as ``resume`` continues the run where it stopped. Each epoch
    reseeds its shuffle and augmentation, so with ``workers=0`` a resumed run gives the
    same weights as one that was never interrupted.
    """
    cfg.validate()
    t_start = time.perf_counter()
    run = _set_up(model, train_set, val_set, cfg, phase, token or NEVER_CANCELLED, loaders, resume)
    if fixed_zeros is not None:
        run.zeros = fixed_zeros.bind(model)
        FixedZeros.apply(run.zeros)        # a re-initialised model gets its zeros back before step one
    yield Phase(phase)
    if run.main:
        yield from _announce(run)
    done = _restore(run, resume)
    if resume is not None and run.main:
        yield Log(f"Resuming {phase} after epoch {done.first_epoch} of {cfg.epochs}.")
    try:
        for epoch in range(done.first_epoch, cfg.epochs):
            yield from _epoch(run, epoch, done, save_state)
        sync_buffers(run.net)
        if done.first_epoch == cfg.epochs and run.val_loader is not None:
            done.final = yield from eval_loop(run.net, run.val_loader, run.device, run.token, None, phase,
                                              run.eval_batch, run.distributed)
    finally:
        model.eval()
    return TrainResult(history=done.history, final=done.final, seconds=time.perf_counter() - t_start,
                       images_per_s=done.train_images / done.train_seconds if done.train_seconds > 0 else 0.0)


def _set_up(model: nn.Module, train_set: Optional[Dataset], val_set: Optional[Dataset], cfg: TrainConfig,
            phase: str, token: CancelToken, loaders: Optional[tuple], resume: Optional[dict]) -> _Run:
    """Device, process group, seeds, loaders, optimizer and scaler: all a run needs before step one."""
    device = select_device(cfg.device)
    rank, world = init_distributed("nccl" if device.type == "cuda" else "gloo")
    seed_everything(cfg.seed)
    if resume is not None:
        _check_resumable(resume, cfg)
        model.load_state_dict(resume["model"])
    train_loader, val_loader = _loaders(train_set, val_set, cfg, loaders, device, rank, world)
    steps_per_epoch = len(train_loader)
    if cfg.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise StudioError("The training data gives no full batch.",
                          f"Use a batch size below {cfg.batch_size} or more training images.")

    cuda = device.type == "cuda"
    use_amp = cfg.amp and cuda
    channels_last = cfg.channels_last == "force" or (cfg.channels_last is True and cuda)
    if cuda:
        # Fixed input sizes: let cuDNN pick the fastest kernels once.
        torch.backends.cudnn.benchmark = True
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    optimizer = _make_optimizer(model, cfg)
    return _Run(cfg=cfg, phase=phase, token=token, model=model, net=net, device=device, rank=rank, world=world,
                train_loader=train_loader, val_loader=val_loader, eval_batch=cfg.batch_size,
                steps_per_epoch=steps_per_epoch, optimizer=optimizer,
                base_lrs=[g["lr"] for g in optimizer.param_groups],
                scaler=torch.amp.GradScaler("cuda", enabled=use_amp),
                criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
                bn_scales=_bn_scales(model) if cfg.bn_l1 > 0 else [],
                use_amp=use_amp, channels_last=channels_last, stats=_StepStats(device))


def _loaders(train_set: Optional[Dataset], val_set: Optional[Dataset], cfg: TrainConfig,
             loaders: Optional[tuple], device: torch.device, rank: int, world: int) -> tuple:
    """(train, val) batches: the caller's loaders, GPU-resident batches, or DataLoaders."""
    if loaders is not None:
        train_loader, val_loader = loaders
        check_not_empty(train_loader, "training")
        return train_loader, val_loader
    if train_set is None:
        raise StudioError("No training data was given.", "Choose a training data set.")
    check_not_empty(train_set, "training")
    if val_set is not None:
        check_not_empty(val_set, "validation")
    train_loader, val_loader = _device_loaders(train_set, val_set, cfg, device, rank, world)
    if train_loader is None:
        train_loader = _loader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed,
                               workers=cfg.workers, device=device, distributed=world > 1)
    if val_loader is None and val_set is not None:
        val_loader = eval_source(val_set, cfg.batch_size, device, cfg.workers, shard=world > 1)
    return train_loader, val_loader


def _announce(run: _Run) -> Generator[Any, None, None]:
    """The run's one-line summary (and a warning when bn_l1 has nothing to act on)."""
    cfg = run.cfg
    yield Log(f"{run.phase}: {cfg.epochs} epoch(s) × {run.steps_per_epoch} steps on {run.device}"
              f"{f' × {run.world} ranks' if run.distributed else ''}, batch {cfg.batch_size}, "
              f"{cfg.optimizer} lr {cfg.lr:g} ({cfg.schedule}), AMP {'on' if run.use_amp else 'off'}"
              f"{', channels_last' if run.channels_last else ''}"
              f"{f', data and augmentation on {run.device}' if isinstance(run.train_loader, DeviceBatches) else ''}"
              f"{f', BN L1 {cfg.bn_l1:g}' if run.bn_scales else ''}"
              f"{', zero weights held at zero' if run.zeros else ''}.")
    if cfg.bn_l1 > 0 and not run.bn_scales:
        yield Log("bn_l1 is set but the model has no trainable BatchNorm scales; it has no effect.",
                  "warning")


def _restore(run: _Run, resume: Optional[dict]) -> _Progress:
    """The progress to continue from: empty, or the saved state's optimizer, scaler and history."""
    if resume is None:
        return _Progress()
    if resume["steps_per_epoch"] != run.steps_per_epoch:
        raise StudioError(f"The saved training state ran {resume['steps_per_epoch']} steps per epoch; "
                          f"this data gives {run.steps_per_epoch}.",
                          "Resume with the data the run started with, or delete the saved state.")
    run.optimizer.load_state_dict(resume["optimizer"])
    if resume["scaler"] and run.scaler.is_enabled():   # empty when saved without AMP (e.g. on a CPU)
        run.scaler.load_state_dict(resume["scaler"])
    return _Progress(history=list(resume["history"]), train_seconds=resume["train_seconds"],
                     train_images=resume["train_images"], first_epoch=resume["epoch"])


def _epoch(run: _Run, epoch: int, done: _Progress,
           save_state: Optional[Callable[[dict], None]]) -> Generator[Any, None, None]:
    """One epoch: the steps, the epoch's numbers over all ranks, validation, and the saved state."""
    cfg = run.cfg
    t_epoch = time.perf_counter()
    sums = yield from _steps(run, epoch, t_epoch)
    done.train_images += int(sums[2]) * run.world
    done.train_seconds += time.perf_counter() - t_epoch

    # Epoch numbers over all ranks: every rank takes part in the same all_reduce.
    totals = list(sums)
    if run.distributed:
        t = torch.tensor(totals, dtype=torch.float64, device=run.device)
        torch.distributed.all_reduce(t)
        totals = t.tolist()
    train_loss = totals[0] / max(totals[2], 1)
    if not math.isfinite(train_loss):
        raise StudioError(f"The training loss became {train_loss} in epoch {epoch + 1}.",
                          f"Lower the learning rate (now {cfg.lr:g}), e.g. to {cfg.lr / 10:g}.")
    train_acc = totals[1] / max(totals[2], 1)

    val: Optional[EvalResult] = None
    if run.val_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch == cfg.epochs - 1):
        sync_buffers(run.net)
        val = yield from eval_loop(run.net, run.val_loader, run.device, run.token, None, run.phase,
                                   run.eval_batch, run.distributed)
        done.final = val
    end = EpochEnd(run.phase, epoch, cfg.epochs, train_loss, train_acc,
                   val.loss if val else None, val.top1 if val else None, val.top5 if val else None,
                   run.optimizer.param_groups[0]["lr"], time.perf_counter() - t_epoch)
    done.history.append(dataclasses.asdict(end))
    if run.main:
        yield end
    if save_state is not None and run.main:
        sync_buffers(run.net)
        save_state({"format": TRAIN_STATE_FORMAT, "config": cfg.to_dict(), "epoch": epoch + 1,
                    "steps_per_epoch": run.steps_per_epoch, "model": unwrap(run.net).state_dict(),
                    "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
                    "history": done.history, "train_seconds": done.train_seconds,
                    "train_images": done.train_images})


def _steps(run: _Run, epoch: int, t_epoch: float) -> Generator[Any, None, tuple[float, float, float]]:
    """The epoch's training steps; yields `TrainStep` events, returns this rank's (loss sum, hits, images)."""
    cfg, loader = run.cfg, run.train_loader
    # Each epoch's randomness depends only on (seed, epoch): a resumed run repeats it.
    seed_everything(epoch_seed(cfg.seed, epoch))
    if isinstance(getattr(loader, "generator", None), torch.Generator):
        loader.generator.manual_seed(epoch_seed(cfg.seed, epoch))
    for source in (loader, getattr(loader, "sampler", None)):
        if hasattr(source, "set_epoch"):
            source.set_epoch(epoch)
    run.net.train()
    sums = [0.0, 0.0, 0.0]            # loss × images, correct, images
    lr_of_step: dict[int, float] = {}
    total_steps = cfg.epochs * run.steps_per_epoch
    warmup_steps = int(round(cfg.warmup_epochs * run.steps_per_epoch))
    global_step = epoch * run.steps_per_epoch

    def report(finished: list) -> list:
        # Turn finished steps into events; keeps the epoch's running sums.
        events = []
        for step, batch, value, hits in finished:
            if not math.isfinite(value) and not run.distributed:
                raise StudioError(
                    f"The training loss became {value} at epoch {epoch + 1}, step {step + 1}.",
                    f"Lower the learning rate (now {cfg.lr:g}), e.g. to {cfg.lr / 10:g}, "
                    "or add warm-up epochs.")
            sums[0] += value * batch
            sums[1] += hits
            sums[2] += batch
            lr = lr_of_step.pop(step)
            if run.main:
                elapsed = max(time.perf_counter() - t_epoch, 1e-9)
                events.append(TrainStep(run.phase, epoch, step, run.steps_per_epoch, value,
                                        sums[1] / sums[2], lr, sums[2] * run.world / elapsed))
        return events

    for step, (x, y) in enumerate(loader):
        if step >= run.steps_per_epoch:
            break
        run.token.check(run.phase)
        factor = _lr_factor(cfg.schedule, global_step, total_steps, warmup_steps)
        for group, base in zip(run.optimizer.param_groups, run.base_lrs):
            group["lr"] = base * factor
        lr_of_step[step] = run.base_lrs[0] * factor
        loss, correct, batch = _step(run, x, y)
        global_step += 1
        yield from report(run.stats.push(loss, correct, step, batch))
    yield from report(run.stats.drain())
    return sums[0], sums[1], sums[2]


def _step(run: _Run, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One optimiser step on a batch; returns (loss, correct count, batch size) as device tensors."""
    non_blocking = run.device.type == "cuda"
    x = x.to(run.device, non_blocking=non_blocking)
    if run.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    y = y.to(run.device, non_blocking=non_blocking).long()
    try:
        with torch.autocast(run.device.type, dtype=torch.float16, enabled=run.use_amp):
            logits = logits_of(run.net(x))
            loss = run.criterion(logits, y)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if run.bn_scales:
            # Network slimming: add the L1 subgradient λ·sign(γ) to the *unscaled* grads.
            run.scaler.unscale_(run.optimizer)
            grads = [g.grad for g in run.bn_scales if g.grad is not None]
            signs = [torch.sign(g.detach()) for g in run.bn_scales if g.grad is not None]
            torch._foreach_add_(grads, signs, alpha=run.cfg.bn_l1)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if run.zeros:
            FixedZeros.apply(run.zeros)     # Deep Compression: the pruned weights stay pruned
    except RuntimeError as exc:
        if is_oom(exc):
            raise oom_error(exc, run.cfg.batch_size, "training") from exc
        raise
    return loss, logits.detach().argmax(dim=1).eq(y).sum(), y.shape[0]
