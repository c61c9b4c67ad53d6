"""The fallback layer graph, read from the autograd probe, for models fx cannot trace."""
from __future__ import annotations

from typing import Any, Optional

import networkx as nx

from studio.engine.graph.nodes import (
    fn_category,
    module_category,
    module_facts,
    module_label,
    shape_text,
    shape_without_batch,
    unique_key,
)
from studio.engine.graph.probe import LayerCall, Probe, fn_kind, fn_shape


def graph_from_autograd(probe: Probe) -> nx.DiGraph:
    """A coarser graph read from the autograd trace, for models fx cannot trace."""
    view = probe.walk()
    g = nx.DiGraph()
    x_shape = shape_without_batch(probe.x)
    g.add_node("input", name="input", op="input", type="input", category="input", out_shape=x_shape,
               params=0, macs=0, in_channels=None, out_channels=x_shape[0] if x_shape else None,
               label=f"input {shape_text(x_shape)}", module=None)
    # Layer calls and ops in forward order (autograd sequence numbers grow with creation).
    items: list[tuple[int, Any]] = []
    for fn, call in view.owner.items():
        items.append((fn._sequence_nr(), call))
    for f in view.nodes:
        if view.data.get(f) and f not in view.owner and f not in view.internal \
                and type(f).__name__ != "AccumulateGrad":
            items.append((f._sequence_nr(), f))
    items.sort(key=lambda t: t[0])
    key_of: dict[Any, str] = {}
    counts: dict[str, int] = {}
    folded: dict[Any, Any] = {}

    def resolve(f: Any) -> Optional[str]:
        while f in folded:
            f = folded[f]
        if view.is_input(f):
            return "input"
        if f in key_of:
            return key_of[f]
        call = view.internal.get(f)
        if call is not None and call.out_fn in key_of:
            return key_of[call.out_fn]
        return None

    for _, item in items:
        if isinstance(item, LayerCall):
            call = item
            key = unique_key(call.qualname, g)
            m = call.module
            attrs = dict(name=key, op="module", type=type(m).__name__, category=module_category(m),
                         out_shape=call.out_shape, label=module_label(m),
                         module=call.qualname,
                         **module_facts(m, call.in_shape, call.out_shape, call.first_call))
            g.add_node(key, **attrs)
            key_of[call.out_fn] = key
            for ref, nr in call.in_refs:
                src = "input" if isinstance(ref, str) else resolve(ref)
                if src is not None:
                    g.add_edge(src, key, shape=x_shape if src == "input" else fn_shape(ref, nr))
            continue
        f = item
        kind = fn_kind(f)
        data_in = [(nf, nr) for nf, nr in f.next_functions if nf is not None and view.data.get(nf)]
        if kind in ("clone", "contiguous") and len(data_in) == 1:
            folded[f] = data_in[0][0]
            continue
        counts[kind] = counts.get(kind, -1) + 1
        key = unique_key(kind if counts[kind] == 0 else f"{kind}_{counts[kind]}", g)
        out_shape = fn_shape(f, 0)
        first = fn_shape(*data_in[0]) if data_in else None
        g.add_node(key, name=key, op="function", type=kind, category=fn_category(kind, len(data_in)),
                   out_shape=out_shape, params=0, macs=0,
                   in_channels=first[0] if first else None,
                   out_channels=out_shape[0] if out_shape else None, label=kind, module=None)
        key_of[f] = key
        for nf, nr in data_in:
            src = resolve(nf)
            if src is not None:
                g.add_edge(src, key, shape=fn_shape(nf, nr))
    outs = [o for o in probe.outputs if o.grad_fn is not None]
    first_out = shape_without_batch(outs[0]) if outs else None
    g.add_node("output", name="output", op="output", type="output", category="output",
               out_shape=first_out, params=0, macs=0, in_channels=None,
               out_channels=first_out[0] if first_out else None,
               label=f"output {shape_text(first_out)}" if first_out else "output", module=None)
    for o in outs:
        src = resolve(o.grad_fn)
        if src is not None:
            g.add_edge(src, "output", shape=shape_without_batch(o))
    return g
