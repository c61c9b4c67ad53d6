"""Node vocabulary of the layer graph: categories, type names, labels and per-layer facts (params, MACs, channels)."""
from __future__ import annotations

import math
import operator
import re
from typing import Any, Optional

import torch
import torch.nn as nn

CATEGORIES = ("conv", "norm", "activation", "pool", "linear", "merge", "reshape",
              "attention", "dropout", "input", "output", "other")


_FN_CATEGORY = {
    **dict.fromkeys(("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                     "conv_transpose3d", "convolution"), "conv"),
    **dict.fromkeys(("batch_norm", "native_batch_norm", "layer_norm", "native_layer_norm",
                     "group_norm", "native_group_norm", "instance_norm", "normalize",
                     "local_response_norm"), "norm"),
    **dict.fromkeys(("relu", "relu6", "sigmoid", "tanh", "gelu", "silu", "hardswish",
                     "hardsigmoid", "leaky_relu", "elu", "selu", "celu", "mish", "softmax",
                     "log_softmax", "hardtanh", "prelu", "softplus", "threshold"), "activation"),
    **dict.fromkeys(("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices",
                     "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
                     "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
                     "adaptive_max_pool2d", "adaptive_max_pool3d", "mean", "amax", "amin",
                     "interpolate", "upsample_nearest2d", "upsample_bilinear2d"), "pool"),
    **dict.fromkeys(("linear", "addmm"), "linear"),
    **dict.fromkeys(("add", "sub", "mul", "truediv", "div", "floordiv", "cat", "concat",
                     "concatenate", "stack", "maximum", "minimum", "where"), "merge"),
    **dict.fromkeys(("flatten", "view", "reshape", "permute", "transpose", "contiguous", "clone",
                     "squeeze", "unsqueeze", "chunk", "split", "split_with_sizes", "getitem",
                     "expand", "expand_as", "repeat", "pixel_shuffle", "pixel_unshuffle",
                     "channel_shuffle", "native_channel_shuffle", "t", "unflatten", "narrow",
                     "select", "slice", "unbind", "unsafe_view", "reshape_alias", "index"),
                    "reshape"),
    **dict.fromkeys(("matmul", "bmm", "baddbmm", "einsum", "scaled_dot_product_attention"),
                    "attention"),
    **dict.fromkeys(("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
                     "feature_alpha_dropout", "stochastic_depth"), "dropout"),
}
# Binary arithmetic only joins branches when both operands are tensors; `x * 0.5` is not a merge.
_ARITHMETIC = {"add", "sub", "mul", "truediv", "div", "floordiv", "maximum", "minimum"}

SHAPE_KEEPING = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
                  nn.modules.instancenorm._InstanceNorm, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU,
                  nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU,
                  nn.Mish, nn.PReLU, nn.Softmax, nn.Hardtanh, nn.modules.dropout._DropoutNd,
                  nn.Identity)


def snake_case(name: str) -> str:
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name).lower()


def fn_type(target: Any) -> str:
    """Short type name of an fx call_function/call_method target: 'add', 'cat', 'flatten'."""
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    if target in (operator.iadd, operator.isub, operator.imul, operator.itruediv):
        name = name[1:]
    return name.rstrip("_") or name


def module_category(m: nn.Module) -> str:
    if isinstance(m, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
                      nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm)):
        return "norm"
    if isinstance(m, nn.MultiheadAttention):
        return "attention"
    if isinstance(m, (nn.Linear, nn.Bilinear)):
        return "linear"
    if isinstance(m, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                      nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
                      nn.modules.pooling._LPPoolNd, nn.Upsample)):
        return "pool"
    if isinstance(m, (nn.Flatten, nn.Unflatten, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle)):
        return "reshape"
    if isinstance(m, nn.modules.dropout._DropoutNd):
        return "dropout"
    if type(m).__module__ == "torch.nn.modules.activation":
        return "activation"
    # Modules from other libraries: fall back on the usual naming conventions.
    cls = type(m).__name__
    for key, cat in (("Conv", "conv"), ("Norm", "norm"), ("Attention", "attention"),
                     ("Linear", "linear"), ("Pool", "pool"), ("Dropout", "dropout"),
                     ("DropPath", "dropout"), ("StochasticDepth", "dropout"),
                     ("ReLU", "activation"), ("Swish", "activation"), ("GELU", "activation"),
                     ("Sigmoid", "activation"), ("Act", "activation")):
        if key in cls:
            return cat
    return "other"


