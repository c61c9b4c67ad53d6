"""Targets in the user's terms: "2× fewer MACs", "≤ 20 M MACs", "≤ 3 ms at batch 1", "≤ 100 kB".

A `Target` is parsed from text such as ``macs=2x``, ``params=0.5M``, ``size=100kB`` or
``latency=3ms``: a kind, and either a reduction ratio (``2x``: the figure divided by 2)
or an absolute ceiling. `measure_figure` measures a model's figure for a kind: MACs and
parameters by count, size as the engine's compressed size on disk (so unstructured zeros
count), latency as the median of timed forward passes on the chosen device and batch size.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from torch import nn

from studio.engine.errors import StudioError
from studio.engine.metrics import compressed_size_bytes, count_macs, count_params, measure_latency
from studio.engine.training import select_device

TARGET_KINDS = ("macs", "params", "size", "latency")
# Absolute units per kind, as multipliers of the figure's base unit (MACs, parameters, bytes, ms).
_UNITS = {
    "macs": {"": 1, "k": 1e3, "m": 1e6, "g": 1e9},
    "params": {"": 1, "k": 1e3, "m": 1e6, "g": 1e9},
    "size": {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3},
    "latency": {"ms": 1, "s": 1e3, "us": 1e-3, "µs": 1e-3},
}
_EXAMPLES = "macs=2x, macs=20M, params=0.5M, size=100kB, size=min or latency=3ms"
_NUMBER = r"(?P<num>\d+(?:\.\d*)?|\.\d+)"


@dataclass(frozen=True)
class Target:
    """One goal: ``kind`` reduced ``ratio``-fold, or to at most ``value`` (base units)."""
    kind: str
    ratio: Optional[float] = None     # 2.0 for "2x": the figure must drop to 1/2 of the original
    value: Optional[float] = None     # absolute ceiling in MACs, parameters, bytes or milliseconds
    text: str = ""                    # what the user wrote, for messages and the report
    minimize: bool = False            # "size=min": as small as the accuracy floor allows

    @classmethod
    def parse(cls, text: str) -> "Target":
        """``kind=2x`` or ``kind=VALUE[unit]``; every mistake gets a message with examples."""
        if not isinstance(text, str) or "=" not in text:
            raise StudioError(f"The target {text!r} is not of the form kind=value.", f"Write for example {_EXAMPLES}.")
        kind, _, amount = (part.strip() for part in text.partition("="))
        kind = kind.lower()
        if kind not in TARGET_KINDS:
            raise StudioError(f"Unknown target kind '{kind}'.",
                              f"Use one of: {', '.join(TARGET_KINDS)} (for example {_EXAMPLES}).")
        if amount.lower() == "min":
            if kind != "size":
                raise StudioError(f"'{kind}=min' is not a target the studio can push to the floor.",
                                  "Use size=min (structured + unstructured pruning), or a ratio such as macs=2x.")
            return cls(kind, minimize=True, text="size=min")
        ratio = re.fullmatch(_NUMBER + r"\s*[x×]", amount, re.I)
        if ratio:
            r = float(ratio["num"])
            if r <= 1:
                raise StudioError(f"The target {text!r} asks for a reduction of {r:g}×, which removes nothing.",
                                  "Give a ratio above 1, e.g. 2x for half the original figure.")
            return cls(kind, ratio=r, text=f"{kind}={amount}")
        absolute = re.fullmatch(_NUMBER + r"\s*(?P<unit>[a-zµ]*)", amount, re.I)
        units = _UNITS[kind]
        if not absolute or absolute["unit"].lower() not in units:
            raise StudioError(f"The target {text!r} has an amount or unit this kind does not take.",
                              f"{kind} takes a ratio such as 2x, or a value with one of the units "
                              f"{', '.join(u or '(none)' for u in units)}.")
        value = float(absolute["num"]) * units[absolute["unit"].lower()]
        if value <= 0:
            raise StudioError(f"The target {text!r} is zero.", "Give a positive value.")
        return cls(kind, value=value, text=f"{kind}={amount}")

    def goal(self, original: float) -> float:
        """The ceiling in base units, given the original model's figure (a minimised target has none)."""
        if self.minimize:
            return float("inf")
        return original / self.ratio if self.ratio is not None else float(self.value)

    def met(self, figure: float, original: float, tolerance: float = 0.0) -> bool:
        """True when ``figure`` is at or below the goal, allowing ``tolerance`` (0.02: 2 %) above it."""
        return figure <= self.goal(original) * (1 + tolerance)

    def describe(self, figure: float) -> str:
        """A figure of this kind in readable units ('20.5 M MACs', '98.2 kB', '3.10 ms')."""
        if self.kind == "latency":
            return f"{figure:.2f} ms"
        if self.kind == "size":
            return f"{figure / 1e3:.1f} kB" if figure < 1e6 else f"{figure / 1e6:.2f} MB"
        unit = "MACs" if self.kind == "macs" else "params"
        for scale, letter in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
            if figure >= scale:
                return f"{figure / scale:.2f} {letter} {unit}"
        return f"{figure:.0f} {unit}"


