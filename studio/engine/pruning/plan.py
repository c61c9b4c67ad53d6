"""`PruningPlan`: how much to cut, where, by which criterion; validated against a model before any work."""
from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import dataclass, field
from numbers import Real
from typing import Iterable, Optional

from torch import nn

from studio.engine.errors import StudioError
from studio.engine.pruning.criteria import get_criterion

WEIGHTED_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


def _is_rate(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and 0.0 <= float(value) < 1.0


def out_channels(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.modules.conv._ConvNd) else layer.out_features


def kept_channels(channels: int, rate: float, round_to: Optional[int]) -> int:
    """Channels torch-pruning keeps in a layer of ``channels`` at ``rate`` (same arithmetic)."""
    kept = int(channels * (1 - rate))
    if round_to and kept < channels:
        kept -= kept % round_to
    return kept


def close_names(name: str, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)
    if close:
        return "Did you mean " + ", ".join(f"'{c}'" for c in close) + "?"
    return "Run `studio inspect` on the model to list its layer names."


def is_under(name: str, prefixes: Iterable[str]) -> bool:
    """True when module ``name`` is one of ``prefixes`` or inside one of them."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def find_classifier(model: nn.Module) -> Optional[str]:
    """Name of the final Linear (or, in all-conv nets, the final Conv) head; kept out of pruning.

    Registration order is used: torchvision and the studio's CIFAR models register their
    head last, and so do nearly all hand-written nets.
    """
    last_linear = last_conv = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_linear = name
        elif isinstance(module, nn.modules.conv._ConvNd):
            last_conv = name
    return last_linear if last_linear is not None else last_conv


@dataclass
class PruningPlan:
    """How much to cut, where, and by which criterion."""
    criterion: str = "l1"
    rate: float = 0.5                                     # global channel pruning ratio, in [0, 1)
    layer_rates: dict = field(default_factory=dict)       # module name -> rate, overrides `rate`
    protected: list = field(default_factory=list)        # module names never pruned
    global_ranking: bool = False                          # rank channels across layers, not per layer
    round_to: Optional[int] = None                        # keep channel counts multiples of this
    iterative_steps: int = 1
    unstructured_sparsity: float = 0.0                    # magnitude sparsity on what remains (Tian et al. 2022)
    strict: bool = False        # refuse, naming them, when groups must be left unpruned to keep the model running

    def to_dict(self) -> dict:
        return {"criterion": self.criterion, "rate": self.rate, "layer_rates": dict(self.layer_rates),
                "protected": list(self.protected), "global_ranking": self.global_ranking,
                "round_to": self.round_to, "iterative_steps": self.iterative_steps,
                "unstructured_sparsity": self.unstructured_sparsity, "strict": self.strict}

    @classmethod
    def from_dict(cls, d: dict) -> "PruningPlan":
        """Build a plan from JSON data; unknown keys and impossible values are `StudioError`s."""
        if not isinstance(d, dict):
            raise StudioError("The pruning plan must be an object.", 'For example {"criterion": "l1", "rate": 0.5}.')
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in known]
        if unknown:
            raise StudioError(f"Unknown pruning plan key(s): {', '.join(map(str, unknown))}.",
                              f"Valid keys: {', '.join(known)}.")
        plan = cls(**{k: copy.deepcopy(v) for k, v in d.items()})
        plan.check()
        return plan

    def check(self) -> None:
        """Check everything that does not need the model."""
        get_criterion(self.criterion)
        if not _is_rate(self.rate):
            raise StudioError(f"The pruning rate {self.rate!r} is outside [0, 1).",
                              "Use a share of channels to remove, e.g. 0.5; 1.0 would remove every channel.")
        if not isinstance(self.layer_rates, dict):
            raise StudioError("layer_rates must map layer names to rates.", 'For example {"layer1.0.conv1": 0.3}.')
        for name, rate in self.layer_rates.items():
            if not _is_rate(rate):
                raise StudioError(f"The rate {rate!r} for layer '{name}' is outside [0, 1).",
                                  f"Give '{name}' a share of channels to remove, e.g. 0.3.")
        if not isinstance(self.protected, (list, tuple)) or not all(isinstance(n, str) for n in self.protected):
            raise StudioError("protected must be a list of layer names.", 'For example ["conv1"].')
        if not isinstance(self.global_ranking, bool):
            raise StudioError("global_ranking must be true or false.", "Fix the plan.")
        if not isinstance(self.strict, bool):
            raise StudioError("strict must be true or false.", "Fix the plan.")
        if self.round_to is not None and (not isinstance(self.round_to, int) or isinstance(self.round_to, bool)
                                          or self.round_to < 1):
            raise StudioError(f"round_to {self.round_to!r} must be empty or a positive whole number.",
                              "Use e.g. 8 to keep channel counts multiples of 8.")
        if not isinstance(self.iterative_steps, int) or isinstance(self.iterative_steps, bool) \
                or self.iterative_steps < 1:
            raise StudioError(f"iterative_steps {self.iterative_steps!r} must be a whole number of at least 1.",
                              "Use 1 to prune in one go.")
        if not _is_rate(self.unstructured_sparsity):
            raise StudioError(f"unstructured_sparsity {self.unstructured_sparsity!r} is outside [0, 1).",
                              "Use e.g. 0.5 to zero half of the remaining weights, or 0 to skip it.")
        both = [n for n in self.layer_rates if n in self.protected]
        if both:
            raise StudioError(f"Layer '{both[0]}' is both protected and given a rate.",
                              f"Remove '{both[0]}' from one of the two lists.")

    def validate(self, model: nn.Module) -> None:
        """Check the plan against ``model``'s layers; every problem names the layer."""
        self.check()
        modules = dict(model.named_modules())
        for name in [*self.layer_rates, *self.protected]:
            if name not in modules or name == "":
                raise StudioError(f"The model has no layer named '{name}'.", close_names(name, modules))
        head = find_classifier(model)
        for name, rate in self.layer_rates.items():
            if name == head:
                raise StudioError(f"Layer '{name}' is the classifier head, which is never pruned.",
                                  f"Remove '{name}' from layer_rates.")
            inner = [(n, m) for n, m in modules[name].named_modules(prefix=name) if isinstance(m, WEIGHTED_LAYERS)]
            if not inner:
                raise StudioError(f"Layer '{name}' ({type(modules[name]).__name__}) has no conv or linear "
                                  "channels to prune.", "Give the rate to a Conv or Linear layer instead.")
            for n, m in inner:
                self._check_leaves_channels(n, m, rate, f"The rate {rate} for layer '{name}'")
        if self.global_ranking:
            return   # per-layer counts depend on the scores; torch-pruning keeps at least one channel
        for n, m in modules.items():
            if isinstance(m, WEIGHTED_LAYERS) and n != head and not is_under(n, self.protected) \
                    and not is_under(n, self.layer_rates):
                self._check_leaves_channels(n, m, self.rate, f"The global rate {self.rate}")

    def _check_leaves_channels(self, name: str, layer: nn.Module, rate: float, what: str) -> None:
        channels = out_channels(layer)
        if rate > 0 and kept_channels(channels, rate, self.round_to) < 1:
            rounding = f" after rounding to multiples of {self.round_to}" if self.round_to else ""
            raise StudioError(f"{what} leaves no channel in layer '{name}' ({channels} channels{rounding}).",
                              f"Use a lower rate for '{name}', or protect it.")
