"""The interface every compression method implements, its declared options, and the registry.

A method receives a `MethodInput` (the model, which it never changes, its input size,
optional data and plan, the device, a cancel token and a folder it may cache in) and the
options it declared, already checked. Its ``run`` is a generator: it yields events as any
long operation does, calls ``inputs.token.check()`` at least once per batch or layer, and
returns a `MethodResult`.
"""
from __future__ import annotations

import difflib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generator, Optional

import torch
from torch import nn

from studio.engine.data import DataBundle
from studio.engine.errors import StudioError
from studio.engine.events import NEVER_CANCELLED, CancelToken
from studio.engine.pruning import PruningPlan
from studio.engine.training import TrainConfig

OPTION_KINDS = ("int", "float", "bool", "choice", "str", "floats", "texts")


@dataclass(frozen=True)
class Option:
    """One setting a method declares: the recipe key, the GUI field and the check, in one place."""
    name: str
    kind: str                          # one of OPTION_KINDS ('floats', 'texts': non-empty lists)
    default: Any
    help: str                          # one line: what it does, in the user's terms
    choices: tuple = ()                # for kind 'choice'
    minimum: Optional[float] = None    # for 'int' and 'float', inclusive
    maximum: Optional[float] = None

    def check(self, value: Any, method: str) -> Any:
        """``value`` if it fits this option; otherwise a `StudioError` that names method and option."""
        def fail(why: str, fix: str) -> StudioError:
            return StudioError(f"Option '{self.name}' of method '{method}' {why} (got {value!r}).", fix)

        if self.kind == "bool":
            if not isinstance(value, bool):
                raise fail("must be true or false", "Use true or false.")
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise fail("is not one of its choices", f"Use one of: {', '.join(map(str, self.choices))}.")
            return value
        if self.kind == "str":
            if not isinstance(value, str):
                raise fail("must be text", "Write it in quotes.")
            return value
        if self.kind == "texts":
            if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
                raise fail("must be a non-empty list of texts", f"For example {list(self.default)}.")
            return list(value)
        if self.kind == "floats":
            if not isinstance(value, (list, tuple)) or not value:
                raise fail("must be a non-empty list of numbers", f"For example {list(self.default)}.")
            item = Option(self.name, "float", self.default[0], self.help, minimum=self.minimum, maximum=self.maximum)
            return [item.check(v, method) for v in value]
        whole = self.kind == "int"
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) \
                or (not whole and not math.isfinite(value)):
            raise fail("must be a whole number" if whole else "must be a finite number",
                       "Give a whole number." if whole else "Give a number.")
        low = -math.inf if self.minimum is None else self.minimum
        high = math.inf if self.maximum is None else self.maximum
        if not low <= value <= high:
            raise fail(f"must be between {self.minimum} and {self.maximum}" if self.maximum is not None
                       else f"must be at least {self.minimum}", f"The default is {self.default}.")
        return int(value) if whole else float(value)


@dataclass
class MethodInput:
    """What a method works on. ``model`` is the caller's: a method changes only its own copy."""
    model: nn.Module
    input_size: tuple[int, int, int]
    data: Optional[DataBundle] = None
    plan: Optional[PruningPlan] = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    token: CancelToken = NEVER_CANCELLED
    work_dir: Optional[Path] = None    # a folder the method may cache results in (e.g. the run folder)
    seed: int = 0
    finetune: Optional[TrainConfig] = None   # the training a method may spend (per search trial, recovery)
    sparse_training: Optional[TrainConfig] = None   # training before pruning (network slimming's L1 on γ)
    parallel: int = 1    # independent pieces of work (trials) the method may run at once, one process each
    reference: Optional[nn.Module] = None   # the model before the last step (what reconstruction matches)
    history: Optional[list] = None          # the pruning history from ``reference`` to ``model``


@dataclass
class MethodResult:
    """What a method returns: the new model (None for a pure analysis) and what the report shows."""
    model: Optional[nn.Module]
    plan: Optional[PruningPlan] = None                 # the plan it chose, when it chooses rates
    summary: dict = field(default_factory=dict)        # plain numbers and strings for metrics.json and the report
    notes: list[str] = field(default_factory=list)     # what the user should know (skipped layers, fallbacks)


class Method(ABC):
    """A compression method: declared options, and a ``run`` generator."""
    name: ClassVar[str]                    # recipe and CLI name, e.g. 'reconstruct'
    title: ClassVar[str]                   # what the GUI shows
    paper: ClassVar[str] = ""              # the citation, as the docs give it
    needs_data: ClassVar[bool] = False     # refuse early, with a clear message, when no data is given
    options: ClassVar[tuple[Option, ...]] = ()

    @classmethod
    def resolve_options(cls, given: Optional[dict] = None) -> dict:
        """Every declared option: ``given`` values checked, the rest at their defaults."""
        given = dict(given or {})
        known = {o.name: o for o in cls.options}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise StudioError(f"Method '{cls.name}' has no option {', '.join(map(repr, unknown))}.",
                              f"Its options are: {', '.join(known) or 'none'}.")
        return {name: opt.check(given[name], cls.name) if name in given else opt.default
                for name, opt in known.items()}

    def check_input(self, inputs: MethodInput) -> None:
        """Refuse inputs the method cannot work with before any slow step."""
        if self.needs_data and inputs.data is None:
            raise StudioError(f"{self.title} needs data, and none was given.",
                              "Give the job a dataset (--data in the CLI, Open Data in the window).")

    def prepare(self, inputs: MethodInput, options: dict) -> Generator[object, None, None]:
        """Work that several runs of this method on the same model share (an analysis), done once
        before they run side by side, each in its own process; by default there is none."""
        return
        yield

    @abstractmethod
    def run(self, inputs: MethodInput, options: dict) -> Generator[object, None, MethodResult]:
        """Yield events; return a `MethodResult`. ``options`` come from `resolve_options`."""


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its ``name`` to recipes, the CLI and the GUI."""
    if not getattr(cls, "name", ""):
        raise TypeError(f"{cls.__name__} needs a 'name' to be registered.")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise TypeError(f"Two methods are named {cls.name!r}: {METHODS[cls.name].__name__} and {cls.__name__}.")
    for opt in cls.options:
        if opt.kind not in OPTION_KINDS:
            raise TypeError(f"{cls.__name__}.{opt.name}: unknown option kind {opt.kind!r}.")
        opt.check(opt.default, cls.name)   # a default that fails its own check is a bug
    METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    """Names of the registered methods."""
    return sorted(METHODS)


def get_method(name: str) -> Method:
    """A fresh instance of the method called ``name``; an unknown name gets close matches."""
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f"Did you mean '{close[0]}'? " if close else ""
        raise StudioError(f"Unknown method '{name}'.",
                          hint + (f"Known methods: {', '.join(list_methods())}." if METHODS
                                  else "No compression methods are installed yet."))
    return METHODS[name]()
