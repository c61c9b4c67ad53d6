"""Write a (pruned) model to disk in the formats people deploy, and prove each file works.

Formats: the full pickled module (``pt``), a weights-only checkpoint that rebuilds the
pruned architecture from its name plus the torch-pruning history (``checkpoint``),
TorchScript (``torchscript``) and ONNX (``onnx``). Every file is written atomically,
reloaded, and run on a fixed random batch; a file whose outputs differ from the model's is
not kept, so whatever is on disk after an export reproduces the model.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Generator, Optional, Sequence

import torch
from torch import nn

from studio.engine.errors import StudioError
from studio.engine.events import NEVER_CANCELLED, CancelToken, Log, Phase, Progress
from studio.engine.files import atomic_write, ensure_free_space
from studio.engine.models.checkpoint import Builder, checkpoint_dict, rebuild_from_checkpoint

FORMATS = ("pt", "checkpoint", "torchscript", "onnx")


# A reloaded model may differ from the original by float rounding only; the bound scales
# with the size of the outputs so large logits are not held to an absolute 1e-3.
TOLERANCE = 1e-3

_SUFFIX = {"pt": ".pt", "checkpoint": ".ckpt.pt", "torchscript": ".torchscript.pt", "onnx": ".onnx"}



@dataclass
class ExportRecord:
    """One exported file. ``max_abs_diff`` is max |reloaded(x) - model(x)| on a fixed random batch
    (NaN when it could not be checked, and for a skipped format whose ``path`` is empty)."""
    format: str
    path: str
    bytes: int
    max_abs_diff: float
    note: str = ""


# ---------------------------------------------------------------------------------------------
# comparing outputs

def _tensors(out) -> list:
    """Flatten a model output (tensor, tuple/list, dict) into a list of tensors in a stable order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _tensors(out[k])]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


def _max_abs_diff(reference: list, got: list) -> float:
    if len(reference) != len(got):
        return math.inf
    diff = 0.0
    for ref, other in zip(reference, got):
        other = torch.as_tensor(other)
        if other.shape != ref.shape:
            return math.inf
        diff = max(diff, (other.float() - ref.float()).abs().max().item() if ref.numel() else 0.0)
    return diff


def _verify(fmt: str, diff: float, reference: list) -> None:
    """Refuse a file whose outputs are not the model's (the caller's atomic write then drops it)."""
    if math.isnan(diff):
        return
    scale = max(1.0, max((r.abs().max().item() for r in reference if r.numel()), default=1.0))
    if not diff <= TOLERANCE * scale:
        raise StudioError(f"The exported {fmt} file does not reproduce the model: outputs differ by up to {diff:.3g} "
                          f"(allowed {TOLERANCE * scale:.3g}); it was not kept.",
                          f"Leave '{fmt}' out of the export formats, or report this model as a bug.")


# ---------------------------------------------------------------------------------------------
# one writer per format: each writes ``tmp`` and returns (max_abs_diff, note)

def _write_pt(model, tmp: Path, check: torch.Tensor, reference: list, **_):
    torch.save(model, tmp)
    # weights_only=False is safe here: we reload the file we have just written ourselves.
    loaded = torch.load(tmp, map_location="cpu", weights_only=False)
    with torch.no_grad():
        diff = _max_abs_diff(reference, _tensors(loaded.eval()(check)))
    return diff, "Full pickled module; loading it needs the model's Python classes importable."


def _write_checkpoint(model, tmp: Path, check: torch.Tensor, reference: list, *, arch, num_classes, input_size,
                      pruning_history, trained, builder, **_):
    torch.save(checkpoint_dict(model, arch=arch, num_classes=num_classes, input_size=input_size,
                                pruning_history=pruning_history, trained=trained, note=""), tmp)
    # Check the file the way a user will load it: weights only, rebuilt from the history.
    rebuilt = rebuild_from_checkpoint(torch.load(tmp, map_location="cpu", weights_only=True), builder)
    with torch.no_grad():
        diff = _max_abs_diff(reference, _tensors(rebuilt(check)))
    return diff, f"Weights + pruning history for {arch}; rebuild with rebuild_from_checkpoint()."


def _write_torchscript(model, tmp: Path, check: torch.Tensor, reference: list, *, example_input, **_):
    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export, but TorchScript is still what many
        # C++/mobile runtimes load; the warning would only repeat that on every export.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        with torch.no_grad():
            traced = torch.jit.trace(model, example_input, check_trace=False)
        torch.jit.save(traced, str(tmp))
        loaded = torch.jit.load(str(tmp), map_location="cpu")
        with torch.no_grad():
            diff = _max_abs_diff(reference, _tensors(loaded(check)))
    return diff, "Traced with torch.jit.trace: data-dependent control flow is frozen to the example's path."


