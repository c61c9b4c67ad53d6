"""Removing a coupled group's channels without surgery: zero them, measure, put them back.

Sensitivity analysis probes every group at many rates. Real surgery would deep-copy the
model and rebuild torch-pruning's dependency graph for each probe; zeroing gives the same
function at the cost of a few tensor writes. For each member of a torch-pruning group the
removed channels are zeroed where they are made (a conv's or linear's output rows and bias,
a BatchNorm's γ and β) and where they are read (the input columns of every consumer conv
or linear, mapped through flattens and concats by torch-pruning). A channel that is zero
where it is made and ignored where it is read contributes nothing, exactly as if it had
been removed. Layers this reasoning does not cover (normalisations over channels such as
LayerNorm or GroupNorm, grouped convs, attention) make `zeroing_plan` return None, and the
caller prunes a copy for real instead.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import nn

# (tensor, index) pairs: tensor[index] = 0 removes the channels, tensor[index] = saved restores them.
Slices = list[tuple[torch.Tensor, tuple]]


def _conv_slices(m: nn.modules.conv._ConvNd, idxs: list, out_side: bool) -> Optional[Slices]:
    depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
    rows = (torch.tensor(idxs, dtype=torch.long),)
    cols = (slice(None), torch.tensor(idxs, dtype=torch.long))
    if m.transposed:
        if m.groups != 1:
            return None
        weight = [(m.weight, cols if out_side else rows)]     # weight is (in, out, ...)
    elif out_side or depthwise:
        weight = [(m.weight, rows)]
    elif m.groups == 1:
        weight = [(m.weight, cols)]
    else:
        return None
    bias = [(m.bias, rows)] if m.bias is not None and (out_side or depthwise) else []
    return weight + bias


def _slices(module: nn.Module, idxs: list, out_side: bool) -> Optional[Slices]:
    """Where ``module`` makes (``out_side``) or reads the channels ``idxs``; None if zeroing is not exact."""
    rows = (torch.tensor(idxs, dtype=torch.long),)
    if isinstance(module, nn.modules.conv._ConvNd):
        return _conv_slices(module, idxs, out_side)
    if isinstance(module, nn.Linear):
        if not out_side:
            return [(module.weight, (slice(None), rows[0]))]
        return [(module.weight, rows)] + ([(module.bias, rows)] if module.bias is not None else [])
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if not module.affine:
            return None   # its output is -mean/std, not zero, and has nothing to zero
        return [(module.weight, rows), (module.bias, rows)]
    if isinstance(module, nn.PReLU):
        return []         # PReLU(0) = 0: a zero channel stays zero
    return None


def zeroing_plan(dg, group) -> Optional[Slices]:
    """The tensor slices that remove ``group``'s channels when zeroed, or None if zeroing is not exact."""
    plan: Slices = []
    for dep, idxs in group.items:
        module = dep.target.module
        if not isinstance(module, nn.Module):
            return None   # a bare nn.Parameter tracked by torch-pruning
        if not any(True for _ in module.parameters(recurse=False)):
            continue      # torch-pruning's op nodes (add, cat, flatten) and parameter-free layers
        found = _slices(module, list(idxs), dg.is_out_channel_pruning_fn(dep.handler))
        if found is None:
            return None
        plan.extend(found)
    return plan


@contextmanager
def zeroed(plan: Slices) -> Iterator[None]:
    """Zero ``plan``'s slices for the body, then write the saved values back, also on error."""
    saved = []
    with torch.no_grad():
        for tensor, index in plan:
            saved.append(tensor[index].clone())
            tensor[index] = 0
    try:
        yield
    finally:
        with torch.no_grad():
            for (tensor, index), values in zip(reversed(plan), reversed(saved)):
                tensor[index] = values
