"""Target mode: the form that states a target, and the panel that shows a search's trials.

`TargetForm` sits in the strategy panel when the user asks the studio to find the rates:
target kind and value in the user's terms, the accuracy floor, the trials' budget and the
search method; it reads and writes a recipe's ``search`` section. `TrialsPanel` fills, as
trials finish, a table and a Pareto plot (top-1 against the target's reduction, the best
point so far ringed). Both only show and edit plain data; the engine runs the search.
"""
from __future__ import annotations

import os
from typing import Optional

import pyqtgraph as pg
import torch
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from studio.engine.errors import StudioError
from studio.engine.jobs.recipe import SEARCH_METHODS, SearchOptions
from studio.engine.jobs.report_search import TRIAL_COLUMNS, trial_rows
from studio.engine.methods import get_method
from studio.engine.methods.targets import Target, family_targets

KINDS = (("macs", "MACs"), ("params", "Parameters"), ("size", "Size on disk"), ("latency", "Latency"))
EXAMPLES = {"macs": "2x or 20M", "params": "2x or 0.5M", "size": "2x or 100kB", "latency": "2x or 3ms"}
ERROR_COLOR = "#b91c1c"
BEST_COLOR = "#111827"
TRIAL_COLOR = "#2563eb"


class TargetForm(QWidget):
    """Target kind and value, accuracy floor, trials and method: a recipe's search section."""

    changed = Signal()
    analyseRequested = Signal()

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.setHorizontalSpacing(10)
        form.setVerticalSpacing(5)
        self.kind = QComboBox()
        for key, text in KINDS:
            self.kind.addItem(text, key)
        self.value = QLineEdit("2x")
        self.value.setToolTip("A reduction such as 2x (half the original figure), a ceiling with a unit: "
                              "20M MACs, 0.5M params, 100kB, 3ms; min (size, heuristic or grid); or a family "
                              "such as 1.5x,2x,3x: one model per value, each in the Runs table.")
        target = QWidget()
        row = QHBoxLayout(target)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.kind, 1)
        row.addWidget(self.value, 1)
        form.addRow("Target", target)
        self.error = QLabel()
        self.error.setWordWrap(True)
        self.error.setStyleSheet(f"color: {ERROR_COLOR};")
        self.error.hide()
        form.addRow(self.error)
        self.max_drop = QDoubleSpinBox()
        self.max_drop.setRange(0.0, 100.0)
        self.max_drop.setDecimals(1)
        self.max_drop.setSingleStep(0.5)
        self.max_drop.setSuffix(" pts")
        self.max_drop.setToolTip("The accuracy floor: at most this many points of top-1 below the original.")
        form.addRow("Max drop", self.max_drop)
        self.max_trials = QSpinBox()
        self.max_trials.setRange(1, 50)
        self.max_trials.setToolTip("Verified trials at most; each prunes, fine-tunes for the epochs below and "
                                   "evaluates.")
        form.addRow("Trials", self.max_trials)
        self.parallel = QSpinBox()
        self.parallel.setRange(1, max(1, os.cpu_count() or 1, torch.cuda.device_count()))
        self.parallel.setToolTip("Independent trials (grid points, family members) run this many at a time, "
                                 "one process each: a GPU each when training on CUDA, else the CPU cores split "
                                 "between them. Results are the same as one at a time.")
        form.addRow("At once", self.parallel)
        self.method = QComboBox()
        for name in SEARCH_METHODS:
            self.method.addItem(get_method(name).title, name)
        self.method.setToolTip(get_method(SEARCH_METHODS[0]).paper)
        form.addRow("Method", self.method)
        self.analyse = QPushButton("Analyse sensitivity")
        self.analyse.setToolTip("Probe every prunable group alone at 10 … 90 % on the validation images and colour "
                                "the graph by the top-1 each loses (the search does this first; cached).")
        form.addRow(self.analyse)
        for combo in (self.kind, self.method):
            # Size by a short text, as the strategy panel's other menus, so the panel stays narrow.
            combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(6)
            combo.currentIndexChanged.connect(self._edited)
        self.value.editingFinished.connect(self._edited)
        for spin in (self.max_drop, self.max_trials, self.parallel):
            spin.setKeyboardTracking(False)
            spin.valueChanged.connect(self._edited)
        self.analyse.clicked.connect(self.analyseRequested)
        self.set_search(SearchOptions())

    def set_search(self, search: SearchOptions) -> None:
        """Show ``search`` (its first target; more can be given in a recipe) without emitting `changed`."""
        widgets = (self.kind, self.value, self.max_drop, self.max_trials, self.parallel, self.method)
        for w in widgets:
            w.blockSignals(True)
        text = (search.targets or ["macs=2x"])[0]
        kind, _, amount = text.partition("=")
        self.kind.setCurrentIndex(max(0, self.kind.findData(kind.strip().lower())))
        self.value.setText(amount.strip())
        self.max_drop.setValue(search.max_drop)
        self.max_trials.setValue(search.max_trials)
        self.parallel.setValue(search.parallel)
        self.method.setCurrentIndex(max(0, self.method.findData(search.method)))
        self._extra_targets = list(search.targets[1:])
        self._base = search
        for w in widgets:
            w.blockSignals(False)
        self._check()

    def search_options(self) -> SearchOptions:
        """The form as a search section (other keys kept from the recipe it was shown with)."""
        target = f"{self.kind.currentData()}={self.value.text().strip()}"
        return SearchOptions(**{**vars(self._base), "method": self.method.currentData(),
                                "targets": [target, *self._extra_targets], "max_drop": self.max_drop.value(),
                                "max_trials": self.max_trials.value(), "parallel": self.parallel.value()})

    def target_error(self) -> str:
        """The message of a target the engine would refuse ('' when it parses)."""
        text = f"{self.kind.currentData()}={self.value.text().strip()}"
        try:
            if family_targets([text]) is None:   # "1.5x,2x,3x" is a family: one model per value
                Target.parse(text)
        except StudioError as exc:
            return str(exc)
        return ""

    def _check(self) -> None:
        message = self.target_error()
        self.error.setText(message)
        self.error.setVisible(bool(message))
        self.value.setPlaceholderText(EXAMPLES[self.kind.currentData()])

    def _edited(self) -> None:
        self._check()
        self.changed.emit()


