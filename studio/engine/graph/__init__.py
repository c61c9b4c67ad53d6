"""The layer graph of a model: tracing, tracing hazards, coupled-channel groups and layout.

`build_graph` turns an ``nn.Module`` into a `LayerGraph` (a networkx DiGraph plus the
coupled-channel groups torch-pruning finds); `model_hazards` finds the patterns torch-pruning
would mishandle, with the layers each puts at risk (`find_tracing_hazards`: their words only);
`layered_layout` places the graph top to bottom.

Modules, from the entry point down: ``builder`` (build_graph), ``fx_trace`` and
``autograd_graph`` (the two ways to read a graph), ``groups`` and ``tp_patches``
(torch-pruning's coupled groups), ``hazards`` and ``probe`` (what torch-pruning sees),
``attention`` (head counts of attention projections, for pruning in whole heads),
``nodes`` (node vocabulary), ``shadows`` and ``meta_memo`` (private copies to trace), ``layout``.
"""
from studio.engine.graph.builder import LayerGraph, build_graph
from studio.engine.graph.groups import output_heads
from studio.engine.graph.hazards import Hazard, find_tracing_hazards, model_hazards
from studio.engine.graph.layout import Layout, layered_layout
from studio.engine.graph.nodes import CATEGORIES

__all__ = ["CATEGORIES", "Hazard", "LayerGraph", "Layout", "build_graph", "find_tracing_hazards", "layered_layout",
           "model_hazards", "output_heads"]
