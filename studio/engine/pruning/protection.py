"""When part of a model cannot be pruned safely: find the groups at fault, leave them unpruned, prune the rest.

`prune_with_protection` first leaves unpruned the groups whose layers feed a hazard (a
pattern torch-pruning mishandles, `studio.engine.graph.hazards`), then runs `prune` and the
caller's check (the pruned model must run and keep its output shape). When torch-pruning
still raises while scoring or pruning, or the check
fails, the groups at fault are found by bisection: the prunable groups are split in halves,
each half is pruned alone with every other group protected, and a half that fails is split
again, down to single groups. Those groups are protected (with the first error as the
reason) and the rest is pruned. Errors in the user's input (a plan naming no such layer)
and a model that cannot be traced at all are not bisected: they are said once, as before.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Generator, Optional, Sequence

import torch
from torch import nn

from studio.engine.errors import JobCancelled, StudioError
from studio.engine.events import Log, run_to_end
from studio.engine.graph import model_hazards
from studio.engine.graph.shadows import Shadows, example_input
from studio.engine.pruning.coupled import tied_whole
from studio.engine.pruning.groups import group_members, prunable_groups
from studio.engine.pruning.plan import PruningPlan
from studio.engine.pruning.surgery import prune

MAX_ROUNDS = 4


@dataclass
class ProtectedGroup:
    """A group left unpruned: a hazard feeds on it, or pruning it broke the model (``why`` says which)."""
    root: str
    layers: list
    why: str


class RunsAsBefore:
    """The check a pruned model must pass: it runs on the example and keeps the original's output shape."""

    def __init__(self, original: nn.Module, example: torch.Tensor, hints: Sequence[str] = ()):
        self.example, self.hints = example.cpu(), hints
        was_training = original.training
        with torch.inference_mode():
            self.shape = tuple(original.eval()(self.example).shape)
        original.train(was_training)

    def __call__(self, model: nn.Module) -> None:
        """Raise a plain-words `StudioError` when ``model`` fails the check."""
        try:
            with torch.inference_mode():
                out = model.cpu().eval()(self.example)
        except Exception as exc:  # any failure here means surgery broke the model
            hint = (" The model uses operations that dependency tracing handles badly: " + "; ".join(self.hints)
                    if self.hints else "")
            raise StudioError(f"The pruned model no longer runs ({type(exc).__name__}: {exc}).{hint}",
                              "Protect the layers named above, or use a lower rate for them.") from exc
        if tuple(out.shape) != self.shape:
            raise StudioError(f"Pruning changed the model's output shape from {self.shape} to {tuple(out.shape)}.",
                              "Protect the classifier and the layers that feed it.")


def plan_groups(model: nn.Module, example: torch.Tensor, plan: PruningPlan) -> list[tuple[str, list]]:
    """(root, member layers) of every group the plan could prune (head and protected layers excluded)."""
    return plan_groups_and_ties(model, example, plan)[0]


def plan_groups_and_ties(model: nn.Module, example: torch.Tensor, plan: PruningPlan) -> tuple[list, list]:
    """`plan_groups`, and a `Hazard` for each group whose channels are all tied together (`coupled.tied_whole`).

    Traced on a shape-only (meta) copy where the model allows, so listing the groups of a
    600 M-parameter model costs no copy of its weights and no activations.
    """
    shadows = Shadows(model, tuple(example.shape[1:]))

    def listing(meta: bool) -> tuple[list, list]:
        work = shadows.get(meta)
        names = {m: n for n, m in work.named_modules()}
        x = example_input(work, tuple(example.shape[1:]), meta)
        dg, groups = prunable_groups(work, x, plan.protected, plain_errors=meta)
        groups = [g for g in groups if g[0].dep.target.module in names]
        return [group_members(dg, g, names) for g in groups], tied_whole(dg, groups, names)
    # Not `Shadows.run`: under its memo of meta ops torch-pruning found no groups in SqueezeNet.
    try:
        return listing(True)
    except StudioError:
        raise
    except Exception:  # noqa: BLE001 - meta tensors cannot answer data-dependent questions: trace real weights
        return listing(False)


def with_protected(plan: PruningPlan, layers) -> PruningPlan:
    out = copy.deepcopy(plan)
    out.protected = sorted({*plan.protected, *layers})
    out.layer_rates = {k: v for k, v in plan.layer_rates.items() if k not in set(layers)}
    return out