def _onnx_export(model, tmp: Path, args: tuple) -> str:
    """Export with the torch.export-based exporter, falling back to the TorchScript one; say which."""
    try:
        from torch.export import Dim
        torch.onnx.export(model, args, str(tmp), dynamo=True, opset_version=18, input_names=["input"],
                          output_names=["output"], dynamic_shapes=({0: Dim("batch")},),
                          # one self-contained file: external data would be named after the temp file
                          external_data=False, verbose=False)
        return "torch.export-based exporter, opset 18, dynamic batch"
    except Exception as exc:  # noqa: BLE001 - any failure of the new exporter means: try the old one
        first_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, args, str(tmp), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return f"TorchScript-based exporter, opset 17, dynamic batch (torch.export failed: {first_error[:200]})"


def _write_onnx(model, tmp: Path, check: torch.Tensor, reference: list, **_):
    # Export with a batch of two: torch.export specialises a dimension of size 1 to a constant.
    note = _onnx_export(model, tmp, (check[:2],))
    try:
        import onnx
    except ImportError:
        return math.nan, note + "; not checked: the onnx package is not installed"
    try:
        onnx.checker.check_model(str(tmp))
    except onnx.checker.ValidationError as exc:
        raise StudioError(f"The exported ONNX file is not valid: {str(exc).splitlines()[0]}",
                          "Leave 'onnx' out of the export formats, or report this model as a bug.") from exc
    try:
        import onnxruntime as ort
    except ImportError:
        return math.nan, note + "; outputs not checked: onnxruntime is not installed"
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    # the full check batch (three) differs from the export batch (two): this proves the batch is dynamic
    outputs = session.run(None, {session.get_inputs()[0].name: check.numpy()})
    return _max_abs_diff(reference, [torch.from_numpy(o) for o in outputs]), note


_WRITERS = {"pt": _write_pt, "checkpoint": _write_checkpoint, "torchscript": _write_torchscript,
            "onnx": _write_onnx}


# ---------------------------------------------------------------------------------------------

def _dense_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


# A single ONNX file is one protobuf message, which cannot exceed 2 GiB.
ONNX_SINGLE_FILE_LIMIT = 2**31 - 1


