"""Criteria that choose channels by how well the layers reading them can do without them.

Both read, for every group, the least-squares systems of its *consumers* (the convs and
Linears whose input channels go with the group, found in torch-pruning's group), built on
calibration batches (`studio.engine.pruning.least_squares`):

- ``lasso`` (He, Zhang & Sun, "Channel Pruning for Accelerating Very Deep Neural
  Networks", ICCV 2017): a LASSO regression of the consumers' outputs on each channel's
  contribution; channels rank by the largest penalty they survive.
- ``cap`` (our reading of Xie et al., "Pruning with Compensation", arXiv:2108.13728, 2021):
  channels go in the order that leaves the least error after the consumers are refit
  without them, so the choice already counts the compensation that reconstruction makes.

A group with no consumer that can be fitted (a conv classifier, a grouped conv, a system
with more than `MAX_UNKNOWNS` inputs) falls back to L1 magnitude, and `notes` says which.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Optional

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function as tp_fn

from studio.engine.errors import StudioError
from studio.engine.pruning.least_squares import (
    MAX_UNKNOWNS,
    contribution_gram,
    elimination_order,
    fittable,
    groups_of,
    layer_rows,
    lasso_ranking,
    sample_positions,
)

_IN_CHANNEL_FNS = (tp_fn.prune_conv_in_channels, tp_fn.prune_linear_in_channels)
RIDGE = 1e-3


class _ConsumerFitImportance(tp.importance.Importance):
    """What LASSO and CaP share: the consumers of a group and their Gram matrices XᵀX."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.batches: Optional[list] = None
        self.model: Optional[nn.Module] = None
        self.notes: list[str] = []
        self._fallback = tp.importance.MagnitudeImportance(p=1)

    def collect(self, model: nn.Module, batches: Iterable) -> None:
        """Keep the calibration batches; each group's systems are built when it is scored."""
        self.model, self.batches = model, list(batches)
        if not self.batches:
            raise StudioError(f"The {type(self).__name__} criterion needs calibration batches.",
                              "Give the job a dataset.")

    def rank(self, problems: list, n: int) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, group) -> Optional[torch.Tensor]:
        if self.batches is None:
            raise RuntimeError(f"{type(self).__name__}.collect() must run before channels are scored.")
        n = len(group[0].idxs)
        consumers = self._consumers(group)
        if not consumers:
            self.notes.append(f"{getattr(group[0].dep.target, 'name', 'a group')}: no layer reading this group can be fitted; "
                              "ranked by L1 magnitude instead")
            return self._fallback(group)
        grams = self._grams([layer for layer, _ in consumers])
        problems = [(grams[layer], layer.weight.detach().double().reshape(layer.weight.shape[0], -1), rows)
                    for layer, rows in consumers]
        return self.rank(problems, n).float()

    @staticmethod
    def _consumers(group) -> list:
        """(layer, {root channel: rows of its system}) for each fittable consumer in ``group``."""
        found: dict = {}
        for i, (dep, idxs) in enumerate(group):
            layer = dep.layer
            if dep.pruning_fn not in _IN_CHANNEL_FNS or fittable(layer) or groups_of(layer) != 1:
                continue
            d = layer.weight[0].numel()
            if d > MAX_UNKNOWNS:
                continue
            area = d // layer.weight.shape[1]
            rows = found.setdefault(layer, defaultdict(list))
            for local, root in zip(idxs, group[i].root_idxs):
                if root is not None:
                    rows[int(root)].extend(range(int(local) * area, (int(local) + 1) * area))
        return [(layer, dict(rows)) for layer, rows in found.items() if rows]

    def _grams(self, layers: list) -> dict:
        """XᵀX of each layer's input rows over the calibration batches (one forward per batch)."""
        grams: dict = {}
        batch_no = [0]

        def on_forward(layer, inputs, output):
            picks = None
            if isinstance(layer, nn.Conv2d):
                picks = sample_positions(output.shape[0], output.shape[2] * output.shape[3],
                                         self.seed + 7919 * batch_no[0])
            x = layer_rows(layer, inputs[0], picks)[:, 0]
            grams[layer] = grams.get(layer, 0) + x.T @ x

        hooks = [layer.register_forward_hook(on_forward) for layer in layers]
        was_training = self.model.training
        self.model.eval()
        try:
            for i, (x, _) in enumerate(self.batches):
                batch_no[0] = i
                self.model(x)
        finally:
            for h in hooks:
                h.remove()
            self.model.train(was_training)
        return grams


class LassoImportance(_ConsumerFitImportance):
    """He et al. 2017: rank channels by the largest LASSO penalty at which they are still chosen."""

    def rank(self, problems: list, n: int) -> torch.Tensor:
        return lasso_ranking(contribution_gram(problems, n))


class CompensationImportance(_ConsumerFitImportance):
    """CaP (our reading): rank channels by the error left after the consumers compensate for them."""

    def rank(self, problems: list, n: int) -> torch.Tensor:
        return elimination_order(problems, n, RIDGE)
