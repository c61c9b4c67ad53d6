"""ONNX models in: a ``.onnx`` file converted to a PyTorch module by onnx2torch, then used as any model.

The converted module is an ``torch.fx.GraphModule`` of ordinary layers (Conv2d, BatchNorm2d,
Linear…), so the studio traces, prunes, fine-tunes and exports it like a model written in
PyTorch. An op the converter cannot translate is named in the message, with its opset.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from torch import nn

from studio.engine.errors import StudioError


def _input_size(graph) -> Optional[tuple[int, int, int]]:
    """C×H×W of the graph's first real input, when the file states it (a batch dimension first)."""
    initialisers = {t.name for t in graph.initializer}
    for value in graph.input:
        if value.name in initialisers:
            continue
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if len(dims) == 4 and all(v > 0 for v in dims[1:]):
            return int(dims[1]), int(dims[2]), int(dims[3])
        return None
    return None


CONVERTER_OPSET = 17   # the newest opset onnx2torch translates every common op of


def _convert(model):
    """onnx2torch's conversion; a newer opset it lacks converters for is first brought down to 17
    by onnx's own version converter (ReduceMean-18 and Constant-19 are common in new exports)."""
    from onnx2torch import convert
    try:
        return convert(model)
    except NotImplementedError:
        opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
        if opset <= CONVERTER_OPSET:
            raise
        from onnx import version_converter
        try:
            older = version_converter.convert_version(model, CONVERTER_OPSET)
        except Exception:
            older = None
        if older is None:
            raise
        return convert(older)


def load_onnx(path: Path) -> tuple[nn.Module, Optional[tuple[int, int, int]]]:
    """(the converted module in eval mode, the input size the file states or None)."""
    import onnx
    try:
        model = onnx.load(str(path))
    except Exception as exc:   # a truncated or foreign file fails in several ways
        raise StudioError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc}).",
                          "Export the model to ONNX again, or open its PyTorch weights instead.") from exc
    try:
        module = _convert(model)
    except NotImplementedError as exc:
        found = re.search(r"domain='([^']*)', operation_type='([^']+)', version=(\d+)", str(exc))
        op = (f"{found.group(1) + '::' if found.group(1) else ''}{found.group(2)} (opset {found.group(3)})"
              if found else str(exc))
        raise StudioError(f"{path.name} uses the ONNX op {op}, which onnx2torch cannot translate to PyTorch.",
                          "Export the model again without that op (another opset, or the op replaced), or open "
                          "its PyTorch source as file.py:Class.") from exc
    except Exception as exc:
        raise StudioError(f"{path.name} could not be converted to PyTorch ({type(exc).__name__}: {exc}).",
                          "Open the model's PyTorch source as file.py:Class instead.") from exc
    return module.eval(), _input_size(model.graph)
