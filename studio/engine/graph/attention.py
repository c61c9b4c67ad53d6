"""Attention layers and their head counts: what torch-pruning needs to prune a transformer block safely.

Torch-pruning keeps the channels of a multi-head projection in whole heads when it is told
each projection's head count (`num_heads`). This module finds those projections in a model
(``nn.MultiheadAttention``, and the timm/ViT style of a module with a ``num_heads`` attribute
and ``qkv`` or ``q``/``k``/``v`` Linear children), and after surgery writes the new head
sizes back into the attributes the model's forward reads.
"""
from __future__ import annotations

from torch import nn

PROJECTIONS = ("qkv", "q", "k", "v", "query", "key", "value", "q_proj", "k_proj", "v_proj")


def attention_heads(model: nn.Module) -> dict:
    """Each attention projection (a Linear, or an ``nn.MultiheadAttention``) -> its head count."""
    found: dict = {}
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            found[m] = m.num_heads
        elif isinstance(getattr(m, "num_heads", None), int) and m.num_heads > 0:
            for attr in PROJECTIONS:
                layer = getattr(m, attr, None)
                if isinstance(layer, nn.Linear):
                    found[layer] = m.num_heads
    return found


def projection_names(model: nn.Module) -> set[str]:
    """The names of the Linear projections `attention_heads` finds (their hazards are handled)."""
    heads = attention_heads(model)
    return {name for name, m in model.named_modules() if m in heads and isinstance(m, nn.Linear)}


def update_head_sizes(model: nn.Module, num_heads: dict) -> None:
    """After surgery: write the pruned head counts and sizes back to the attributes forward reads.

    ``num_heads`` is torch-pruning's map of projection -> heads after pruning. ViTs read
    ``num_heads`` and ``head_dim`` in forward; torchvision's ViT also reads ``hidden_dim``
    (the width of its patch embedding).
    """
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention) or not isinstance(getattr(m, "num_heads", None), int):
            continue
        qkv = getattr(m, "qkv", None)
        q = next((getattr(m, a) for a in ("q", "query", "q_proj") if isinstance(getattr(m, a, None), nn.Linear)),
                 None)
        if isinstance(qkv, nn.Linear) and qkv in num_heads:
            m.num_heads = num_heads[qkv]
            width = qkv.out_features // 3
        elif q is not None and q in num_heads:
            m.num_heads = num_heads[q]
            width = q.out_features
        else:
            continue
        if isinstance(getattr(m, "head_dim", None), int):
            m.head_dim = width // m.num_heads
    conv_proj = getattr(model, "conv_proj", None)
    if isinstance(getattr(model, "hidden_dim", None), int) and isinstance(conv_proj, nn.Conv2d):
        model.hidden_dim = conv_proj.out_channels
