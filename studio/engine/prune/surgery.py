"""Pruning plans and structural surgery: turn a `PruningPlan` into a slimmed copy of a model.

The plan says how much to cut (a global rate, per-layer overrides, protected layers, global
or per-layer ranking, channel rounding, iterative steps, extra unstructured sparsity) and by
which criterion (`studio.engine.criteria`). The surgery itself is torch-pruning's
dependency-graph pruner, so residual adds, concats, depthwise convs and squeeze-excitation
stay consistent. The user's model is never touched: everything happens on a deep copy.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
from dataclasses import dataclass, field
from numbers import Real
from typing import Callable, Generator, Iterable, Optional

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch_pruning.utils import op_counter

from studio.engine.criteria import Criterion, get_criterion
from studio.engine.errors import StudioError
from studio.engine.events import NEVER_CANCELLED, CancelToken, Log, Phase, Progress

_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)


def _is_rate(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and 0.0 <= float(value) < 1.0


def _out_channels(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.modules.conv._ConvNd) else layer.out_features


def _kept_channels(channels: int, rate: float, round_to: Optional[int]) -> int:
    """Channels torch-pruning keeps in a layer of ``channels`` at ``rate`` (same arithmetic)."""
    kept = int(channels * (1 - rate))
    if round_to and kept < channels:
        kept -= kept % round_to
    return kept


def _close_names(name: str, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)
    if close:
        return "Did you mean " + ", ".join(f"'{c}'" for c in close) + "?"
    return "Run `studio inspect` on the model to list its layer names."


def _under(name: str, prefixes: Iterable[str]) -> bool:
    """True when module ``name`` is one of ``prefixes`` or inside one of them."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def find_classifier(model: nn.Module) -> Optional[str]:
    """Name of the final Linear (or, in all-conv nets, the final Conv) head; kept out of pruning.

    Registration order is used: torchvision and the studio's CIFAR models register their
    head last, and so do nearly all hand-written nets.
    """
    last_linear = last_conv = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_linear = name
        elif isinstance(module, nn.modules.conv._ConvNd):
            last_conv = name
    return last_linear if last_linear is not None else last_conv