def prune_with_protection(model: nn.Module, plan: PruningPlan, example: torch.Tensor, *, check: Callable,
                          hazards: Sequence = (), groups: Optional[list] = None, calibration=None,
                          token=None) -> Generator[object, None, tuple]:
    """`prune`, protecting the groups that break the model; returns (PruneResult, [ProtectedGroup]).

    ``hazards`` (`studio.engine.graph.Hazard`) protect the groups they touch before surgery
    (``groups``: the plan's groups, when the caller listed them already, see `plan_groups`);
    a failure during or after surgery protects the groups found at fault by bisection.
    """
    plan.validate(model)
    protected = hazard_groups(model, example, plan, hazards, groups)
    plan = yield from protect(plan, protected)
    try:
        result = yield from prune(model, plan, example, calibration=calibration, token=token)
    except StudioError:
        raise            # the user's input, or a model that cannot be traced at all: said once, not bisected
    except Exception as exc:   # torch-pruning failing inside a group
        first = exc
    else:
        try:
            check(result.model)
            return result, protected
        except StudioError as exc:   # the pruned model no longer runs, or changed its output shape
            first = exc
    why = _reason(first)
    yield Log(f"Pruning broke the model ({why}); finding the groups at fault.", "warning")
    found = _bisect(model, plan, example, check, calibration, token, why)
    plan = yield from protect(plan, found)
    result = yield from prune(model, plan, example, calibration=calibration, token=token)
    check(result.model)
    return result, protected + found


def hazard_groups(model: nn.Module, example: torch.Tensor, plan: PruningPlan, hazards: Sequence,
                  groups: Optional[list] = None) -> list:
    """The groups whose layers feed a hazard (a pattern torch-pruning mishandles), before any surgery.

    ``groups`` are the plan's groups when the caller has them (`plan_groups`), to trace once.
    """
    at_risk = [h for h in hazards if h.layers]
    if not at_risk:
        return []
    found = []
    for root, layers in groups if groups is not None else plan_groups(model, example, plan):
        why = next((h for h in at_risk if set(h.layers) & set(layers)), None)
        if why is not None:
            found.append(ProtectedGroup(root, layers, _first_sentence(why.text)))
    return found


def without_hazards(model: nn.Module, plan: PruningPlan, input_size) -> tuple[PruningPlan, list]:
    """``plan`` with the groups that feed a hazard protected, and those groups: what a search starts from.

    A strict plan refuses here, before any trial, naming the groups.
    """
    example = torch.zeros(1, *input_size)
    groups, ties = plan_groups_and_ties(model, example, plan)
    found = hazard_groups(model, example, plan, [*model_hazards(model, tuple(input_size)), *ties], groups)
    return run_to_end(protect(plan, found)), found


def protect(plan: PruningPlan, protected: list) -> Generator[object, None, PruningPlan]:
    """The plan with ``protected`` left unpruned, each said in the log; a strict plan refuses instead."""
    if not protected:
        return plan
    if plan.strict:
        names = "; ".join(f"the group of {p.root} ({', '.join(p.layers)}): {p.why}" for p in protected)
        raise StudioError(f"Strict plan: these groups cannot be pruned safely, and strict mode does not leave "
                          f"groups unpruned on its own: {names}.", "Protect those layers in the plan, or run "
                          "without --strict to prune the rest and leave them whole.")
    for p in protected:
        yield Log(f"Left unpruned: the group of {p.root} ({len(p.layers)} layer(s)). {p.why}", "warning")
    return with_protected(plan, [layer for p in protected for layer in p.layers])


def _bisect(model, plan, example, check, calibration, token, why: str) -> list:
    """The groups whose pruning breaks the model, found by halving the prunable groups."""
    groups = plan_groups(model, example, plan)

    def fails(subset: list) -> bool:
        """Whether pruning only ``subset`` (every other group protected) breaks the model."""
        others = [layer for g in groups if g not in subset for layer in g[1]]
        try:
            pruned = run_to_end(prune(model, with_protected(plan, others), example, calibration=calibration,
                                      token=token))
            check(pruned.model)
            return False
        except JobCancelled:
            raise
        except Exception:
            return True

    def at_fault(candidates: list) -> list:
        if len(candidates) <= 1:
            return candidates
        half = len(candidates) // 2
        found = [g for part in (candidates[:half], candidates[half:]) if fails(part) for g in at_fault(part)]
        return found or candidates   # only the halves together fail: protect them all

    protected: list[ProtectedGroup] = []
    remaining = list(groups)
    for _ in range(MAX_ROUNDS):
        bad = at_fault(remaining) if fails(remaining) else []
        if not bad:
            break
        protected += [ProtectedGroup(root, layers, f"Pruning it broke the model ({why}).") for root, layers in bad]
        remaining = [g for g in remaining if g not in bad]
    return protected


def _first_sentence(text: str) -> str:
    """The hazard's finding without its advice: 'torch.stack after 'a': ... would break the model.'"""
    head = text.split(". ")[0].rstrip(".")
    return head + "." if head else text

def _reason(exc: BaseException) -> str:
    text = exc.problem if isinstance(exc, StudioError) else f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 200 else text[:197] + "..."


def protected_layers(protected: list) -> list[str]:
    return [layer for p in protected for layer in p.layers]


def explicit_requests(plan: PruningPlan, protected: list) -> list[str]:
    """Layers the user named in the plan that had to be protected (a warning, or an error when strict)."""
    named = set(plan.layer_rates)
    return [layer for layer in protected_layers(protected) if layer in named]


def as_dicts(protected: list) -> list[dict]:
    return [{"root": p.root, "layers": list(p.layers), "why": p.why} for p in protected]
