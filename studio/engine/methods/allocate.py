"""Per-layer rates for a target, from sensitivity curves: one global threshold on predicted loss.

Every group is pruned as far as its fitted curve predicts a top-1 loss of at most τ (read
from the fit by linear interpolation between probed rates, never beyond the largest). The target figures fall as τ grows, so a binary search on τ finds the smallest
threshold whose plan meets every target: the groups that hurt least give up the most
channels, and no group is pushed past the loss the others are held to. This is the
binary structural search of FastNAS and of CaP (Xie et al., 2021), and AIMET's
equal-accuracy allocation, on the studio's curves.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from studio.engine.errors import StudioError
from studio.engine.events import run_to_end
from studio.engine.methods.sensitivity import SensitivityResult
from studio.engine.methods.targets import LatencySetting, Target, measure_figure
from studio.engine.pruning import PruningPlan, estimate, prune

SEARCH_STEPS = 24       # bisection steps on τ: 2^-24 of the range, far below one channel's effect


@dataclass
class Allocation:
    """Rates chosen for a threshold, and what they are predicted to give."""
    tau: float                                   # the per-group predicted top-1 loss allowed (0..1)
    group_rates: dict = field(default_factory=dict)    # group root -> rate
    figures: dict = field(default_factory=dict)        # target kind -> figure (base units)
    predicted_drop: float = 0.0                  # sum of the groups' predicted losses (0..1), a rough guide


def rate_at_loss(result: SensitivityResult, group, tau: float) -> float:
    """The largest rate whose fitted top-1 loss is at most ``tau``, between grid points by linear interpolation."""
    rates = [0.0, *result.rates]
    drops = [result.base_top1 - v for v in (group.fit_base, *group.fit)]
    if drops[0] > tau:
        return 0.0
    for (r0, d0), (r1, d1) in zip(zip(rates, drops), zip(rates[1:], drops[1:])):
        if d1 > tau:
            return round(r0 + (r1 - r0) * (tau - d0) / (d1 - d0), 4)
    return float(rates[-1])   # never beyond the largest probed rate


def rates_for(result: SensitivityResult, tau: float, protected: set[str] = frozenset()) -> dict:
    """Each group's largest rate whose fitted loss is at most ``tau`` (protected groups: 0)."""
    return {g.root: 0.0 if protected & set(g.layers) else rate_at_loss(result, g, tau) for g in result.groups}


def plan_for(result: SensitivityResult, group_rates: dict, base: PruningPlan) -> PruningPlan:
    """``base`` with the group rates written on every member layer (the window edits them per layer)."""
    layer_rates = {}
    for g in result.groups:
        rate = group_rates.get(g.root, 0.0)
        if rate > 0:
            layer_rates.update({name: rate for name in g.layers if name not in base.protected})
    plan = copy.deepcopy(base)
    plan.rate, plan.layer_rates, plan.global_ranking = 0.0, layer_rates, False
    return plan


class FigureMeter:
    """Target figures of a plan, before surgery where counts allow it and after it otherwise."""

    def __init__(self, model: nn.Module, input_size, targets: list[Target], latency: LatencySetting):
        self.model, self.input_size, self.targets, self.latency = model, tuple(input_size), targets, latency
        self.example = torch.randn(1, *self.input_size, generator=torch.Generator().manual_seed(0))
        self._memo: dict = {}
        self.original = self.figures(PruningPlan(rate=0.0))

    def figures(self, plan: PruningPlan) -> dict:
        key = tuple(sorted(plan.layer_rates.items()))
        if key not in self._memo:
            self._memo[key] = self._measure(plan)
        return self._memo[key]

    def _measure(self, plan: PruningPlan) -> dict:
        kinds = {t.kind for t in self.targets}
        out = {}
        if kinds & {"macs", "params"}:
            params, macs = estimate(self.model, plan, self.example)   # exact for per-layer rates
            out.update({"macs": float(macs), "params": float(params)})
        if kinds & {"size", "latency"}:
            pruned = self.model if not plan.layer_rates else run_to_end(prune(self.model, plan, self.example)).model
            for kind in kinds & {"size", "latency"}:
                out[kind] = measure_figure(kind, pruned, self.input_size, self.latency)
        return {k: out[k] for k in sorted(kinds)}

    def met(self, figures: dict, tolerance: float = 0.0, scale: Optional[dict] = None) -> bool:
        """All targets met; ``scale`` (kind -> factor) tightens a goal, as the search does after a miss."""
        scale = scale or {}
        return all(figures[t.kind] <= t.goal(self.original[t.kind]) * scale.get(t.kind, 1.0) * (1 + tolerance)
                   for t in self.targets)


