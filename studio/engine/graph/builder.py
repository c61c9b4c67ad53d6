"""The layer graph of a model: what the GUI draws and what pruning plans refer to.

`build_graph` turns an ``nn.Module`` into a networkx DiGraph with one node per module call
and per functional op (add, cat, flatten, ...), with shapes, parameter counts and MACs,
plus the coupled-channel groups that torch-pruning's DependencyGraph finds. It also looks
for the model patterns torch-pruning handles badly (`find_tracing_hazards`) and explains
them in plain words instead of letting a pruning run produce a broken model.

All tracing runs on a private copy of the model whose weights are shape-only ("meta")
tensors, so no arithmetic is done and the user's model is never touched. A model whose
forward pass needs real numbers (for example ``if x.sum() > 0``) is traced again on a real
copy on the CPU.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import math
import operator
import re
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

import networkx as nx
import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from studio.engine.errors import StudioError

CATEGORIES = ("conv", "norm", "activation", "pool", "linear", "merge", "reshape",
              "attention", "dropout", "input", "output", "other")


@dataclass
class LayerGraph:
    """A traced model: the drawable graph, its coupled-channel groups and warnings."""
    graph: nx.DiGraph
    groups: list[list[str]] = field(default_factory=list)   # module names whose output channels are pruned together
    group_of: dict[str, int] = field(default_factory=dict)  # module name -> index into groups
    prunable: list[str] = field(default_factory=list)       # convs/linears whose output channels can be pruned
    warnings: list[str] = field(default_factory=list)       # plain-words problems found while tracing
    traced_with: str = "fx"                                  # 'fx' or 'autograd'

    def node(self, name: str) -> dict:
        """The attribute dict of node ``name`` (a module call like 'layer1.0.conv1' or an op like 'add_3')."""
        if name not in self.graph:
            raise KeyError(f"The graph has no node named {name!r}.")
        return self.graph.nodes[name]


# --------------------------------------------------------------------------------------
# Private copies of the model
# --------------------------------------------------------------------------------------

def _check_input_size(input_size: Iterable[int]) -> tuple[int, ...]:
    try:
        size = tuple(int(s) for s in input_size)
    except (TypeError, ValueError):
        size = ()
    if not size or any(s <= 0 for s in size):
        raise StudioError(f"The input size {input_size!r} is not a list of positive numbers.",
                          "Give the size of one input without the batch, e.g. 3,224,224 or 3,32,32.")
    return size


def _shadow(model: nn.Module, meta: bool) -> nn.Module:
    """An eval-mode copy of ``model`` to trace; with ``meta`` its tensors hold shapes only.

    Pre-filling deepcopy's memo with the replacement tensors copies the module structure
    without copying any weight data, which keeps a meta copy of ResNet-152 under 0.1 s.
    Every floating parameter requires grad in the copy so that autograd records each
    layer even when the user froze some of them.
    """
    memo: dict[int, Any] = {}
    try:
        for p in model.parameters():
            t = torch.empty_like(p, device="meta") if meta else p.detach().to("cpu", copy=True)
            memo[id(p)] = nn.Parameter(t, requires_grad=t.is_floating_point())
        for b in model.buffers():
            memo[id(b)] = torch.empty_like(b, device="meta") if meta else b.detach().to("cpu", copy=True)
        shadow = copy.deepcopy(model, memo)
    except Exception as exc:  # noqa: BLE001 - any failure means the model cannot be analysed
        raise StudioError(f"The model cannot be copied for analysis ({type(exc).__name__}: "
                          f"{(str(exc).splitlines() or [''])[0][:160]}).",
                          "Remove uncopyable attributes (open files, locks) and run one forward pass "
                          "first if the model has lazy layers.") from exc
    return shadow.eval()


def _example(shadow: nn.Module, input_size: tuple[int, ...], meta: bool,
             requires_grad: bool = False) -> torch.Tensor:
    """A batch of one input in the dtype of the model's weights (fp16 models get fp16)."""
    dtype = next((p.dtype for p in shadow.parameters() if p.is_floating_point()), torch.float32)
    x = torch.empty((1, *input_size), device="meta", dtype=dtype) if meta \
        else torch.randn(1, *input_size).to(dtype)
    return x.requires_grad_(requires_grad)


def _model_failed(input_size: tuple[int, ...], exc: BaseException) -> StudioError:
    shape = "×".join(str(s) for s in input_size)
    return StudioError(
        f"The model failed on a {shape} input: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
        "Check that the input size matches what the model expects (for example 3,32,32 for "
        "CIFAR models, 3,224,224 for ImageNet models).")


