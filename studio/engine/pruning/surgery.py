"""Pruning plans and structural surgery: turn a `PruningPlan` into a slimmed copy of a model.

The plan says how much to cut (a global rate, per-layer overrides, protected layers, global
or per-layer ranking, channel rounding, iterative steps, extra unstructured sparsity) and by
which criterion (`studio.engine.pruning.criteria`). The surgery itself is torch-pruning's
dependency-graph pruner, so residual adds, concats, depthwise convs and squeeze-excitation
stay consistent. The user's model is never touched: everything happens on a deep copy.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Generator, Optional

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from studio.engine.errors import StudioError
from studio.engine.graph.attention import attention_heads, update_head_sizes
from studio.engine.graph.tp_patches import TooManyIndices, runaway_indices, tp_guards
from studio.engine.events import NEVER_CANCELLED, CancelToken, Log, Phase, Progress
from studio.engine.pruning.coupled import set_averaged
from studio.engine.pruning.criteria import Criterion, get_criterion
from studio.engine.pruning.macs import MacCounter, batch_size_of, count_macs_after, count_macs_forward, run_forward
from studio.engine.pruning.plan import WEIGHTED_LAYERS, PruningPlan, close_names, find_classifier, out_channels
from studio.engine.pruning.sparsity import sparsify_weights


@dataclass
class LayerChange:
    """One conv/linear layer before and after pruning (like Table 5 of Liu & Lei 2022)."""
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
    return {name: (type(m).__name__, out_channels(m), sum(p.numel() for p in m.parameters(recurse=False)))
            for name, m in model.named_modules() if isinstance(m, WEIGHTED_LAYERS)}


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


def prepare_scores(importance, criterion: Criterion, model: nn.Module, batches: list,
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
        with torch.enable_grad(), tp_guards(None, listing_only=False):   # the graph is traced through autograd
            return tp.pruner.BasePruner(
                work, example_inputs, importance=importance,
                global_pruning=plan.global_ranking, pruning_ratio=plan.rate,
                pruning_ratio_dict={modules[n]: r for n, r in plan.layer_rates.items()},
                ignored_layers=ignored, round_to=plan.round_to, iterative_steps=plan.iterative_steps,
                # Attention projections are cut in whole heads (head dims), so the reshapes stay valid.
                num_heads=attention_heads(work),
                # Our own forward: torch-pruning first tries model(*tensor), which runs a batch-1
                # input unbatched until some layer rejects it.
                forward_fn=lambda model, inputs: run_forward(model, inputs))
    except StudioError:
        raise
    except (TooManyIndices, MemoryError) as exc:
        raise runaway_indices() from exc
    except Exception as exc:  # tracing a user's model can fail on ops torch-pruning does not know
        raise StudioError(f"torch-pruning could not trace the model ({type(exc).__name__}: {exc}).",
                          "Check that the example input fits the model, or protect the layers around "
                          "unusual operations.") from exc


def _step(pruner) -> None:
    """One torch-pruning step, with its index lists kept bounded (see `tp_guards`)."""
    try:
        with tp_guards(None, listing_only=False):
            pruner.step()
    except (TooManyIndices, MemoryError) as exc:
        raise runaway_indices() from exc


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
    # MACs are counted on the forward pass that tracing makes anyway (see MacCounter).
    counter = MacCounter(work)
    with counter.record():
        pruner = _build_pruner(work, plan, example_inputs, importance)
    pruner.estimate_importance = set_averaged(pruner.estimate_importance, pruner.DG)
    macs_before = int(counter.macs / batch_size_of(example_inputs))
    for step in range(steps):
        token.check("pruning")
        prepare_scores(importance, criterion, work, batches, loss_fn)
        _step(pruner)
        update_head_sizes(work, pruner.num_heads)
        work.zero_grad(set_to_none=True)
        yield Progress("prune", step + 1, steps, f"Step {step + 1}/{steps}: {_param_count(work):,} parameters left")

    sparsity = 0.0
    if plan.unstructured_sparsity > 0:
        token.check("pruning")
        sparsity = sparsify_weights(work, plan.unstructured_sparsity, plan.protected)
        yield Log(f"Unstructured magnitude pruning: {sparsity:.1%} of conv/linear weights are now zero.")
    token.check("pruning")

    for name, p in work.named_parameters():
        p.requires_grad_(grad_flags.get(name, True))   # surgery makes new Parameters; keep frozen layers frozen
    params_after, macs_after = _param_count(work), count_macs_after(counter, work, example_inputs)
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
        raise StudioError(f"The model has no layer named '{layer_name}'.", close_names(layer_name, modules))
    if not isinstance(modules[layer_name], WEIGHTED_LAYERS):
        raise StudioError(f"Layer '{layer_name}' ({type(modules[layer_name]).__name__}) has no channels to score.",
                          "Pick a Conv or Linear layer.")
    _needs_data(crit, calibration)
    work = copy.deepcopy(model).eval()   # scoring may fill gradients; keep them off the user's model
    batches = _take_batches(calibration, max_batches, _device_of(work)) if crit.needs_data else []
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(work, example_inputs=example_inputs, verbose=False,
                                                       forward_fn=lambda m, inputs: run_forward(m, inputs))
    layer = dict(work.named_modules())[layer_name]
    pruning_fn = graph.get_pruner_of_module(layer).prune_out_channels
    group = graph.get_pruning_group(layer, pruning_fn, list(range(out_channels(layer))))
    importance = crit.make()
    prepare_scores(importance, crit, work, batches, loss_fn)
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
    _, params, macs = estimate_model(model, plan, example_inputs)
    return params, macs


def estimate_model(model: nn.Module, plan: PruningPlan, example_inputs) -> tuple[nn.Module, int, int]:
    """`estimate`, also returning the pruned copy (to check that it still runs)."""
    plan.validate(model)
    crit = get_criterion(plan.criterion)
    importance = tp.importance.MagnitudeImportance(p=1) if crit.needs_data else crit.make()
    work = copy.deepcopy(model).eval()
    counter = MacCounter(work)
    with counter.record():
        pruner = _build_pruner(work, plan, example_inputs, importance)
    for _ in range(plan.iterative_steps):
        _step(pruner)
    update_head_sizes(work, pruner.num_heads)
    return work, _param_count(work), count_macs_after(counter, work, example_inputs)


def reachable_macs(model: nn.Module, example_inputs, max_rate: float = 0.9, protected=()) -> tuple[int, int]:
    """The MACs range a plan can reach, as FastNAS's profile shows it: (smallest, largest).

    The smallest is every prunable group at ``max_rate`` (the head, what it forces and the
    ``protected`` layers stay whole); the largest is the model unpruned.
    """
    largest = count_macs_forward(copy.deepcopy(model).eval(), example_inputs)
    return estimate(model, PruningPlan(rate=max_rate, protected=list(protected)), example_inputs)[1], largest
