"""Coupled-channel groups from torch-pruning's DependencyGraph, as lists of module names."""
from __future__ import annotations

import warnings
from typing import Optional

import networkx as nx
import torch
import torch.nn as nn

from studio.engine.graph.probe import NoGradForward, Probe
from studio.engine.graph.shadows import Shadows, example_input
from studio.engine.graph.tp_patches import TooManyIndices, tp_guards


def output_heads(g: nx.DiGraph) -> list[str]:
    """Module names of the last convs/linears before the output: their channels are the result (the heads)."""
    heads: list[str] = []
    stack = list(g.predecessors("output")) if "output" in g else []
    seen = set(stack)
    while stack:
        n = stack.pop()
        d = g.nodes[n]
        if d["op"] == "module" and d["category"] in ("conv", "linear"):
            if d["module"] not in heads:
                heads.append(d["module"])
            continue
        for p in g.predecessors(n):
            if p not in seen:
                seen.add(p)
                stack.append(p)
    return heads


def coupled_groups(shadows: Shadows, heads: list[str]) -> tuple[Probe, Optional[list[list[str]]], str]:
    """torch-pruning's groups as lists of module names (the output-channel side of each group).

    The dependency graph's own forward pass doubles as the hazard probe, so the model runs
    once. Returns ``(probe, groups, problem)``: groups is None, with ``problem`` saying why,
    when the forward has no autograd history or torch-pruning fails on the model.
    """
    import torch_pruning as tp

    def run(shadow: nn.Module, meta: bool) -> tuple[Probe, Optional[list[list[str]]], str]:
        names = {m: n for n, m in shadow.named_modules()}
        by_name = dict(shadow.named_modules())
        probe = Probe()
        dg = tp.DependencyGraph()
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch-pruning's notes on unknown ops: see find_hazards
            try:
                dg.build_dependency(shadow, verbose=False, forward_fn=probe.forward,
                                    example_inputs=example_input(shadow, shadows.input_size, meta, requires_grad=True))
                with tp_guards(dg):
                    all_groups = list(dg.get_all_groups(
                        ignored_layers=[by_name[h] for h in heads if h in by_name],
                        root_module_types=[nn.modules.conv._ConvNd, nn.Linear]))
            except NoGradForward:
                return probe, None, ("the forward pass hides how the layers connect (see the "
                                     "warning about torch.no_grad())")
            except (TooManyIndices, MemoryError):
                return probe, None, ("torch-pruning's channel index lists for this model grow "
                                     "without bound (typical of attention and window "
                                     "reshapes), so it cannot follow the channels")
            except Exception as exc:  # noqa: BLE001 - torch-pruning's own failures are reported
                if meta or not probe.outputs:
                    raise   # retry on real tensors / a genuine forward failure
                return probe, None, (f"torch-pruning failed on this model ({type(exc).__name__}: "
                                     f"{str(exc).strip()[:120]}), most likely because of the "
                                     "patterns described above")
        found: list[list[str]] = []
        for group in all_groups:
            members: list[str] = []
            for dep, _ in group:
                # Skip torch-pruning's own op nodes (no module name) and the consumers
                # that only lose input channels.
                name = names.get(dep.target.module)
                if name and name not in members and dg.is_out_channel_pruning_fn(dep.handler):
                    members.append(name)
            if members:
                found.append(members)
        return probe, found, ""
    return shadows.run(run)
