"""Terminal rendering of engine events: a tqdm bar per phase or epoch, and log lines."""
from __future__ import annotations

import sys

from tqdm import tqdm

from studio.engine.events import EpochEnd, Log, MetricsSnapshot, Phase, Progress, TrainStep


class TerminalProgress:
    """Callable that receives engine events and draws them on stderr."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._bar = None
        self._bar_key = None

    def _open(self, key, total, desc):
        if self._bar_key != key:
            self.close()
            self._bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
            self._bar_key = key
        return self._bar

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._bar_key = None, None

    def __call__(self, event) -> None:
        if not self.enabled:
            return
        if isinstance(event, Phase):
            self.close()
            tqdm.write(f"▸ {event.name}" + (f": {event.message}" if event.message else ""), file=sys.stderr)
        elif isinstance(event, Progress):
            bar = self._open(("progress", event.phase, event.total), event.total, event.phase)
            bar.n = event.done
            bar.set_postfix_str(event.message, refresh=False)
            bar.refresh()
        elif isinstance(event, TrainStep):
            bar = self._open(("train", event.phase, event.epoch), event.steps_per_epoch,
                             f"{event.phase} epoch {event.epoch + 1}")
            bar.n = event.step + 1
            bar.set_postfix(loss=f"{event.loss:.3f}", acc=f"{event.accuracy:.3f}", lr=f"{event.lr:.4g}",
                            img_s=f"{event.images_per_s:.0f}", refresh=False)
            bar.refresh()
        elif isinstance(event, EpochEnd):
            self.close()
            val = "" if event.val_top1 is None else f"  val top-1 {event.val_top1 * 100:.2f}%"
            tqdm.write(f"  {event.phase} epoch {event.epoch + 1}/{event.epochs}: loss {event.train_loss:.4f}"
                       f"  train acc {event.train_accuracy * 100:.2f}%{val}  ({event.seconds:.1f}s)", file=sys.stderr)
        elif isinstance(event, Log):
            prefix = "" if event.level == "info" else f"{event.level}: "
            tqdm.write(f"  {prefix}{event.message}", file=sys.stderr)
        elif isinstance(event, MetricsSnapshot):
            v = event.values
            acc = "" if v.get("top1") is None else f", top-1 {v['top1'] * 100:.2f}%"
            tqdm.write(f"  {event.label}: {v.get('params', 0):,} params, {v.get('macs', 0):,} MACs{acc}",
                       file=sys.stderr)
