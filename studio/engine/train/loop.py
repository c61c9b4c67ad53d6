"""Training and evaluation loops: fine-tune, sparse-train and evaluate a model, on one device or under DDP.

`train` and `evaluate` are generators (see `studio.engine.events`): they yield `Phase`,
`TrainStep`, `EpochEnd`, `Progress` and `Log` events and return a `TrainResult` /
`EvalResult`. `train` changes the model it is given in place, so callers pass a copy.

Under torchrun (``WORLD_SIZE`` > 1) the same call trains with DistributedDataParallel:
every rank runs the same number of steps, epoch numbers are averaged over ranks and only
rank 0 yields the events meant for display.
"""
from __future__ import annotations

import dataclasses
import gc
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from studio.engine.data import TensorImageDataset, epoch_seed
from studio.engine.device_batches import DeviceBatches, fits_on_device
from studio.engine.errors import StudioError
from studio.engine.events import (NEVER_CANCELLED, CancelToken, EpochEnd, Log, Phase,
                                  Progress, TrainStep)

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "onecycle", "constant")
DEVICES = ("auto", "cuda", "mps", "cpu")
TRAIN_STATE_FORMAT = "studio-train-state-1"


# --------------------------------------------------------------------------- config

@dataclass
class TrainConfig:
    """Everything that decides how a model is trained; plain data so it lives in recipes."""
    epochs: int = 1
    lr: float = 0.01
    optimizer: str = "sgd"            # 'sgd' (momentum) or 'adam' (AdamW: decoupled weight decay)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    schedule: str = "cosine"          # per-step schedule: 'cosine', 'onecycle' or 'constant'
    warmup_epochs: float = 0.0        # linear warm-up (for 'onecycle': length of the ramp up)
    label_smoothing: float = 0.0
    bn_l1: float = 0.0                # network slimming: λ·Σ|γ| over BatchNorm scales
    device: str = "auto"              # 'auto', 'cuda', 'cuda:N', 'mps' or 'cpu'
    amp: bool = True                  # mixed precision, used on CUDA only
    channels_last: Any = True         # True: on CUDA only; 'force': also on CPU/MPS; False: never
    seed: int = 0
    workers: int = 0
    max_steps_per_epoch: Optional[int] = None
    eval_every: int = 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build from a recipe dict; unknown keys and bad values raise `StudioError`."""
        if not isinstance(d, dict):
            raise StudioError("The training settings must be a JSON object.",
                              "Write them as {\"epochs\": 10, \"lr\": 0.01, ...}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise StudioError(f"Unknown training setting(s): {', '.join(unknown)}.",
                              f"Use only: {', '.join(sorted(known))}.")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> "TrainConfig":
        """Raise `StudioError` for the first value that cannot work; return self."""
        def fail(name: str, why: str, fix: str) -> None:
            raise StudioError(f"Training setting '{name}' {why} (got {getattr(self, name)!r}).", fix)

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name in ("epochs", "batch_size", "seed", "workers", "eval_every"):
            if not is_int(getattr(self, name)):
                fail(name, "must be a whole number", "Give a whole number.")
        for name in ("lr", "momentum", "weight_decay", "warmup_epochs", "label_smoothing", "bn_l1"):
            if not is_num(getattr(self, name)):
                fail(name, "must be a finite number", "Give a number.")
        if self.epochs < 0:
            fail("epochs", "must be 0 or more", "Use 0 to skip training, or a positive count.")
        if self.lr <= 0:
            fail("lr", "must be greater than 0", "Typical fine-tuning values are 0.001 to 0.05.")
        if self.batch_size < 1:
            fail("batch_size", "must be at least 1", "Typical values are 64 to 256.")
        if self.optimizer not in OPTIMIZERS:
            fail("optimizer", "is not known", f"Use one of: {', '.join(OPTIMIZERS)}.")
        if self.schedule not in SCHEDULES:
            fail("schedule", "is not known", f"Use one of: {', '.join(SCHEDULES)}.")
        if not isinstance(self.device, str) or not (
                self.device in DEVICES or (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            fail("device", "is not known", "Use 'auto', 'cuda', 'cuda:N', 'mps' or 'cpu'.")
        if not 0 <= self.momentum < 1:
            fail("momentum", "must be in [0, 1)", "0.9 is the usual value.")
        if self.weight_decay < 0:
            fail("weight_decay", "must be 0 or more", "5e-4 is usual for CIFAR models.")
        if self.warmup_epochs < 0:
            fail("warmup_epochs", "must be 0 or more", "Use 0 for no warm-up.")
        if not 0 <= self.label_smoothing < 1:
            fail("label_smoothing", "must be in [0, 1)", "Use 0 (off) or about 0.1.")
        if self.bn_l1 < 0:
            fail("bn_l1", "must be 0 or more", "Network slimming uses about 1e-4; 0 turns it off.")
        if not isinstance(self.amp, bool):
            fail("amp", "must be true or false", "Use true or false.")
        if not (isinstance(self.channels_last, bool) or self.channels_last == "force"):
            fail("channels_last", "must be true, false or 'force'", "Use true (CUDA only), false or 'force'.")
        if self.workers < 0:
            fail("workers", "must be 0 or more", "Use 0 to load data in the main process.")
        if self.max_steps_per_epoch is not None and (not is_int(self.max_steps_per_epoch)
                                                     or self.max_steps_per_epoch < 1):
            fail("max_steps_per_epoch", "must be empty or at least 1", "Leave it empty to use all data.")
        if self.eval_every < 1:
            fail("eval_every", "must be at least 1", "Use 1 to validate after every epoch.")
        return self


@dataclass
class EvalResult:
    """Accuracy (0..1) and mean cross-entropy over ``samples`` images."""
    top1: float
    top5: float
    loss: float
    samples: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What a training run produced besides the trained model itself."""
    history: list = field(default_factory=list)   # EpochEnd events as dicts
    final: Optional[EvalResult] = None            # last validation, None without validation data
    seconds: float = 0.0                          # wall time of the whole run
    images_per_s: float = 0.0                     # training images per second (all ranks)

    def to_dict(self) -> dict:
        return {"history": list(self.history), "final": self.final.to_dict() if self.final else None,
                "seconds": self.seconds, "images_per_s": self.images_per_s}


