"""Plain-data events that engine jobs yield, and the token that pauses or cancels them.

Events hold only floats, ints, strings and small lists/dicts of them, never tensors or
modules, so they can cross thread and process boundaries and be written to JSON as-is.

A long operation is a generator: it yields events and *returns* its result, so a caller
writes ``result = yield from op(...)`` or drains it with `run_to_end`.
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Optional, TypeVar

from studio.engine.errors import JobCancelled

T = TypeVar("T")


@dataclass(frozen=True)
class Phase:
    """A job entered a new phase: analyse, sparse-train, prune, fine-tune, evaluate, measure, export, report."""
    name: str
    message: str = ""


@dataclass(frozen=True)
class Progress:
    """Progress within the current phase (``done`` out of ``total`` units)."""
    phase: str
    done: int
    total: int
    message: str = ""


@dataclass(frozen=True)
class TrainStep:
    """One optimiser step of training (fine-tune, sparse-train or train-from-scratch)."""
    phase: str
    epoch: int            # 0-based
    step: int             # 0-based within the epoch
    steps_per_epoch: int
    loss: float
    accuracy: float       # running top-1 on the training batches of this epoch, 0..1
    lr: float
    images_per_s: float


@dataclass(frozen=True)
class EpochEnd:
    """An epoch finished; validation numbers are None when no validation data was given."""
    phase: str
    epoch: int            # 0-based
    epochs: int
    train_loss: float
    train_accuracy: float
    val_loss: Optional[float]
    val_top1: Optional[float]
    val_top5: Optional[float]
    lr: float
    seconds: float


@dataclass(frozen=True)
class Log:
    """A message for the log pane / terminal. level is 'info', 'warning' or 'error'."""
    message: str
    level: str = "info"


@dataclass(frozen=True)
class MetricsSnapshot:
    """Model numbers at a point of a job (label is 'before', 'pruned', 'after', ...)."""
    label: str
    values: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrialEnd:
    """A target-search trial finished: its plan's figures and accuracy (the live trials table).

    ``values`` holds the trial record as written to trials.jsonl: trial, tau, layer_rates,
    figures, ratios, top1, met (targets), floor_ok and seconds.
    """
    trial: int
    values: dict = field(default_factory=dict)
    best: Optional[int] = None       # the best trial so far (meets the targets and the floor), if any


Event = Any  # one of the dataclasses above


def as_dict(event: Event) -> dict:
    """Event → JSON-ready dict with its type name under 'event'."""
    return {"event": type(event).__name__, **dataclasses.asdict(event)}


class CancelToken:
    """Shared between the thread running a job and the one controlling it.

    The job calls `check()` at every batch: it blocks while paused and raises
    `JobCancelled` once cancelled. Pause and cancel therefore act within one batch.
    """

    def __init__(self) -> None:
        self._cancelled = threading.Event()
        self._running = threading.Event()
        self._running.set()

    def cancel(self) -> None:
        self._cancelled.set()
        self._running.set()   # wake a paused job so it can see the cancel

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def check(self, where: str = "") -> None:
        self._running.wait()
        if self._cancelled.is_set():
            raise JobCancelled(where)


NEVER_CANCELLED = CancelToken()


def run_to_end(gen: Generator[Event, None, T],
               on_event: Optional[Callable[[Event], None]] = None) -> T:
    """Drive an engine generator to completion, passing each event to ``on_event``; return its result."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)
