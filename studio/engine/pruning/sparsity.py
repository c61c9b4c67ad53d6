"""Unstructured magnitude pruning of conv/linear weights (deep compression's pruning step)."""
from __future__ import annotations

from torch import nn
from torch.nn.utils import prune as torch_prune

from studio.engine.pruning.plan import WEIGHTED_LAYERS, is_under


def sparsify_weights(model: nn.Module, amount: float, protected: list) -> float:
    """Global magnitude pruning of conv/linear weights, made permanent; returns the zero share."""
    targets = [(m, "weight") for n, m in model.named_modules()
               if isinstance(m, WEIGHTED_LAYERS) and not is_under(n, protected)]
    if not targets:
        return 0.0
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=amount)
    for module, name in targets:
        torch_prune.remove(module, name)   # bake the mask into the weight: no reparametrisation left
    zeros = sum(int((m.weight == 0).sum()) for m, _ in targets)
    return zeros / sum(m.weight.numel() for m, _ in targets)
