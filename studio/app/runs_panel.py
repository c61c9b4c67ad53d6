"""The runs table and the compare (Pareto) view of finished run folders.

`RunsPanel` lists `studio.engine.jobs.RunSummary` rows in a sortable table; "Compare" opens a
scatter of accuracy against cost (MACs or dense size) below it, with the Pareto front of the
runs and the unpruned base models as hollow markers. The panel only shows summaries the owner
hands it (`add_run`); reading folders and opening them is the owner's job, asked for through
`openRunRequested` and `runActivated`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pyqtgraph as pg
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt, QUrl, Signal
from PySide6.QtGui import QBrush, QColor, QDesktopServices
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from studio.engine.jobs import RunSummary, pareto_front
from studio.engine.jobs.report import delta_pt, finite, human_bytes, human_count

GOOD, BAD, MUTED = "#15803d", "#b91c1c", "#6b7280"
POINT, SELECTED, FRONT, BASE = "#2563eb", "#ea580c", "#16a34a", "#6b7280"
ARROW = " → "
SORT_ROLE = Qt.ItemDataRole.UserRole + 1


def _pair(before, after, fmt) -> str:
    if finite(before) is None and finite(after) is None:
        return "—"
    return f"{fmt(before)}{ARROW}{fmt(after)}"


def _ms(value) -> str:
    v = finite(value)
    return "—" if v is None else f"{v:.3g}"


def _pct(fraction) -> str:
    v = finite(fraction)
    return "—" if v is None else f"{v * 100:.1f}"


def _wall(seconds: float) -> str:
    if not seconds:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _rate(run: RunSummary) -> str:
    parts = [f"{run.rate * 100:.0f}%"]
    if run.layer_rates:
        parts.append(f"+{run.layer_rates} layer rate{'s' if run.layer_rates != 1 else ''}")
    if run.global_ranking:
        parts.append("global")
    return ", ".join(parts)


def _top1_delta(run: RunSummary) -> Optional[float]:
    b, a = finite(run.before.get("top1")), finite(run.after.get("top1"))
    return None if b is None or a is None else (a - b) * 100


def _macs_text(run: RunSummary) -> str:
    text = _pair(run.before.get("macs"), run.after.get("macs"), human_count)
    if finite(run.before.get("macs")) and finite(run.after.get("macs")):
        text += f"  ({run.speedup_macs:.2f}×)"
    return text


# (header, display text, sort key, right-aligned)
COLUMNS = (
    ("Run", lambda r: r.name, lambda r: r.name.lower(), False),
    ("Model", lambda r: r.model, lambda r: r.model.lower(), False),
    ("Criterion", lambda r: r.criterion, lambda r: r.criterion, False),
    ("Rate", _rate, lambda r: r.rate, True),
    ("Params", lambda r: _pair(r.before.get("params"), r.after.get("params"), human_count),
     lambda r: finite(r.after.get("params")), True),
    ("MACs (speed-up)", _macs_text, lambda r: finite(r.after.get("macs")), True),
    ("Size", lambda r: _pair(r.before.get("dense_bytes"), r.after.get("dense_bytes"), human_bytes),
     lambda r: finite(r.after.get("dense_bytes")), True),
    ("Latency ms", lambda r: _pair(r.before.get("latency_ms"), r.after.get("latency_ms"), _ms),
     lambda r: finite(r.after.get("latency_ms")), True),
    ("Top-1 %", lambda r: _pair(r.before.get("top1"), r.after.get("top1"), _pct),
     lambda r: finite(r.after.get("top1")), True),
    ("Δ top-1", lambda r: delta_pt(r.before.get("top1"), r.after.get("top1")) or "—", _top1_delta, True),
    ("Wall time", lambda r: _wall(r.wall_seconds), lambda r: r.wall_seconds, True),
)
DELTA_COLUMN = 9


class RunsTableModel(QAbstractTableModel):
    """One row per `RunSummary`, in the order they were added; sort keys under SORT_ROLE."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._runs: list[RunSummary] = []

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._runs)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section][0]
        return None

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        run = self._runs[index.row()]
        _, text, key, right = COLUMNS[index.column()]
        if role == Qt.ItemDataRole.DisplayRole:
            return text(run)
        if role == SORT_ROLE:
            return key(run)
        if role == Qt.ItemDataRole.TextAlignmentRole:
            horizontal = Qt.AlignmentFlag.AlignRight if right else Qt.AlignmentFlag.AlignLeft
            return int(horizontal | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ForegroundRole and index.column() == DELTA_COLUMN:
            delta = _top1_delta(run)
            if delta is not None:
                # within half a hundredth of a point is "no change", not a loss
                return QBrush(QColor(GOOD if delta > -0.005 else BAD))
        if role == Qt.ItemDataRole.ToolTipRole:
            notes = [str(run.path)]
            if run.created:
                notes.append(f"created {run.created}")
            if not run.trained:
                notes.append("untrained weights: accuracy figures mean little")
            return "\n".join(notes)
        if role == Qt.ItemDataRole.UserRole:
            return run
        return None

    def runs(self) -> list[RunSummary]:
        return list(self._runs)

    def run_at(self, row: int) -> RunSummary:
        return self._runs[row]

    def add(self, run: RunSummary) -> int:
        """Append ``run``, or replace the row of the same folder; returns its row."""
        key = _path_key(run.path)
        for row, existing in enumerate(self._runs):
            if _path_key(existing.path) == key:
                self._runs[row] = run
                self.dataChanged.emit(self.index(row, 0), self.index(row, len(COLUMNS) - 1))
                return row
        row = len(self._runs)
        self.beginInsertRows(QModelIndex(), row, row)
        self._runs.append(run)
        self.endInsertRows()
        return row


class RunsSortProxy(QSortFilterProxyModel):
    """Sorts on SORT_ROLE; rows with an unknown value (None) go last in either direction."""

    def lessThan(self, left, right) -> bool:
        a, b = left.data(SORT_ROLE), right.data(SORT_ROLE)
        if a is None or b is None:
            # Qt reverses lessThan for a descending sort, so "unknown is largest" must flip with it
            descending = self.sortOrder() == Qt.SortOrder.DescendingOrder
            return (a is None and b is not None) if descending else (b is None and a is not None)
        return a < b


def _path_key(path) -> str:
    try:
        return str(Path(path).expanduser().resolve())
    except OSError:
        return str(path)


# cost axes of the compare plot: (combo text, RunSummary stage key, axis title, units)
COSTS = (("MACs", "macs", "MACs", ((1e9, "G"), (1e6, "M"), (1e3, "K"))),
         ("Dense size", "dense_bytes", "Dense size", ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"))))


class CompareView(QWidget):
    """Accuracy (after top-1) against cost for a list of runs, with their Pareto front."""

    pointClicked = Signal(object)   # the RunSummary of a clicked point

    def __init__(self, parent=None):
        super().__init__(parent)
        self._runs: list[RunSummary] = []
        self._selected: set = set()
        self._labels: list = []
        self._factor = 1.0   # cost units per axis unit (1e6 for "MACs (M)")
        self.cost_combo = QComboBox()
        for text, *_ in COSTS:
            self.cost_combo.addItem(text)
        self.cost_combo.currentIndexChanged.connect(self._draw)
        top = QHBoxLayout()
        top.addWidget(QLabel("<b>Compare runs</b> — top-1 accuracy after fine-tuning against"))
        top.addWidget(self.cost_combo)
        top.addStretch(1)

        self.plot = pg.PlotWidget(background="w")
        self.plot.setAntialiasing(True)
        item = self.plot.getPlotItem()
        item.showGrid(x=True, y=True, alpha=0.15)
        item.setMenuEnabled(False)
        for side in ("left", "bottom"):
            item.getAxis(side).setPen(pg.mkPen("#9ca3af"))
            item.getAxis(side).setTextPen(pg.mkPen("#374151"))
        item.setLabel("left", "top-1 %", color="#374151")
        self.legend = item.addLegend(offset=(-8, -8), labelTextColor="#374151", labelTextSize="8pt",
                                     brush=pg.mkBrush(255, 255, 255, 210), pen=pg.mkPen("#e5e7eb"))
        self.front_curve = pg.PlotDataItem(pen=pg.mkPen(FRONT, width=2, style=Qt.PenStyle.DashLine),
                                           name="Pareto front")
        self.base_scatter = pg.ScatterPlotItem(symbol="o", size=11, pen=pg.mkPen(BASE, width=2),
                                               brush=pg.mkBrush(0, 0, 0, 0), name="unpruned model")
        self.run_scatter = pg.ScatterPlotItem(symbol="o", size=10, pen=pg.mkPen("w", width=1),
                                              brush=pg.mkBrush(POINT), name="run", hoverable=True)
        self.selected_scatter = pg.ScatterPlotItem(symbol="o", size=15, pen=pg.mkPen(SELECTED, width=2.5),
                                                   brush=pg.mkBrush(0, 0, 0, 0), name="selected")
        for it in (self.front_curve, self.base_scatter, self.run_scatter, self.selected_scatter):
            item.addItem(it)
        self.run_scatter.sigClicked.connect(self._clicked)

        self.note = QLabel()
        self.note.setWordWrap(True)
        self.note.setStyleSheet(f"color: {MUTED};")
        self.note.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 4, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.note)

    def set_runs(self, runs: list[RunSummary], selected: list[RunSummary]) -> None:
        self._runs = list(runs)
        self.set_selected(selected, draw=False)
        self._draw()

    def set_selected(self, selected: list[RunSummary], draw: bool = True) -> None:
        self._selected = {_path_key(r.path) for r in selected}
        if draw:
            self._draw_selection()

    def cost_key(self) -> str:
        return COSTS[self.cost_combo.currentIndex()][1]

    def drawn_runs(self) -> list[RunSummary]:
        """The runs that have a point (those with both an accuracy and a cost)."""
        key = self.cost_key()
        return [r for r in self._runs if finite(r.after.get("top1")) is not None and finite(r.after.get(key))]

    def front_runs(self) -> list[RunSummary]:
        """The drawn runs on the Pareto front, by increasing cost."""
        runs = self.drawn_runs()
        key = self.cost_key()
        return [runs[i] for i in pareto_front([(r.after[key], r.after["top1"]) for r in runs])]

    # ---------------------------------------------------------------------------------- drawing

    def _scale(self, values: list) -> tuple[float, str]:
        _, _, title, units = COSTS[self.cost_combo.currentIndex()]
        top = max(values, default=0)
        for factor, unit in units:
            if top >= factor:
                return factor, f"{title} ({unit})"
        return 1.0, f"{title} (B)" if title == "Dense size" else title

    def _draw(self) -> None:
        item = self.plot.getPlotItem()
        for label in self._labels:
            item.removeItem(label)
        self._labels = []
        key = self.cost_key()
        runs = self.drawn_runs()
        bases = []   # one hollow marker per distinct unpruned model, in the order runs were added
        for r in self._runs:
            cost, top1 = finite(r.before.get(key)), finite(r.before.get("top1"))
            if cost and top1 is not None and (r.model, cost, top1) not in bases:
                bases.append((r.model, cost, top1))
        factor, title = self._scale([r.after[key] for r in runs] + [c for _, c, _ in bases])
        self._factor = factor
        item.setLabel("bottom", title, color="#374151")

        spots = [{"pos": (r.after[key] / factor, r.after["top1"] * 100), "data": r} for r in runs]
        self.run_scatter.setData(spots)
        self.base_scatter.setData([{"pos": (c / factor, t * 100)} for _, c, t in bases])
        front = self.front_runs()
        xs, ys = [], []
        for r in front:
            x, y = r.after[key] / factor, r.after["top1"] * 100
            if xs:   # staircase: the best accuracy reachable at or below each cost
                xs.append(x)
                ys.append(ys[-1])
            xs.append(x)
            ys.append(y)
        self.front_curve.setData(xs, ys)
        for r in runs:
            label = pg.TextItem(r.name, color="#1f2937", anchor=(-0.08, 1.1))
            label.setPos(r.after[key] / factor, r.after["top1"] * 100)
            item.addItem(label)
            self._labels.append(label)
        for (model, cost, top1) in bases:
            label = pg.TextItem(f"{model} (unpruned)", color=BASE, anchor=(1.06, 1.1))
            label.setPos(cost / factor, top1 * 100)
            item.addItem(label)
            self._labels.append(label)
        self._draw_selection()
        drawn = {id(r) for r in runs}
        missing = [r.name for r in self._runs if id(r) not in drawn]
        if not self._runs:
            self.note.setText("No runs yet: open a run folder or finish a run to compare.")
        elif missing:
            self.note.setText("Not drawn, no accuracy or cost was measured (a run without validation data): "
                              + ", ".join(missing))
        else:
            self.note.setText(f"{len(runs)} run{'s' if len(runs) != 1 else ''}; "
                              f"{len(front)} on the Pareto front (no other run is both cheaper and more accurate).")
        item.enableAutoRange()
        # labels are not part of the auto range: leave room on the right and above for them
        item.getViewBox().setDefaultPadding(0.12)

    def _draw_selection(self) -> None:
        key, factor = self.cost_key(), self._factor
        chosen = [r for r in self.drawn_runs() if _path_key(r.path) in self._selected]
        self.selected_scatter.setData([{"pos": (r.after[key] / factor, r.after["top1"] * 100)} for r in chosen])

    def _clicked(self, _item, points, *_):
        if len(points):
            self.pointClicked.emit(points[0].data())


class RunsPanel(QWidget):
    """Table of finished runs with open/compare buttons and the compare plot below it."""

    openRunRequested = Signal()
    runActivated = Signal(object)   # RunSummary double-clicked

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.model = RunsTableModel(self)
        self.proxy = RunsSortProxy(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(24)
        header = self.table.horizontalHeader()
        header.setSortIndicator(-1, Qt.SortOrder.AscendingOrder)   # keep the order runs were added
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        self.table.setSortingEnabled(True)
        self.table.doubleClicked.connect(self._activated)
        self.table.selectionModel().selectionChanged.connect(self._selection_changed)

        self.open_button = QPushButton("Open Run Folder…")
        self.open_button.setToolTip("Add a finished run folder (with metrics.json) to the table")
        self.open_button.clicked.connect(self.openRunRequested)
        self.compare_button = QPushButton("Compare")
        self.compare_button.setToolTip("Plot accuracy against cost for the runs, with the Pareto front")
        self.compare_button.clicked.connect(self.compare)
        self.folder_button = QPushButton("Show in Folder")
        self.folder_button.setToolTip("Open the selected run's folder in the file manager")
        self.folder_button.clicked.connect(self._show_in_folder)
        buttons = QHBoxLayout()
        buttons.addWidget(self.open_button)
        buttons.addWidget(self.compare_button)
        buttons.addWidget(self.folder_button)
        buttons.addStretch(1)
        self.count_label = QLabel()
        self.count_label.setStyleSheet(f"color: {MUTED};")
        buttons.addWidget(self.count_label)

        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addLayout(buttons)
        top_layout.addWidget(self.table, 1)
        self.compare_view = CompareView()
        self.compare_view.pointClicked.connect(self._select_run)
        self.compare_view.hide()   # shown by compare(), then kept up to date
        self._comparing = False
        # Side by side: the panel lives in a short, wide bottom dock.
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(top)
        self.splitter.addWidget(self.compare_view)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setChildrenCollapsible(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.splitter)
        self._update_buttons()

    # ------------------------------------------------------------------------------- public API

    def add_run(self, summary: RunSummary) -> None:
        """Add a run's row; a run whose folder is already listed replaces that row (no duplicate)."""
        self.model.add(summary)
        self._fit_columns()
        self._update_buttons()
        if self._comparing:
            self.compare_view.set_runs(self.model.runs(), self.selected_runs())

    def runs(self) -> list[RunSummary]:
        """All runs, in the order they were added."""
        return self.model.runs()

    def selected_runs(self) -> list[RunSummary]:
        """The selected runs, top to bottom as the table is sorted."""
        rows = sorted(self.table.selectionModel().selectedRows(), key=lambda i: i.row())
        return [self.model.run_at(self.proxy.mapToSource(i).row()) for i in rows]

    def select_runs(self, runs: list[RunSummary]) -> None:
        """Select the rows of ``runs`` (by folder)."""
        wanted = {_path_key(r.path) for r in runs}
        selection = self.table.selectionModel()
        selection.clearSelection()
        for row, run in enumerate(self.model.runs()):
            if _path_key(run.path) in wanted:
                index = self.proxy.mapFromSource(self.model.index(row, 0))
                selection.select(index, selection.SelectionFlag.Select | selection.SelectionFlag.Rows)

    def compare(self) -> None:
        """Show the compare plot: every run as a point, the selected ones highlighted, and the Pareto front."""
        if not self._comparing:
            # first time: give the plot most of the height, the table enough for a few rows
            total = max(self.splitter.height(), 400)
            table = min(total // 2, 96 + 26 * self.model.rowCount())
            self.splitter.setSizes([table, total - table])
        self._comparing = True
        self.compare_view.show()
        self.compare_view.set_runs(self.model.runs(), self.selected_runs())

    # ------------------------------------------------------------------------------- internals

    def _fit_columns(self) -> None:
        self.table.resizeColumnsToContents()
        for column in range(len(COLUMNS) - 1):
            # a very long run name must not push the numbers out of view
            self.table.setColumnWidth(column, min(self.table.columnWidth(column) + 4, 260))

    def _update_buttons(self) -> None:
        count = self.model.rowCount()
        self.compare_button.setEnabled(count > 0)
        self.folder_button.setEnabled(len(self.table.selectionModel().selectedRows()) == 1)
        self.count_label.setText(f"{count} run{'s' if count != 1 else ''}" if count else "No runs yet")

    def _selection_changed(self, *_):
        self._update_buttons()
        if self._comparing:
            self.compare_view.set_selected(self.selected_runs())

    def _activated(self, index) -> None:
        if index.isValid():
            self.runActivated.emit(self.model.run_at(self.proxy.mapToSource(index).row()))

    def _select_run(self, run: RunSummary) -> None:
        self.select_runs([run])
        rows = self.table.selectionModel().selectedRows()
        if rows:
            self.table.scrollTo(rows[0])

    def _show_in_folder(self) -> None:
        runs = self.selected_runs()
        if len(runs) == 1:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(runs[0].path)))
