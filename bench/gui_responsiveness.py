"""Benchmark: a fine-tune run with the studio window attached against the engine alone.

Both run the same recipe on the shipped demo (prune ResNet-20 by 50 % with L1, then
fine-tune on the demo subset) and report fine-tuning throughput in images/s, taken from the
engine's own EpochEnd timings, so the export and measuring phases do not dilute it. The GUI
run goes through `MainWindow.run_job`: engine thread, batched events, live plots, progress
strip. During it a 5 ms timer on the UI thread records the longest event-loop stall: the
wall-clock gap (what the user sees) and the UI thread's CPU time in that gap (what our code
spends there). The two modes alternate; medians are compared. Goals: GUI/engine ≥ 0.95,
longest stall < 50 ms.

    QT_QPA_PLATFORM=offscreen .venv/bin/python bench/gui_responsiveness.py [--steps 60] [--repeats 3]
                                                                           [--threads N]
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_model  # noqa: E402
from PySide6.QtCore import QEventLoop, QSettings  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from studio.app import dialogs  # noqa: E402
from studio.app.main_window import MainWindow  # noqa: E402
from studio.app.stall_meter import StallMeter  # noqa: E402
from studio.engine.events import EpochEnd, run_to_end  # noqa: E402
from studio.engine.jobs import (  # noqa: E402
    DataSource,
    MeasureOptions,
    ModelSource,
    Recipe,
    run_recipe,  # noqa: E402
)
from studio.engine.training import TrainConfig  # noqa: E402


def make_recipe(steps: int, batch: int) -> Recipe:
    return Recipe(model=ModelSource(spec="demo"), data=DataSource(spec="demo", batch_size=batch, eval_batches=1),
                  finetune=TrainConfig(epochs=1, lr=0.01, max_steps_per_epoch=steps),
                  measure=MeasureOptions(batch_sizes=[1], runs=3), exports=["checkpoint"])


def images_per_s(events: list, steps: int, batch: int) -> float:
    seconds = sum(e.seconds for e in events if isinstance(e, EpochEnd))
    return steps * batch / seconds


def engine_alone(recipe: Recipe, out: Path, loaded, bundle) -> float:
    events: list = []
    run_to_end(run_recipe(recipe, out, loaded=loaded, bundle=bundle), events.append)
    return images_per_s(events, recipe.finetune.max_steps_per_epoch, recipe.data.batch_size)


def wait_until_idle(window: MainWindow) -> None:
    """Run the Qt event loop (as app.exec would) until the engine thread has nothing left."""
    loop = QEventLoop()
    window.runner.busyChanged.connect(lambda busy: None if busy else loop.quit())
    if window.runner.busy:
        loop.exec()


def with_window(window: MainWindow, recipe: Recipe, meter: Optional[StallMeter]) -> tuple[float, float]:
    """Images/s of a GUI run, and the UI thread's CPU share during it."""
    events: list = []
    forward = window._on_job_events
    window._on_job_events = lambda batch: (events.extend(batch), forward(batch))
    window.run_job(copy.deepcopy(recipe))
    if meter is not None:
        meter.start()
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    wait_until_idle(window)
    if meter is not None:
        meter.stop()
    ui_share = (time.thread_time() - cpu0) / (time.perf_counter() - wall0)
    window._on_job_events = forward
    if window.last_error is not None:
        raise RuntimeError(f"GUI run failed: {window.last_error}")
    return images_per_s(events, recipe.finetune.max_steps_per_epoch, recipe.data.batch_size), ui_share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = QApplication(sys.argv[:1])
    dialogs.show_error = lambda parent, error, details="": print(f"error: {error}\n{details}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="gui-bench-"))
    window = MainWindow(settings=QSettings(str(work / "settings.ini"), QSettings.Format.IniFormat),
                        runs_dir=work / "runs", autosave_file=work / "autosave.studio")
    window.resize(1600, 1000)
    window.show()
    window.open_demo()
    while window.document.data is None or window.document.accuracy is None:
        wait_until_idle(window)
        app.processEvents()
    recipe = make_recipe(args.steps, args.batch)
    loaded, bundle = window.document.model.loaded, window.document.data

    # Throughput rounds run without the stall meter: its 5 ms timer costs the UI thread CPU too.
    engine, gui, shares = [], [], []
    for i in range(args.repeats):
        engine.append(engine_alone(recipe, work / f"engine-{i}", loaded, bundle))
        rate, share = with_window(window, recipe, None)
        gui.append(rate)
        shares.append(share)
        print(f"round {i + 1}: engine {engine[-1]:.0f} img/s, GUI {gui[-1]:.0f} img/s "
              f"(UI thread {share:.1%} of a core)", flush=True)
    walls, busys = [], []
    for i in range(args.repeats):
        meter = StallMeter()
        with_window(window, recipe, meter)
        walls.append(meter.longest_wall)
        busys.append(meter.longest_busy)
        print(f"stall round {i + 1}: longest {meter.longest_wall * 1000:.0f} ms wall, "
              f"{meter.longest_busy * 1000:.0f} ms of UI-thread CPU", flush=True)
    window.runner.shutdown()

    ratio = statistics.median(gui) / statistics.median(engine)
    print(f"\n{datetime.date.today()}, {cpu_model()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")
    print(f"fine-tune throughput, GUI attached / engine alone: {ratio:.3f} "
          f"(medians {statistics.median(gui):.0f} / {statistics.median(engine):.0f} img/s, "
          f"{args.steps} steps of {args.batch}, {args.repeats} rounds; UI thread used "
          f"{statistics.median(shares):.1%} of a core)")
    print(f"longest event-loop stall: {max(walls) * 1000:.0f} ms wall, {max(busys) * 1000:.0f} ms of UI-thread CPU")


if __name__ == "__main__":
    main()