@dataclass
class PruningPlan:
    """How much to cut, where, and by which criterion."""
    criterion: str = "l1"
    rate: float = 0.5                                     # global channel pruning ratio, in [0, 1)
    layer_rates: dict = field(default_factory=dict)       # module name -> rate, overrides `rate`
    protected: list = field(default_factory=list)        # module names never pruned
    global_ranking: bool = False                          # rank channels across layers, not per layer
    round_to: Optional[int] = None                        # keep channel counts multiples of this
    iterative_steps: int = 1
    unstructured_sparsity: float = 0.0                    # magnitude sparsity on what remains (seed 000)

    def to_dict(self) -> dict:
        return {"criterion": self.criterion, "rate": self.rate, "layer_rates": dict(self.layer_rates),
                "protected": list(self.protected), "global_ranking": self.global_ranking,
                "round_to": self.round_to, "iterative_steps": self.iterative_steps,
                "unstructured_sparsity": self.unstructured_sparsity}

    @classmethod
    def from_dict(cls, d: dict) -> "PruningPlan":
        """Build a plan from JSON data; unknown keys and impossible values are `StudioError`s."""
        if not isinstance(d, dict):
            raise StudioError("The pruning plan must be an object.", 'For example {"criterion": "l1", "rate": 0.5}.')
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in known]
        if unknown:
            raise StudioError(f"Unknown pruning plan key(s): {', '.join(map(str, unknown))}.",
                              f"Valid keys: {', '.join(known)}.")
        plan = cls(**{k: copy.deepcopy(v) for k, v in d.items()})
        plan.check()
        return plan

    def check(self) -> None:
        """Check everything that does not need the model."""
        get_criterion(self.criterion)
        if not _is_rate(self.rate):
            raise StudioError(f"The pruning rate {self.rate!r} is outside [0, 1).",
                              "Use a share of channels to remove, e.g. 0.5; 1.0 would remove every channel.")
        if not isinstance(self.layer_rates, dict):
            raise StudioError("layer_rates must map layer names to rates.", 'For example {"layer1.0.conv1": 0.3}.')
        for name, rate in self.layer_rates.items():
            if not _is_rate(rate):
                raise StudioError(f"The rate {rate!r} for layer '{name}' is outside [0, 1).",
                                  f"Give '{name}' a share of channels to remove, e.g. 0.3.")
        if not isinstance(self.protected, (list, tuple)) or not all(isinstance(n, str) for n in self.protected):
            raise StudioError("protected must be a list of layer names.", 'For example ["conv1"].')
        if not isinstance(self.global_ranking, bool):
            raise StudioError("global_ranking must be true or false.", "Fix the plan.")
        if self.round_to is not None and (not isinstance(self.round_to, int) or isinstance(self.round_to, bool)
                                          or self.round_to < 1):
            raise StudioError(f"round_to {self.round_to!r} must be empty or a positive whole number.",
                              "Use e.g. 8 to keep channel counts multiples of 8.")
        if not isinstance(self.iterative_steps, int) or isinstance(self.iterative_steps, bool) \
                or self.iterative_steps < 1:
            raise StudioError(f"iterative_steps {self.iterative_steps!r} must be a whole number of at least 1.",
                              "Use 1 to prune in one go.")
        if not _is_rate(self.unstructured_sparsity):
            raise StudioError(f"unstructured_sparsity {self.unstructured_sparsity!r} is outside [0, 1).",
                              "Use e.g. 0.5 to zero half of the remaining weights, or 0 to skip it.")
        both = [n for n in self.layer_rates if n in self.protected]
        if both:
            raise StudioError(f"Layer '{both[0]}' is both protected and given a rate.",
                              f"Remove '{both[0]}' from one of the two lists.")

    def validate(self, model: nn.Module) -> None:
        """Check the plan against ``model``'s layers; every problem names the layer."""
        self.check()
        modules = dict(model.named_modules())
        for name in [*self.layer_rates, *self.protected]:
            if name not in modules or name == "":
                raise StudioError(f"The model has no layer named '{name}'.", _close_names(name, modules))
        head = find_classifier(model)
        for name, rate in self.layer_rates.items():
            if name == head:
                raise StudioError(f"Layer '{name}' is the classifier head, which is never pruned.",
                                  f"Remove '{name}' from layer_rates.")
            inner = [(n, m) for n, m in modules[name].named_modules(prefix=name) if isinstance(m, _WEIGHTED)]
            if not inner:
                raise StudioError(f"Layer '{name}' ({type(modules[name]).__name__}) has no conv or linear "
                                  "channels to prune.", "Give the rate to a Conv or Linear layer instead.")
            for n, m in inner:
                self._check_leaves_channels(n, m, rate, f"The rate {rate} for layer '{name}'")
        if self.global_ranking:
            return   # per-layer counts depend on the scores; torch-pruning keeps at least one channel
        for n, m in modules.items():
            if isinstance(m, _WEIGHTED) and n != head and not _under(n, self.protected) \
                    and not _under(n, self.layer_rates):
                self._check_leaves_channels(n, m, self.rate, f"The global rate {self.rate}")

    def _check_leaves_channels(self, name: str, layer: nn.Module, rate: float, what: str) -> None:
        channels = _out_channels(layer)
        if rate > 0 and _kept_channels(channels, rate, self.round_to) < 1:
            rounding = f" after rounding to multiples of {self.round_to}" if self.round_to else ""
            raise StudioError(f"{what} leaves no channel in layer '{name}' ({channels} channels{rounding}).",
                              f"Use a lower rate for '{name}', or protect it.")


@dataclass
class LayerChange:
    """One conv/linear layer before and after pruning (like Table 5 of seed 002)."""
    name: str
    type: str
    channels_before: int
    channels_after: int
    params_before: int
    params_after: int


