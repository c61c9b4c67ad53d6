"""What decides a training run (`TrainConfig`, plain data for recipes) and what it returns."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from studio.engine.errors import StudioError

OPTIMIZERS = ("sgd", "adam")


SCHEDULES = ("cosine", "onecycle", "constant")


DEVICES = ("auto", "cuda", "mps", "cpu")


TRAIN_STATE_FORMAT = "studio-train-state-1"


@dataclass
class TrainConfig:
    """Everything that decides how a model is trained; plain data so it lives in recipes."""
    epochs: int = 1
    lr: float = 0.01
    optimizer: str = "sgd"            # 'sgd' (momentum) or 'adam' (AdamW: decoupled weight decay)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    schedule: str = "cosine"          # per-step schedule: 'cosine', 'onecycle' or 'constant'
    warmup_epochs: float = 0.0        # linear warm-up (for 'onecycle': length of the ramp up)
    label_smoothing: float = 0.0
    bn_l1: float = 0.0                # network slimming: λ·Σ|γ| over BatchNorm scales
    device: str = "auto"              # 'auto', 'cuda', 'cuda:N', 'mps' or 'cpu'
    amp: bool = True                  # mixed precision, used on CUDA only
    channels_last: Any = True         # True: on CUDA only; 'force': also on CPU/MPS; False: never
    seed: int = 0
    workers: int = 0
    max_steps_per_epoch: Optional[int] = None
    eval_every: int = 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build from a recipe dict; unknown keys and bad values raise `StudioError`."""
        if not isinstance(d, dict):
            raise StudioError("The training settings must be a JSON object.",
                              "Write them as {\"epochs\": 10, \"lr\": 0.01, ...}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise StudioError(f"Unknown training setting(s): {', '.join(unknown)}.",
                              f"Use only: {', '.join(sorted(known))}.")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> "TrainConfig":
        """Raise `StudioError` for the first value that cannot work; return self."""
        def fail(name: str, why: str, fix: str) -> None:
            raise StudioError(f"Training setting '{name}' {why} (got {getattr(self, name)!r}).", fix)

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name in ("epochs", "batch_size", "seed", "workers", "eval_every"):
            if not is_int(getattr(self, name)):
                fail(name, "must be a whole number", "Give a whole number.")
        for name in ("lr", "momentum", "weight_decay", "warmup_epochs", "label_smoothing", "bn_l1"):
            if not is_num(getattr(self, name)):
                fail(name, "must be a finite number", "Give a number.")
        if self.epochs < 0:
            fail("epochs", "must be 0 or more", "Use 0 to skip training, or a positive count.")
        if self.lr <= 0:
            fail("lr", "must be greater than 0", "Typical fine-tuning values are 0.001 to 0.05.")
        if self.batch_size < 1:
            fail("batch_size", "must be at least 1", "Typical values are 64 to 256.")
        if self.optimizer not in OPTIMIZERS:
            fail("optimizer", "is not known", f"Use one of: {', '.join(OPTIMIZERS)}.")
        if self.schedule not in SCHEDULES:
            fail("schedule", "is not known", f"Use one of: {', '.join(SCHEDULES)}.")
        if not isinstance(self.device, str) or not (
                self.device in DEVICES or (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            fail("device", "is not known", "Use 'auto', 'cuda', 'cuda:N', 'mps' or 'cpu'.")
        if not 0 <= self.momentum < 1:
            fail("momentum", "must be in [0, 1)", "0.9 is the usual value.")
        if self.weight_decay < 0:
            fail("weight_decay", "must be 0 or more", "5e-4 is usual for CIFAR models.")
        if self.warmup_epochs < 0:
            fail("warmup_epochs", "must be 0 or more", "Use 0 for no warm-up.")
        if not 0 <= self.label_smoothing < 1:
            fail("label_smoothing", "must be in [0, 1)", "Use 0 (off) or about 0.1.")
        if self.bn_l1 < 0:
            fail("bn_l1", "must be 0 or more", "Network slimming uses about 1e-4; 0 turns it off.")
        if not isinstance(self.amp, bool):
            fail("amp", "must be true or false", "Use true or false.")
        if not (isinstance(self.channels_last, bool) or self.channels_last == "force"):
            fail("channels_last", "must be true, false or 'force'", "Use true (CUDA only), false or 'force'.")
        if self.workers < 0:
            fail("workers", "must be 0 or more", "Use 0 to load data in the main process.")
        if self.max_steps_per_epoch is not None and (not is_int(self.max_steps_per_epoch)
                                                     or self.max_steps_per_epoch < 1):
            fail("max_steps_per_epoch", "must be empty or at least 1", "Leave it empty to use all data.")
        if self.eval_every < 1:
            fail("eval_every", "must be at least 1", "Use 1 to validate after every epoch.")
        return self


@dataclass
class EvalResult:
    """Accuracy (0..1) and mean cross-entropy over ``samples`` images."""
    top1: float
    top5: float
    loss: float
    samples: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What a training run produced besides the trained model itself."""
    history: list = field(default_factory=list)   # EpochEnd events as dicts
    final: Optional[EvalResult] = None            # last validation, None without validation data
    seconds: float = 0.0                          # wall time of the whole run
    images_per_s: float = 0.0                     # training images per second (all ranks)

    def to_dict(self) -> dict:
        return {"history": list(self.history), "final": self.final.to_dict() if self.final else None,
                "seconds": self.seconds, "images_per_s": self.images_per_s}
