"""Tracing hazards: model patterns torch-pruning would mishandle, explained in plain words."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn as nn

from studio.engine.graph.attention import projection_names
from studio.engine.graph.probe import (
    AutogradView,
    LayerCall,
    NoGradForward,
    Opaque,
    Probe,
    fn_kind,
    fn_shape,
    is_custom_fn,
    tp_handles,
)
from studio.engine.graph.shadows import Shadows, check_input_size, example_input


def _places(view: "AutogradView", fns: list, limit: int = 3) -> str:
    """'after 'a', 'b' and 5 more places' for a message about several autograd nodes."""
    spots: list[str] = []
    for f in fns:
        # One place may have two feeding layers; in a list of places the first one is enough.
        spot = " and ".join(f"'{n}'" for n in view.near(f, limit=1 if len(fns) > 1 else 2))
        if spot not in spots:
            spots.append(spot)
    text = "after " + ", ".join(spots[:limit])
    return text + (f" and {len(spots) - limit} more places" if len(spots) > limit else "")


# Layers whose subclasses (timm's Linear, a library's own Conv2d) torch-pruning prunes as the base class.
_PRUNABLE_BASES = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _builtin(call: Optional[LayerCall]) -> bool:
    """Whether the ops inside this layer call are torch.nn's own business (not torch-pruning's to interpret)."""
    return call is not None and (type(call.module).__module__.startswith(("torch.nn", "torch.ao.nn"))
                                 or isinstance(call.module, _PRUNABLE_BASES))


@dataclass
class Hazard:
    """A pattern torch-pruning would mishandle: what to tell the user, and the layers it puts at risk.

    ``layers`` are the conv/Linear layers whose output channels flow into the pattern; leaving
    their groups unpruned keeps the model correct (`studio.engine.pruning.protection`).
    """
    text: str
    layers: list = field(default_factory=list)


def find_hazards(probe: Probe, handled: frozenset = frozenset()) -> list[Hazard]:
    """The patterns in the probed model that torch-pruning would mishandle, with the layers at risk.

    A pattern fed only by ``handled`` layers (attention projections, pruned in whole heads) is
    not one.
    """
    if not probe.has_grad:
        return [Hazard("The forward pass runs under torch.no_grad() (or detaches its output), so "
                       "torch-pruning cannot see how the layers connect and would prune channels "
                       "without fixing the layers that use them. Remove torch.no_grad() / .detach() "
                       "from the model's forward.", [c.qualname for c in probe.calls if _weighted(c)])]
    found: list[Hazard] = []
    no_grad = [c.qualname for c in probe.calls if not c.grad_enabled and _weighted(c)]
    if no_grad:
        found.append(Hazard(f"Layers {_names(no_grad)} run under torch.no_grad() inside forward, so "
                            "torch-pruning cannot see them; pruning their neighbours would leave them "
                            "with the wrong channel count. Remove torch.no_grad() from forward.", no_grad))
    view = probe.walk()
    scripted = [c for c in probe.calls if isinstance(c.module, Opaque) and c.first_call]
    if scripted:
        feeding = [f for c in scripted for f, _ in c.in_refs if f != "input"]
        found.append(Hazard(f"TorchScript submodules {_names([c.qualname for c in scripted])}: the studio cannot "
                            "look inside a scripted module, so it keeps it whole and leaves the layers that feed "
                            "it unpruned. Use the eager (unscripted) module to prune around it.",
                            list(dict.fromkeys(n for f in feeding for n in view.producers(f)))))
    for (problem, op), fns in sorted(_sites(view).items(), key=lambda kv: kv[1][0]._sequence_nr()):
        fns = sorted(fns, key=lambda f: f._sequence_nr())
        if problem == "slice":   # dim 1 is the channel axis only when the layers before it make that many
            fns = [f for f in fns if _slices_produced_channels(view, f)]
            if not fns:
                continue
        layers = list(dict.fromkeys(name for f in fns for name in view.producers(f)))
        if layers and set(layers) <= handled:
            continue
        found.append(Hazard(_explain(problem, op, _places(view, fns)), layers))
    return found


def _weighted(call: LayerCall) -> bool:
    return isinstance(call.module, (nn.modules.conv._ConvNd, nn.Linear))


def _sites(view: AutogradView) -> dict[tuple[str, str], list]:
    """(problem, op) -> the autograd nodes where it happens, outside torch.nn's own layers."""
    seen: dict[tuple[str, str], list] = {}
    for f in view.nodes:
        # Ops inside torch.nn layers are the layer's business; ops anywhere else (including
        # inside custom leaf modules) are what torch-pruning has to interpret.
        if not view.data.get(f, False) or type(f).__name__ == "AccumulateGrad" \
                or _builtin(view.owner.get(f)) or _builtin(view.internal.get(f)):
            continue
        kind = fn_kind(f)
        if kind == "stack":
            seen.setdefault(("stack", kind), []).append(f)
        elif kind in ("pixel_shuffle", "pixel_unshuffle"):
            # Channel shuffles, native or written as view → transpose → view, are mapped
            # exactly (graph.tp_mappings); moving channels into space is not.
            seen.setdefault(("shuffle", kind), []).append(f)
        elif is_custom_fn(f):
            seen.setdefault(("custom", re.sub(r"Backward$", "", type(f).__name__)), []).append(f)
        elif _slices_channels(f):
            seen.setdefault(("slice", kind), []).append(f)
        elif kind not in ("transpose", "permute") and not tp_handles(kind) and _changes_channels(f):
            seen.setdefault(("channels", kind), []).append(f)
    return seen