@dataclass
class PruneResult:
    """What `prune` returns. Counts are per example, by torch-pruning's counter."""
    model: nn.Module                  # the slimmed copy
    layers: list                      # LayerChange per conv/linear layer
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    sparsity: float                   # share of zero conv/linear weights after the unstructured step (0 if unused)
    history: list                     # torch-pruning pruning history, JSON-ready: [name, is_out, [indices]]


def _layer_sizes(model: nn.Module) -> dict:
    return {name: (type(m).__name__, _out_channels(m), sum(p.numel() for p in m.parameters(recurse=False)))
            for name, m in model.named_modules() if isinstance(m, _WEIGHTED)}


def _run_forward(model: nn.Module, inputs):
    """Call ``model`` on example inputs the way torch-pruning documents them."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (list, tuple)):
        return model(*inputs)
    return model(inputs)


def _batch_size(inputs) -> int:
    if isinstance(inputs, torch.Tensor):
        return max(len(inputs), 1) if inputs.dim() else 1
    if isinstance(inputs, (list, tuple)) and inputs:
        return _batch_size(inputs[0])
    return 1


def _with_dim(shape: tuple, dim: int, size: int) -> tuple:
    shape = list(shape)
    shape[dim] = size
    return tuple(shape)


# Counted modules whose output has the channels of their input (elementwise ops and pools).
_CHANNEL_FOLLOWERS = (nn.ReLU, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6, nn.GELU, nn.Upsample,
                      nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                      nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)


class _MacCounter:
    """MACs by torch-pruning's own counter hooks, without its deep copy and extra forward pass.

    These are the per-module hooks `tp.utils.count_ops_and_params` installs, summed the same
    way (a counted module's children are not counted again). ``record()`` counts the forward
    passes run inside it, which lets the count ride on the pass that dependency tracing
    makes anyway, and keeps each counted call's shapes and which counted call produced its
    input. After channel surgery ``replay()`` recounts from those shapes and the layers' new
    channel numbers (channel pruning changes nothing else), with no forward pass at all. It
    returns None where shapes cannot be derived so (an activation fed by an uncounted op, an
    RNN or attention layer); the caller then counts with a real forward pass.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.hooks = {**op_counter.MODULES_MAPPING, **op_counter.CUSTOM_MODULES_MAPPING}
        self.counted = [m for m in model.modules() if type(m) in self.hooks]
        self.calls: list = []   # (module, input shape, output shape, index of the producing call)
        self.replayable = True
        self.macs = 0

    def _total(self, module: nn.Module) -> int:
        if type(module) in self.hooks:
            return module.__flops__
        return sum(self._total(child) for child in module.children())

    @contextlib.contextmanager
    def _flops_attributes(self):
        """The hooks accumulate into ``module.__flops__``; set it up and leave no trace."""
        saved = {m: m.__dict__["__flops__"] for m in self.counted if "__flops__" in m.__dict__}
        for m in self.counted:
            m.__flops__ = 0
        try:
            yield
        finally:
            for m in self.counted:
                del m.__flops__
                if m in saved:
                    m.__flops__ = saved[m]

    @contextlib.contextmanager
    def record(self):
        """Count, and remember the shapes of, the forward passes run inside this context."""
        producers, alive = {}, []

        def remember(module, inputs, output):
            first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            if first is None or not isinstance(output, torch.Tensor):
                self.replayable = False
                return
            self.calls.append((module, tuple(first.shape), tuple(output.shape), producers.get(id(first))))
            producers[id(output)] = len(self.calls) - 1
            alive.append(output)   # a live tensor's id cannot be reused by another one

        handles = []
        with self._flops_attributes():
            try:
                for m in self.counted:
                    handles.append(m.register_forward_hook(self.hooks[type(m)]))
                    handles.append(m.register_forward_hook(remember))
                yield self
                self.macs = self._total(self.model)
            finally:
                for h in handles:
                    h.remove()

    def _new_shapes(self, module, in_shape, out_shape, producer, new_out, channel_dim):
        """(input shape, output shape, channel dim) of a recorded call after surgery, or None."""
        if isinstance(module, nn.modules.conv._ConvNd) and len(in_shape) >= 3:
            return _with_dim(in_shape, 1, module.in_channels), _with_dim(out_shape, 1, module.out_channels), 1
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)) \
                and len(in_shape) >= 2:
            return _with_dim(in_shape, 1, module.num_features), _with_dim(out_shape, 1, module.num_features), 1
        if isinstance(module, nn.GroupNorm) and len(in_shape) >= 2:
            return _with_dim(in_shape, 1, module.num_channels), _with_dim(out_shape, 1, module.num_channels), 1
        if isinstance(module, nn.Linear):
            return _with_dim(in_shape, -1, module.in_features), _with_dim(out_shape, -1, module.out_features), -1
        if isinstance(module, _CHANNEL_FOLLOWERS) and producer is not None \
                and len(new_out[producer]) == len(in_shape) == len(out_shape):
            dim = channel_dim[producer]
            return new_out[producer], _with_dim(out_shape, dim, new_out[producer][dim]), dim
        return None

    def replay(self) -> Optional[int]:
        """MACs of the model as it is now, from the recorded shapes; None if they cannot be derived."""
        if not self.replayable or not self.calls:
            return None
        new_out, channel_dim = [], []
        with self._flops_attributes():
            for module, in_shape, out_shape, producer in self.calls:
                shapes = self._new_shapes(module, in_shape, out_shape, producer, new_out, channel_dim)
                if shapes is None:
                    return None
                new_in, out, dim = shapes
                new_out.append(out)
                channel_dim.append(dim)
                # The hooks read only shapes and layer attributes, so shape-only tensors do.
                self.hooks[type(module)](module, (torch.empty(new_in, device="meta"),),
                                         torch.empty(out, device="meta"))
            return self._total(self.model)


