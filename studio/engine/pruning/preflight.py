"""What a plan will really do, said before any slow step: the pre-flight report and the honest prediction.

`preflight` is what `studio inspect`, the window's header and its inspector show when a model
opens: how many groups can be pruned, which are blocked and why (the hazards'
groups, which protection will leave whole), and the MACs range a plan can reach.
`predict` is the live prediction of the strategy panel: the figures the plan gives with the
blocked groups counted as kept, and whether the pruned model would still run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from studio.engine.errors import StudioError
from studio.engine.graph import model_hazards
from studio.engine.pruning.plan import PruningPlan
from studio.engine.pruning.protection import (RunsAsBefore, hazard_groups, plan_groups_and_ties, protected_layers,
                                               with_protected)
from studio.engine.pruning.surgery import estimate_model, reachable_macs


@dataclass
class Preflight:
    """How far a model can be pruned, before any plan."""
    groups: int                                   # prunable groups (head excluded), blocked ones included
    blocked: list = field(default_factory=list)   # ProtectedGroup: left whole, with why
    macs_range: tuple = (0, 0)                    # (smallest, largest) MACs a plan can reach; (0, 0): unknown
    hazards: list = field(default_factory=list)   # Hazard: what `predict` needs again for every plan
    group_list: list = field(default_factory=list)  # (root, layers) of each group, for `predict` too


@dataclass
class Prediction:
    """The figures a plan gives, honestly: blocked groups kept, and whether the result would run."""
    params: int
    macs: int
    kept: list = field(default_factory=list)      # ProtectedGroup the plan's rates do not reach
    failure: str = ""                             # why the pruned model would not run ("" when it runs)


def preflight(model: nn.Module, input_size, max_rate: float = 0.9) -> Preflight:
    """Groups, blocked groups and reachable MACs of ``model`` (an unprunable model has none)."""
    example = torch.zeros(1, *input_size)
    plan = PruningPlan()
    groups, ties = plan_groups_and_ties(model, example, plan)
    hazards = [*model_hazards(model, tuple(input_size)), *ties]
    blocked = hazard_groups(model, example, plan, hazards, groups)
    return Preflight(len(groups), blocked, _reach(model, example, max_rate, protected_layers(blocked)), hazards,
                     groups)


def _reach(model: nn.Module, example: torch.Tensor, max_rate: float, protected: list) -> tuple:
    """`reachable_macs`, at a lower top rate for narrow layers that ``max_rate`` would empty."""
    for rate in (max_rate, 0.75, 0.5):
        try:
            return reachable_macs(model, example, rate, protected)
        except StudioError:
            continue       # a layer this rate would empty: try a lower one
        except Exception:  # noqa: BLE001 - torch-pruning failing on the model: protection finds the groups at run time
            break
    return (0, 0)


def predict(model: nn.Module, plan: PruningPlan, input_size, hazards: Optional[list] = None,
            groups: Optional[list] = None) -> Prediction:
    """What ``plan`` will give: the hazards' groups counted as kept, and a check that the result runs.

    ``hazards`` and ``groups`` (from `preflight`) save probing and tracing the model again on
    every plan change.
    """
    example = torch.zeros(1, *input_size)
    hazards = model_hazards(model, tuple(input_size)) if hazards is None else hazards
    kept = [k for k in hazard_groups(model, example, plan, hazards, groups) if k.root not in plan.protected]
    try:
        work, params, macs = estimate_model(model, with_protected(plan, protected_layers(kept)), example)
        RunsAsBefore(model, example)(work)
    except StudioError as exc:
        if "torch-pruning could not trace" in exc.problem or "no longer runs" in exc.problem:
            return Prediction(0, 0, kept, exc.problem)
        raise          # the plan itself is wrong (a rate that empties a layer): the caller says so
    except Exception as exc:  # noqa: BLE001 - torch-pruning failing inside a group
        return Prediction(0, 0, kept, f"{type(exc).__name__}: {exc}")
    return Prediction(params, macs, kept, "")
