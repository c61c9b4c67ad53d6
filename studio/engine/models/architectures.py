"""Architectures by name: ``cifar:NAME`` from our CIFAR zoo, ``torchvision:NAME`` and ``timm:NAME``.

`build_architecture` makes a randomly initialised model with a given number of classes;
the loader and the checkpoint rebuild both use it.
"""
from __future__ import annotations

import difflib

import torch.nn as nn

from studio.engine.errors import StudioError
from studio.engine.models.cifar import CIFAR_MODELS

CIFAR_INPUT = (3, 32, 32)


def list_cifar_models() -> list[str]:
    """Names accepted after ``cifar:``."""
    return list(CIFAR_MODELS)


def list_torchvision_models() -> list[str]:
    """Names accepted after ``torchvision:`` (classification models only)."""
    import torchvision
    return sorted(torchvision.models.list_models(module=torchvision.models))


def unknown_name(kind: str, name: str, valid: list[str], show_all: bool) -> StudioError:
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f"Did you mean {kind}:{close[0]}? " if close else ""
    if show_all:
        listing = "Valid names: " + ", ".join(valid) + "."
    else:
        listing = (f"Valid names are torchvision classification models ({len(valid)} in all), "
                   f"e.g. {', '.join(close or ['resnet18', 'resnet50', 'mobilenet_v3_large', 'efficientnet_b0'])}.")
    return StudioError(f"Unknown {kind} model '{name}'.", hint + listing)


def split_arch(arch: str) -> tuple[str, str]:
    """'cifar:resnet20' → ('cifar', 'resnet20'); anything else is an error with a suggestion."""
    prefix, sep, name = arch.strip().partition(":")
    if sep and prefix in ("cifar", "torchvision", "timm") and name:
        return prefix, name
    bare = arch.strip()
    guess = ""
    if bare in CIFAR_MODELS:
        guess = f"Did you mean cifar:{bare}? "
    elif bare in list_torchvision_models():
        guess = f"Did you mean torchvision:{bare}? "
    raise StudioError(f"'{arch}' is not an architecture spec.",
                      guess + "Write cifar:NAME, torchvision:NAME or timm:NAME, e.g. cifar:resnet20.")


def default_input(arch: str) -> tuple[int, int, int]:
    """The input an architecture was designed for: 3x32x32 for CIFAR, the weights' crop for torchvision."""
    prefix, name = split_arch(arch)
    if prefix == "cifar":
        return CIFAR_INPUT
    if prefix == "timm":
        from studio.engine.models.timm_models import timm_input
        return timm_input(name)
    import torchvision
    try:
        crop = torchvision.models.get_model_weights(name).DEFAULT.transforms().crop_size
    except (ValueError, KeyError, AttributeError):  # a model without published weights
        crop = [224]
    return (3, int(crop[0]), int(crop[0]))


def build_architecture(arch: str, num_classes: int) -> nn.Module:
    """Build ``cifar:NAME``, ``torchvision:NAME`` or ``timm:NAME`` with random init and ``num_classes`` outputs."""
    prefix, name = split_arch(arch)
    if prefix == "cifar":
        if name not in CIFAR_MODELS:
            raise unknown_name("cifar", name, list_cifar_models(), show_all=True)
        return CIFAR_MODELS[name][0](num_classes)
    if prefix == "timm":
        from studio.engine.models.timm_models import build_timm
        return build_timm(name, num_classes)
    import torchvision
    valid = list_torchvision_models()
    if name not in valid:
        raise unknown_name("torchvision", name, valid, show_all=False)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
