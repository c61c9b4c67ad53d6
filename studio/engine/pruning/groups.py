"""The groups a plan can prune: torch-pruning's coupled channels, head and protected layers excluded.

Shared by the sensitivity analysis, CaP's curves and the protection of groups that break a
model, so all three see the same groups under the same names.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch_pruning as tp
from torch import nn

from studio.engine.errors import StudioError
from studio.engine.graph.tp_patches import TooManyIndices, runaway_indices, tp_guards
from studio.engine.pruning.plan import find_classifier

_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)


def prunable_groups(work: nn.Module, example: torch.Tensor, protected: Iterable[str] = (), plain_errors: bool = False):
    """torch-pruning's dependency graph of ``work`` and its prunable groups (head and ``protected`` excluded).

    ``plain_errors``: let torch-pruning's own exceptions through (a trace on meta tensors
    that fails is tried again on real ones), instead of saying them as a `StudioError`.
    """
    head = find_classifier(work)
    modules = dict(work.named_modules())
    ignored = [modules[n] for n in (*protected, *([head] if head else [])) if n in modules]
    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(work, example_inputs=example, verbose=False)
        with tp_guards(dg):
            groups = list(dg.get_all_groups(ignored_layers=ignored, root_module_types=list(_WEIGHTED)))
    except (TooManyIndices, MemoryError) as exc:
        raise runaway_indices() from exc
    except StudioError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch-pruning failing on a user's model
        if plain_errors:
            raise
        raise StudioError(f"torch-pruning could not trace the model ({type(exc).__name__}: {exc}).",
                          "Check that the example input fits the model, or protect the layers around "
                          "unusual operations.") from exc
    return dg, groups


def group_members(dg, group, names: dict) -> tuple[str, list]:
    """The group's root layer and every conv/Linear whose output channels go with it, by name."""
    root = names[group[0].dep.target.module]
    layers = [names[dep.target.module] for dep, _ in group.items
              if dg.is_out_channel_pruning_fn(dep.handler) and dep.target.module in names
              and isinstance(dep.target.module, _WEIGHTED)]
    return root, layers or [root]
