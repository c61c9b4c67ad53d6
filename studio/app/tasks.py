"""Background work for the window: one engine thread that runs tasks in order.

Everything slow (loading a model or data, tracing the graph, estimating a plan, scoring
channels, and the compression job itself) runs here so the UI thread never waits. Tasks
run one at a time, in the order they were submitted: the graph tracer briefly patches
torch internals and must never overlap another forward pass (docs/ARCHITECTURE.md).

A task is a callable. If it returns a generator (an engine job), its events are forwarded
to the UI thread in batches, at most every `EVENT_BATCH_S`, as plain data: the engine's
events hold numbers and strings only. What a task returns is handed to the UI thread once,
when the task ends; no thread touches it afterwards.
"""
from __future__ import annotations

import itertools
import os
import threading
import time
import traceback
import types
from dataclasses import dataclass
from typing import Any, Callable, Optional

from PySide6.QtCore import QObject, QThread, Signal, Slot

from studio.engine.errors import JobCancelled
from studio.engine.events import CancelToken, Log, MetricsSnapshot, Phase

EVENT_BATCH_S = 0.05   # the UI gets at most ~20 event batches a second, however fast the GPU steps
ENGINE_NICENESS = 5    # the engine thread yields the CPU to the UI thread when both want it
_FLUSH_NOW = (Phase, Log, MetricsSnapshot)   # rare events that should show at once


@dataclass
class Task:
    """A unit of background work and what to call back on the UI thread."""
    id: int
    name: str
    fn: Callable[[], Any]
    token: CancelToken
    on_done: Optional[Callable[[Any], None]] = None
    on_error: Optional[Callable[[BaseException, str], None]] = None
    on_events: Optional[Callable[[list], None]] = None
    on_cancel: Optional[Callable[[], None]] = None


class _Worker(QObject):
    """Lives on the engine thread; runs each task it is given to the end."""
    events = Signal(int, list)
    finished = Signal(int, object)
    failed = Signal(int, object, str)
    cancelled = Signal(int)

    def __init__(self, torch_threads: int):
        super().__init__()
        self._torch_threads = torch_threads

    @Slot()
    def prepare_thread(self) -> None:
        """Runs first on the engine thread: same torch thread count as the process, lower priority.

        OpenMP keeps its thread count per OS thread, so a thread torch has not seen would use
        every core whatever `torch.set_num_threads` said on the main thread.
        """
        import torch
        torch.set_num_threads(self._torch_threads)
        self._lower_priority()

    @staticmethod
    def _lower_priority() -> None:
        """Make the engine thread (and the math threads it starts) slightly nicer than the UI.

        On a machine whose cores are all busy training, the UI thread would otherwise wait
        for a time slice like any other thread, and the window would stutter. Linux applies
        nice values per thread, and threads started later inherit it. Elsewhere this does
        nothing.
        """
        if hasattr(os, "setpriority") and hasattr(threading, "get_native_id"):
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), ENGINE_NICENESS)
            except OSError:
                pass

    @Slot(object)
    def execute(self, task: Task) -> None:
        try:
            if task.token.cancelled:
                raise JobCancelled(task.name)
            result = task.fn()
            if isinstance(result, types.GeneratorType):
                result = self._drain(task, result)
        except JobCancelled:
            self.cancelled.emit(task.id)
        except BaseException as exc:  # noqa: BLE001 - every failure reaches the user as a dialog
            self.failed.emit(task.id, exc, traceback.format_exc())
        else:
            self.finished.emit(task.id, result)

    def _drain(self, task: Task, gen) -> Any:
        batch: list = []
        last = time.monotonic()
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                if batch:
                    self.events.emit(task.id, batch)
                return stop.value
            except BaseException:
                if batch:   # the events leading to a failure explain it: deliver them first
                    self.events.emit(task.id, batch)
                raise
            batch.append(event)
            now = time.monotonic()
            if isinstance(event, _FLUSH_NOW) or now - last >= EVENT_BATCH_S:
                self.events.emit(task.id, batch)
                batch, last = [], now


class TaskRunner(QObject):
    """Submits tasks to the engine thread and routes their signals back to callbacks."""
    busyChanged = Signal(bool)
    _submit = Signal(object)

    def __init__(self, parent: Optional[QObject] = None):
        super().__init__(parent)
        self._ids = itertools.count(1)
        self._tasks: dict[int, Task] = {}
        self._thread = QThread()
        self._thread.setObjectName("studio-engine")
        import torch
        self._worker = _Worker(torch.get_num_threads())
        self._worker.moveToThread(self._thread)
        self._submit.connect(self._worker.execute)
        self._worker.events.connect(self._on_events)
        self._worker.finished.connect(self._on_finished)
        self._worker.failed.connect(self._on_failed)
        self._worker.cancelled.connect(self._on_cancelled)
        self._thread.started.connect(self._worker.prepare_thread)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    def pending(self) -> list[str]:
        return [t.name for t in self._tasks.values()]

    def submit(self, name: str, fn: Callable[[], Any], *, token: Optional[CancelToken] = None,
               on_done=None, on_error=None, on_events=None, on_cancel=None) -> Task:
        task = Task(next(self._ids), name, fn, token or CancelToken(), on_done, on_error, on_events, on_cancel)
        self._tasks[task.id] = task
        if len(self._tasks) == 1:
            self.busyChanged.emit(True)
        self._submit.emit(task)
        return task

    def cancel_all(self) -> None:
        for task in self._tasks.values():
            task.token.cancel()

    def shutdown(self, timeout_ms: int = 10000) -> bool:
        """Cancel what is running, stop the thread; False if a task would not stop in time."""
        self.cancel_all()
        self._thread.quit()
        return self._thread.wait(timeout_ms)

    def _end(self, task_id: int) -> Optional[Task]:
        task = self._tasks.pop(task_id, None)
        if not self._tasks:
            self.busyChanged.emit(False)
        return task

    @Slot(int, list)
    def _on_events(self, task_id: int, events: list) -> None:
        task = self._tasks.get(task_id)
        if task is not None and task.on_events is not None:
            task.on_events(events)

    @Slot(int, object)
    def _on_finished(self, task_id: int, result: Any) -> None:
        task = self._end(task_id)
        if task is not None and task.on_done is not None:
            task.on_done(result)

    @Slot(int, object, str)
    def _on_failed(self, task_id: int, exc: BaseException, details: str) -> None:
        task = self._end(task_id)
        if task is not None and task.on_error is not None:
            task.on_error(exc, details)

    @Slot(int)
    def _on_cancelled(self, task_id: int) -> None:
        task = self._end(task_id)
        if task is not None and task.on_cancel is not None:
            task.on_cancel()
