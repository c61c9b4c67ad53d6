"""Latency: the median of timed forward passes after warm-up, on a chosen device and batch size."""
from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from studio.engine.errors import StudioError
from studio.engine.training.devices import select_device


@dataclass
class LatencyResult:
    """Forward-pass time of one batch, over ``runs`` timed runs after warm-up."""
    batch_size: int
    device: str
    median_ms: float
    p90_ms: float
    runs: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def measure_latency(model: nn.Module, input_size: Sequence[int], *, batch_size: int = 1,
                    device: Any = "cpu", warmup: int = 5, runs: int = 20,
                    threads: Optional[int] = None) -> LatencyResult:
    """Median and 90th-percentile forward time of ``model`` (a copy, in eval mode).

    ``threads`` sets PyTorch's CPU thread count for the measurement only. On CUDA the
    device is synchronised around every timed run so the numbers are wall-clock GPU time.
    """
    if runs < 1 or batch_size < 1:
        raise StudioError("Latency needs at least one run and a batch of at least one image.",
                          "Use runs >= 1 and batch_size >= 1.")
    dev = select_device(device) if isinstance(device, str) else device
    m = copy.deepcopy(model).to(dev).eval()
    x = torch.randn(batch_size, *input_size, device=dev)
    cuda = dev.type == "cuda"
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    times: list[float] = []
    try:
        with torch.inference_mode():
            for _ in range(max(0, warmup)):
                m(x)
            if cuda:
                torch.cuda.synchronize(dev)
            for _ in range(runs):
                start = time.perf_counter()
                m(x)
                if cuda:
                    torch.cuda.synchronize(dev)
                times.append((time.perf_counter() - start) * 1000.0)
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            raise StudioError(f"Out of memory measuring latency at batch size {batch_size}.",
                              "Measure with smaller batch sizes.") from exc
        raise
    finally:
        if threads:
            torch.set_num_threads(old_threads)
    return LatencyResult(batch_size=batch_size, device=str(dev), median_ms=statistics.median(times),
                         p90_ms=float(np.percentile(times, 90)), runs=runs)
