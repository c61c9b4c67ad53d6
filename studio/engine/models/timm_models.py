"""timm models by name (``timm:NAME``): the zoo most users keep their CNNs in.

Pretrained weights are used only when they are already in the local Hugging Face cache, as
torchvision weights are only read from the torch hub cache: the studio never downloads
silently, and offline it says which file to copy where. Without them the model starts from
random initialisation and is marked untrained.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from torch import nn

from studio.engine.errors import StudioError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _timm():
    try:
        import timm
    except ImportError as exc:   # a dependency; missing only in a broken install
        raise StudioError("timm models need the timm package, which is not installed.",
                          "Install it with `pip install timm` (it is in the project's dependencies).") from exc
    return timm


def list_timm_models() -> list[str]:
    """Names accepted after ``timm:`` (timm's architecture names, without weight tags)."""
    return _timm().list_models()


def check_timm_name(name: str) -> None:
    """A `StudioError` with close matches when timm has no architecture ``name``."""
    import difflib
    timm = _timm()
    base = name.split(".")[0]
    if timm.is_model(base):
        return
    close = difflib.get_close_matches(base, timm.list_models(), n=3, cutoff=0.5)
    raise StudioError(f"Unknown timm model '{name}'.",
                      (f"Did you mean timm:{close[0]}? " if close else "")
                      + f"timm has {len(timm.list_models())} architectures; Open Model lists them with a search box.")


def _pretrained_cfg(name: str):
    return _timm().models.get_pretrained_cfg(name.split(".")[0])


def timm_input(name: str) -> tuple[int, int, int]:
    """The input the architecture's default weights were trained at (3×224×224 when timm does not say)."""
    cfg = _pretrained_cfg(name)
    size = tuple(getattr(cfg, "input_size", None) or (3, 224, 224))
    return (int(size[0]), int(size[1]), int(size[2]))


def cached_weights(name: str) -> tuple[Optional[Path], str]:
    """(the weight file in the local Hugging Face cache or None, the hub repository it comes from)."""
    cfg = _pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) or ""
    if not repo:
        return None, ""
    from huggingface_hub import try_to_load_from_cache
    for filename in WEIGHT_FILES:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found), repo
    return None, repo


def build_timm(name: str, num_classes: int) -> nn.Module:
    """``timm:NAME`` with random initialisation and ``num_classes`` outputs."""
    check_timm_name(name)
    return _timm().create_model(name.split(".")[0], pretrained=False, num_classes=num_classes)


def load_timm(name: str, num_classes: Optional[int], pretrained: bool) -> tuple[nn.Module, int, bool, str]:
    """(module, classes, trained, note) for ``timm:NAME``; weights from the local cache only."""
    check_timm_name(name)
    timm = _timm()
    cfg = _pretrained_cfg(name)
    classes = int(getattr(cfg, "num_classes", 0) or 1000)
    if not pretrained:
        n = num_classes or classes
        return build_timm(name, n), n, False, "random init (untrained), pretrained weights not requested"
    file, repo = cached_weights(name)
    if file is None:
        n = num_classes or classes
        where = (f"the Hugging Face cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')}) has no weights "
                 f"from {repo}" if repo else "timm publishes no weights for it")
        return build_timm(name, n), n, False, (
            f"random init (untrained): {where}; on a machine with internet run timm.create_model("
            f"'{name}', pretrained=True) and copy its Hugging Face cache here")
    try:
        # The cached file is read through timm's own loader (its key filters), with no network.
        module = timm.create_model(name.split(".")[0], pretrained=True, pretrained_cfg_overlay={"file": str(file)})
    except Exception as exc:   # damaged or foreign files fail in several ways
        raise StudioError(f"The cached timm weights {file} are damaged or are not {name}'s ({type(exc).__name__}: "
                          f"{exc}).", "Delete the file from the Hugging Face cache and fetch it again.") from exc
    if num_classes is not None and num_classes != classes:
        module.reset_classifier(num_classes)
        return module, num_classes, False, (f"pretrained weights from the local cache with a new {num_classes}-class "
                                            "head (the head is untrained: fine-tune before judging accuracy)")
    return module, classes, True, f"pretrained weights from the local cache ({repo})"