class TrialsPanel(QWidget):
    """A running or finished search: the trials table and the Pareto plot, best point ringed."""

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        left = QVBoxLayout()
        self.status = QLabel("No search yet: choose “Find rates for a target” in the strategy panel and Run.")
        self.status.setWordWrap(True)
        left.addWidget(self.status)
        self.table = QTableWidget(0, len(TRIAL_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(TRIAL_COLUMNS))
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        left.addWidget(self.table, 1)
        lay.addLayout(left, 3)
        self.plot = pg.PlotWidget(background=None)
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        item = self.plot.getPlotItem()
        item.setLabel("left", "top-1", units="%")
        item.setLabel("bottom", "reduction ×")
        item.showGrid(x=True, y=True, alpha=0.15)
        self._points = item.plot([], [], pen=None, symbol="o", symbolSize=8, symbolBrush=TRIAL_COLOR, symbolPen=None)
        self._best = item.plot([], [], pen=None, symbol="star", symbolSize=16, symbolBrush=BEST_COLOR,
                               symbolPen=None)
        self._original = item.plot([], [], pen=None, symbol="s", symbolSize=8, symbolBrush="#9ca3af",
                                   symbolPen=None)
        lay.addWidget(self.plot, 2)
        self.trials: list[dict] = []
        self.best: Optional[int] = None
        self.original: Optional[tuple] = None

    def start(self, targets: list[str]) -> None:
        """A new search: clear the table and plot."""
        self.trials, self.best, self.original = [], None, None
        self.status.setText(f"Searching for {', '.join(targets)}: sensitivity analysis first, then trials…")
        self._redraw()

    def add_trial(self, record: dict, best: Optional[int]) -> None:
        """One finished trial (a `TrialEnd` event's values)."""
        self.trials.append(record)
        self.best = best
        self._redraw()
        met = "meets the targets" if record.get("met") else "misses a target"
        floor = "and the floor" if record.get("floor_ok") else "but not the floor"
        self.status.setText(f"Trial {record['trial']}: {met} {floor}."
                            + (f" Best so far: trial {best}." if best is not None else ""))

    def show_search(self, search: dict) -> None:
        """A finished search from a run folder's metrics (``metrics['search']``)."""
        self.trials = list(search.get("trials") or [])
        self.best = search.get("winner")
        original = search.get("original") or {}
        self.original = (1.0, 100 * original["top1"]) if original.get("top1") is not None else None
        self._redraw()
        self.status.setText(f"Search for {', '.join(search.get('targets') or [])}: "
                            + (f"winner trial {self.best}." if self.best is not None else "targets not met."))

    def finish(self, text: str) -> None:
        self.status.setText(text)

    def _redraw(self) -> None:
        rows = trial_rows({"search": {"trials": self.trials, "winner": self.best}})
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                cell = QTableWidgetItem(text)
                cell.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter if c in (1, 4, 5, 8) else
                                      Qt.AlignLeft | Qt.AlignVCenter)
                self.table.setItem(r, c, cell)
        pts = [(next(iter(t["ratios"].values())), 100 * t["top1"]) for t in self.trials if t.get("ratios")]
        self._points.setData([x for x, _ in pts], [y for _, y in pts])
        best = [t for t in self.trials if t.get("trial") == self.best and t.get("ratios")]
        self._best.setData([next(iter(t["ratios"].values())) for t in best], [100 * t["top1"] for t in best])
        self._original.setData(*([[self.original[0]], [self.original[1]]] if self.original else [[], []]))

    def plotted(self) -> list:
        """(reduction, top-1 %) of the plotted trials, for tests."""
        xs, ys = self._points.getData()
        return [] if xs is None else list(zip(xs.tolist(), ys.tolist()))