def fn_category(kind: str, n_tensor_inputs: int) -> str:
    cat = _FN_CATEGORY.get(kind, "other")
    if kind in _ARITHMETIC and n_tensor_inputs < 2:
        return "other"
    return cat


def _pair(v: Any) -> str:
    v = tuple(v) if isinstance(v, (tuple, list)) else (v,)
    if len(set(v)) == 1:
        v = (v[0],) * 2 if len(v) <= 2 else v
    return "×".join(str(i) for i in v)


def _first(v: Any) -> int:
    return v[0] if isinstance(v, (tuple, list)) else v


def module_label(m: nn.Module) -> str:
    cls = type(m).__name__
    if isinstance(m, nn.modules.conv._ConvNd):
        dw = m.groups == m.in_channels == m.out_channels and m.groups > 1
        name = ("DWConv" if dw else "ConvT" if m.transposed else "Conv")
        stride = f"/{_first(m.stride)}" if any(s != 1 for s in m.stride) else ""
        return f"{name} {_pair(m.kernel_size)}{stride} → {m.out_channels}"
    if isinstance(m, nn.Linear):
        return f"Linear {m.in_features} → {m.out_features}"
    if isinstance(m, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)):
        stride = m.stride if m.stride is not None else m.kernel_size
        s = f"/{_first(stride)}" if _first(stride) != 1 else ""
        return f"{cls.replace('2d', '')} {_pair(m.kernel_size)}{s}"
    if isinstance(m, (nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)):
        return f"{cls.replace('2d', '')} → {_pair(m.output_size)}"
    return cls


def shape_text(shape: Optional[tuple]) -> str:
    return "×".join(str(s) for s in shape) if shape else "?"


def _conv_macs(m: nn.modules.conv._ConvNd, in_shape: Optional[tuple], out_shape: Optional[tuple]) -> int:
    k = math.prod(m.kernel_size)
    if m.transposed:
        return math.prod(in_shape) * (m.out_channels // m.groups) * k if in_shape else 0
    return math.prod(out_shape) * (m.in_channels // m.groups) * k if out_shape else 0


def module_facts(m: nn.Module, in_shape: Optional[tuple], out_shape: Optional[tuple],
                  first_call: bool) -> dict:
    """params, macs, in/out channels of one call of leaf module ``m`` (shapes exclude the batch)."""
    params = sum(p.numel() for p in m.parameters()) if first_call else 0
    macs = 0
    cin = in_shape[0] if in_shape else None
    cout = out_shape[0] if out_shape else None
    if isinstance(m, nn.modules.conv._ConvNd):
        macs = _conv_macs(m, in_shape, out_shape)
        cin, cout = m.in_channels, m.out_channels
    elif isinstance(m, nn.Linear):
        macs = math.prod(out_shape) * m.in_features if out_shape else 0
        cin, cout = m.in_features, m.out_features
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        cin = cout = m.num_features
    elif isinstance(m, nn.GroupNorm):
        cin = cout = m.num_channels
    return {"params": int(params), "macs": int(macs), "in_channels": cin, "out_channels": cout}


def shape_without_batch(t: Any) -> Any:
    """Shape(s) of a forward value without the batch dim; None for non-tensors."""
    if isinstance(t, torch.Tensor):
        return tuple(t.shape[1:]) if t.dim() else ()
    if isinstance(t, (tuple, list)) and t and all(isinstance(i, torch.Tensor) for i in t):
        return [tuple(i.shape[1:]) if i.dim() else () for i in t]
    return None


def unique_key(key: str, taken: Any) -> str:
    if key not in taken:
        return key
    i = 1
    while f"{key}:{i}" in taken:
        i += 1
    return f"{key}:{i}"