def _count(model: nn.Module, example_inputs) -> int:
    """MACs per example of ``model`` with a real forward pass, by torch-pruning's counter hooks."""
    counter = _MacCounter(model)
    with counter.record(), torch.no_grad():
        _run_forward(model, example_inputs)
    return int(counter.macs / _batch_size(example_inputs))


def _count_after(counter: "_MacCounter", model: nn.Module, example_inputs) -> int:
    """MACs per example after surgery: replayed from the traced shapes when possible."""
    macs = counter.replay()
    if macs is None:
        return _count(model, example_inputs)
    return int(macs / _batch_size(example_inputs))


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _take_batches(calibration, max_batches: Optional[int], device) -> list:
    batches = []
    for batch in calibration:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise StudioError("Calibration data must yield (images, labels) batches.",
                              "Pass a DataLoader or a list of (x, y) pairs.")
        batches.append((batch[0].to(device), batch[1].to(device)))
        if max_batches is not None and len(batches) >= max_batches:
            break
    if not batches:
        raise StudioError("The calibration data is empty.", "Pass at least one (images, labels) batch.")
    return batches


def _needs_data(criterion: Criterion, calibration) -> None:
    if criterion.needs_data and calibration is None:
        what = "loss gradients" if criterion.needs_gradients else "feature maps"
        raise StudioError(f"The {criterion.title} criterion needs calibration data to compute {what}.",
                          "Give the job a dataset, or choose a data-free criterion such as l1.")


def _prepare_scores(importance, criterion: Criterion, model: nn.Module, batches: list,
                    loss_fn: Optional[Callable]) -> None:
    """Compute what a data-driven criterion reads: gradients (Taylor) or feature-map ranks (HRank)."""
    if criterion.needs_gradients:
        loss_fn = loss_fn or nn.functional.cross_entropy
        model.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.requires_grad_(True)   # frozen layers still need a gradient to be scored
        with torch.enable_grad():
            for x, y in batches:
                loss_fn(model(x), y).backward()
    elif hasattr(importance, "collect"):
        importance.collect(model, batches)