def parse_targets(texts) -> list[Target]:
    """Targets from a list of texts (the CLI's repeated --target, a recipe list); refuses none and duplicates."""
    if isinstance(texts, str):
        texts = [texts]
    targets = [Target.parse(t) for t in texts or []]
    if not targets:
        raise StudioError("No target was given.", f"Give at least one, for example {_EXAMPLES}.")
    kinds = [t.kind for t in targets]
    repeated = sorted({k for k in kinds if kinds.count(k) > 1})
    if repeated:
        raise StudioError(f"The target kind '{repeated[0]}' is given more than once.",
                          "Give each kind once; all the targets must then be met together.")
    return targets


@dataclass(frozen=True)
class LatencySetting:
    """Where latency targets are measured."""
    device: str = "cpu"
    batch_size: int = 1
    runs: int = 20

    def check(self) -> None:
        """A latency target on a device that is not there is refused before any slow step."""
        select_device(self.device)
        if self.batch_size < 1 or self.runs < 1:
            raise StudioError("Latency needs a batch size and a run count of at least 1.", "Fix the settings.")


def measure_figure(kind: str, model: nn.Module, input_size, latency: LatencySetting = LatencySetting()) -> float:
    """The model's figure for ``kind``, in base units (MACs, parameters, bytes, milliseconds)."""
    if kind == "macs":
        return float(count_macs(model, input_size))
    if kind == "params":
        return float(count_params(model))
    if kind == "size":
        return float(compressed_size_bytes(model))
    if kind == "latency":
        return float(measure_latency(model, input_size, batch_size=latency.batch_size, device=latency.device,
                                     runs=latency.runs).median_ms)
    raise StudioError(f"Unknown target kind '{kind}'.", f"Use one of: {', '.join(TARGET_KINDS)}.")


def family_targets(texts) -> Optional[list[str]]:
    """``['macs=1.5x,2x,3x']`` → ``['macs=1.5x', 'macs=2x', 'macs=3x']``: a family, one model per value.

    None when ``texts`` is not a family (no comma). Each member is checked as a target; an
    empty value, a repeated one, or a family next to other targets is refused.
    """
    texts = [texts] if isinstance(texts, str) else list(texts or [])
    if not any("," in t for t in texts):
        return None
    if len(texts) != 1:
        raise StudioError("A family of targets (kind=a,b,c) cannot be combined with other targets.",
                          "Give the family alone, e.g. --target macs=1.5x,2x,3x,4x.")
    kind, _, values = texts[0].partition("=")
    parts = [v.strip() for v in values.split(",")]
    if any(not v for v in parts):
        raise StudioError(f"The family {texts[0]!r} has an empty value.", "Write it as macs=1.5x,2x,3x.")
    members = [Target.parse(f"{kind.strip()}={v}") for v in parts]
    seen = [(m.ratio, m.value) for m in members]
    repeated = next((m.text for m, key in zip(members, seen) if seen.count(key) > 1), None)
    if repeated:
        raise StudioError(f"The family {texts[0]!r} gives {repeated} more than once.", "Give each target once.")
    if any(m.minimize for m in members):
        raise StudioError("size=min is one model, not a family.", "Give size=min alone.")
    return [m.text for m in members]
