"""Model numbers: parameters, MACs, size on disk (dense and compressed), sparsity, latency, accuracy.

`measure` gathers them all as a generator (yields `Phase('measure')` and `Progress`) and
returns a `ModelMetrics`. Every function works on a copy: the caller's model is not touched.
"""
from __future__ import annotations

import copy
import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, Generator, Optional, Sequence

import torch
import torch.nn as nn

from studio.engine.errors import StudioError
from studio.engine.events import NEVER_CANCELLED, CancelToken, Phase, Progress
from studio.engine.metrics.latency import measure_latency
from studio.engine.metrics.size import compressed_size_bytes, dense_size_bytes, sparsity
from studio.engine.training.config import EvalResult
from studio.engine.training.devices import select_device
from studio.engine.training.evaluate import eval_loop, eval_source

# --------------------------------------------------------------------------- counts

def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def _cpu_float_copy(model: nn.Module) -> nn.Module:
    """``model`` as a CPU float32 model in eval mode: itself when it already is one (a copy of a
    600 M-parameter model takes 2.6 GB), else a copy, so the caller's model is never changed."""
    tensors = [*model.parameters(), *model.buffers()]
    if not isinstance(model, torch.jit.ScriptModule) and not any(m.training for m in model.modules()) \
            and all(t.device.type == "cpu" and (t.dtype == torch.float32 or not t.is_floating_point())
                    for t in tensors):
        return model
    m = copy.deepcopy(model)
    with warnings.catch_warnings():
        # Moving a ScriptModule touches .grad of non-leaf tensors, which only warns.
        warnings.simplefilter("ignore", UserWarning)
        m = m.cpu()
    if not isinstance(m, torch.jit.ScriptModule):
        m = m.float()
    return m.eval()


def count_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass on one image of shape ``input_size`` (C, H, W).

    Uses torch-pruning's counter (which also counts bias adds and BatchNorm as MACs, the
    convention of the pruning papers it reproduces); models it cannot hook, such as
    TorchScript, fall back to PyTorch's FlopCounterMode (FLOPs / 2).
    """
    m = _cpu_float_copy(model)
    example = torch.randn(1, *input_size)
    macs = 0
    if not isinstance(m, torch.jit.ScriptModule):
        try:
            import torch_pruning as tp
            with torch.no_grad():
                macs, _ = tp.utils.count_ops_and_params(m, example)
        except Exception:   # noqa: BLE001 - any failure of the hook-based counter means: use the fallback
            macs = 0
    if not macs:
        from torch.utils.flop_counter import FlopCounterMode
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                m(example)
        except Exception as exc:  # noqa: BLE001 - a model that cannot run here is a user problem
            raise StudioError(f"Could not run the model on an input of shape {tuple(input_size)}: {exc}",
                              "Check the input size (channels, height, width) the model expects.") from exc
        macs = counter.get_total_flops() / 2
    return int(macs)


# --------------------------------------------------------------------------- everything

@dataclass
class ModelMetrics:
    """All the numbers of one model; ``latency`` is keyed '<device>/bs<N>'."""
    params: int
    macs: int
    dense_bytes: int
    compressed_bytes: int
    sparsity: float
    latency: dict = field(default_factory=dict)
    top1: Optional[float] = None
    top5: Optional[float] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def measure(model: nn.Module, input_size: Sequence[int], *, device: Any = "cpu",
            batch_sizes: Sequence[int] = (1,), eval_set: Any = None, eval_batches: Optional[int] = None,
            token: Optional[CancelToken] = None) -> Generator[Any, None, ModelMetrics]:
    """Measure ``model`` (a copy of it); yields `Phase('measure')` and `Progress`, returns `ModelMetrics`.

    Latency is taken on ``device`` for each batch size; accuracy on ``eval_set`` (a
    dataset or DataLoader, at most ``eval_batches`` batches) when given.
    """
    token = token or NEVER_CANCELLED
    dev = select_device(device) if isinstance(device, str) else device
    m = copy.deepcopy(model).eval()
    total = 3 + len(batch_sizes) + (1 if eval_set is not None else 0)
    done = 0
    yield Phase("measure")

    def step(message: str) -> Progress:
        nonlocal done
        done += 1
        return Progress("measure", done, total, message)

    token.check("measure")
    params, macs = count_params(m), count_macs(m, input_size)
    yield step("parameters and MACs")
    token.check("measure")
    dense, packed, sparse_share = dense_size_bytes(m), compressed_size_bytes(m), sparsity(m)
    yield step("size on disk")
    latency: dict[str, dict] = {}
    for bs in batch_sizes:
        token.check("measure")
        result = measure_latency(m, input_size, batch_size=bs, device=dev)
        latency[f"{dev.type}/bs{bs}"] = result.to_dict()
        yield step(f"latency, batch {bs}: {result.median_ms:.2f} ms")
    top1 = top5 = None
    if eval_set is not None:
        token.check("measure")
        m.to(dev)
        # Measuring runs on one process (rank 0 under torchrun): no sharding, no all-reduce.
        loader = eval_source(eval_set, 256, dev, max_batches=eval_batches)
        acc: EvalResult = yield from eval_loop(m, loader, dev, token, eval_batches, "measure", 256)
        top1, top5 = acc.top1, acc.top5
        yield step(f"accuracy: top-1 {top1:.2%}")
    yield step("done")
    return ModelMetrics(params=params, macs=macs, dense_bytes=dense, compressed_bytes=packed,
                        sparsity=sparse_share, latency=latency, top1=top1, top5=top5)
