"""Which original output channels each layer of a pruned model kept.

Surgery records torch-pruning's history (root layer, direction, indices), which says what was
removed from the *root* of each group in turn, not from every coupled layer. To know, for
every conv and Linear, which of its original outputs survive, the history is replayed on a
copy of the original whose weights are labelled: every entry of output row o holds the
number o. After the replay each surviving row still carries its original number.
"""
from __future__ import annotations

import copy

import torch
import torch_pruning as tp
from torch import nn

from studio.engine.errors import StudioError
from studio.engine.pruning.macs import run_forward
from studio.engine.pruning.plan import WEIGHTED_LAYERS


def kept_outputs(original: nn.Module, history: list, example: torch.Tensor) -> dict[str, torch.Tensor]:
    """For every conv/Linear of the pruned model: the indices of the original outputs it kept."""
    labelled = copy.deepcopy(original).cpu().eval()
    with torch.no_grad():
        for m in labelled.modules():
            if isinstance(m, WEIGHTED_LAYERS):
                rows = torch.arange(m.weight.shape[0], dtype=m.weight.dtype)
                m.weight.copy_(rows.view(-1, *[1] * (m.weight.dim() - 1)).expand_as(m.weight))
    if history:
        try:
            with torch.enable_grad():
                graph = tp.DependencyGraph().build_dependency(
                    labelled, example.cpu(), forward_fn=lambda model, inputs: run_forward(model, inputs),
                    verbose=False)
            graph.load_pruning_history([list(h) for h in history])
        except Exception as exc:   # the same trace surgery made; failing here means the history is foreign
            raise StudioError(f"The pruning history could not be replayed to match layers ({type(exc).__name__}: "
                              f"{exc}).", "Reconstruct straight after pruning, on the model that was pruned.") from exc
    return {name: m.weight.detach().reshape(m.weight.shape[0], -1)[:, 0].round().long()
            for name, m in labelled.named_modules() if isinstance(m, WEIGHTED_LAYERS)}
