"""The autograd probe: one recorded forward pass, read back as layers and ops (what torch-pruning sees)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn

from studio.engine.graph.fx_trace import LeafTracer
from studio.engine.graph.nodes import shape_without_batch, snake_case


@dataclass
class LayerCall:
    """One call of a leaf module during the probe's forward pass."""
    qualname: str
    module: nn.Module
    in_refs: list             # (grad_fn or 'input', output_nr) of the tensor inputs
    in_shape: Optional[tuple]
    out_fn: Any               # grad_fn of the (first) output tensor, None without grad
    out_shape: Optional[tuple]
    grad_enabled: bool
    first_call: bool


class Opaque(nn.Module):
    """Stands in for a TorchScript submodule during the probe: ScriptModules take no hooks.

    The studio cannot look inside a scripted module, so it is an opaque leaf: the layers
    that feed it are kept whole (`studio.engine.graph.hazards`).
    """

    def __init__(self, scripted: nn.Module):
        super().__init__()
        self.scripted = scripted

    def forward(self, *args, **kwargs):
        return self.scripted(*args, **kwargs)


def _wrap_scripted(model: nn.Module, leaves: list) -> tuple[list, list]:
    """Swap every scripted leaf for an `Opaque` (in the probed copy); returns (leaves, undo list)."""
    undo, out = [], []
    modules = dict(model.named_modules())
    for name, m in leaves:
        if isinstance(m, torch.jit.ScriptModule):
            parent_name, _, attr = name.rpartition(".")
            parent = modules[parent_name] if parent_name else model
            m = Opaque(m)
            undo.append((parent, attr, m.scripted))
            setattr(parent, attr, m)
        out.append((name, m))
    return out, undo


class NoGradForward(Exception):
    """The probed forward produced no autograd history; torch-pruning must not be run on it."""


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost leaf modules (a leaf inside a leaf, like MHA.out_proj, is part of its parent)."""
    tracer = LeafTracer()
    found: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()
    stack = [("", model)]
    while stack:
        prefix, mod = stack.pop()
        for name, child in reversed(list(mod.named_children())):
            if id(child) in seen:
                continue
            seen.add(id(child))
            full = f"{prefix}.{name}" if prefix else name
            if tracer.is_leaf_module(child, full):
                found.append((full, child))
            else:
                stack.append((full, child))
    return found


class Probe:
    """One grad-enabled forward pass with hooks on every leaf module.

    It records which autograd node each layer produced, so the autograd graph can be read
    back as layers and ops: the same view torch-pruning's DependencyGraph gets.
    """

    def __init__(self) -> None:
        self.calls: list[LayerCall] = []
        self.outputs: list[torch.Tensor] = []
        self.x: Optional[torch.Tensor] = None

    @property
    def has_grad(self) -> bool:
        return any(o.grad_fn is not None for o in self.outputs)

    def forward(self, model: nn.Module, x: torch.Tensor) -> Any:
        """Run ``model(x)`` with recording hooks; also used as torch-pruning's ``forward_fn``."""
        self.x = x
        pending: dict[int, list] = {}
        seen: dict[int, int] = {}
        names: dict[int, str] = {}

        def pre(mod, args):
            refs, shape = [], None
            for a in args:
                if isinstance(a, torch.Tensor):
                    shape = shape_without_batch(a) if shape is None else shape
                    if a is self.x:
                        refs.append(("input", 0))
                    elif a.grad_fn is not None:
                        refs.append((a.grad_fn, a.output_nr))
            pending.setdefault(id(mod), []).append((refs, shape, torch.is_grad_enabled()))

        def post(mod, args, out):
            refs, in_shape, enabled = pending[id(mod)].pop()
            tensors = [o for o in _flatten(out)]
            t = tensors[0] if tensors else None
            count = seen.get(id(mod), 0)
            seen[id(mod)] = count + 1
            self.calls.append(LayerCall(
                qualname=names[id(mod)], module=mod, in_refs=refs, in_shape=in_shape,
                out_fn=t.grad_fn if t is not None else None,
                out_shape=shape_without_batch(t) if t is not None else None,
                grad_enabled=enabled, first_call=count == 0))

        hooks = []
        leaves, undo = _wrap_scripted(model, _leaves(model))
        for name, m in leaves:
            names[id(m)] = name
            hooks.append(m.register_forward_pre_hook(pre))
            hooks.append(m.register_forward_hook(post))
        try:
            out = model(x)
        finally:
            for h in hooks:
                h.remove()
            for parent, attr, scripted in undo:
                setattr(parent, attr, scripted)
        self.outputs = _flatten(out)
        if not self.has_grad:
            raise NoGradForward()
        return out

    def walk(self) -> "AutogradView":
        return AutogradView(self)


def _flatten(out: Any) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flatten(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _flatten(v)]
    return []


