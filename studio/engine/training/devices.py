"""Devices and seeds: choosing CPU/CUDA/MPS, seeding every generator, out-of-memory messages."""
from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.nn as nn

from studio.engine.errors import StudioError
from studio.engine.training.distributed import env_world_size


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
            index = int(os.environ.get("LOCAL_RANK", "0")) if env_world_size() > 1 else 0
            return torch.device("cuda", index % torch.cuda.device_count())
        index = int(pref[5:])
        if index >= torch.cuda.device_count():
            raise StudioError(f"GPU {index} was requested but only {torch.cuda.device_count()} "
                              "GPU(s) are visible.", "Choose 'cuda' or a lower GPU number.")
        return torch.device("cuda", index)
    raise StudioError(f"Unknown device '{preference}'.", "Use 'auto', 'cuda', 'cuda:N', 'mps' or 'cpu'.")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def uses_channels_last(model: nn.Module) -> bool:
    for p in model.parameters():
        if p.dim() == 4:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def oom_error(exc: BaseException, batch_size: int, where: str) -> StudioError:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    smaller = max(1, batch_size // 2)
    return StudioError(f"Out of memory during {where} with batch size {batch_size}.",
                       f"Use a smaller batch size (for example {smaller}), turn on AMP, "
                       "or close other programs using the GPU.")
