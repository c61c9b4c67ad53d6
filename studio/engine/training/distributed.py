"""torchrun support: joining and leaving the process group, rank checks, keeping ranks' buffers equal."""
from __future__ import annotations

import gc
import os
from typing import Optional

import torch
import torch.nn as nn

from studio.engine.errors import StudioError


def env_world_size() -> int:
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
    if env_world_size() <= 1:
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


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def sync_buffers(model: nn.Module) -> None:
    # DDP broadcasts buffers only before each forward; after the last step the ranks' BN
    # running statistics differ, so make rank 0's the ones every rank keeps.
    if is_distributed():
        for buf in unwrap(model).buffers():
            torch.distributed.broadcast(buf, 0)