# --------------------------------------------------------------------------- devices, seeds, DDP

def _dist_env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


def is_main_process() -> bool:
    """True on rank 0, and in any process that is not part of a process group.

    Before the group is initialised, torchrun's RANK variable decides, so that a job can
    choose its writer (and its run folder) before training starts the group.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def init_distributed(backend: Optional[str] = None) -> tuple[int, int]:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1; return ``(rank, world_size)``.

    ``backend`` defaults to NCCL when CUDA is available (one GPU per local rank) and gloo
    otherwise. Outside torchrun this does nothing and returns ``(0, 1)``.
    """
    dist = torch.distributed
    if not dist.is_available():
        return 0, 1
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if _dist_env_world_size() <= 1:
        return 0, 1
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    try:
        dist.init_process_group(backend=backend)
    except (RuntimeError, ValueError) as exc:
        raise StudioError(f"Could not join the distributed run ({backend}): {exc}",
                          "Start it with torchrun and check MASTER_ADDR / MASTER_PORT.") from exc
    return dist.get_rank(), dist.get_world_size()


def cleanup_distributed(after_error: bool = False) -> None:
    """Leave the process group, if one was joined.

    After a normal finish the ranks first meet at a barrier, so that none tears its
    connections down while another still uses them; after an error they do not wait, as
    the others may never arrive. Dead DDP wrappers are collected first: gloo work objects
    that outlive the group can abort the process when the interpreter shuts down.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    gc.collect()
    if not after_error:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def select_device(preference: str = "auto") -> torch.device:
    """Pick the device: 'auto' prefers CUDA, then Apple MPS, then CPU.

    Asking for a device that is not there raises `StudioError`. Under torchrun with CUDA,
    'auto' / 'cuda' give each rank its own GPU (``LOCAL_RANK``).
    """
    has_cuda = torch.cuda.is_available()
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    pref = (preference or "auto").lower()
    if pref == "auto":
        pref = "cuda" if has_cuda else "mps" if has_mps else "cpu"
    if pref == "cpu":
        return torch.device("cpu")
    if pref == "mps":
        if not has_mps:
            raise StudioError("Apple MPS was requested but is not available on this machine.",
                              "Choose device 'auto' or 'cpu'.")
        return torch.device("mps")
    if pref == "cuda" or (pref.startswith("cuda:") and pref[5:].isdigit()):
        if not has_cuda:
            raise StudioError("A CUDA GPU was requested but PyTorch sees none on this machine.",
                              "Choose device 'auto' or 'cpu', or install a CUDA build of PyTorch "
                              "and an NVIDIA driver.")
        if pref == "cuda":
            index = int(os.environ.get("LOCAL_RANK", "0")) if _dist_env_world_size() > 1 else 0
            return torch.device("cuda", index % torch.cuda.device_count())
        index = int(pref[5:])
        if index >= torch.cuda.device_count():
            raise StudioError(f"GPU {index} was requested but only {torch.cuda.device_count()} "
                              "GPU(s) are visible.", "Choose 'cuda' or a lower GPU number.")
        return torch.device("cuda", index)
    raise StudioError(f"Unknown device '{preference}'.", "Use 'auto', 'cuda', 'cuda:N', 'mps' or 'cpu'.")


def _check_resumable(state: Any, cfg: TrainConfig) -> None:
    """Refuse a saved training state that is damaged or was made with other settings."""
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise StudioError("The saved training state is not one the studio wrote, or it is damaged.",
                          "Delete it and start the training again.")
    if state["config"] != cfg.to_dict():
        changed = sorted(k for k in cfg.to_dict() if state["config"].get(k) != getattr(cfg, k))
        raise StudioError(f"The saved training state was made with other settings ({', '.join(changed)}).",
                          "Resume with the same settings, or delete the saved state to start again.")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


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


def _check_not_empty(data: Any, what: str) -> None:
    try:
        n = len(data)
    except TypeError:
        return  # an iterable-style source: its length is only known once it is read
    if n == 0:
        raise StudioError(f"The {what} data is empty.", "Check the data folder, split or subset size.")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _uses_channels_last(model: nn.Module) -> bool:
    for p in model.parameters():
        if p.dim() == 4:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


def _logits(output: Any) -> torch.Tensor:
    # Some torchvision models return (logits, aux) tuples in train mode; the first is the answer.
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _oom_error(exc: BaseException, batch_size: int, where: str) -> StudioError:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    smaller = max(1, batch_size // 2)
    return StudioError(f"Out of memory during {where} with batch size {batch_size}.",
                       f"Use a smaller batch size (for example {smaller}), turn on AMP, "
                       "or close other programs using the GPU.")


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


def _sync_buffers(model: nn.Module) -> None:
    # DDP broadcasts buffers only before each forward; after the last step the ranks' BN
    # running statistics differ, so make rank 0's the ones every rank keeps.
    if is_distributed():
        for buf in _unwrap(model).buffers():
            torch.distributed.broadcast(buf, 0)


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


# --------------------------------------------------------------------------- evaluation

def _eval_loop(model: nn.Module, loader: Any, device: torch.device, token: CancelToken,
               max_batches: Optional[int], phase: str, batch_size: int,
               distributed: bool = False) -> Generator[Any, None, EvalResult]:
    """Evaluate ``model`` over ``loader``; yields Progress.

    With ``distributed`` every rank must call this on its share of the data: the sums are
    all-reduced so each rank returns the numbers of the whole set.
    """
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    channels_last = _uses_channels_last(net)
    total = len(loader) if hasattr(loader, "__len__") else 0
    if max_batches is not None:
        total = min(total, max_batches) if total else max_batches
    # Sums stay on the device so evaluation costs one host sync at the very end; the
    # image count is known on the host and joins them only for the all-reduce.
    sums = torch.zeros(3, dtype=torch.float64, device=device)   # loss, top-1 hits, top-5 hits
    samples = 0
    non_blocking = device.type == "cuda"
    try:
        with torch.inference_mode():
            for i, (x, y) in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                token.check(phase)
                x = x.to(device, non_blocking=non_blocking)
                if channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = y.to(device, non_blocking=non_blocking).long()
                try:
                    logits = _logits(net(x)).float()
                except RuntimeError as exc:
                    if _is_oom(exc):
                        raise _oom_error(exc, batch_size, "evaluation") from exc
                    raise
                k = min(5, logits.shape[1])
                top = logits.topk(k, dim=1).indices
                hits = top.eq(y[:, None])
                sums += torch.stack((F.cross_entropy(logits, y, reduction="sum").double(),
                                     hits[:, 0].sum().double(), hits.any(dim=1).sum().double()))
                samples += y.shape[0]
                yield Progress(phase, i + 1, total, "evaluating")
    finally:
        net.train(was_training)
    totals = torch.cat((sums, torch.tensor([float(samples)], dtype=torch.float64, device=device)))
    if distributed:
        torch.distributed.all_reduce(totals)
    loss, top1, top5, n = totals.tolist()
    n = int(round(n))
    if n == 0:
        raise StudioError("No images were evaluated.", "Check that the evaluation data is not empty.")
    return EvalResult(top1=top1 / n, top5=top5 / n, loss=loss / n, samples=n)


def _eval_source(data: Any, batch_size: int, device: torch.device, workers: int = 0,
                 shard: bool = False, max_batches: Optional[int] = None) -> Any:
    """A loader for evaluation; with ``shard`` each DDP rank reads its own disjoint share of a dataset.

    With ``max_batches`` a dataset is sampled at random with a fixed seed (the same images on
    every call): validation folders are usually sorted by class, so their first batches
    would hold a single class and give a meaningless accuracy.
    """
    if isinstance(data, DataLoader) or not isinstance(data, Dataset):
        return data
    if max_batches is not None and max_batches * batch_size < len(data):
        picked = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:max_batches * batch_size]
        data = Subset(data, picked.sort().values.tolist())
    if shard:
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        data = Subset(data, range(rank, len(data), world))
    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=False)


def evaluate(model: nn.Module, dataset_or_loader: Any, *, device: Any = None, batch_size: int = 256,
             token: Optional[CancelToken] = None, max_batches: Optional[int] = None,
             phase: str = "evaluate", distributed: bool = False) -> Generator[Any, None, EvalResult]:
    """Top-1 / top-5 accuracy and mean cross-entropy of ``model`` on a dataset or DataLoader.

    The model's weights are not changed and its train/eval mode is restored afterwards;
    when ``device`` is given the model is moved there. Yields `Phase` and `Progress`.
    Under torchrun, ``distributed=True`` splits a dataset over the ranks (every rank must
    then call this); by default each process evaluates all of it on its own.
    """
    token = token or NEVER_CANCELLED
    _check_not_empty(dataset_or_loader, "evaluation")
    dev = select_device(device) if isinstance(device, str) else (device or _model_device(model))
    if _model_device(model) != dev:
        model.to(dev)
    yield Phase(phase)
    distributed = distributed and is_distributed()
    loader = _eval_source(dataset_or_loader, batch_size, dev, shard=distributed, max_batches=max_batches)
    result = yield from _eval_loop(model, loader, dev, token, max_batches, phase, batch_size, distributed)
    return result


# --------------------------------------------------------------------------- training

def train(model: nn.Module, train_set: Optional[Dataset], val_set: Optional[Dataset], cfg: TrainConfig, *,
          phase: str = "fine-tune", token: Optional[CancelToken] = None,
          loaders: Optional[tuple] = None, resume: Optional[dict] = None,
          save_state: Optional[Callable[[dict], None]] = None) -> Generator[Any, None, TrainResult]:
    """Train ``model`` in place with ``cfg``; yield progress events and return a `TrainResult`.

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
    token = token or NEVER_CANCELLED
    t_start = time.perf_counter()
    device = select_device(cfg.device)
    rank, world = init_distributed("nccl" if device.type == "cuda" else "gloo")
    distributed = world > 1
    main = rank == 0
    seed_everything(cfg.seed)
    if resume is not None:
        _check_resumable(resume, cfg)
        model.load_state_dict(resume["model"])

    # Validation uses the training batch size, so lowering it also cures an out-of-memory there.
    eval_batch = cfg.batch_size
    if loaders is not None:
        train_loader, val_loader = loaders
        _check_not_empty(train_loader, "training")
    else:
        if train_set is None:
            raise StudioError("No training data was given.", "Choose a training data set.")
        _check_not_empty(train_set, "training")
        if val_set is not None:
            _check_not_empty(val_set, "validation")
        train_loader, val_loader = _device_loaders(train_set, val_set, cfg, device, rank, world)
        if train_loader is None:
            train_loader = _loader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed,
                                   workers=cfg.workers, device=device, distributed=distributed)
        if val_loader is None and val_set is not None:
            val_loader = _eval_source(val_set, eval_batch, device, cfg.workers, shard=distributed)
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
    if distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if cuda else None)
    optimizer = _make_optimizer(model, cfg)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    bn_scales = _bn_scales(model) if cfg.bn_l1 > 0 else []
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    stats = _StepStats(device)
    non_blocking = cuda

    yield Phase(phase)
    if main:
        yield Log(f"{phase}: {cfg.epochs} epoch(s) × {steps_per_epoch} steps on {device}"
                  f"{f' × {world} ranks' if distributed else ''}, batch {cfg.batch_size}, "
                  f"{cfg.optimizer} lr {cfg.lr:g} ({cfg.schedule}), AMP {'on' if use_amp else 'off'}"
                  f"{', channels_last' if channels_last else ''}"
                  f"{f', data and augmentation on {device}' if isinstance(train_loader, DeviceBatches) else ''}"
                  f"{f', BN L1 {cfg.bn_l1:g}' if bn_scales else ''}.")
        if cfg.bn_l1 > 0 and not bn_scales:
            yield Log("bn_l1 is set but the model has no trainable BatchNorm scales; it has no effect.",
                      "warning")

    history: list[dict] = []
    final: Optional[EvalResult] = None
    train_seconds = 0.0
    train_images = 0
    first_epoch = 0
    if resume is not None:
        if resume["steps_per_epoch"] != steps_per_epoch:
            raise StudioError(f"The saved training state ran {resume['steps_per_epoch']} steps per epoch; "
                              f"this data gives {steps_per_epoch}.",
                              "Resume with the data the run started with, or delete the saved state.")
        optimizer.load_state_dict(resume["optimizer"])
        if resume["scaler"] and scaler.is_enabled():   # empty when saved without AMP (e.g. on a CPU)
            scaler.load_state_dict(resume["scaler"])
        history = list(resume["history"])
        first_epoch = resume["epoch"]
        train_seconds, train_images = resume["train_seconds"], resume["train_images"]
        if main:
            yield Log(f"Resuming {phase} after epoch {first_epoch} of {cfg.epochs}.")
    global_step = first_epoch * steps_per_epoch
    try:
        for epoch in range(first_epoch, cfg.epochs):
            t_epoch = time.perf_counter()
            # Each epoch's randomness depends only on (seed, epoch): a resumed run repeats it.
            seed_everything(epoch_seed(cfg.seed, epoch))
            if isinstance(getattr(train_loader, "generator", None), torch.Generator):
                train_loader.generator.manual_seed(epoch_seed(cfg.seed, epoch))
            for source in (train_loader, getattr(train_loader, "sampler", None)):
                if hasattr(source, "set_epoch"):
                    source.set_epoch(epoch)
            net.train()
            loss_sum = 0.0
            correct_sum = 0.0
            seen = 0
            lr_of_step: dict[int, float] = {}

            def report(done: list) -> list:
                # Turn finished steps into events; keeps the epoch's running sums.
                nonlocal loss_sum, correct_sum, seen
                events = []
                for step, batch, value, hits in done:
                    if not math.isfinite(value) and not distributed:
                        raise StudioError(
                            f"The training loss became {value} at epoch {epoch + 1}, step {step + 1}.",
                            f"Lower the learning rate (now {cfg.lr:g}), e.g. to {cfg.lr / 10:g}, "
                            "or add warm-up epochs.")
                    loss_sum += value * batch
                    correct_sum += hits
                    seen += batch
                    lr = lr_of_step.pop(step)
                    if main:
                        elapsed = max(time.perf_counter() - t_epoch, 1e-9)
                        events.append(TrainStep(phase, epoch, step, steps_per_epoch, value,
                                                correct_sum / seen, lr, seen * world / elapsed))
                return events

            for step, (x, y) in enumerate(train_loader):
                if step >= steps_per_epoch:
                    break
                token.check(phase)
                factor = _lr_factor(cfg.schedule, global_step, total_steps, warmup_steps)
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * factor
                lr_of_step[step] = base_lrs[0] * factor
                x = x.to(device, non_blocking=non_blocking)
                if channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = y.to(device, non_blocking=non_blocking).long()
                try:
                    with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                        logits = _logits(net(x))
                        loss = criterion(logits, y)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if bn_scales:
                        # Network slimming: add the L1 subgradient λ·sign(γ) to the *unscaled* grads.
                        scaler.unscale_(optimizer)
                        grads = [g.grad for g in bn_scales if g.grad is not None]
                        signs = [torch.sign(g.detach()) for g in bn_scales if g.grad is not None]
                        torch._foreach_add_(grads, signs, alpha=cfg.bn_l1)
                    scaler.step(optimizer)
                    scaler.update()
                except RuntimeError as exc:
                    if _is_oom(exc):
                        raise _oom_error(exc, cfg.batch_size, "training") from exc
                    raise
                correct = logits.detach().argmax(dim=1).eq(y).sum()
                global_step += 1
                for event in report(stats.push(loss, correct, step, y.shape[0])):
                    yield event
            for event in report(stats.drain()):
                yield event
            train_images += seen * world
            train_seconds += time.perf_counter() - t_epoch

            # Epoch numbers over all ranks: every rank takes part in the same all_reduce.
            totals = [loss_sum, correct_sum, float(seen)]
            if distributed:
                t = torch.tensor(totals, dtype=torch.float64, device=device)
                torch.distributed.all_reduce(t)
                totals = t.tolist()
            train_loss = totals[0] / max(totals[2], 1)
            if not math.isfinite(train_loss):
                raise StudioError(f"The training loss became {train_loss} in epoch {epoch + 1}.",
                                  f"Lower the learning rate (now {cfg.lr:g}), e.g. to {cfg.lr / 10:g}.")
            train_acc = totals[1] / max(totals[2], 1)

            val: Optional[EvalResult] = None
            last = epoch == cfg.epochs - 1
            if val_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or last):
                _sync_buffers(net)
                val = yield from _eval_loop(net, val_loader, device, token, None, phase, eval_batch,
                                            distributed)
                final = val
            end = EpochEnd(phase, epoch, cfg.epochs, train_loss, train_acc,
                           val.loss if val else None, val.top1 if val else None,
                           val.top5 if val else None,
                           optimizer.param_groups[0]["lr"], time.perf_counter() - t_epoch)
            history.append(dataclasses.asdict(end))
            if main:
                yield end
            if save_state is not None and main:
                _sync_buffers(net)
                save_state({"format": TRAIN_STATE_FORMAT, "config": cfg.to_dict(), "epoch": epoch + 1,
                            "steps_per_epoch": steps_per_epoch, "model": _unwrap(net).state_dict(),
                            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                            "history": history, "train_seconds": train_seconds,
                            "train_images": train_images})
        _sync_buffers(net)
        if first_epoch == cfg.epochs and val_loader is not None:
            final = yield from _eval_loop(net, val_loader, device, token, None, phase, eval_batch,
                                          distributed)
    finally:
        model.eval()
    return TrainResult(history=history, final=final, seconds=time.perf_counter() - t_start,
                       images_per_s=train_images / train_seconds if train_seconds > 0 else 0.0)
