"""Model numbers: parameters, MACs, size on disk (dense and compressed), sparsity, latency, accuracy.

`measure` gathers them all as a generator (yields `Phase('measure')` and `Progress`) and
returns a `ModelMetrics`. Every function works on a copy: the caller's model is not touched.
"""
from __future__ import annotations

import copy
import dataclasses
import io
import json
import statistics
import struct
import time
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any, Generator, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from studio.engine.errors import StudioError
from studio.engine.events import NEVER_CANCELLED, CancelToken, Phase, Progress
from studio.engine.training import EvalResult, _eval_loop, _eval_source, select_device

_WEIGHT_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


# --------------------------------------------------------------------------- counts

def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def _cpu_float_copy(model: nn.Module) -> nn.Module:
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


def sparsity(model: nn.Module) -> float:
    """Share (0..1) of exact zeros among conv and linear weights."""
    zeros = total = 0
    for module in model.modules():
        if isinstance(module, _WEIGHT_LAYERS) and module.weight is not None:
            w = module.weight.detach()
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros / total if total else 0.0


# --------------------------------------------------------------------------- sizes

def dense_size_bytes(model: nn.Module) -> int:
    """Bytes of the model's state_dict written with `torch.save` (what a .pth file takes)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def _raw_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _sparse_encode(flat: torch.Tensor) -> tuple[bytes, int]:
    """Deep-Compression relative indexing: (uint8 gap, value) pairs with filler zeros."""
    values = flat.numpy()
    nz = np.flatnonzero(values)
    gaps = np.diff(nz, prepend=-1) - 1                       # zeros skipped before each non-zero
    fillers = gaps // 256
    counts = fillers + 1
    entries = int(counts.sum())
    last = np.cumsum(counts) - 1                              # index of each real entry
    gap_codes = np.full(entries, 255, dtype=np.uint8)         # a filler skips 255 zeros + stores a 0
    stored = np.zeros(entries, dtype=values.dtype)
    gap_codes[last] = (gaps % 256).astype(np.uint8)
    stored[last] = values[nz]
    return gap_codes.tobytes() + stored.tobytes(), entries


def encode_compressed(model: nn.Module) -> bytes:
    """The model's state_dict in a deep-compression-style, lossless encoding.

    Layout, before compression: a 4-byte little-endian header length, a JSON index (one
    entry per tensor: name, dtype, shape, encoding, entry count) and the tensors' payloads
    in index order. Conv and linear weights use the *sparse* encoding when it is smaller:
    the weight is flattened and each non-zero is stored as a pair (gap, value), gap being
    the number of zeros since the previous stored entry in one uint8; a gap over 255 is
    bridged with "filler" entries (gap 255, value 0), as in Han et al., Deep Compression
    (2016). Values keep their dtype (no quantisation). Everything else is stored dense.
    The whole is then zlib-compressed (level 6: levels 1-9 differ by under 1 % on weights),
    so a dense model costs about its zipped dense size.
    """
    layer_weights = {f"{name}.weight" if name else "weight"
                     for name, module in model.named_modules() if isinstance(module, _WEIGHT_LAYERS)}
    index, payloads = [], []
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        entry = {"name": name, "dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
                 "encoding": "dense"}
        payload = None
        if name in layer_weights and t.is_floating_point() and t.dtype != torch.bfloat16:
            sparse, entries = _sparse_encode(t.reshape(-1))
            if len(sparse) < t.numel() * t.element_size():
                entry.update(encoding="sparse", entries=entries)
                payload = sparse
        if payload is None:
            payload = _raw_bytes(t)
        index.append(entry)
        payloads.append(payload)
    header = json.dumps(index, separators=(",", ":")).encode()
    blob = struct.pack("<I", len(header)) + header + b"".join(payloads)
    return zlib.compress(blob, 6)


def decode_compressed(data: bytes) -> dict[str, torch.Tensor]:
    """Inverse of `encode_compressed`: a state_dict equal to the encoded one."""
    blob = zlib.decompress(data)
    (header_len,) = struct.unpack_from("<I", blob)
    index = json.loads(blob[4:4 + header_len])
    pos = 4 + header_len
    state: dict[str, torch.Tensor] = {}
    for entry in index:
        dtype = getattr(torch, entry["dtype"])
        shape = entry["shape"]
        numel = int(np.prod(shape)) if shape else 1
        itemsize = torch.empty((), dtype=dtype).element_size()
        if entry["encoding"] == "sparse":
            n = entry["entries"]
            gaps = np.frombuffer(blob, dtype=np.uint8, count=n, offset=pos).astype(np.int64)
            np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
            values = np.frombuffer(blob, dtype=np_dtype, count=n, offset=pos + n)
            positions = np.cumsum(gaps + 1) - 1
            flat = np.zeros(numel, dtype=np_dtype)
            flat[positions] = values
            state[entry["name"]] = torch.from_numpy(flat).reshape(shape)
            pos += n + n * itemsize
        else:
            raw = bytearray(blob[pos:pos + numel * itemsize])
            state[entry["name"]] = torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(shape) \
                if numel else torch.empty(shape, dtype=dtype)
            pos += numel * itemsize
    return state


def compressed_size_bytes(model: nn.Module) -> int:
    """Bytes of `encode_compressed`: the size a sparse (unstructured-pruned) model really needs."""
    return len(encode_compressed(model))


# --------------------------------------------------------------------------- latency

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
        loader = _eval_source(eval_set, 256, dev, max_batches=eval_batches)
        acc: EvalResult = yield from _eval_loop(m, loader, dev, token, eval_batches, "measure", 256)
        top1, top5 = acc.top1, acc.top5
        yield step(f"accuracy: top-1 {top1:.2%}")
    yield step("done")
    return ModelMetrics(params=params, macs=macs, dense_bytes=dense, compressed_bytes=packed,
                        sparsity=sparse_share, latency=latency, top1=top1, top5=top5)