def _explain(problem: str, op: str, where: str) -> str:
    if problem == "stack":
        return (f"torch.stack {where}: torch-pruning treats it as an element-wise op "
                "and cannot follow channels through it, so pruning would break the "
                "model. Use torch.cat, or keep the stacked layers out of pruning.")
    if problem == "shuffle":
        return (f"Pixel shuffle ({op}) {where}: it moves channels into the image's height and width "
                "(or back), which torch-pruning does not track, so pruned channels would be mixed "
                "up. Keep the layers around it out of pruning.")
    if problem == "custom":
        return (f"Custom autograd function {op} {where}: torch-pruning assumes it keeps "
                "every channel separate (element-wise); if it mixes or changes channels, "
                "pruning will break the model. Keep the layers around it out of pruning "
                "unless you know it is element-wise.")
    if problem == "slice":
        return (f"Channels sliced at fixed indices (x[:, a:b]) {where}: the indices are written in the "
                "code, so after pruning they would pick other channels or run past the end. Keep the "
                "layers before the slice out of pruning.")
    if op in ("addmm", "mm", "bmm", "matmul", "linear"):
        return (f"Matrix product '{op}' {where}: a layer's weights used outside the layer (F.linear or "
                "torch.matmul, as torchvision's Swin attention does), so torch-pruning cannot see which "
                "layer it belongs to and treats it as element-wise. Left whole, with the layers around it.")
    return (f"Operation '{op}' {where} changes the number of channels but is not a "
            "convolution, linear layer or concatenation; torch-pruning treats it as "
            "element-wise and would prune the wrong channels. Keep the layers around "
            "it out of pruning.")


def _slices_produced_channels(view: AutogradView, f: Any) -> bool:
    """Whether the sliced axis has the width of a layer that feeds it (not the height of a channels-last map)."""
    width = tuple(f._saved_self_sym_sizes)[1]
    modules = {c.qualname: c.module for c in view.probe.calls}
    return any(getattr(modules.get(name), attr, None) == width for name in view.producers(f)
               for attr in ("out_channels", "out_features"))


def _slices_channels(f: Any) -> bool:
    """A slice of part of the channel axis of an image (N,C,H,W) or feature (N,C) tensor."""
    if type(f).__name__ != "SliceBackward0" or getattr(f, "_saved_dim", None) != 1:
        return False
    sizes = tuple(getattr(f, "_saved_self_sym_sizes", ()))
    if len(sizes) not in (2, 4):
        return False
    start, end = getattr(f, "_saved_start", 0) or 0, getattr(f, "_saved_end", None)
    whole = start == 0 and (end is None or end >= sizes[1]) and getattr(f, "_saved_step", 1) == 1
    return not whole


def _names(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _changes_channels(f: Any) -> bool:
    """True when autograd node ``f`` outputs a different channel count than a same-rank input."""
    out = fn_shape(f, 0)
    if not out:
        return False
    for nf, nr in f.next_functions:
        if nf is None:
            continue
        s = fn_shape(nf, nr)
        if s is not None and len(s) == len(out) and s[0] != out[0] and s[0] != 1:
            return True
    return False


def run_probe(shadows: Shadows) -> Probe:
    def run(shadow: nn.Module, meta: bool) -> Probe:
        p = Probe()
        with torch.enable_grad():
            try:
                p.forward(shadow, example_input(shadow, shadows.input_size, meta, requires_grad=True))
            except NoGradForward:
                pass  # reported by find_hazards
        return p
    return shadows.run(run)


def model_hazards(model: nn.Module, input_size: tuple[int, ...]) -> list[Hazard]:
    """The hazards of ``model`` with the layers each puts at risk (what protection leaves unpruned)."""
    return find_hazards(run_probe(Shadows(model, check_input_size(input_size))), frozenset(projection_names(model)))


def find_tracing_hazards(model: nn.Module, input_size: tuple[int, ...]) -> list[str]:
    """Patterns in ``model`` that torch-pruning would mishandle, each explained in plain words.

    Looks for a forward that runs under ``torch.no_grad()``, ``torch.stack``,
    pixel shuffles, custom autograd functions and other ops that change the channel count while
    torch-pruning treats them as element-wise.
    """
    return [h.text for h in model_hazards(model, input_size)]
