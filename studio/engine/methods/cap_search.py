"""Compress to a target by compensation-aware pruning: CaP's binary structural search, as we read it.

Xie et al. ("Pruning with Compensation: Efficient Channel Pruning for Deep Convolutional
Neural Networks", arXiv:2108.13728, 2021) name three parts; only the abstract is in our
sources, so this is our reading:

1. pruning compensation: after channels go, the layers that read them are refit by least
   squares (`studio.engine.methods.reconstruct`), in place of retraining;
2. compensation-aware pruning: channels go in the order that leaves the least error after
   that refit (the ``cap`` criterion, `studio.engine.pruning.fit_criteria`);
3. binary structural search with a step constraint: per-layer rates from a binary search on
   one threshold τ of that error. Each group's curve (error left after compensation against
   rate) is read on a grid of rates one ``step`` apart (0.05); every group is pruned as far
   as its curve stays under τ, and τ is bisected until the targets are met. No accuracy
   probes are needed: a group's whole curve comes from one pass over the calibration images,
   so the search costs seconds where the accuracy-probed sensitivity analysis costs minutes.

Everything else is the ``allocate`` search (`studio.engine.methods.search`): trials prune for
real, refit (here) and fine-tune for the trial budget, verify the targets and the accuracy
floor, and are recorded for resume. The winner's recipe carries a ``reconstruct`` section
(method ``cap``), so `studio run` repeats exactly the verified chain.
"""
from __future__ import annotations

import copy
import time
from dataclasses import replace
from typing import Generator

import torch
from torch import nn

from studio.engine.errors import StudioError
from studio.engine.events import Log, Phase, Progress
from studio.engine.methods.base import MethodInput, MethodResult, Option, get_method, register
from studio.engine.methods.search import TargetSearch
from studio.engine.methods.sensitivity import GroupCurve, SensitivityResult, _fit, calibration_split
from studio.engine.pruning import PruningPlan
from studio.engine.pruning.fit_criteria import CompensationImportance
from studio.engine.pruning.groups import group_members, prunable_groups
from studio.engine.pruning.plan import kept_channels
from studio.engine.training import TrainConfig

STEP = 0.05
CAP_RATES = tuple(round(STEP * i, 2) for i in range(1, 19))      # 0.05 … 0.90
REFIT_BATCHES = 8


def compensated_curves(model: nn.Module, input_size, batches: list, round_to, token
                       ) -> Generator[object, None, SensitivityResult]:
    """Per group, the normalised output error left after compensation at each rate of the step grid.

    Stored as a `SensitivityResult` whose "top-1" is 1 − error (base 1.0), so the allocation
    reads it as it reads accuracy curves: τ is then a bound on each group's compensated error.
    """
    started = time.perf_counter()
    work = copy.deepcopy(model).cpu().eval()
    dg, groups = prunable_groups(work, torch.randn(1, *input_size))
    if not groups:
        raise StudioError("The model has no prunable groups.", "Check `studio inspect` for the reasons.")
    importance = CompensationImportance()
    importance.collect(work, batches)
    names = {m: n for n, m in work.named_modules()}
    curves = []
    for k, group in enumerate(groups):
        token.check("compensated curves")
        root, layers = group_members(dg, group, names)
        channels = len(group[0].idxs)
        errors = torch.sort(importance(group).double()).values.tolist()   # cumulative, in removal order
        kept = [max(1, kept_channels(channels, r, round_to)) for r in CAP_RATES]
        lost = [errors[channels - keep - 1] if keep < channels else 0.0 for keep in kept]
        top1 = [max(0.0, 1.0 - e) for e in lost]
        fit_base, fit = _fit(list(CAP_RATES), top1, 1.0)
        curves.append(GroupCurve(root=root, layers=layers, channels=channels, kept=kept, top1=top1, loss=lost,
                                 fit=fit, fit_base=fit_base, probed_by="compensated error"))
        yield Progress("sensitivity", k + 1, len(groups), f"{root}: compensated error at 50 %: "
                       f"{lost[CAP_RATES.index(0.5)]:.3f}")
    for note in importance.notes:
        yield Log(f"CaP: {note}", "warning")
    seconds = round(time.perf_counter() - started, 3)
    yield Log(f"Compensated-error curves: {len(groups)} groups on {sum(len(y) for _, y in batches)} images in "
              f"{seconds:.1f} s.")
    return SensitivityResult(criterion="cap", rates=list(CAP_RATES), images=sum(len(y) for _, y in batches),
                             base_top1=1.0, base_loss=0.0, groups=curves, seconds=seconds, probes=len(groups))


@register
class CompensationSearch(TargetSearch):
    """Per-layer rates for targets from compensated-error curves; each trial refits before fine-tuning."""
    name = "cap"
    title = "Compress to a target (compensation-aware, CaP)"
    paper = "Xie et al., \"Pruning with Compensation\", arXiv:2108.13728, 2021 (our reading)"
    options = tuple(o for o in TargetSearch.options if o.name != "rates") + (
        Option("refit_batches", "int", REFIT_BATCHES, "calibration batches for each trial's least-squares refit",
               minimum=1),
    )

    def run(self, inputs: MethodInput, options: dict) -> Generator[object, None, MethodResult]:
        plan = copy.deepcopy(inputs.plan or PruningPlan())
        plan.criterion = "cap"        # channels by compensated error, in the curves and in every trial
        result = yield from super().run(replace(inputs, plan=plan), options)
        result.summary["reconstruct"] = {"method": "cap", "batches": options["refit_batches"], "ridge": 1e-3}
        return result

    def _curves(self, inputs: MethodInput, options: dict) -> Generator[object, None, SensitivityResult]:
        data = inputs.data
        source = data.train if data.train is not None and len(data.train) else data.val
        yield Phase("sensitivity", "Compensated-error curves for every group (no accuracy probes)")
        batches = calibration_split(source, options["images"], 125, inputs.seed)
        base = inputs.plan or PruningPlan()
        return (yield from compensated_curves(inputs.model, inputs.input_size, batches, base.round_to,
                                              inputs.token))

    def recover(self, inputs: MethodInput, options: dict):
        method = get_method("reconstruct")
        settings = method.resolve_options({"method": "cap", "batches": options["refit_batches"]})
        batch = (inputs.finetune or TrainConfig()).batch_size

        def refit(model, pruned, _calibration) -> Generator[object, None, nn.Module]:
            found = yield from method.run(MethodInput(
                model=model, input_size=inputs.input_size, data=inputs.data, plan=inputs.plan, token=inputs.token,
                seed=inputs.seed, finetune=TrainConfig(batch_size=batch), reference=inputs.model,
                history=pruned.history), settings)
            return found.model
        return refit