def _build_pruner(work: nn.Module, plan: PruningPlan, example_inputs, importance) -> tp.pruner.BasePruner:
    modules = dict(work.named_modules())
    ignored = [modules[name] for name in plan.protected]
    head = find_classifier(work)
    if head is not None:
        ignored.append(modules[head])
    try:
        with torch.enable_grad():   # the dependency graph is traced through autograd
            return tp.pruner.BasePruner(
                work, example_inputs, importance=importance,
                global_pruning=plan.global_ranking, pruning_ratio=plan.rate,
                pruning_ratio_dict={modules[n]: r for n, r in plan.layer_rates.items()},
                ignored_layers=ignored, round_to=plan.round_to, iterative_steps=plan.iterative_steps,
                # Our own forward: torch-pruning first tries model(*tensor), which runs a batch-1
                # input unbatched until some layer rejects it.
                forward_fn=lambda model, inputs: _run_forward(model, inputs))
    except StudioError:
        raise
    except Exception as exc:  # tracing a user's model can fail on ops torch-pruning does not know
        raise StudioError(f"torch-pruning could not trace the model ({type(exc).__name__}: {exc}).",
                          "Check that the example input fits the model, or protect the layers around "
                          "unusual operations.") from exc


def _sparsify(model: nn.Module, amount: float, protected: list) -> float:
    """Global magnitude pruning of conv/linear weights, made permanent; returns the zero share."""
    targets = [(m, "weight") for n, m in model.named_modules()
               if isinstance(m, _WEIGHTED) and not _under(n, protected)]
    if not targets:
        return 0.0
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=amount)
    for module, name in targets:
        torch_prune.remove(module, name)   # bake the mask into the weight: no reparametrisation left
    zeros = sum(int((m.weight == 0).sum()) for m, _ in targets)
    return zeros / sum(m.weight.numel() for m, _ in targets)


def _jsonable_history(history) -> list:
    return [[str(name), bool(is_out), [int(i) for i in idxs]] for name, is_out, idxs in history]


def prune(model: nn.Module, plan: PruningPlan, example_inputs: torch.Tensor, *, calibration=None,
          loss_fn: Optional[Callable] = None, token: Optional[CancelToken] = None,
          max_batches: Optional[int] = None) -> Generator[object, None, PruneResult]:
    """Prune a deep copy of ``model`` by ``plan``; yields events, returns a `PruneResult`.

    ``calibration`` is an iterable of (x, y) batches, read once (at most ``max_batches``) and
    needed by data-driven criteria (taylor, hrank). ``loss_fn(output, y)`` defaults to cross
    entropy. The classifier head is always protected. ``model`` is never modified, also when
    this fails or is cancelled.
    """
    plan.validate(model)
    criterion = get_criterion(plan.criterion)
    _needs_data(criterion, calibration)
    token = token or NEVER_CANCELLED
    steps = plan.iterative_steps
    ranking = "global" if plan.global_ranking else "per-layer"
    yield Phase("prune", f"Pruning {plan.rate:.0%} of channels by {criterion.title} ({ranking} ranking)")
    token.check("pruning")

    work = copy.deepcopy(model)
    modes = {name: m.training for name, m in work.named_modules()}
    work.eval()   # tracing and calibration must not update BatchNorm statistics
    grad_flags = {n: p.requires_grad for n, p in work.named_parameters()}
    batches = _take_batches(calibration, max_batches, _device_of(work)) if criterion.needs_data else []
    params_before = _param_count(work)
    sizes_before = _layer_sizes(work)

    importance = criterion.make()
    # MACs are counted on the forward pass that tracing makes anyway (see _MacCounter).
    counter = _MacCounter(work)
    with counter.record():
        pruner = _build_pruner(work, plan, example_inputs, importance)
    macs_before = int(counter.macs / _batch_size(example_inputs))
    for step in range(steps):
        token.check("pruning")
        _prepare_scores(importance, criterion, work, batches, loss_fn)
        pruner.step()
        work.zero_grad(set_to_none=True)
        yield Progress("prune", step + 1, steps, f"Step {step + 1}/{steps}: {_param_count(work):,} parameters left")

    sparsity = 0.0
    if plan.unstructured_sparsity > 0:
        token.check("pruning")
        sparsity = _sparsify(work, plan.unstructured_sparsity, plan.protected)
        yield Log(f"Unstructured magnitude pruning: {sparsity:.1%} of conv/linear weights are now zero.")
    token.check("pruning")

    for name, p in work.named_parameters():
        p.requires_grad_(grad_flags.get(name, True))   # surgery makes new Parameters; keep frozen layers frozen
    params_after, macs_after = _param_count(work), _count_after(counter, work, example_inputs)
    for name, m in work.named_modules():
        m.training = modes.get(name, m.training)   # e.g. a BatchNorm kept frozen in eval mode stays so

    sizes_after = _layer_sizes(work)
    layers = [LayerChange(name, kind, ch, sizes_after[name][1], n, sizes_after[name][2])
              for name, (kind, ch, n) in sizes_before.items()]
    cut = sum(1 for layer in layers if layer.channels_after < layer.channels_before)
    yield Log(f"Pruned {cut} of {len(layers)} conv/linear layers: parameters {params_before:,} → {params_after:,}, "
              f"MACs {macs_before:,} → {macs_after:,}.")
    return PruneResult(model=work, layers=layers, params_before=params_before, params_after=params_after,
                       macs_before=macs_before, macs_after=macs_after, sparsity=sparsity,
                       history=_jsonable_history(pruner.pruning_history()))


