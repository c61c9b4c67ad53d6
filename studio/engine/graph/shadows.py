"""Private copies of a model to trace: shape-only ("meta") first, real CPU weights when meta fails."""
from __future__ import annotations

import copy
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from studio.engine.errors import StudioError
from studio.engine.graph.meta_memo import MetaMemo
from studio.engine.graph.probe import NoGradForward


def check_input_size(input_size: Iterable[int]) -> tuple[int, ...]:
    try:
        size = tuple(int(s) for s in input_size)
    except (TypeError, ValueError):
        size = ()
    if not size or any(s <= 0 for s in size):
        raise StudioError(f"The input size {input_size!r} is not a list of positive numbers.",
                          "Give the size of one input without the batch, e.g. 3,224,224 or 3,32,32.")
    return size


def _shadow(model: nn.Module, meta: bool) -> nn.Module:
    """An eval-mode copy of ``model`` to trace; with ``meta`` its tensors hold shapes only.

    Pre-filling deepcopy's memo with the replacement tensors copies the module structure
    without copying any weight data, which keeps a meta copy of ResNet-152 under 0.1 s.
    Every floating parameter requires grad in the copy so that autograd records each
    layer even when the user froze some of them.
    """
    memo: dict[int, Any] = {}
    try:
        for p in model.parameters():
            t = torch.empty_like(p, device="meta") if meta else p.detach().to("cpu", copy=True)
            memo[id(p)] = nn.Parameter(t, requires_grad=t.is_floating_point())
        for b in model.buffers():
            memo[id(b)] = torch.empty_like(b, device="meta") if meta else b.detach().to("cpu", copy=True)
        shadow = copy.deepcopy(model, memo)
    except Exception as exc:  # noqa: BLE001 - any failure means the model cannot be analysed
        raise StudioError(f"The model cannot be copied for analysis ({type(exc).__name__}: "
                          f"{(str(exc).splitlines() or [''])[0][:160]}).",
                          "Remove uncopyable attributes (open files, locks) and run one forward pass "
                          "first if the model has lazy layers.") from exc
    return shadow.eval()


def example_input(shadow: nn.Module, input_size: tuple[int, ...], meta: bool,
             requires_grad: bool = False) -> torch.Tensor:
    """A batch of one input in the dtype of the model's weights (fp16 models get fp16)."""
    dtype = next((p.dtype for p in shadow.parameters() if p.is_floating_point()), torch.float32)
    x = torch.empty((1, *input_size), device="meta", dtype=dtype) if meta \
        else torch.randn(1, *input_size).to(dtype)
    return x.requires_grad_(requires_grad)


def _model_failed(input_size: tuple[int, ...], exc: BaseException) -> StudioError:
    shape = "×".join(str(s) for s in input_size)
    return StudioError(
        f"The model failed on a {shape} input: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
        "Check that the input size matches what the model expects (for example 3,32,32 for "
        "CIFAR models, 3,224,224 for ImageNet models).")

class Shadows:
    """Lazily made copies of one model: a meta copy first, a real CPU copy when meta fails."""

    def __init__(self, model: nn.Module, input_size: tuple[int, ...]):
        self.model = model
        self.input_size = input_size
        self._copies: dict[bool, nn.Module] = {}

    def get(self, meta: bool) -> nn.Module:
        if meta not in self._copies:
            self._copies[meta] = _shadow(self.model, meta)
        return self._copies[meta]

    def run(self, fn: Callable[[nn.Module, bool], Any]) -> Any:
        """Call ``fn(copy, meta)`` on the meta copy, and again on a real copy if that raises."""
        try:
            with MetaMemo():
                return fn(self.get(True), True)
        except (StudioError, NoGradForward):
            raise
        except Exception:  # noqa: BLE001 - meta tensors cannot answer data-dependent questions
            pass
        try:
            return fn(self.get(False), False)
        except StudioError:
            raise
        except Exception as exc:  # noqa: BLE001 - a real forward that fails is the user's model/input
            raise _model_failed(self.input_size, exc) from exc
