"""The fx path: trace a model into one node per layer call and functional op, with shapes."""
from __future__ import annotations

import inspect
import math
import operator
from typing import Any

import networkx as nx
import torch
import torch.fx as fx
import torch.nn as nn

from studio.engine.errors import StudioError
from studio.engine.graph.nodes import (
    SHAPE_KEEPING,
    fn_category,
    fn_type,
    module_category,
    module_facts,
    module_label,
    shape_text,
    unique_key,
)


class LeafTracer(fx.Tracer):
    """Stops at torch.nn modules and at any module without children (one node per layer)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            return False
        return super().is_leaf_module(m, qualname) or next(m.children(), None) is None


class ShapeInterpreter(fx.Interpreter):
    """Runs a traced graph and keeps every node's output shape (full shapes, batch included).

    Shape-keeping layers (norms, activations, dropout) return their input unchanged: only
    shapes matter here, and BatchNorm on meta tensors is slow enough to dominate a ResNet.
    """

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            self.values[n] = tuple(result.shape)
        elif isinstance(result, (tuple, list)) and any(isinstance(r, torch.Tensor) for r in result):
            # e.g. MultiheadAttention's (output, None): items are picked by getitem later
            self.values[n] = [tuple(r.shape) if isinstance(r, torch.Tensor) else None for r in result]
        return result

    def call_module(self, target, args, kwargs):
        mod = self.fetch_attr(target)
        if isinstance(mod, SHAPE_KEEPING) and len(args) == 1 and isinstance(args[0], torch.Tensor):
            return args[0]
        return super().call_module(target, args, kwargs)


def _concrete_args(model: nn.Module) -> dict:
    """Defaults of forward's extra parameters, so fx traces the single-input call."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    extra = {}
    for p in params[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            raise StudioError(f"The model's forward needs a second argument '{p.name}'.",
                              "Only models that take one image batch can be analysed; wrap the model "
                              "in a module whose forward takes just the images.")
        extra[p.name] = p.default
    return extra


def trace_with_fx(shadow: nn.Module) -> fx.GraphModule:
    tracer = LeafTracer()
    graph = tracer.trace(shadow, concrete_args=_concrete_args(shadow) or None)
    return fx.GraphModule(tracer.root, graph)


_FOLDED_METHODS = {"contiguous", "clone"}   # identities for the picture: drawn as a plain edge


def graph_from_fx(gm: fx.GraphModule, shapes: dict[fx.Node, Any]) -> nx.DiGraph:
    """Build the drawable DiGraph from a traced, shape-propagated fx graph."""
    g = nx.DiGraph()
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    key_of: dict[fx.Node, str] = {}          # kept fx node -> graph node key
    alias: dict[fx.Node, tuple[fx.Node, Any]] = {}   # folded fx node -> (kept source, edge shape)
    attr_params: dict[fx.Node, int] = {}     # get_attr parameter -> numel, counted once

    def batchless(n: fx.Node) -> Any:
        s = shapes.get(n)
        if isinstance(s, tuple):
            return s[1:]
        if isinstance(s, list):
            return [i[1:] if i is not None else None for i in s]
        return None

    def first(s: Any) -> Any:
        """The shape of a tensor, or of the first tensor of a tuple output."""
        return next((i for i in s if i is not None), None) if isinstance(s, list) else s

    def sources(n: fx.Node) -> list[tuple[fx.Node, Any]]:
        """Kept fx nodes feeding ``n`` with the shape on each edge, following folds."""
        out: list[tuple[fx.Node, Any]] = []
        fx.node.map_arg((n.args, n.kwargs), lambda a: out.append(a) or a)
        found = []
        for a in out:
            if a in alias:
                found.append(alias[a])
            elif a in key_of:
                found.append((a, first(batchless(a))))
        return found

    def tensor_args(n: fx.Node) -> list[fx.Node]:
        out: list[fx.Node] = []
        fx.node.map_arg((n.args, n.kwargs), lambda a: out.append(a) or a)
        return [a for a in out if isinstance(shapes.get(a), tuple)]

    placeholder_done = False
    for n in gm.graph.nodes:
        shape = batchless(n)
        if n.op == "placeholder":
            if placeholder_done:
                continue
            placeholder_done = True
            key_of[n] = "input"
            g.add_node("input", name="input", op="input", type="input", category="input",
                       out_shape=shape, params=0, macs=0, in_channels=None,
                       out_channels=shape[0] if shape else None, label=f"input {shape_text(shape)}",
                       module=None)
            continue
        if n.op == "get_attr":
            obj = _fetch(gm, n.target)
            if isinstance(obj, nn.Parameter):
                attr_params[n] = obj.numel()
            continue
        if n.op == "output":
            g.add_node("output", name="output", op="output", type="output", category="output",
                       out_shape=None, params=0, macs=0, in_channels=None, out_channels=None,
                       label="output", module=None)
            for src, s in sources(n):
                g.add_edge(key_of[src], "output", shape=s)
            outs = [s for _, s in sources(n)]
            if outs:
                g.nodes["output"]["out_shape"] = outs[0]
                g.nodes["output"]["out_channels"] = outs[0][0] if outs[0] else None
                g.nodes["output"]["label"] = f"output {shape_text(outs[0])}"
            continue
        if shape is None:
            continue  # size(), getattr(x, 'shape'), int arithmetic: not data flow
        kind = fn_type(n.target) if n.op != "call_module" else None
        if n.op == "call_function" and n.target is operator.getitem:
            srcs = sources(n)
            if srcs and isinstance(batchless(srcs[0][0]), list):
                alias[n] = (srcs[0][0], shape)   # an item of a split/chunk: edge from the split
                continue
        if kind in _FOLDED_METHODS:
            srcs = sources(n)
            if srcs:
                alias[n] = (srcs[0][0], shape)
                continue
        srcs = sources(n)
        first_shape = srcs[0][1] if srcs else None
        out_shape = first(shape)
        if n.op == "call_module":
            m = modules[n.target]
            count = calls.get(n.target, 0)
            calls[n.target] = count + 1
            key = unique_key(n.target, g)
            attrs = dict(name=key, op="module", type=type(m).__name__, category=module_category(m),
                         out_shape=out_shape, label=module_label(m), module=n.target,
                         **module_facts(m, first_shape, out_shape, first_call=count == 0))
            if count:
                attrs["label"] += " (shared)"
        else:
            key = unique_key(n.name, g)
            n_tensors = len(srcs)   # data inputs; a parameter added in (x + pos_embed) is no merge
            macs = 0
            extra_params = 0
            for a in tensor_args(n):
                if a in attr_params:
                    extra_params += attr_params.pop(a)
            if kind in ("conv1d", "conv2d", "conv3d", "linear", "matmul", "bmm") and len(n.args) >= 2 \
                    and isinstance(n.args[1], fx.Node) and isinstance(shapes.get(n.args[1]), tuple):
                w = shapes[n.args[1]]
                if kind.startswith("conv"):
                    macs = math.prod(out_shape) * math.prod(w[1:])
                elif kind == "linear":
                    macs = math.prod(out_shape) * w[-1]
                else:
                    a0 = shapes.get(n.args[0])
                    macs = math.prod(out_shape) * (a0[-1] if isinstance(a0, tuple) and a0 else 0)
            attrs = dict(name=key, op="function", type=kind, category=fn_category(kind, n_tensors),
                         out_shape=out_shape, params=int(extra_params), macs=int(macs),
                         in_channels=first_shape[0] if first_shape else None,
                         out_channels=out_shape[0] if out_shape else None, label=kind, module=None)
        g.add_node(key, **attrs)
        key_of[n] = key
        for src, s in srcs:
            g.add_edge(key_of[src], key, shape=s)
    return g


def _fetch(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
