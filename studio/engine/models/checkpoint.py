"""The studio's checkpoint format: weights plus the pruning history that shaped them.

`save_checkpoint` writes one atomically; `rebuild_from_checkpoint` builds the unpruned
architecture by name, replays the torch-pruning history and loads the weights. Export
and the model loader both use this module, so the format lives in one place.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import nn

from studio.engine.errors import StudioError
from studio.engine.files import atomic_write
from studio.engine.models.architectures import build_architecture

CHECKPOINT_FORMAT = "compression-studio/checkpoint"
CHECKPOINT_VERSION = 1

Builder = Callable[[str, int], nn.Module]


def _plain_history(history: Sequence) -> list:
    """The pruning history as lists of str/bool/int only, so ``torch.load(weights_only=True)`` accepts it."""
    plain = []
    for step in history or []:
        try:
            name, is_out, idxs = step
            # torch-pruning may hand back index wrappers (.idx) or tensors; keep the plain int.
            plain.append([str(name), bool(is_out), [int(getattr(i, "idx", i)) for i in idxs]])
        except (TypeError, ValueError) as exc:
            raise StudioError(f"The pruning history has an entry that is not (layer, bool, indices): {step!r}.",
                              "Pass the history from torch-pruning's pruner.pruning_history().") from exc
    return plain


def checkpoint_dict(model: nn.Module, *, arch: str, num_classes: int, input_size, pruning_history,
                     trained: bool, note: str) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": str(arch),
        "num_classes": int(num_classes),
        "input_size": [int(s) for s in input_size],
        "trained": bool(trained),
        "note": str(note),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "pruning_history": _plain_history(pruning_history),
    }


def save_checkpoint(path, model: nn.Module, *, arch: str, num_classes: int, input_size, pruning_history,
                    trained: bool = True, note: str = "") -> None:
    """Atomically write a weights-only checkpoint that `rebuild_from_checkpoint` turns back into the model."""
    if not arch:
        raise StudioError("A checkpoint needs the model's architecture name to be rebuilt, and this model has none.",
                          "Save the full model ('pt' format) instead.")
    ckpt = checkpoint_dict(model, arch=arch, num_classes=num_classes, input_size=input_size,
                            pruning_history=pruning_history, trained=trained, note=note)
    with atomic_write(path) as tmp:
        torch.save(ckpt, tmp)


def _build(arch: str, num_classes: int, builder: Optional[Builder] = None) -> nn.Module:
    """The unpruned architecture, from ``builder`` or by name."""
    return (builder or build_architecture)(arch, num_classes)


def rebuild_from_checkpoint(ckpt: dict, builder: Optional[Builder] = None) -> nn.Module:
    """Build the checkpoint's architecture, replay its pruning history, load its weights; eval mode.

    ``builder(arch, num_classes)`` defaults to `studio.engine.models.architectures.build_architecture`.
    """
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise StudioError("This file is not a Compression Studio checkpoint.",
                          "Load it as a plain model or state_dict file instead.")
    if int(ckpt.get("version", 0)) > CHECKPOINT_VERSION:
        raise StudioError(f"This checkpoint was written by a newer Compression Studio (version {ckpt['version']}).",
                          "Update Compression Studio to load it.")
    import torch_pruning as tp

    model = _build(ckpt["arch"], int(ckpt["num_classes"]), builder)
    # eval: tracing a batch of one through BatchNorm in training mode fails on 1x1 feature maps.
    model.eval()
    history = ckpt.get("pruning_history") or []
    if history:
        example = torch.randn(1, *ckpt["input_size"])
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
        try:
            dg.load_pruning_history(history)
        except (AttributeError, IndexError, KeyError) as exc:
            raise StudioError(f"The checkpoint's pruning history does not fit architecture {ckpt['arch']!r} ({exc}).",
                              "It was probably made with a different version of that architecture; "
                              "export the model again from the original run.") from exc
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        # torch's message starts with a generic header line; the first mismatch says what is wrong
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise StudioError(f"The checkpoint's weights do not fit the rebuilt {ckpt['arch']!r}: "
                          f"{lines[1] if len(lines) > 1 else lines[0] if lines else exc}",
                          "It was probably made with a different version of that architecture; "
                          "export the model again from the original run.") from exc
    return model.eval()
