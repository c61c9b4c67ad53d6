"""Independent pieces of work (grid trials, family members) N at a time, each in its own process.

``--parallel N`` gives N worker processes. On a CUDA device each worker has a GPU of its
own (``cuda:0`` … ``cuda:N-1``); on the CPU the cores are split between them, so that N
workers with ``cores / N`` threads each do not fight over the cores. A worker runs one item
to the end and sends back its result and the events worth keeping (finished trials,
warnings); the calling job yields those events as items finish, so the window's trials
table still fills in as the work goes.

CPU workers are forked on Linux, which hands them the model and data without pickling
(a model defined in the user's own file cannot always be pickled). CUDA cannot be forked
once initialised, so GPU workers are spawned and receive their work pickled.

Pause and cancel reach the workers through a token whose events are shared across
processes: they act within one batch, as in a single process.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Generator, Iterable, Sequence

import torch

from studio.engine.errors import JobCancelled, StudioError
from studio.engine.events import CancelToken, Log, TrialEnd, run_to_end
from studio.engine.training.distributed import env_world_size

# The kinds of event a worker sends back; progress and training steps stay in the worker.
KEPT_EVENTS = (Log, TrialEnd)


def worker_devices(parallel: int, device: str) -> list[str]:
    """The device of each of ``parallel`` workers, or a `StudioError` when there are not that many."""
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise StudioError(f"--parallel must be a whole number of at least 1 (got {parallel!r}).",
                          "Use --parallel 1 to run the trials one after another.")
    if parallel == 1:
        return [device or "auto"]    # one after another, in this process
    if env_world_size() > 1:
        raise StudioError("--parallel and torchrun both spread the work over the devices; use one of them.",
                          "Under torchrun, leave --parallel at 1: each trial fine-tunes on every rank.")
    pref = (device or "auto").lower()
    if pref == "mps":
        raise StudioError("--parallel runs on CUDA GPUs or on the CPU cores, not on Apple MPS.",
                          "Use --device cpu with --parallel, or leave --parallel at 1.")
    cuda = pref.startswith("cuda") or (pref == "auto" and torch.cuda.is_available())
    if cuda and pref.startswith("cuda:"):
        raise StudioError(f"--parallel {parallel} gives each process a GPU of its own, and --device {device} "
                          "names one GPU.", "Use --device cuda (or auto) with --parallel.")
    if cuda:
        count = torch.cuda.device_count()
        if parallel > count:
            raise StudioError(f"--parallel {parallel} asks for {parallel} GPUs, and this machine has {count}.",
                              f"Use --parallel {max(count, 1)} or fewer, or --device cpu to split the CPU cores.")
        return [f"cuda:{i}" for i in range(parallel)]
    cores = os.cpu_count() or 1
    if parallel > cores:
        raise StudioError(f"--parallel {parallel} asks for {parallel} processes, and this machine has {cores} "
                          "CPU core(s).", f"Use --parallel {cores} or fewer.")
    return ["cpu"] * parallel


class SharedToken(CancelToken):
    """A `CancelToken` whose events live across processes (made from a multiprocessing context)."""

    def __init__(self, ctx) -> None:   # the base behaviour, on events shared across processes
        self._cancelled = ctx.Event()
        self._running = ctx.Event()
        self._running.set()

    def follow(self, token: CancelToken) -> None:
        """Copy the controlling token's state (called by the parent while it waits)."""
        if token.cancelled:
            self.cancel()
        elif token.paused:
            self.pause()
        else:
            self.resume()


_WORKER: dict = {}


def _start_worker(work, shared, token, devices, threads: int) -> None:
    """Each worker takes a device of its own from the queue and keeps the work and the token.

    A GPU worker sees only its own GPU (CUDA reads ``CUDA_VISIBLE_DEVICES`` when it starts,
    and a spawned worker has not started it yet), so 'cuda' and 'auto' mean that GPU.
    """
    device = devices.get()
    if device.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = device.partition(":")[2]
        device = "cuda"
    torch.set_num_threads(threads)
    _WORKER.update(work=work, shared=shared, token=token, device=device)


def _run_item(item) -> tuple[Any, list]:
    kept: list = []
    w = _WORKER
    result = run_to_end(w["work"](w["shared"], item, w["device"], w["token"]),
                        lambda e: kept.append(e) if isinstance(e, KEPT_EVENTS) else None)
    return result, kept


def run_parallel(work: Callable[[Any, Any, str, CancelToken], Generator],
                 shared: Any, items: Sequence, devices: list[str], token: CancelToken,
                 on_done: Callable[[int, Any], Iterable]) -> Generator[object, None, None]:
    """Run ``work(shared, item, device, token)`` for every item, ``len(devices)`` at a time.

    ``work`` is a module-level generator function (spawned workers import it by name);
    ``shared`` is what every item needs (a model, data). As each item finishes, its kept
    events are yielded, then those of ``on_done(index, result)``. An error in any item
    cancels the others and is raised here, as is a cancel from ``token``.
    """
    cuda = any(d.startswith("cuda") for d in devices)
    ctx = mp.get_context("fork" if sys.platform == "linux" and not cuda else "spawn")
    shared_token = SharedToken(ctx)
    queue = ctx.Queue()
    for d in devices:
        queue.put(d)
    threads = max(1, (os.cpu_count() or 1) // len(devices)) if not cuda else torch.get_num_threads()
    pool = ProcessPoolExecutor(len(devices), mp_context=ctx, initializer=_start_worker,
                               initargs=(work, shared, shared_token, queue, threads))
    try:
        futures = {pool.submit(_run_item, item): i for i, item in enumerate(items)}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=futures.get):   # finished work is kept, even when cancelled
                result, kept = future.result()
                yield from kept
                yield from on_done(futures[future], result)
            shared_token.follow(token)
            if token.cancelled:
                raise JobCancelled("parallel trials")
        token.check("parallel trials")
    except BrokenProcessPool as exc:
        raise StudioError(f"A worker process stopped without finishing its trial ({exc}); it may have run out of "
                          "memory.", "Run again with a lower --parallel; the finished trials are kept.") from exc
    finally:
        shared_token.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def describe(devices: list[str]) -> str:
    """'2 processes on cuda:0, cuda:1' or '2 processes with 1 CPU thread(s) each'."""
    if devices[0].startswith("cuda"):
        return f"{len(devices)} processes on {', '.join(devices)}"
    return f"{len(devices)} processes with {max(1, (os.cpu_count() or 1) // len(devices))} CPU thread(s) each"