def fn_shape(fn: Any, nr: int) -> Optional[tuple]:
    """Forward output shape of autograd node ``fn`` (batch excluded), via its input metadata."""
    try:
        s = tuple(fn._input_metadata[nr].shape)
    except Exception:  # noqa: BLE001 - private API; shapes are a nicety here
        var = getattr(fn, "variable", None)
        if var is None:
            return None
        s = tuple(var.shape)
    return s[1:] if s else ()


def fn_kind(fn: Any) -> str:
    name = type(fn).__name__
    return snake_case(re.sub(r"Backward\d*$", "", name)) or name


def is_custom_fn(fn: Any) -> bool:
    return isinstance(fn, torch.autograd.function.BackwardCFunction)


# Autograd ops that torch-pruning maps to something other than "element-wise" (see
# DependencyGraph._trace_computational_graph): their channel changes are handled.
def tp_handles(kind: str) -> bool:
    return any(k in kind for k in ("cat", "split", "unbind", "expand", "view", "reshape")) or \
        (kind.startswith("slice") and "copy" not in kind)


class AutogradView:
    """The autograd graph of a probe, read back as layers and ops."""

    def __init__(self, probe: Probe):
        self.probe = probe
        x = probe.x
        self.owner: dict[Any, LayerCall] = {}     # grad_fn -> the layer call that produced it
        self.internal: dict[Any, LayerCall] = {}  # grad_fn inside a layer -> that call
        for call in probe.calls:
            if call.out_fn is None or any(r[0] is call.out_fn for r in call.in_refs):
                continue  # ran without grad, or returned its input (Identity, eval Dropout)
            if call.out_fn in self.owner:
                continue
            self.owner[call.out_fn] = call
        for call in probe.calls:
            if self.owner.get(call.out_fn) is not call:
                continue
            stops = {r[0] for r in call.in_refs}
            stack = [f for f, _ in call.out_fn.next_functions if f is not None]
            while stack:
                f = stack.pop()
                if f in stops or f in self.internal or f in self.owner or type(f).__name__ == "AccumulateGrad":
                    continue
                self.internal[f] = call
                stack.extend(nf for nf, _ in f.next_functions if nf is not None)
        # Every autograd node reachable from the outputs, and whether it depends on the input.
        self.nodes: list[Any] = []
        self.data: dict[Any, bool] = {}
        self.succ: dict[Any, list] = {}
        roots = [o.grad_fn for o in probe.outputs if o.grad_fn is not None]
        visited = set()
        stack = [(f, False) for f in roots]
        while stack:
            f, done = stack.pop()
            if done:
                if type(f).__name__ == "AccumulateGrad":
                    self.data[f] = getattr(f, "variable", None) is x
                else:
                    self.data[f] = any(self.data.get(nf, False) for nf, _ in f.next_functions if nf is not None)
                self.nodes.append(f)
                continue
            if f in visited:
                continue
            visited.add(f)
            stack.append((f, True))
            for nf, _ in f.next_functions:
                if nf is not None:
                    self.succ.setdefault(nf, []).append(f)
                    if nf not in visited:
                        stack.append((nf, False))

    def is_input(self, f: Any) -> bool:
        return type(f).__name__ == "AccumulateGrad" and getattr(f, "variable", None) is self.probe.x

    def near(self, f: Any, limit: int = 2) -> list[str]:
        """Names of the closest layers that feed autograd node ``f`` (for messages)."""
        found: list[str] = []
        frontier, seen = [f], {f}
        for _ in range(30):
            nxt = []
            for g in frontier:
                for nf, _ in g.next_functions:
                    if nf is None or nf in seen or not self.data.get(nf, False):
                        continue
                    seen.add(nf)
                    call = self.owner.get(nf) or self.internal.get(nf)
                    if call is not None:
                        if call.qualname not in found:
                            found.append(call.qualname)
                    elif not self.is_input(nf):
                        nxt.append(nf)
            if found or not nxt:
                break
            frontier = nxt
        return found[:limit] or ["the input"]

    def producers(self, f: Any) -> list[str]:
        """The conv/Linear layers whose output channels reach autograd node ``f`` unchanged.

        Walks back through ops and through channel-keeping layers (BatchNorm, activations,
        pooling) to the layers that make the channels: protecting their groups keeps the
        channels that reach ``f`` whole.
        """
        found: list[str] = []
        stack, seen = [f], {f}
        while stack:
            g = stack.pop()
            call = self.owner.get(g) or self.internal.get(g)
            if call is not None:
                if isinstance(call.module, (nn.modules.conv._ConvNd, nn.Linear)):
                    if call.qualname not in found:
                        found.append(call.qualname)
                    continue
                nxt = [r[0] for r in call.in_refs if r[0] != "input"]
            else:
                nxt = [nf for nf, _ in g.next_functions if nf is not None and self.data.get(nf, False)]
            for nf in nxt:
                if nf not in seen:
                    seen.add(nf)
                    stack.append(nf)
        return found