class _MetaMemo(TorchDispatchMode):
    """Reuses the output shapes of meta ops already seen with the same input shapes.

    Many meta kernels are written in Python (element-wise ops, batch norm: up to 2 ms each),
    which made a shape-only pass over ResNet-152 slower than real arithmetic. Results depend
    only on the inputs' metadata and the other arguments, and a deep network repeats the
    same few layer shapes, so most calls become a cache hit. Sitting below autograd, the
    mode leaves the recorded autograd graph exactly as it would be.
    """

    def __init__(self) -> None:
        super().__init__()
        self.cache: dict[Any, Any] = {}
        self.pure: dict[Any, bool] = {}
        self.dtypes: dict[Any, torch.dtype] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        pure = self.pure.get(func)
        if pure is None:
            schema = func._schema
            # Only ops that return fresh tensors: views and in-place ops must return aliases.
            pure = self.pure[func] = not schema.is_mutable and all(r.alias_info is None for r in schema.returns)
        key = _meta_key(func, args, kwargs) if pure else None
        if key is None:
            return func(*args, **kwargs)
        spec = self.cache.get(key)
        if spec is None:
            out = self._shortcut(func, args, kwargs)
            if out is None:
                out = func(*args, **kwargs)
            spec = _meta_spec(out)
            if spec is not None:
                self.cache[key] = spec
            return out
        return _meta_make(spec)

    def _shortcut(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """Output of the slow Python meta kernels that DenseNet hits with ever-new shapes."""
        aten = torch.ops.aten
        if func is aten.native_batch_norm.default:
            x = args[0]
            stats = torch.empty((x.shape[1],), dtype=x.dtype, device="meta")
            return torch.empty(x.shape, dtype=x.dtype, device="meta"), stats, stats.clone()
        if func is aten.convolution.default and not kwargs:
            x, w, _b, stride, pad, dil, transposed, out_pad, groups = args
            spatial = []
            for i, n in enumerate(x.shape[2:]):
                k = (w.shape[2 + i] - 1) * dil[i] + 1
                spatial.append((n - 1) * stride[i] - 2 * pad[i] + k + out_pad[i] if transposed
                               else (n + 2 * pad[i] - k) // stride[i] + 1)
            out_ch = w.shape[1] * groups if transposed else w.shape[0]
            return torch.empty((x.shape[0], out_ch, *spatial), dtype=x.dtype, device="meta")
        if func is aten.cat.default and not kwargs:
            parts = [t for t in args[0] if t.dim() != 1 or t.shape[0] != 0]  # cat skips legacy empties
            dim = args[1] if len(args) > 1 else 0
            if not parts or len({t.dim() for t in parts}) != 1 or len({t.dtype for t in parts}) != 1:
                return None
            dim %= parts[0].dim()
            shape = list(parts[0].shape)
            shape[dim] = sum(t.shape[dim] for t in parts)
            return torch.empty(shape, dtype=parts[0].dtype, device="meta")
        if torch.Tag.pointwise in func.tags:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if not tensors:
                return None
            # The result dtype (float, or bool for comparisons) from a one-element run, once per op.
            dkey = (func, tuple(a.dtype if isinstance(a, torch.Tensor) else a for a in args),
                    tuple(sorted(kwargs.items())))
            dtype = self.dtypes.get(dkey)
            if dtype is None:
                tiny = [torch.empty((), dtype=a.dtype, device="meta") if isinstance(a, torch.Tensor) else a
                        for a in args]
                dtype = self.dtypes[dkey] = func(*tiny, **kwargs).dtype
            return torch.empty(torch.broadcast_shapes(*(t.shape for t in tensors)), dtype=dtype, device="meta")
        return None


def _meta_key(func: Any, args: tuple, kwargs: dict) -> Any:
    def key(a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            if a.device.type != "meta":
                raise TypeError
            return ("T", tuple(a.shape), a.stride(), a.dtype, a.requires_grad)
        if isinstance(a, (list, tuple)):
            return (type(a).__name__, tuple(key(i) for i in a))
        if a is None or isinstance(a, (bool, int, float, str, torch.dtype, torch.device,
                                        torch.memory_format, torch.layout)):
            return a
        raise TypeError
    try:
        return (func, key(args), tuple(sorted((k, key(v)) for k, v in kwargs.items())))
    except TypeError:
        return None


def _meta_spec(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return ("T", tuple(out.shape), out.stride(), out.dtype) if out.device.type == "meta" else None
    if isinstance(out, (tuple, list)):
        items = [_meta_spec(o) for o in out]
        return None if any(i is None for i in items) else (type(out), items)
    return None


def _meta_make(spec: Any) -> Any:
    if spec[0] == "T":
        return torch.empty_strided(spec[1], spec[2], dtype=spec[3], device="meta")
    return spec[0](_meta_make(i) for i in spec[1])


_TP_PATCH_LOCK = threading.Lock()
# Index budget for listing one model's groups. Real CNNs stay far below: DenseNet-201 maps
# 2.6 M indices in total and its largest step is 0.03 M (VGG's flatten); transformers can
# make torch-pruning's lists grow without bound instead.
_MAX_STEP_INDICES = 1_000_000
_MAX_TOTAL_INDICES = 10_000_000


class _TooManyIndices(Exception):
    """torch-pruning's index mapping ran away (it multiplies through chains of reshapes)."""


@contextlib.contextmanager
def _tp_guards(dg: Any) -> Iterator[None]:
    """Make listing ``dg``'s groups fast and bounded.

    torch-pruning's get_pruning_group refreshes the index mapping of the whole graph each
    time (needed after pruning, not while only listing groups); on DenseNet-201 that is
    quadratic and took ~45 s. The mapping cannot change between two reads, so for this
    graph the refresh is skipped (other graphs still get the real call), which gives
    identical groups. On models such as Swin or MaxViT its index lists multiply through
    reshapes until memory runs out; an index budget turns that into a clear failure.
    """
    from torch_pruning.dependency import graph as tp_graph
    from torch_pruning.dependency import index_mapping as tp_mapping

    real = tp_graph.index_mapping
    mappings = [c for c in vars(tp_mapping).values()
                if isinstance(c, type) and c.__name__.endswith("IndexMapping") and "__call__" in vars(c)]
    originals = {c: c.__call__ for c in mappings}
    used = [0]

    class _Once:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        @staticmethod
        def update_index_mapping(graph: Any) -> None:
            if graph is not dg:
                real.update_index_mapping(graph)

    def guarded(cls: type) -> Callable:
        call = originals[cls]

        def wrapper(self: Any, idxs: Any) -> Any:
            # A forward flatten mapping turns each index into `stride` indices: check first.
            grow = max(1, int(getattr(self, "_stride", 1))) if not getattr(self, "reverse", True) else 1
            used[0] += len(idxs) * grow
            if len(idxs) * grow > _MAX_STEP_INDICES or used[0] > _MAX_TOTAL_INDICES:
                raise _TooManyIndices()
            return call(self, idxs)
        return wrapper

    with _TP_PATCH_LOCK:  # build_dependency has just computed the mapping once
        tp_graph.index_mapping = _Once()
        for cls in mappings:
            cls.__call__ = guarded(cls)
        try:
            yield
        finally:
            tp_graph.index_mapping = real
            for cls, call in originals.items():
                cls.__call__ = call


class _Shadows:
    """Lazily made copies of one model: a meta copy first, a real CPU copy when meta fails."""

    def __init__(self, model: nn.Module, input_size: tuple[int, ...]):
        self.model = model
        self.input_size = input_size
        self._copies: dict[bool, nn.Module] = {}

    def get(self, meta: bool) -> nn.Module:
        if meta not in self._copies:
            self._copies[meta] = _shadow(self.model, meta)
        return self._copies[meta]

    def run(self, fn: Callable[[nn.Module, bool], Any]) -> Any:
        """Call ``fn(copy, meta)`` on the meta copy, and again on a real copy if that raises."""
        try:
            with _MetaMemo():
                return fn(self.get(True), True)
        except (StudioError, _NoGradForward):
            raise
        except Exception:  # noqa: BLE001 - meta tensors cannot answer data-dependent questions
            pass
        try:
            return fn(self.get(False), False)
        except StudioError:
            raise
        except Exception as exc:  # noqa: BLE001 - a real forward that fails is the user's model/input
            raise _model_failed(self.input_size, exc) from exc


# --------------------------------------------------------------------------------------
# Names, categories, labels
# --------------------------------------------------------------------------------------

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

_SHAPE_KEEPING = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
                  nn.modules.instancenorm._InstanceNorm, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU,
                  nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU,
                  nn.Mish, nn.PReLU, nn.Softmax, nn.Hardtanh, nn.modules.dropout._DropoutNd,
                  nn.Identity)


def _snake(name: str) -> str:
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name).lower()


def _fn_type(target: Any) -> str:
    """Short type name of an fx call_function/call_method target: 'add', 'cat', 'flatten'."""
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    if target in (operator.iadd, operator.isub, operator.imul, operator.itruediv):
        name = name[1:]
    return name.rstrip("_") or name


def _module_category(m: nn.Module) -> str:
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


def _fn_category(kind: str, n_tensor_inputs: int) -> str:
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


def _module_label(m: nn.Module) -> str:
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


def _shape_text(shape: Optional[tuple]) -> str:
    return "×".join(str(s) for s in shape) if shape else "?"


def _conv_macs(m: nn.modules.conv._ConvNd, in_shape: Optional[tuple], out_shape: Optional[tuple]) -> int:
    k = math.prod(m.kernel_size)
    if m.transposed:
        return math.prod(in_shape) * (m.out_channels // m.groups) * k if in_shape else 0
    return math.prod(out_shape) * (m.in_channels // m.groups) * k if out_shape else 0


def _module_facts(m: nn.Module, in_shape: Optional[tuple], out_shape: Optional[tuple],
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


def _batchless(t: Any) -> Any:
    """Shape(s) of a forward value without the batch dim; None for non-tensors."""
    if isinstance(t, torch.Tensor):
        return tuple(t.shape[1:]) if t.dim() else ()
    if isinstance(t, (tuple, list)) and t and all(isinstance(i, torch.Tensor) for i in t):
        return [tuple(i.shape[1:]) if i.dim() else () for i in t]
    return None


def _unique(key: str, taken: Any) -> str:
    if key not in taken:
        return key
    i = 1
    while f"{key}:{i}" in taken:
        i += 1
    return f"{key}:{i}"


# --------------------------------------------------------------------------------------
# fx tracing
# --------------------------------------------------------------------------------------

class _LeafTracer(fx.Tracer):
    """Stops at torch.nn modules and at any module without children (one node per layer)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            return False
        return super().is_leaf_module(m, qualname) or next(m.children(), None) is None


class _ShapeInterpreter(fx.Interpreter):
    """Runs a traced graph and keeps every node's output shape (full shapes, batch included).

    Shape-keeping layers (norms, activations, dropout) return their input unchanged: only
    shapes matter here, and BatchNorm on meta tensors is slow enough to dominate a ResNet.
    """

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            self.values[n] = tuple(result.shape)
        elif isinstance(result, (tuple, list)) and any(isinstance(r, torch.Tensor) for r in result):
            # e.g. MultiheadAttention's (output, None): items are picked by getitem later
            self.values[n] = [tuple(r.shape) if isinstance(r, torch.Tensor) else None for r in result]
        return result

    def call_module(self, target, args, kwargs):
        mod = self.fetch_attr(target)
        if isinstance(mod, _SHAPE_KEEPING) and len(args) == 1 and isinstance(args[0], torch.Tensor):
            return args[0]
        return super().call_module(target, args, kwargs)


def _concrete_args(model: nn.Module) -> dict:
    """Defaults of forward's extra parameters, so fx traces the single-input call."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    extra = {}
    for p in params[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            raise StudioError(f"The model's forward needs a second argument '{p.name}'.",
                              "Only models that take one image batch can be analysed; wrap the model "
                              "in a module whose forward takes just the images.")
        extra[p.name] = p.default
    return extra


def _fx_trace(shadow: nn.Module) -> fx.GraphModule:
    tracer = _LeafTracer()
    graph = tracer.trace(shadow, concrete_args=_concrete_args(shadow) or None)
    return fx.GraphModule(tracer.root, graph)


_FOLDED_METHODS = {"contiguous", "clone"}   # identities for the picture: drawn as a plain edge


def _fx_graph(gm: fx.GraphModule, shapes: dict[fx.Node, Any]) -> nx.DiGraph:
    """Build the drawable DiGraph from a traced, shape-propagated fx graph."""
    g = nx.DiGraph()
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    key_of: dict[fx.Node, str] = {}          # kept fx node -> graph node key
    alias: dict[fx.Node, tuple[fx.Node, Any]] = {}   # folded fx node -> (kept source, edge shape)
    attr_params: dict[fx.Node, int] = {}     # get_attr parameter -> numel, counted once

    def batchless(n: fx.Node) -> Any:
        s = shapes.get(n)
        if isinstance(s, tuple):
            return s[1:]
        if isinstance(s, list):
            return [i[1:] if i is not None else None for i in s]
        return None

    def first(s: Any) -> Any:
        """The shape of a tensor, or of the first tensor of a tuple output."""
        return next((i for i in s if i is not None), None) if isinstance(s, list) else s

    def sources(n: fx.Node) -> list[tuple[fx.Node, Any]]:
        """Kept fx nodes feeding ``n`` with the shape on each edge, following folds."""
        out: list[tuple[fx.Node, Any]] = []
        fx.node.map_arg((n.args, n.kwargs), lambda a: out.append(a) or a)
        found = []
        for a in out:
            if a in alias:
                found.append(alias[a])
            elif a in key_of:
                found.append((a, first(batchless(a))))
        return found

    def tensor_args(n: fx.Node) -> list[fx.Node]:
        out: list[fx.Node] = []
        fx.node.map_arg((n.args, n.kwargs), lambda a: out.append(a) or a)
        return [a for a in out if isinstance(shapes.get(a), tuple)]

    placeholder_done = False
    for n in gm.graph.nodes:
        shape = batchless(n)
        if n.op == "placeholder":
            if placeholder_done:
                continue
            placeholder_done = True
            key_of[n] = "input"
            g.add_node("input", name="input", op="input", type="input", category="input",
                       out_shape=shape, params=0, macs=0, in_channels=None,
                       out_channels=shape[0] if shape else None, label=f"input {_shape_text(shape)}",
                       module=None)
            continue
        if n.op == "get_attr":
            obj = _fetch(gm, n.target)
            if isinstance(obj, nn.Parameter):
                attr_params[n] = obj.numel()
            continue
        if n.op == "output":
            g.add_node("output", name="output", op="output", type="output", category="output",
                       out_shape=None, params=0, macs=0, in_channels=None, out_channels=None,
                       label="output", module=None)
            for src, s in sources(n):
                g.add_edge(key_of[src], "output", shape=s)
            outs = [s for _, s in sources(n)]
            if outs:
                g.nodes["output"]["out_shape"] = outs[0]
                g.nodes["output"]["out_channels"] = outs[0][0] if outs[0] else None
                g.nodes["output"]["label"] = f"output {_shape_text(outs[0])}"
            continue
        if shape is None:
            continue  # size(), getattr(x, 'shape'), int arithmetic: not data flow
        kind = _fn_type(n.target) if n.op != "call_module" else None
        if n.op == "call_function" and n.target is operator.getitem:
            srcs = sources(n)
            if srcs and isinstance(batchless(srcs[0][0]), list):
                alias[n] = (srcs[0][0], shape)   # an item of a split/chunk: edge from the split
                continue
        if kind in _FOLDED_METHODS:
            srcs = sources(n)
            if srcs:
                alias[n] = (srcs[0][0], shape)
                continue
        srcs = sources(n)
        first_shape = srcs[0][1] if srcs else None
        out_shape = first(shape)
        if n.op == "call_module":
            m = modules[n.target]
            count = calls.get(n.target, 0)
            calls[n.target] = count + 1
            key = _unique(n.target, g)
            attrs = dict(name=key, op="module", type=type(m).__name__, category=_module_category(m),
                         out_shape=out_shape, label=_module_label(m), module=n.target,
                         **_module_facts(m, first_shape, out_shape, first_call=count == 0))
            if count:
                attrs["label"] += " (shared)"
        else:
            key = _unique(n.name, g)
            n_tensors = len(srcs)   # data inputs; a parameter added in (x + pos_embed) is no merge
            macs = 0
            extra_params = 0
            for a in tensor_args(n):
                if a in attr_params:
                    extra_params += attr_params.pop(a)
            if kind in ("conv1d", "conv2d", "conv3d", "linear", "matmul", "bmm") and len(n.args) >= 2 \
                    and isinstance(n.args[1], fx.Node) and isinstance(shapes.get(n.args[1]), tuple):
                w = shapes[n.args[1]]
                if kind.startswith("conv"):
                    macs = math.prod(out_shape) * math.prod(w[1:])
                elif kind == "linear":
                    macs = math.prod(out_shape) * w[-1]
                else:
                    a0 = shapes.get(n.args[0])
                    macs = math.prod(out_shape) * (a0[-1] if isinstance(a0, tuple) and a0 else 0)
            attrs = dict(name=key, op="function", type=kind, category=_fn_category(kind, n_tensors),
                         out_shape=out_shape, params=int(extra_params), macs=int(macs),
                         in_channels=first_shape[0] if first_shape else None,
                         out_channels=out_shape[0] if out_shape else None, label=kind, module=None)
        g.add_node(key, **attrs)
        key_of[n] = key
        for src, s in srcs:
            g.add_edge(key_of[src], key, shape=s)
    return g


def _fetch(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------------------------------
# Autograd probe: what torch-pruning sees
# --------------------------------------------------------------------------------------

@dataclass
class _Call:
    """One call of a leaf module during the probe's forward pass."""
    qualname: str
    module: nn.Module
    in_refs: list             # (grad_fn or 'input', output_nr) of the tensor inputs
    in_shape: Optional[tuple]
    out_fn: Any               # grad_fn of the (first) output tensor, None without grad
    out_shape: Optional[tuple]
    grad_enabled: bool
    first_call: bool


class _NoGradForward(Exception):
    """The probed forward produced no autograd history; torch-pruning must not be run on it."""


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost leaf modules (a leaf inside a leaf, like MHA.out_proj, is part of its parent)."""
    tracer = _LeafTracer()
    found: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()
    stack = [("", model)]
    while stack:
        prefix, mod = stack.pop()
        for name, child in reversed(list(mod.named_children())):
            if id(child) in seen:
                continue
            seen.add(id(child))
            full = f"{prefix}.{name}" if prefix else name
            if tracer.is_leaf_module(child, full):
                found.append((full, child))
            else:
                stack.append((full, child))
    return found


class _Probe:
    """One grad-enabled forward pass with hooks on every leaf module.

    It records which autograd node each layer produced, so the autograd graph can be read
    back as layers and ops: the same view torch-pruning's DependencyGraph gets.
    """

    def __init__(self) -> None:
        self.calls: list[_Call] = []
        self.outputs: list[torch.Tensor] = []
        self.x: Optional[torch.Tensor] = None

    @property
    def has_grad(self) -> bool:
        return any(o.grad_fn is not None for o in self.outputs)

    def forward(self, model: nn.Module, x: torch.Tensor) -> Any:
        """Run ``model(x)`` with recording hooks; also used as torch-pruning's ``forward_fn``."""
        self.x = x
        pending: dict[int, list] = {}
        seen: dict[int, int] = {}
        names: dict[int, str] = {}

        def pre(mod, args):
            refs, shape = [], None
            for a in args:
                if isinstance(a, torch.Tensor):
                    shape = _batchless(a) if shape is None else shape
                    if a is self.x:
                        refs.append(("input", 0))
                    elif a.grad_fn is not None:
                        refs.append((a.grad_fn, a.output_nr))
            pending.setdefault(id(mod), []).append((refs, shape, torch.is_grad_enabled()))

        def post(mod, args, out):
            refs, in_shape, enabled = pending[id(mod)].pop()
            tensors = [o for o in _flatten(out)]
            t = tensors[0] if tensors else None
            count = seen.get(id(mod), 0)
            seen[id(mod)] = count + 1
            self.calls.append(_Call(
                qualname=names[id(mod)], module=mod, in_refs=refs, in_shape=in_shape,
                out_fn=t.grad_fn if t is not None else None,
                out_shape=_batchless(t) if t is not None else None,
                grad_enabled=enabled, first_call=count == 0))

        hooks = []
        for name, m in _leaves(model):
            names[id(m)] = name
            hooks.append(m.register_forward_pre_hook(pre))
            hooks.append(m.register_forward_hook(post))
        try:
            out = model(x)
        finally:
            for h in hooks:
                h.remove()
        self.outputs = _flatten(out)
        if not self.has_grad:
            raise _NoGradForward()
        return out

    def walk(self) -> "_AutogradView":
        return _AutogradView(self)


def _flatten(out: Any) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flatten(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _flatten(v)]
    return []


def _fn_shape(fn: Any, nr: int) -> Optional[tuple]:
    """Forward output shape of autograd node ``fn`` (batch excluded), via its input metadata."""
    try:
        s = tuple(fn._input_metadata[nr].shape)
    except Exception:  # noqa: BLE001 - private API; shapes are a nicety here
        var = getattr(fn, "variable", None)
        if var is None:
            return None
        s = tuple(var.shape)
    return s[1:] if s else ()


def _fn_kind(fn: Any) -> str:
    name = type(fn).__name__
    return _snake(re.sub(r"Backward\d*$", "", name)) or name


def _is_custom_fn(fn: Any) -> bool:
    return isinstance(fn, torch.autograd.function.BackwardCFunction)


# Autograd ops that torch-pruning maps to something other than "element-wise" (see
# DependencyGraph._trace_computational_graph): their channel changes are handled.
def _tp_handles(kind: str) -> bool:
    return any(k in kind for k in ("cat", "split", "unbind", "expand", "view", "reshape")) or \
        (kind.startswith("slice") and "copy" not in kind)


class _AutogradView:
    """The autograd graph of a probe, read back as layers and ops."""

    def __init__(self, probe: _Probe):
        self.probe = probe
        x = probe.x
        self.owner: dict[Any, _Call] = {}     # grad_fn -> the layer call that produced it
        self.internal: dict[Any, _Call] = {}  # grad_fn inside a layer -> that call
        for call in probe.calls:
            if call.out_fn is None or any(r[0] is call.out_fn for r in call.in_refs):
                continue  # ran without grad, or returned its input (Identity, eval Dropout)
            if call.out_fn in self.owner:
                continue
            self.owner[call.out_fn] = call
        for call in probe.calls:
            if self.owner.get(call.out_fn) is not call:
                continue
            stops = {r[0] for r in call.in_refs}
            stack = [f for f, _ in call.out_fn.next_functions if f is not None]
            while stack:
                f = stack.pop()
                if f in stops or f in self.internal or f in self.owner or type(f).__name__ == "AccumulateGrad":
                    continue
                self.internal[f] = call
                stack.extend(nf for nf, _ in f.next_functions if nf is not None)
        # Every autograd node reachable from the outputs, and whether it depends on the input.
        self.nodes: list[Any] = []
        self.data: dict[Any, bool] = {}
        self.succ: dict[Any, list] = {}
        roots = [o.grad_fn for o in probe.outputs if o.grad_fn is not None]
        visited = set()
        stack = [(f, False) for f in roots]
        while stack:
            f, done = stack.pop()
            if done:
                if type(f).__name__ == "AccumulateGrad":
                    self.data[f] = getattr(f, "variable", None) is x
                else:
                    self.data[f] = any(self.data.get(nf, False) for nf, _ in f.next_functions if nf is not None)
                self.nodes.append(f)
                continue
            if f in visited:
                continue
            visited.add(f)
            stack.append((f, True))
            for nf, _ in f.next_functions:
                if nf is not None:
                    self.succ.setdefault(nf, []).append(f)
                    if nf not in visited:
                        stack.append((nf, False))

    def is_input(self, f: Any) -> bool:
        return type(f).__name__ == "AccumulateGrad" and getattr(f, "variable", None) is self.probe.x

    def near(self, f: Any, limit: int = 2) -> list[str]:
        """Names of the closest layers that feed autograd node ``f`` (for messages)."""
        found: list[str] = []
        frontier, seen = [f], {f}
        for _ in range(30):
            nxt = []
            for g in frontier:
                for nf, _ in g.next_functions:
                    if nf is None or nf in seen or not self.data.get(nf, False):
                        continue
                    seen.add(nf)
                    call = self.owner.get(nf) or self.internal.get(nf)
                    if call is not None:
                        if call.qualname not in found:
                            found.append(call.qualname)
                    elif not self.is_input(nf):
                        nxt.append(nf)
            if found or not nxt:
                break
            frontier = nxt
        return found[:limit] or ["the input"]


def _places(view: "_AutogradView", fns: list, limit: int = 3) -> str:
    """'after 'a', 'b' and 5 more places' for a message about several autograd nodes."""
    spots: list[str] = []
    for f in fns:
        # One place may have two feeding layers; in a list of places the first one is enough.
        spot = " and ".join(f"'{n}'" for n in view.near(f, limit=1 if len(fns) > 1 else 2))
        if spot not in spots:
            spots.append(spot)
    text = "after " + ", ".join(spots[:limit])
    return text + (f" and {len(spots) - limit} more places" if len(spots) > limit else "")


def _builtin(call: Optional[_Call]) -> bool:
    return call is not None and type(call.module).__module__.startswith(("torch.nn", "torch.ao.nn"))


def _hazards(probe: _Probe) -> list[str]:
    """Plain-words descriptions of what torch-pruning would get wrong in this model."""
    if not probe.has_grad:
        return ["The forward pass runs under torch.no_grad() (or detaches its output), so "
                "torch-pruning cannot see how the layers connect and would prune channels "
                "without fixing the layers that use them. Remove torch.no_grad() / .detach() "
                "from the model's forward."]
    found: list[str] = []
    no_grad = [c.qualname for c in probe.calls
               if not c.grad_enabled and any(True for _ in c.module.parameters())]
    if no_grad:
        found.append(f"Layers {_names(no_grad)} run under torch.no_grad() inside forward, so "
                     "torch-pruning cannot see them; pruning their neighbours would leave them "
                     "with the wrong channel count. Remove torch.no_grad() from forward.")
    view = probe.walk()
    seen: dict[tuple[str, str], list] = {}   # (problem, op) -> autograd nodes, in forward order
    for f in view.nodes:
        # Ops inside torch.nn layers are the layer's business; ops anywhere else (including
        # inside custom leaf modules) are what torch-pruning has to interpret.
        if not view.data.get(f, False) or type(f).__name__ == "AccumulateGrad" \
                or _builtin(view.owner.get(f)) or _builtin(view.internal.get(f)):
            continue
        kind = _fn_kind(f)
        if kind == "stack":
            seen.setdefault(("stack", kind), []).append(f)
        elif kind in ("channel_shuffle", "native_channel_shuffle", "pixel_shuffle", "pixel_unshuffle") \
                or (kind in ("transpose", "permute") and _is_channel_shuffle(view, f)):
            seen.setdefault(("shuffle", kind), []).append(f)
        elif _is_custom_fn(f):
            seen.setdefault(("custom", re.sub(r"Backward$", "", type(f).__name__)), []).append(f)
        elif kind not in ("transpose", "permute") and not _tp_handles(kind) and _changes_channels(f):
            seen.setdefault(("channels", kind), []).append(f)
    for (problem, op), fns in sorted(seen.items(), key=lambda kv: kv[1][0]._sequence_nr()):
        where = _places(view, sorted(fns, key=lambda f: f._sequence_nr()))
        if problem == "stack":
            found.append(f"torch.stack {where}: torch-pruning treats it as an element-wise op "
                         "and cannot follow channels through it, so pruning would break the "
                         "model. Use torch.cat, or keep the stacked layers out of pruning.")
        elif problem == "shuffle":
            found.append(f"Channel shuffle ({op}) {where}: it moves channels between groups, "
                         "which torch-pruning does not track, so pruned channels would be mixed "
                         "up. Keep the layers around it out of pruning.")
        elif problem == "custom":
            found.append(f"Custom autograd function {op} {where}: torch-pruning assumes it keeps "
                         "every channel separate (element-wise); if it mixes or changes channels, "
                         "pruning will break the model. Keep the layers around it out of pruning "
                         "unless you know it is element-wise.")
        else:
            found.append(f"Operation '{op}' {where} changes the number of channels but is not a "
                         "convolution, linear layer or concatenation; torch-pruning treats it as "
                         "element-wise and would prune the wrong channels. Keep the layers around "
                         "it out of pruning.")
    return found


def _names(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _changes_channels(f: Any) -> bool:
    """True when autograd node ``f`` outputs a different channel count than a same-rank input."""
    out = _fn_shape(f, 0)
    if not out:
        return False
    for nf, nr in f.next_functions:
        if nf is None:
            continue
        s = _fn_shape(nf, nr)
        if s is not None and len(s) == len(out) and s[0] != out[0] and s[0] != 1:
            return True
    return False


def _is_channel_shuffle(view: _AutogradView, f: Any) -> bool:
    """view that splits the channel dim in two → swap of those two dims → view merging them."""
    def through(g: Any, step: Callable[[Any], list]) -> Optional[Any]:
        for _ in range(3):
            nxt = step(g)
            if len(nxt) != 1:
                return None
            g = nxt[0]
            kind = _fn_kind(g)
            if "view" in kind or "reshape" in kind:
                return g
            if kind not in ("clone", "contiguous"):
                return None
        return None

    if _fn_kind(f) == "transpose":
        dims = {getattr(f, "_saved_dim0", None), getattr(f, "_saved_dim1", None)}
        swaps = dims == {1, 2}
    else:
        perm = tuple(getattr(f, "_saved_dims", ()))
        swaps = len(perm) > 2 and perm[1] == 2 and perm[2] == 1
    if not swaps:
        return False
    before = through(f, lambda g: [nf for nf, _ in g.next_functions if nf is not None and view.data.get(nf)])
    after = through(f, lambda g: view.succ.get(g, []))
    if before is None or after is None:
        return False
    split_out = _fn_shape(before, 0)
    split_in = next((_fn_shape(nf, nr) for nf, nr in before.next_functions if nf is not None), None)
    merged = _fn_shape(after, 0)
    return bool(split_out and split_in and merged and len(split_out) == len(split_in) + 1
                and split_out[0] * split_out[1] == split_in[0] and split_out[2:] == split_in[1:]
                and merged == split_in)


def _probe(shadows: _Shadows) -> _Probe:
    def run(shadow: nn.Module, meta: bool) -> _Probe:
        p = _Probe()
        with torch.enable_grad():
            try:
                p.forward(shadow, _example(shadow, shadows.input_size, meta, requires_grad=True))
            except _NoGradForward:
                pass  # reported by _hazards
        return p
    return shadows.run(run)


def find_tracing_hazards(model: nn.Module, input_size: tuple[int, ...]) -> list[str]:
    """Patterns in ``model`` that torch-pruning would mishandle, each explained in plain words.

    Looks for a forward that runs under ``torch.no_grad()``, ``torch.stack``, channel
    shuffles, custom autograd functions and other ops that change the channel count while
    torch-pruning treats them as element-wise.
    """
    size = _check_input_size(input_size)
    return _hazards(_probe(_Shadows(model, size)))


# --------------------------------------------------------------------------------------
# Autograd fallback graph
# --------------------------------------------------------------------------------------

def _autograd_graph(probe: _Probe) -> nx.DiGraph:
    """A coarser graph read from the autograd trace, for models fx cannot trace."""
    view = probe.walk()
    g = nx.DiGraph()
    x_shape = _batchless(probe.x)
    g.add_node("input", name="input", op="input", type="input", category="input", out_shape=x_shape,
               params=0, macs=0, in_channels=None, out_channels=x_shape[0] if x_shape else None,
               label=f"input {_shape_text(x_shape)}", module=None)
    # Layer calls and ops in forward order (autograd sequence numbers grow with creation).
    items: list[tuple[int, Any]] = []
    for fn, call in view.owner.items():
        items.append((fn._sequence_nr(), call))
    for f in view.nodes:
        if view.data.get(f) and f not in view.owner and f not in view.internal \
                and type(f).__name__ != "AccumulateGrad":
            items.append((f._sequence_nr(), f))
    items.sort(key=lambda t: t[0])
    key_of: dict[Any, str] = {}
    counts: dict[str, int] = {}
    folded: dict[Any, Any] = {}

    def resolve(f: Any) -> Optional[str]:
        while f in folded:
            f = folded[f]
        if view.is_input(f):
            return "input"
        if f in key_of:
            return key_of[f]
        call = view.internal.get(f)
        if call is not None and call.out_fn in key_of:
            return key_of[call.out_fn]
        return None

    for _, item in items:
        if isinstance(item, _Call):
            call = item
            key = _unique(call.qualname, g)
            m = call.module
            attrs = dict(name=key, op="module", type=type(m).__name__, category=_module_category(m),
                         out_shape=call.out_shape, label=_module_label(m),
                         module=call.qualname,
                         **_module_facts(m, call.in_shape, call.out_shape, call.first_call))
            g.add_node(key, **attrs)
            key_of[call.out_fn] = key
            for ref, nr in call.in_refs:
                src = "input" if isinstance(ref, str) else resolve(ref)
                if src is not None:
                    g.add_edge(src, key, shape=x_shape if src == "input" else _fn_shape(ref, nr))
            continue
        f = item
        kind = _fn_kind(f)
        data_in = [(nf, nr) for nf, nr in f.next_functions if nf is not None and view.data.get(nf)]
        if kind in ("clone", "contiguous") and len(data_in) == 1:
            folded[f] = data_in[0][0]
            continue
        counts[kind] = counts.get(kind, -1) + 1
        key = _unique(kind if counts[kind] == 0 else f"{kind}_{counts[kind]}", g)
        out_shape = _fn_shape(f, 0)
        first = _fn_shape(*data_in[0]) if data_in else None
        g.add_node(key, name=key, op="function", type=kind, category=_fn_category(kind, len(data_in)),
                   out_shape=out_shape, params=0, macs=0,
                   in_channels=first[0] if first else None,
                   out_channels=out_shape[0] if out_shape else None, label=kind, module=None)
        key_of[f] = key
        for nf, nr in data_in:
            src = resolve(nf)
            if src is not None:
                g.add_edge(src, key, shape=_fn_shape(nf, nr))
    outs = [o for o in probe.outputs if o.grad_fn is not None]
    first_out = _batchless(outs[0]) if outs else None
    g.add_node("output", name="output", op="output", type="output", category="output",
               out_shape=first_out, params=0, macs=0, in_channels=None,
               out_channels=first_out[0] if first_out else None,
               label=f"output {_shape_text(first_out)}" if first_out else "output", module=None)
    for o in outs:
        src = resolve(o.grad_fn)
        if src is not None:
            g.add_edge(src, "output", shape=_batchless(o))
    return g


# --------------------------------------------------------------------------------------
# Coupled-channel groups
# --------------------------------------------------------------------------------------

def _heads(g: nx.DiGraph) -> list[str]:
    """Module names of the last convs/linears before the output: their channels are the result."""
    heads: list[str] = []
    stack = list(g.predecessors("output")) if "output" in g else []
    seen = set(stack)
    while stack:
        n = stack.pop()
        d = g.nodes[n]
        if d["op"] == "module" and d["category"] in ("conv", "linear"):
            if d["module"] not in heads:
                heads.append(d["module"])
            continue
        for p in g.predecessors(n):
            if p not in seen:
                seen.add(p)
                stack.append(p)
    return heads


def _groups(shadows: _Shadows, heads: list[str]) -> tuple[_Probe, Optional[list[list[str]]], str]:
    """torch-pruning's groups as lists of module names (the output-channel side of each group).

    The dependency graph's own forward pass doubles as the hazard probe, so the model runs
    once. Returns ``(probe, groups, problem)``: groups is None, with ``problem`` saying why,
    when the forward has no autograd history or torch-pruning fails on the model.
    """
    import torch_pruning as tp

    def run(shadow: nn.Module, meta: bool) -> tuple[_Probe, Optional[list[list[str]]], str]:
        names = {m: n for n, m in shadow.named_modules()}
        by_name = dict(shadow.named_modules())
        probe = _Probe()
        dg = tp.DependencyGraph()
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch-pruning's notes on unknown ops: see _hazards
            try:
                dg.build_dependency(shadow, verbose=False, forward_fn=probe.forward,
                                    example_inputs=_example(shadow, shadows.input_size, meta, requires_grad=True))
                with _tp_guards(dg):
                    all_groups = list(dg.get_all_groups(
                        ignored_layers=[by_name[h] for h in heads if h in by_name],
                        root_module_types=[nn.modules.conv._ConvNd, nn.Linear]))
            except _NoGradForward:
                return probe, None, ("the forward pass hides how the layers connect (see the "
                                     "warning about torch.no_grad())")
            except (_TooManyIndices, MemoryError):
                return probe, None, ("torch-pruning's channel index lists for this model grow "
                                     "without bound (typical of attention and window "
                                     "reshapes), so it cannot follow the channels")
            except Exception as exc:  # noqa: BLE001 - torch-pruning's own failures are reported
                if meta or not probe.outputs:
                    raise   # retry on real tensors / a genuine forward failure
                return probe, None, (f"torch-pruning failed on this model ({type(exc).__name__}: "
                                     f"{str(exc).strip()[:120]}), most likely because of the "
                                     "patterns described above")
        found: list[list[str]] = []
        for group in all_groups:
            members: list[str] = []
            for dep, _ in group:
                # Skip torch-pruning's own op nodes (no module name) and the consumers
                # that only lose input channels.
                name = names.get(dep.target.module)
                if name and name not in members and dg.is_out_channel_pruning_fn(dep.handler):
                    members.append(name)
            if members:
                found.append(members)
        return probe, found, ""
    return shadows.run(run)


# --------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------

def build_graph(model: nn.Module, input_size: tuple[int, int, int], *, with_groups: bool = True) -> LayerGraph:
    """Trace ``model`` on a ``1×input_size`` input into a `LayerGraph`.

    fx tracing gives one node per layer call and functional op, with shapes. A model with
    data-dependent Python control flow falls back to a coarser graph read from autograd
    (``traced_with='autograd'``). With ``with_groups`` the torch-pruning dependency graph
    is built too, to fill ``groups``, ``group_of`` and ``prunable``; without it those stay
    empty (and the call is several times faster on DenseNets). ``model`` itself is never
    modified.

    Nodes are keyed by ``name``: the module's qualified name (a second call of the same
    module gets ``'relu:1'``), an op name such as ``'add_3'``, or ``'input'``/``'output'``.
    Node attributes: name, op ('module' | 'function' | 'input' | 'output'), type
    ('Conv2d', 'add', ...), category (one of `CATEGORIES`), module (qualified name or
    None), out_shape (batch excluded), params (own parameters, counted at a module's
    first call), macs (convolutions, linear layers, matmuls), in_channels, out_channels,
    prunable, group (index into ``groups`` or None) and label (short text to draw).
    Edges carry ``shape``, the tensor shape flowing along them (batch excluded).
    """
    size = _check_input_size(input_size)
    shadows = _Shadows(model, size)
    notes: list[str] = []
    probe: Optional[_Probe] = None
    try:
        gm: Optional[fx.GraphModule] = _fx_trace(shadows.get(True))
        fx_error: Optional[BaseException] = None
    except StudioError:
        raise
    except Exception as exc:  # noqa: BLE001 - any fx failure means "read the graph from autograd"
        gm, fx_error = None, exc

    if gm is not None:
        def shapes(_shadow: nn.Module, meta: bool) -> tuple[fx.GraphModule, dict]:
            target = gm if meta else _fx_trace(shadows.get(False))
            interp = _ShapeInterpreter(target)
            with torch.no_grad():
                interp.run(_example(target, size, meta))
            return target, interp.values
        graph = _fx_graph(*shadows.run(shapes))
    else:
        probe = _probe(shadows)
        reason = (str(fx_error).strip().splitlines() or [type(fx_error).__name__])[0][:160]
        if not probe.has_grad:
            raise StudioError(
                f"The model cannot be traced: fx failed ({reason}) and its forward runs under "
                "torch.no_grad(), which hides it from autograd too.",
                "Remove torch.no_grad() from the model's forward.")
        graph = _autograd_graph(probe)
        notes.append("The model's forward has Python control flow that depends on tensor values "
                     f"(fx said: {reason}), so the graph was read from autograd instead: it is "
                     "coarser, showing the layers and main ops but not every reshape.")

    heads = _heads(graph)
    groups: list[list[str]] = []
    if with_groups:
        probe, found, problem = _groups(shadows, heads)
        if found is None:
            notes.append(f"Pruning groups could not be computed: {problem}. Nothing in this "
                         "model can be pruned automatically until that is fixed.")
        groups = found or []
    elif probe is None:
        probe = _probe(shadows)

    # Number groups, and order their members, by where they first run.
    order: dict[str, int] = {}
    for i, (_, d) in enumerate(graph.nodes(data=True)):
        if d.get("module") is not None:
            order.setdefault(d["module"], i)
    last = len(graph)
    groups = [sorted(gr, key=lambda m: order.get(m, last)) for gr in groups]
    groups.sort(key=lambda gr: order.get(gr[0], last))
    group_of = {m: i for i, gr in enumerate(groups) for m in gr}
    modules = dict(model.named_modules())
    prunable = sorted((m for gr in groups for m in gr
                       if m not in heads and isinstance(modules.get(m), (nn.modules.conv._ConvNd, nn.Linear))),
                      key=lambda m: order.get(m, last))
    chosen = set(prunable)
    for _, d in graph.nodes(data=True):
        mod = d.get("module")
        d["prunable"] = mod in chosen
        d["group"] = group_of.get(mod) if mod is not None else None
    return LayerGraph(graph=graph, groups=groups, group_of=group_of, prunable=prunable,
                      warnings=_hazards(probe) + notes, traced_with="fx" if gm is not None else "autograd")
