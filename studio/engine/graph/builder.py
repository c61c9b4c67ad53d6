"""The layer graph of a model: what the GUI draws and what pruning plans refer to.

`build_graph` turns an ``nn.Module`` into a networkx DiGraph with one node per module call
and per functional op (add, cat, flatten, ...), with shapes, parameter counts and MACs,
plus the coupled-channel groups that torch-pruning's DependencyGraph finds. It also looks
for the model patterns torch-pruning handles badly (`find_tracing_hazards`) and explains
them in plain words instead of letting a pruning run produce a broken model.

All tracing runs on a private copy of the model whose weights are shape-only ("meta")
tensors, so no arithmetic is done and the user's model is never touched. A model whose
forward pass needs real numbers (for example ``if x.sum() > 0``) is traced again on a real
copy on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import networkx as nx
import torch
import torch.fx as fx
import torch.nn as nn

from studio.engine.errors import StudioError
from studio.engine.graph.autograd_graph import graph_from_autograd
from studio.engine.graph.fx_trace import ShapeInterpreter, graph_from_fx, trace_with_fx
from studio.engine.graph.groups import coupled_groups, output_heads
from studio.engine.graph.attention import projection_names
from studio.engine.graph.hazards import find_hazards, run_probe
from studio.engine.graph.probe import Probe
from studio.engine.graph.shadows import Shadows, check_input_size, example_input


@dataclass
class LayerGraph:
    """A traced model: the drawable graph, its coupled-channel groups and warnings."""
    graph: nx.DiGraph
    groups: list[list[str]] = field(default_factory=list)   # module names whose output channels are pruned together
    group_of: dict[str, int] = field(default_factory=dict)  # module name -> index into groups
    prunable: list[str] = field(default_factory=list)       # convs/linears whose output channels can be pruned
    warnings: list[str] = field(default_factory=list)       # plain-words problems found while tracing
    traced_with: str = "fx"                                  # 'fx' or 'autograd'

    def node(self, name: str) -> dict:
        """The attribute dict of node ``name`` (a module call like 'layer1.0.conv1' or an op like 'add_3')."""
        if name not in self.graph:
            raise KeyError(f"The graph has no node named {name!r}.")
        return self.graph.nodes[name]


def build_graph(model: nn.Module, input_size: tuple[int, int, int], *, with_groups: bool = True) -> LayerGraph:
    """Trace ``model`` on a ``1×input_size`` input into a `LayerGraph`.

    fx tracing gives one node per layer call and functional op, with shapes. A model with
    data-dependent Python control flow falls back to a coarser graph read from autograd
    (``traced_with='autograd'``). With ``with_groups`` the torch-pruning dependency graph
    is built too, to fill ``groups``, ``group_of`` and ``prunable``; without it those stay
    empty (and the call is several times faster on DenseNets). ``model`` itself is never
    modified.

    Nodes are keyed by ``name``: the module's qualified name (a second call of the same
    module gets ``'relu:1'``), an op name such as ``'add_3'``, or ``'input'``/``'output'``.
    Node attributes: name, op ('module' | 'function' | 'input' | 'output'), type
    ('Conv2d', 'add', ...), category (one of `CATEGORIES`), module (qualified name or
    None), out_shape (batch excluded), params (own parameters, counted at a module's
    first call), macs (convolutions, linear layers, matmuls), in_channels, out_channels,
    prunable, group (index into ``groups`` or None) and label (short text to draw).
    Edges carry ``shape``, the tensor shape flowing along them (batch excluded).
    """
    size = check_input_size(input_size)
    shadows = Shadows(model, size)
    graph, probe, notes, traced_with = _read_graph(shadows)
    heads = output_heads(graph)
    groups: list[list[str]] = []
    if with_groups:
        probe, found, problem = coupled_groups(shadows, heads)
        if found is None:
            notes.append(f"Pruning groups could not be computed: {problem}. Nothing in this "
                         "model can be pruned automatically until that is fixed.")
        groups = found or []
    elif probe is None:
        probe = run_probe(shadows)
    groups, group_of, prunable = _number_groups(graph, groups, heads, dict(model.named_modules()))
    return LayerGraph(graph=graph, groups=groups, group_of=group_of, prunable=prunable,
                      warnings=[h.text for h in find_hazards(probe, frozenset(projection_names(model)))] + notes, traced_with=traced_with)


def _read_graph(shadows: Shadows) -> tuple[nx.DiGraph, Optional[Probe], list[str], str]:
    """The drawable graph by fx, or from autograd when fx cannot trace the model.

    Returns ``(graph, probe, notes, traced_with)``: the probe is set when the autograd path
    ran (it is reused for the hazards), notes explain a fallback, and ``traced_with`` is
    'fx' or 'autograd'.
    """
    try:
        gm: Optional[fx.GraphModule] = trace_with_fx(shadows.get(True))
        fx_error: Optional[BaseException] = None
    except StudioError:
        raise
    except Exception as exc:  # noqa: BLE001 - any fx failure means "read the graph from autograd"
        gm, fx_error = None, exc

    if gm is not None:
        def shapes(_shadow: nn.Module, meta: bool) -> tuple[fx.GraphModule, dict]:
            target = gm if meta else trace_with_fx(shadows.get(False))
            interp = ShapeInterpreter(target)
            with torch.no_grad():
                interp.run(example_input(target, shadows.input_size, meta))
            return target, interp.values
        return graph_from_fx(*shadows.run(shapes)), None, [], "fx"
    probe = run_probe(shadows)
    reason = (str(fx_error).strip().splitlines() or [type(fx_error).__name__])[0][:160]
    if not probe.has_grad:
        raise StudioError(
            f"The model cannot be traced: fx failed ({reason}) and its forward runs under "
            "torch.no_grad(), which hides it from autograd too.",
            "Remove torch.no_grad() from the model's forward.")
    return graph_from_autograd(probe), probe, [
        "The model's forward has Python control flow that depends on tensor values "
        f"(fx said: {reason}), so the graph was read from autograd instead: it is "
        "coarser, showing the layers and main ops but not every reshape."], "autograd"


def _number_groups(graph: nx.DiGraph, groups: list[list[str]], heads: list[str],
                   modules: dict[str, nn.Module]) -> tuple[list[list[str]], dict[str, int], list[str]]:
    """Number groups, and order their members, by where they first run; mark the nodes.

    Returns ``(groups, group_of, prunable)``; each node gets ``prunable`` and ``group``.
    """
    order: dict[str, int] = {}
    for i, (_, d) in enumerate(graph.nodes(data=True)):
        if d.get("module") is not None:
            order.setdefault(d["module"], i)
    last = len(graph)
    groups = [sorted(gr, key=lambda m: order.get(m, last)) for gr in groups]
    groups.sort(key=lambda gr: order.get(gr[0], last))
    group_of = {m: i for i, gr in enumerate(groups) for m in gr}
    prunable = sorted((m for gr in groups for m in gr
                       if m not in heads and isinstance(modules.get(m), (nn.modules.conv._ConvNd, nn.Linear))),
                      key=lambda m: order.get(m, last))
    chosen = set(prunable)
    for _, d in graph.nodes(data=True):
        mod = d.get("module")
        d["prunable"] = mod in chosen
        d["group"] = group_of.get(mod) if mod is not None else None
    return groups, group_of, prunable
