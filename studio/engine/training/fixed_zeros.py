"""Hold a sparse model's zeros fixed while it trains.

Unstructured pruning zeroes single weights; an optimiser step would make them non-zero
again, and the compressed size and the report's "zero weights" would no longer describe the
model. Deep Compression (Han et al., ICLR 2016) retrains with the pruning masks held fixed,
and so does the studio: `FixedZeros` records which conv/linear weights are zero when
training starts and writes those zeros back after every optimiser step (and at the start,
for a model whose weights were just re-initialised), on every training path.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)
MIN_SHARE = 0.01   # below 1 % zeros a model is dense: its few exact zeros are not a pattern to keep


class FixedZeros:
    """The zero pattern of a model's conv/linear weights, by parameter name."""

    def __init__(self, masks: dict[str, torch.Tensor]):
        self.masks = masks                      # name -> bool tensor, True where the weight may be non-zero

    @classmethod
    def of(cls, model: nn.Module, min_share: float = MIN_SHARE) -> Optional["FixedZeros"]:
        """The pattern of ``model``'s zeros, or None when fewer than ``min_share`` of its weights are zero."""
        masks, zeros, total = {}, 0, 0
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, WEIGHTED) and isinstance(weight, torch.Tensor):
                keep = weight.detach() != 0
                zeros += int((~keep).sum())
                total += keep.numel()
                if not bool(keep.all()):
                    masks[f"{name}.weight" if name else "weight"] = keep.cpu()
        if total == 0 or zeros / total < min_share:
            return None
        return cls(masks)

    @property
    def share(self) -> float:
        """Share of masked weights that are held at zero (over the masked tensors only)."""
        total = sum(m.numel() for m in self.masks.values())
        return sum(int((~m).sum()) for m in self.masks.values()) / total if total else 0.0

    def bind(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(parameter, mask on its device) pairs for ``model``; a name it lacks is an error."""
        params = dict(model.named_parameters())
        missing = [n for n in self.masks if n not in params]
        if missing:
            raise KeyError(f"the model has no parameter {missing[0]!r} to hold zeros in")
        return [(params[n], m.to(params[n].device)) for n, m in self.masks.items()]

    @staticmethod
    def apply(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write the zeros back (after an optimiser step)."""
        with torch.no_grad():
            for param, mask in pairs:
                param.mul_(mask)