def _free_memory() -> Optional[int]:
    """Bytes of memory the system can still give (Linux MemAvailable); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _export_copy(model: nn.Module) -> nn.Module:
    """A CPU copy in eval mode to export, so the caller's model keeps its device, mode and weights.

    The copy needs as much memory again as the weights; that, and a serialisation buffer the
    size of the largest tensor, is checked first so a very large model fails with the figures
    instead of part-way through a file.
    """
    weights = _dense_bytes(model)
    largest = max((t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]), default=0)
    free = _free_memory()
    if free is not None and free < weights + largest:
        raise StudioError(f"Exporting needs about {(weights + largest) / 1e9:.1f} GB of free memory (a copy of the "
                          f"{weights / 1e9:.1f} GB of weights), and {free / 1e9:.1f} GB is free.",
                          "Close other programs, or run the export on a machine with more memory "
                          "(studio run RECIPE there repeats the job).")
    return copy.deepcopy(model).cpu().eval()


def _skip_reason(fmt: str, arch: Optional[str], model: nn.Module) -> str:
    """Why ``fmt`` cannot be written for this model ("" when it can)."""
    if fmt == "checkpoint" and not arch:
        return ("Skipped: this model has no known architecture name, so a weights-only checkpoint could not "
                "be rebuilt; use the 'pt' file.")
    if fmt == "onnx" and _dense_bytes(model) >= ONNX_SINGLE_FILE_LIMIT:
        return (f"Skipped: {_dense_bytes(model) / 1e9:.1f} GB of weights exceed the 2 GB a single ONNX file can "
                "hold; use the 'pt' or 'checkpoint' file.")
    return ""


def _write_one(fmt: str, path: Path, work: nn.Module, check, reference, **context) -> tuple:
    """Write and verify one format atomically; (bytes, max diff, note), or a `StudioError` (no file kept)."""
    try:
        with atomic_write(path) as tmp:
            diff, note = _WRITERS[fmt](work, tmp, check, reference, **context)
            _verify(fmt, diff, reference)
            return tmp.stat().st_size, diff, note
    except StudioError:
        raise
    except OSError as exc:   # a full disk was already turned into a StudioError by atomic_write
        raise StudioError(f"Cannot write {path}: {exc.strerror or exc}.",
                          "Check that the output folder is writable, then export again.") from exc
    except Exception as exc:  # noqa: BLE001 - tracing/exporting a user's model fails in many ways
        raise StudioError(f"Exporting the model as {fmt} failed: {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''} (no file was kept).",
                          f"Leave '{fmt}' out of the export formats and export the others.") from exc


def _write_instead(formats, failed: list, stem: Path, work, check, reference, context: dict):
    """When the pickled formats asked for could not be written (pickle cannot save a lambda, say),
    write the first graph format that holds the model rather than lose it; None when none does.

    A file that was written but does not reproduce the model (no exception behind the error)
    is a different problem, not one another format would hide.
    """
    if not set(formats) <= {"pt", "checkpoint"} or any(e.__cause__ is None for e in failed):
        return None
    for fmt in ("torchscript", "onnx"):
        path = stem.with_name(stem.name + _SUFFIX[fmt])
        try:
            size, diff, note = _write_one(fmt, path, work, check, reference, **context)
        except StudioError:
            continue
        note = f"Written instead of {', '.join(formats)}, which could not be written. {note}"
        yield Log(f"{fmt}: {note}", "warning")
        return ExportRecord(fmt, str(path), size, diff, note)
    return None


def export_model(model: nn.Module, out_dir, *, formats: Sequence[str] = FORMATS, example_input: torch.Tensor,
                 arch: Optional[str], num_classes: int, input_size=None, pruning_history: list,
                 trained: bool = True, base_name: str = "model", token: CancelToken = NEVER_CANCELLED,
                 builder: Optional[Builder] = None) -> Generator[object, None, list]:
    """Write ``model`` to ``out_dir`` in each of ``formats``, reload each file and check its outputs.

    Yields Phase/Progress/Log events and returns a list of `ExportRecord` (one per format; a
    checkpoint that cannot be rebuilt because ``arch`` is None is skipped with a note). A
    format that fails (a lambda pickle cannot save, a model TorchScript cannot trace) is
    recorded as failed with the reason and the others are still written; only when nothing
    could be written, or the disk or folder fails, does the export raise.
    ``builder(arch, num_classes)`` rebuilds a checkpoint's architecture for the check
    (default: `studio.engine.models.architectures.build_architecture`). ``model`` is not changed.
    """
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise StudioError(f"Unknown export format(s): {', '.join(map(str, unknown))}.",
                          f"Choose from: {', '.join(FORMATS)}.")
    out_dir = Path(out_dir)
    example_input = example_input.detach().cpu()
    if input_size is None:
        input_size = list(example_input.shape[1:])

    work = _export_copy(model)
    generator = torch.Generator().manual_seed(0)
    check = torch.randn(3, *example_input.shape[1:], generator=generator).to(example_input.dtype)
    with torch.no_grad():
        reference = [t.detach().clone() for t in _tensors(work(check))]
    if not reference:
        raise StudioError("The model's output has no tensors, so its exports cannot be checked.",
                          "Export a model whose forward returns a tensor (or tuple/dict of tensors).")
    needed = 2 * _dense_bytes(work) + 1_000_000   # the file plus headroom; graph protos add a little

    yield Phase("export", f"Exporting {', '.join(formats)}")
    yield Progress("export", 0, len(formats))
    context = dict(example_input=example_input, arch=arch, num_classes=num_classes, input_size=input_size,
                   pruning_history=pruning_history, trained=trained, builder=builder)
    records: list[ExportRecord] = []
    failed: list[StudioError] = []
    for i, fmt in enumerate(formats):
        token.check("export")
        path = out_dir / f"{base_name}{_SUFFIX[fmt]}"
        note = _skip_reason(fmt, arch, work)
        if note:
            records.append(ExportRecord(fmt, "", 0, math.nan, note))
            yield Log(f"{fmt}: {note}", "warning")
            yield Progress("export", i + 1, len(formats), f"{fmt} skipped")
            continue
        ensure_free_space(out_dir, needed)
        try:
            size, diff, note = _write_one(fmt, path, work, check, reference, **context)
        except StudioError as exc:
            if isinstance(exc.__cause__, OSError):
                raise        # the disk or the folder: every other format would fail the same way
            failed.append(exc)
            records.append(ExportRecord(fmt, "", 0, math.nan, f"Failed: {exc.problem}"))
            yield Log(f"{fmt}: {exc.problem} The other formats are still written.", "warning")
            yield Progress("export", i + 1, len(formats), f"{fmt} failed")
            continue
        records.append(ExportRecord(fmt, str(path), size, diff, note))
        shown = "not checked" if math.isnan(diff) else f"max diff {diff:.2g}"
        yield Progress("export", i + 1, len(formats), f"{fmt}: {size / 1e6:.2f} MB, {shown}")
    if failed and not any(r.path for r in records):
        instead = yield from _write_instead(formats, failed, out_dir / base_name, work, check, reference, context)
        if instead is None:
            raise failed[0]      # nothing could be written: the job must say so, not end with no model
        records.append(instead)
    return records


__all__ = ["FORMATS", "ExportRecord", "export_model"]