def allocate(result: SensitivityResult, meter: FigureMeter, base: PruningPlan, scale: Optional[dict] = None,
             on_step: Optional[Callable[[int], None]] = None) -> tuple[Allocation, Allocation]:
    """The smallest threshold whose plan meets every target (goals times ``scale``), and the largest that does not.

    Returns ``(met, missed)``. Raises `StudioError` when the targets are already met
    without pruning, or cannot be met even at the largest probed rate in every group.
    """
    protected = set(base.protected)

    def with_rates(tau: float, rates: dict) -> Allocation:
        figures = meter.figures(plan_for(result, rates, base))
        drop = sum(result.drop(g, rates[g.root]) for g in result.groups)
        return Allocation(tau=tau, group_rates=rates, figures=figures, predicted_drop=drop)

    def at(tau: float) -> Allocation:
        return with_rates(tau, rates_for(result, tau, protected))

    if meter.met(meter.original):
        raise StudioError(f"The model already meets {', '.join(t.text for t in meter.targets)} without pruning "
                          f"({figures_text(meter, meter.original)}).",
                          "Give a stronger target, e.g. a larger ratio such as macs=2x.")
    high = at(1.0)
    if not meter.met(high.figures, scale=scale):
        raise StudioError(f"{', '.join(t.text for t in meter.targets)} cannot be reached: even the largest probed "
                          f"rate ({max(result.rates):.0%}) in every group gives {figures_text(meter, high.figures)}.",
                          "Lower the target, probe higher rates (sensitivity rates up to 0.95), or unprotect layers.")
    low = Allocation(tau=0.0, group_rates={g.root: 0.0 for g in result.groups}, figures=meter.original)
    for step in range(SEARCH_STEPS):
        mid = at((low.tau + high.tau) / 2)
        if meter.met(mid.figures, scale=scale):
            high = mid
        else:
            low = mid
        if on_step:
            on_step(step + 1)
    return _fewest_changes(result, high, low, with_rates, lambda a: meter.met(a.figures, scale=scale)), low


def _fewest_changes(result: SensitivityResult, high: Allocation, low: Allocation, with_rates, meets) -> Allocation:
    """Where several groups change rate at the same threshold (ties, flat curves), move only as many
    of them as the target needs, least sensitive first, and the last one only as far as needed, so
    the figure lands just under the goal instead of a whole group's step below it."""
    changed = [g for g in result.groups if high.group_rates[g.root] != low.group_rates[g.root]]
    changed.sort(key=lambda g: result.drop(g, high.group_rates[g.root]))
    rates = dict(low.group_rates)
    for g in changed:
        lo, hi = low.group_rates[g.root], high.group_rates[g.root]
        rates[g.root] = hi
        candidate = with_rates(high.tau, dict(rates))
        if not meets(candidate):
            continue
        for _ in range(8):   # the tipping group: the smallest rate that still meets the target
            mid = round((lo + hi) / 2, 4)
            trial = with_rates(high.tau, {**rates, g.root: mid})
            if meets(trial):
                hi, candidate = mid, trial
            else:
                lo = mid
        return candidate
    return high


def figures_text(meter: FigureMeter, figures: dict) -> str:
    """The figures of a plan against the original, for messages and logs."""
    parts = []
    for t in meter.targets:
        original, figure = meter.original[t.kind], figures[t.kind]
        parts.append(f"{t.describe(figure)} ({original / max(figure, 1e-12):.2f}× fewer than {t.describe(original)})")
    return ", ".join(parts)
