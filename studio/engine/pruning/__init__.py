"""Pruning: plans, importance criteria, structural surgery and unstructured sparsity.

``plan`` holds `PruningPlan` (what to cut, where, by which criterion); ``criteria`` the
registry of importance criteria; ``surgery`` the torch-pruning surgery (`prune`) and the
GUI's helpers (`estimate`, `channel_importance`); ``macs`` counts MACs around surgery;
``sparsity`` is the unstructured magnitude step; ``protection`` leaves unpruned the groups a
hazard feeds or whose pruning breaks the model; ``preflight`` says so before any plan runs;
``coupled`` ranks channels that a shuffle or equal chunks tie together as one set.
"""
from studio.engine.pruning.criteria import CRITERIA, Criterion, get_criterion
from studio.engine.pruning.plan import PruningPlan, find_classifier
from studio.engine.pruning.surgery import LayerChange, PruneResult, channel_importance, estimate, prune, reachable_macs

__all__ = ["CRITERIA", "Criterion", "LayerChange", "PruneResult", "PruningPlan", "channel_importance",
           "estimate", "find_classifier", "get_criterion", "prune", "reachable_macs"]