def channel_importance(model: nn.Module, layer_name: str, criterion: str, example_inputs, *,
                       calibration=None, loss_fn: Optional[Callable] = None,
                       max_batches: Optional[int] = None) -> np.ndarray:
    """Scores of the output channels of ``layer_name``'s coupled group, for the GUI histogram."""
    crit = get_criterion(criterion)
    modules = dict(model.named_modules())
    if layer_name not in modules or layer_name == "":
        raise StudioError(f"The model has no layer named '{layer_name}'.", _close_names(layer_name, modules))
    if not isinstance(modules[layer_name], _WEIGHTED):
        raise StudioError(f"Layer '{layer_name}' ({type(modules[layer_name]).__name__}) has no channels to score.",
                          "Pick a Conv or Linear layer.")
    _needs_data(crit, calibration)
    work = copy.deepcopy(model).eval()   # scoring may fill gradients; keep them off the user's model
    batches = _take_batches(calibration, max_batches, _device_of(work)) if crit.needs_data else []
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(work, example_inputs=example_inputs, verbose=False,
                                                       forward_fn=lambda m, inputs: _run_forward(m, inputs))
    layer = dict(work.named_modules())[layer_name]
    pruning_fn = graph.get_pruner_of_module(layer).prune_out_channels
    group = graph.get_pruning_group(layer, pruning_fn, list(range(_out_channels(layer))))
    importance = crit.make()
    _prepare_scores(importance, crit, work, batches, loss_fn)
    scores = importance(group)
    if scores is None:
        raise StudioError(f"The {crit.title} criterion has nothing to score in the group of layer '{layer_name}'.",
                          "This criterion needs a BatchNorm after the layer; choose another criterion such as l1.")
    return scores.detach().float().cpu().numpy()


def estimate(model: nn.Module, plan: PruningPlan, example_inputs) -> tuple[int, int]:
    """Predicted (params, MACs) after structural pruning, for the GUI's live prediction.

    Exact for per-layer ranking (channel counts depend only on the rates there). For global
    ranking the split between layers depends on the scores: data-driven criteria are
    approximated by L1 then, since no data is at hand. Unstructured sparsity does not change
    dense counts.
    """
    plan.validate(model)
    crit = get_criterion(plan.criterion)
    importance = tp.importance.MagnitudeImportance(p=1) if crit.needs_data else crit.make()
    work = copy.deepcopy(model).eval()
    counter = _MacCounter(work)
    with counter.record():
        pruner = _build_pruner(work, plan, example_inputs, importance)
    for _ in range(plan.iterative_steps):
        pruner.step()
    return _param_count(work), _count_after(counter, work, example_inputs)
