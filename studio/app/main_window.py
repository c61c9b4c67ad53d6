"""The studio's main window: wires the document, the panels and the engine thread together.

The window owns no pruning or training logic. It turns user actions into engine calls run
on the `TaskRunner`'s thread, and renders what comes back: a model and its graph, data,
predictions, importance scores, job events and run folders.
"""
from __future__ import annotations

import copy
import datetime
import html
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from PySide6.QtCore import QEvent, QRect, QSettings, QStandardPaths, Qt, QTimer
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QCheckBox,
    QDockWidget,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMenuBar,
    QMessageBox,
    QPlainTextEdit,
    QToolBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from studio.app import dialogs
from studio.app.document import Document, OpenedModel
from studio.app.graph_view import GraphView, node_size
from studio.app.inspector import InspectorPanel
from studio.app.job_panel import JobPanel, format_duration
from studio.app.pdf_report import write_pdf_report_in_subprocess
from studio.app.plots import LivePlots
from studio.app.runs_panel import RunsPanel
from studio.app.screen_fit import PREFERRED_SIZE, centred_rect, fit_rect, side_widths
from studio.app.session import Autosaver, RecentFiles, Session, autosave_path, load_session, save_session
from studio.app.strategy import StrategyPanel
from studio.app.target_controller import TargetController
from studio.app.tasks import TaskRunner
from studio.app.warning_strip import WarningStrip
from studio.engine.data import check_compatible, load_data
from studio.engine.errors import StudioError
from studio.engine.events import CancelToken, Log, Phase
from studio.engine.graph import LayerGraph, build_graph, layered_layout
from studio.engine.jobs import Recipe, calibration_batches, read_run, run_recipe
from studio.engine.jobs.demo_plan import with_demo_plan
from studio.engine.jobs.family import is_family, run_family
from studio.engine.jobs.search import run_search
from studio.engine.methods.targets import Target
from studio.engine.jobs.report import human_bytes, human_count
from studio.engine.metrics import count_macs, dense_size_bytes
from studio.engine.models import load_model
from studio.engine.pruning import channel_importance, get_criterion
from studio.engine.pruning.preflight import Preflight, Prediction, predict, preflight
from studio.engine.training import evaluate

APP_NAME = "Compression Studio"
PREDICTION_DELAY_MS = 250   # wait for the user to stop dragging before re-estimating
SIDE_PANEL_WIDTHS = (340, 360)   # strategy, inspector on a wide window (narrowed on a small one)
MIN_INSPECTOR_WIDTH = 240        # below this the inspector's facts and slider stop being readable
BOTTOM_DOCKS = ("plots", "runs", "trials", "log")
BOTTOM_SHARE = 0.3               # an opened bottom panel takes this share of the window's height…
BOTTOM_MAX_HEIGHT = 300          # …up to this many pixels
LAYOUT_VERSION = 2               # window states saved by an older layout are not restored


def default_runs_dir() -> Path:
    """Where GUI runs are written: $STUDIO_RUNS_DIR, else the platform's app-data folder."""
    env = os.environ.get("STUDIO_RUNS_DIR")
    if env:
        return Path(env)
    return Path(QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)) / "runs"


def target_note(recipe: Recipe, now: tuple[int, int]) -> str:
    """What target mode will aim for, in the user's terms, for the strategy panel's prediction."""
    parts = []
    for text in recipe.search.targets:
        try:
            target = Target.parse(text)
        except StudioError as exc:
            return exc.problem
        if target.kind in ("macs", "params"):
            original = now[0] if target.kind == "params" else now[1]
            parts.append(f"{text}: at most {target.describe(target.goal(original))}")
        else:
            parts.append(f"{text} ({'measured' if target.kind == 'latency' else 'compressed size'})")
    return (f"Target mode: {'; '.join(parts)}, losing at most {recipe.search.max_drop:g} point(s) of top-1. "
            "The rates are found by the search when you Run.")


def _preflight(loaded) -> Optional[Preflight]:
    """Prunable and blocked groups and the MACs a plan can reach, or None when the model cannot be pruned."""
    if not loaded.prunable:
        return None
    try:
        return preflight(loaded.module, loaded.input_size)
    except Exception:  # noqa: BLE001 - the header then leaves it out; pruning reports the real error
        return None


def _open_model_work(request: dict) -> OpenedModel:
    """Load a model and trace its graph (engine thread)."""
    loaded = load_model(request["spec"], arch=request.get("arch"), num_classes=request.get("num_classes"),
                        trust=bool(request.get("trust")), input_size=request.get("input_size"),
                        pretrained=request.get("pretrained", True), download=bool(request.get("download")))
    try:
        layer_graph = build_graph(loaded.module, loaded.input_size)
    except StudioError as exc:
        if loaded.prunable:
            raise
        # A TorchScript archive can still be evaluated; say why there is no graph.
        import networkx as nx
        layer_graph = LayerGraph(graph=nx.DiGraph(), warnings=[f"No layer graph: {exc.problem}"])
    layout = layered_layout(layer_graph.graph, node_size=node_size)
    module = loaded.module
    try:
        macs = count_macs(module, loaded.input_size)
    except Exception:  # noqa: BLE001 - a model the counter cannot run still opens
        macs = None
    found = _preflight(loaded) if macs else None
    facts = {"params": loaded.num_params, "macs": macs, "dense_bytes": dense_size_bytes(module),
             "macs_reach": found.macs_range[0] if found and found.macs_range[1] else None, "preflight": found}
    return OpenedModel(loaded=loaded, layer_graph=layer_graph, layout=layout, facts=facts, request=dict(request))


def prediction_note(pred: Prediction) -> str:
    """The line under the predicted figures: what the plan cannot reach, or that surgery would fail."""
    if pred.failure:
        return (f"Surgery is likely to fail with this plan ({pred.failure[:160]}). A run finds the groups at fault, "
                "leaves them unpruned and prunes the rest; or protect layers until this note goes.")
    if pred.kept:
        names = ", ".join(k.root for k in pred.kept[:3]) + (f" and {len(pred.kept) - 3} more" if len(pred.kept) > 3
                                                            else "")
        return (f"Counted as kept: {len(pred.kept)} group(s) the hazards block ({names}); their rates do not "
                "apply. See the warnings above.")
    return ""


def _blocked_text(found: Optional[Preflight]) -> list[str]:
    """'2 of 12 groups blocked' for the header, the reasons in its tooltip (the inspector says them per layer)."""
    if found is None or not found.blocked:
        return []
    why = "&#10;".join(html.escape(f"{b.root}: {b.why}", quote=True) for b in found.blocked)
    return [f"<span style='color:#b45309' title=\"{why}\">{len(found.blocked)} of {found.groups} groups "
            "blocked (left unpruned)</span>"]


class MainWindow(QMainWindow):
    """One studio window."""

    def __init__(self, *, settings: Optional[QSettings] = None, runs_dir: Optional[Path] = None,
                 autosave_file: Optional[Path] = None):
        super().__init__()
        self.settings = settings or QSettings()
        self.runs_dir = Path(runs_dir) if runs_dir else default_runs_dir()
        self.document = Document(self)
        self.runner = TaskRunner(self)
        self.recent = RecentFiles(self.settings)
        self.session_path: Optional[Path] = None
        self.job_token: Optional[CancelToken] = None
        self._searching = False                          # the running job is a target search
        self.last_error: Optional[BaseException] = None   # for tests and the log
        self._prediction_generation = 0
        self._result_layers: Optional[dict] = None     # layer -> (channels before, after) of the last run
        self._data_warning = ""                         # why the open data does not fit the model
        self._scores: dict = {}                         # (layer, criterion) -> importance scores
        self._side_widths_auto = True                   # False once the user sized the side panels
        self._watching_screen = False                   # refit when the window moves to another screen
        self._build_widgets()
        self._build_actions()
        self._connect()
        self.autosaver = Autosaver(autosave_file or autosave_path(), self.snapshot, parent=self)
        self._restore_window_state()
        self._refresh_all()

    # ================================================================== construction
    def _build_widgets(self) -> None:
        self.setWindowTitle(APP_NAME)
        self.setAcceptDrops(True)
        self.setDockOptions(QMainWindow.DockOption.AnimatedDocks | QMainWindow.DockOption.AllowTabbedDocks)
        self.graph = GraphView()
        self.inspector = InspectorPanel()
        self.target = TargetController(self.document, self.graph, self.inspector, self._start_job, self)
        self._build_top()
        self._build_centre()
        self._build_docks()
        self._build_panel_strip()
        self._place_on_screen()

    def _build_top(self) -> None:
        """Menus and tools on one row, then the model's header and its warnings, across the whole width.

        Spanning the window (above the side panels) gives the header room for its facts on
        two lines and keeps a row of tools out of the graph's height.
        """
        self.menu_bar = QMenuBar()
        self.find_box = QLineEdit()
        self.find_box.setPlaceholderText("Find layer (name or type)…")
        self.find_box.setClearButtonEnabled(True)
        self.find_box.setFixedWidth(240)
        self.fit_button = QToolButton()
        self.fit_button.setText("Fit")
        self.fit_button.setToolTip("Fit the whole graph in view (F)")
        self.toolbar = QToolBar("Main")
        self.toolbar.setObjectName("toolbar-main")
        self.toolbar.setMovable(False)
        self.toolbar.addWidget(self.find_box)
        self.toolbar.addWidget(self.fit_button)
        self.toolbar.addSeparator()
        self.header = QLabel()
        self.header.setObjectName("header")
        self.header.setTextFormat(Qt.TextFormat.RichText)
        self.header.setWordWrap(True)
        self.header.setStyleSheet("#header { background: #f1f5f9; border-bottom: 1px solid #cbd5e1;"
                                  " padding: 5px 10px; font-size: 13px; }")
        self.warnings = WarningStrip()
        top = QWidget()
        column = QVBoxLayout(top)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        column.addWidget(self.menu_bar)
        column.addWidget(self.header)
        column.addWidget(self.warnings)
        if sys.platform == "darwin" and self.menu_bar.isNativeMenuBar():
            self.addToolBar(self.toolbar)          # a native menu bar has no corner for tools
        else:
            self.menu_bar.setCornerWidget(self.toolbar, Qt.Corner.TopRightCorner)
        # Never call self.menuBar() after this: it would replace this widget with an empty menu bar.
        self.setMenuWidget(top)

    def _build_centre(self) -> None:
        """The graph, under a row for the toggles that only mean something after a run or an analysis."""
        self.result_check = QCheckBox("Show channels after the last run")
        self.result_check.setEnabled(False)
        self.result_check.hide()                 # shown once a run has finished
        self.graph_tools = QWidget()
        tools = QHBoxLayout(self.graph_tools)
        tools.setContentsMargins(6, 3, 6, 3)
        tools.addWidget(self.result_check)
        tools.addWidget(self.target.overlay)
        tools.addWidget(self.target.legend)
        tools.addStretch(1)
        for widget in (self.result_check, self.target.overlay, self.target.legend):
            widget.installEventFilter(self)      # the row shows only while one of them does
        centre = QWidget()
        column = QVBoxLayout(centre)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        column.addWidget(self.graph_tools)
        column.addWidget(self.graph, 1)
        self._update_graph_tools()
        self.setCentralWidget(centre)

    def _build_docks(self) -> None:
        self.strategy = StrategyPanel()
        self.plots = LivePlots()
        self.runs_panel = RunsPanel()
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(5000)
        self.job_panel = JobPanel()
        self.docks = {}
        for key, title, widget, area in (
                ("strategy", "Strategy", self.strategy, Qt.DockWidgetArea.LeftDockWidgetArea),
                ("inspector", "Inspector", self.inspector, Qt.DockWidgetArea.RightDockWidgetArea),
                ("plots", "Live plots", self.plots, Qt.DockWidgetArea.BottomDockWidgetArea),
                ("runs", "Runs", self.runs_panel, Qt.DockWidgetArea.BottomDockWidgetArea),
                ("trials", "Trials", self.target.trials, Qt.DockWidgetArea.BottomDockWidgetArea),
                ("log", "Log", self.log, Qt.DockWidgetArea.BottomDockWidgetArea)):
            dock = QDockWidget(title, self)
            dock.setObjectName(f"dock-{key}")
            dock.setWidget(widget)
            self.addDockWidget(area, dock)
            self.docks[key] = dock
        self.docks["inspector"].setMinimumWidth(MIN_INSPECTOR_WIDTH)
        # The side panels run the full height; the bottom panels sit under the graph only.
        for corner, area in ((Qt.Corner.BottomLeftCorner, Qt.DockWidgetArea.LeftDockWidgetArea),
                             (Qt.Corner.BottomRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)):
            self.setCorner(corner, area)
        self.tabifyDockWidget(self.docks["plots"], self.docks["runs"])
        self.tabifyDockWidget(self.docks["runs"], self.docks["trials"])
        self.tabifyDockWidget(self.docks["trials"], self.docks["log"])
        self.collapse_bottom()

    def _build_panel_strip(self) -> None:
        """The status bar's buttons for the bottom panels: the collapsed panel area, a click away.

        Before a run the plots are empty and the runs table too, so the panels start
        collapsed and give their height to the graph; a run opens them (`open_bottom`).
        """
        strip = QWidget()
        row = QHBoxLayout(strip)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(2)
        self.panel_buttons = {}
        for key in BOTTOM_DOCKS:
            button = QToolButton()
            button.setText(self.docks[key].windowTitle())
            button.setCheckable(True)
            button.setAutoRaise(True)
            button.setToolTip(f"Show or hide the {self.docks[key].windowTitle()} panel under the graph")
            button.clicked.connect(lambda checked, k=key: self._toggle_bottom(k))
            row.addWidget(button)
            self.panel_buttons[key] = button
            self.docks[key].visibilityChanged.connect(self._update_panel_buttons)
        line = QFrame()
        line.setFrameShape(QFrame.Shape.VLine)
        line.setFrameShadow(QFrame.Shadow.Sunken)
        row.addSpacing(4)
        row.addWidget(line)
        # Permanent, so that status messages do not hide it.
        self.statusBar().addPermanentWidget(strip)
        self.statusBar().addPermanentWidget(self.job_panel, 1)
        self._update_panel_buttons()

    def _place_on_screen(self) -> None:
        """Open at the preferred size, or as large as the screen allows, in the middle of it."""
        available = self.screen().availableGeometry()
        self.setGeometry(centred_rect(PREFERRED_SIZE, available))
        self._fit_side_docks()

    def _action(self, text: str, slot: Callable, shortcut=None, tip: str = "") -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        if tip:
            action.setStatusTip(tip)
            action.setToolTip(tip)
        action.triggered.connect(slot)
        return action

    def _build_actions(self) -> None:
        a = self.actions_by_name = {
            "open_model": self._action("Open &Model…", self.choose_model, QKeySequence.StandardKey.Open,
                                       "Open a torchvision or CIFAR model, a .pt/.pth file or a Python class"),
            "open_data": self._action("Open &Data…", self.choose_data, "Ctrl+D",
                                      "Open an image folder, CIFAR/MNIST folder, .npz or the demo data"),
            "open_demo": self._action("Open the &Demo", self.open_demo, None,
                                      "The shipped trained ResNet-20 and CIFAR-10 subset"),
            "open_run": self._action("Open &Run Folder…", self.choose_run_folder, None,
                                     "Add a run folder (from the GUI or the CLI) to the runs table"),
            "export": self._action("&Export…", self.export_run, "Ctrl+E",
                                   "Copy a run's folder (models, recipe, HTML and PDF report) where you choose"),
            "open_session": self._action("Open &Session…", self.choose_session, "Ctrl+Shift+O"),
            "save_session": self._action("&Save Session", self.save_session, QKeySequence.StandardKey.Save),
            "save_session_as": self._action("Save Session &As…", self.save_session_as, "Ctrl+Shift+S"),
            "quit": self._action("&Quit", self.close, QKeySequence.StandardKey.Quit),
            "fit": self._action("&Fit Graph", self.graph.fit, "F"),
            "find": self._action("F&ind Layer", self._focus_find, QKeySequence.StandardKey.Find),
            "run": self._action("&Run", self.run_job, "Ctrl+R", "Prune, fine-tune, measure and export"),
            "pause": self._action("&Pause / Resume", self._toggle_pause, "Ctrl+P"),
            "cancel": self._action("&Cancel", self.cancel_job, "Ctrl+.",
                                   "Stop the job; the model and runs are left as before Run"),
            "evaluate": self._action("&Evaluate Accuracy", self.evaluate_accuracy, None,
                                     "Top-1/top-5 of the open model on the open data's validation split"),
            "analyse": self._action("Analyse &Sensitivity", self.analyse_sensitivity, None,
                                    "Prune each coupled group alone at 10 … 90 % and colour the graph by the "
                                    "top-1 it loses"),
        }
        bar = self.menu_bar
        file_menu = bar.addMenu("&File")
        for key in ("open_model", "open_data", "open_demo"):
            file_menu.addAction(a[key])
        self.recent_menus = {kind: file_menu.addMenu(title) for kind, title in
                             (("models", "Recent Models"), ("data", "Recent Data"), ("sessions", "Recent Sessions"))}
        file_menu.addSeparator()
        for key in ("open_run", "export"):
            file_menu.addAction(a[key])
        file_menu.addSeparator()
        for key in ("open_session", "save_session", "save_session_as"):
            file_menu.addAction(a[key])
        file_menu.addSeparator()
        file_menu.addAction(a["quit"])
        view_menu = bar.addMenu("&View")
        view_menu.addAction(a["fit"])
        view_menu.addAction(a["find"])
        view_menu.addSeparator()
        for dock in self.docks.values():
            view_menu.addAction(dock.toggleViewAction())
        run_menu = bar.addMenu("&Run")
        for key in ("run", "pause", "cancel", "evaluate", "analyse"):
            run_menu.addAction(a[key])
        for key in ("open_model", "open_data", "run", "export"):
            self.toolbar.addAction(a[key])
        self.strategy.set_run_action(a["run"])
        self._refresh_recent_menus()

    def _connect(self) -> None:
        d = self.document
        d.modelChanged.connect(self._on_model_changed)
        d.dataChanged.connect(self._refresh_header)
        d.dataChanged.connect(self._on_data_changed)
        d.accuracyChanged.connect(self._refresh_header)
        d.planChanged.connect(self._on_plan_changed)
        for signal in (d.modelChanged, d.dataChanged, d.planChanged, d.runsChanged):
            signal.connect(lambda *_: self.autosaver.mark_dirty())
        self.graph.selectionChanged.connect(self._on_selection)
        self.graph.nodeActivated.connect(self._on_node_activated)
        self.graph.rateRequested.connect(self._ask_rate)
        self.graph.protectRequested.connect(d.set_protected)
        self.graph.resetRequested.connect(d.reset_layers)
        self.inspector.rateChanged.connect(d.set_layer_rate)
        self.inspector.protectChanged.connect(d.set_protected)
        self.inspector.histogramRequested.connect(self._request_histogram)
        self.strategy.changed.connect(self._on_strategy_changed)
        self.strategy.analyseRequested.connect(self.analyse_sensitivity)
        self.runs_panel.openRunRequested.connect(self.choose_run_folder)
        self.find_box.returnPressed.connect(self._find)
        self.fit_button.clicked.connect(self.graph.fit)
        self.result_check.toggled.connect(self._show_result_channels)
        self.job_panel.pauseRequested.connect(self._pause)
        self.job_panel.resumeRequested.connect(self._resume)
        self.job_panel.cancelRequested.connect(self.cancel_job)
        self._prediction_timer = QTimer(self)
        self._prediction_timer.setSingleShot(True)
        self._prediction_timer.setInterval(PREDICTION_DELAY_MS)
        self._prediction_timer.timeout.connect(self._predict)

    # ================================================================== state shown
    def _refresh_all(self) -> None:
        self.strategy.set_recipe(self.document.recipe)
        self._refresh_header()
        self._refresh_enabled()

    def _refresh_enabled(self) -> None:
        running = self.job_running
        a = self.actions_by_name
        for key in ("open_model", "open_data", "open_demo", "open_session", "run", "evaluate", "analyse"):
            a[key].setEnabled(not running)
        a["analyse"].setEnabled(not running and self.document.model is not None)
        a["run"].setEnabled(not running and self.document.model is not None)
        a["pause"].setEnabled(running)
        a["cancel"].setEnabled(running)
        for menu in self.recent_menus.values():
            menu.setEnabled(not running)
        self.strategy.set_editable(not running)
        self.inspector.set_editable(not running)
        self.graph.set_editable(not running)

    @property
    def job_running(self) -> bool:
        return self.job_token is not None

    def _refresh_header(self) -> None:
        d = self.document
        if d.model is None:
            self.header.setText("<b>No model open.</b> File ▸ Open Model… (Ctrl+O), File ▸ Open the Demo, "
                                "or drop a .pt/.pth file here.")
            self.setWindowTitle(APP_NAME)
            return
        loaded, facts = d.model.loaded, d.model.facts
        parts = [f"<b>{loaded.arch or loaded.spec}</b> <span style='color:#64748b'>({loaded.kind})</span>",
                 f"{human_count(facts['params'])} params",
                 f"{human_count(facts['macs'])} MACs" if facts.get("macs") else "MACs unknown",
                 *([f"<span style='color:#64748b' title='every prunable group at 90 % to unpruned'>a plan can "
                    f"reach {human_count(facts['macs_reach'])}–{human_count(facts['macs'])} MACs</span>"]
                   if facts.get("macs_reach") else []),
                 *_blocked_text(facts.get("preflight")),
                 human_bytes(facts["dense_bytes"])]
        if d.accuracy:
            parts.append(f"top-1 <b>{d.accuracy['top1']:.1%}</b> on {d.accuracy['images']:,} val images")
        elif d.data is not None:
            parts.append("<span style='color:#64748b'>accuracy: evaluating…</span>"
                         if self.runner.busy else "accuracy not measured")
        if not loaded.trained:
            parts.append("<span style='background:#dc2626; color:white; padding:2px 6px;'>&nbsp;UNTRAINED&nbsp;"
                         "</span> <span style='color:#dc2626'>random weights: accuracy is meaningless</span>")
        if not loaded.prunable:
            parts.append(f"<span style='color:#b45309'>read-only: {loaded.why_not_prunable}</span>")
        line = " · ".join(parts)
        if d.data is not None:
            data_line = f"Data: {d.data.summary()}"
            if self._data_warning:   # the reason, however long, is in the warning strip below
                data_line += " <span style='color:#dc2626'>⚠ does not fit the model</span>"
        else:
            data_line = "No data open: File ▸ Open Data… (needed for fine-tuning, accuracy and data-driven criteria)."
        self.header.setText(f"{line}<br><span style='color:#334155'>{data_line}</span>")
        title = f"{loaded.arch or loaded.spec}"
        if d.data is not None:
            title += f" + {d.data.name or d.data.kind}"
        if self.session_path:
            title += f" — {self.session_path.name}"
        self.setWindowTitle(f"{title} — {APP_NAME}")

    # ================================================================== opening things
    def choose_model(self) -> None:
        dialog = dialogs.OpenModelDialog(self)
        if dialog.exec():
            self.open_model(dialog.spec())

    def open_demo(self) -> None:
        """The shipped model and data, with the first-run plan of the demo's card (as `studio prune demo`)."""
        def first_run_plan() -> None:
            try:
                self.document.replace_recipe(with_demo_plan(self.document.recipe))
            except StudioError as exc:   # a damaged card: the demo still opens, with the default plan
                self.statusBar().showMessage(f"The demo's first-run plan could not be read: {exc.problem}")

        self.open_model({"spec": "demo"}, then=lambda: self.open_data("demo", then=first_run_plan))

    def open_model(self, request: dict, then: Optional[Callable[[], None]] = None) -> None:
        """Load a model on the engine thread; `then` runs after it is shown."""
        if self.job_running:
            return
        request = {k: v for k, v in request.items() if v is not None}
        self.statusBar().showMessage(f"Opening {request['spec']}…")
        self._log(f"Opening model {request['spec']}")

        def done(opened: OpenedModel) -> None:
            opened.request.pop("download", None)   # a one-off: sessions reopen from the cache
            self.document.set_model(opened)
            self.recent.add("models", request["spec"])
            self._refresh_recent_menus()
            self.statusBar().showMessage(opened.loaded.summary())
            self._log(f"Model: {opened.loaded.summary()}")
            for w in opened.layer_graph.warnings:
                self._log(w, "warning")
            if self.document.data is not None:   # data opened before: re-check it against this head
                self._check_data()
                self.evaluate_accuracy()
            if then:
                then()

        def failed(exc: BaseException, details: str) -> None:
            if dialogs.model_needs_trust(exc) and not request.get("trust"):
                if dialogs.ask_trust(self, request["spec"]):
                    self.open_model({**request, "trust": True}, then)
                    return
                self.statusBar().showMessage("Not opened: the file was not trusted.")
                return
            self._fail(exc, details)

        self.runner.submit("open model", lambda: _open_model_work(request), on_done=done, on_error=failed)

    def choose_data(self) -> None:
        dialog = dialogs.OpenDataDialog(self)
        if dialog.exec():
            self.open_data(dialog.spec())

    def open_data(self, spec: str, then: Optional[Callable[[], None]] = None) -> None:
        if self.job_running:
            return
        model = self.document.model
        size = tuple(model.loaded.input_size) if model else None
        self.statusBar().showMessage(f"Opening data {spec}…")
        self._log(f"Opening data {spec}")

        def work():
            return load_data(spec, input_size=size, channels=size[0] if size else None)

        def done(bundle) -> None:
            self.recent.add("data", spec)
            self._refresh_recent_menus()
            self.document.set_data(bundle)
            self._log(f"Data: {bundle.summary()}")
            self.statusBar().showMessage(bundle.summary())
            self._check_data()
            self.evaluate_accuracy()
            if then:
                then()

        self.runner.submit("open data", work, on_done=done, on_error=self._fail)

    def _check_data(self) -> None:
        """Warn (without refusing) when the data does not fit the model's head or input."""
        d = self.document
        self._data_warning = ""
        if d.model is not None and d.data is not None:
            try:
                check_compatible(d.data, num_classes=d.model.loaded.num_classes,
                                 input_size=tuple(d.model.loaded.input_size))
            except StudioError as exc:
                self._data_warning = exc.problem
                self._log(f"Data does not match the model: {exc}", "warning")
                QMessageBox.warning(self, "Data does not match the model", str(exc))
        self._refresh_warnings()
        self._refresh_header()

    def evaluate_accuracy(self) -> None:
        d = self.document
        if d.model is None or d.data is None or self._data_warning or self.job_running:
            return
        module, val = d.model.loaded.module, d.data.val
        opened = d.model

        def work():
            result = yield from evaluate(module, val)
            return {"top1": result.top1, "top5": result.top5, "images": len(val)}

        def done(acc: dict) -> None:
            if self.document.model is opened:
                self.document.set_accuracy(acc)
                self._log(f"Accuracy of the open model: top-1 {acc['top1']:.2%}, top-5 {acc['top5']:.2%}")

        self.runner.submit("evaluate", work, on_done=done, on_error=self._fail)
        self._refresh_header()

    def choose_run_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a run folder", str(self.runs_dir))
        if folder:
            self.open_run_folder(folder)

    def open_run_folder(self, folder) -> None:
        try:
            summary = read_run(folder)
        except StudioError as exc:
            self._fail(exc, "")
            return
        if self.document.add_run(summary):
            self.runs_panel.add_run(summary)
        self.open_bottom("runs")

    # ================================================================== graph, inspector, plan
    def _on_model_changed(self) -> None:
        opened = self.document.model
        self._scores = {}
        self._result_layers = None
        self.result_check.setChecked(False)
        self.result_check.setEnabled(False)
        self.result_check.hide()
        self.target.clear()
        self._refresh_warnings()
        self._refresh_header()
        # The header and warnings change the graph's height: lay them out before the graph
        # chooses its zoom, so that it opens at the top of the graph.
        self.layout().activate()
        self.centralWidget().layout().activate()
        self.graph.set_graph(opened.layer_graph, opened.layout)   # opens at a readable zoom
        found = opened.facts.get("preflight")
        self.inspector.set_blocked({layer: b.why for b in (found.blocked if found else []) for layer in b.layers})
        self.inspector.show_selection(opened.layer_graph, [], {}, set())
        self._refresh_enabled()
        self.graph.setFocus()   # arrow keys walk the graph from here

    def _on_data_changed(self) -> None:
        # Data-driven criteria (Taylor, HRank) score with the data: old scores are stale.
        self._scores = {k: v for k, v in self._scores.items() if not get_criterion(k[1]).needs_data}
        if get_criterion(self.document.recipe.plan.criterion).needs_data:
            self.inspector.invalidate_histogram()

    def _on_plan_changed(self) -> None:
        d = self.document
        if d.model is not None:
            self.graph.set_rates(self._shown_rates(), d.protected())
            self._on_selection(self.graph.selected_nodes())
        self.strategy.set_recipe(d.recipe)
        self._schedule_prediction()

    def _on_strategy_changed(self) -> None:
        recipe = copy.deepcopy(self.document.recipe)
        self.strategy.apply_to(recipe)
        old = self.document.recipe.plan.criterion
        self.document.replace_recipe(recipe)
        if recipe.plan.criterion != old:   # importance scores depend on the criterion
            self.inspector.invalidate_histogram()

    def _shown_rates(self) -> dict:
        """The rates the graph and inspector show: in target mode the search will choose them, so none.

        Layers the pre-flight blocks keep every channel, whatever the plan says: they show 0.
        """
        d = self.document
        if d.recipe.search is not None:
            return {}
        found = d.model.facts.get("preflight") if d.model is not None else None
        blocked = {layer for b in (found.blocked if found else []) for layer in b.layers}
        return {name: 0.0 if name in blocked else rate for name, rate in d.effective_rates().items()}

    def _on_selection(self, names: list) -> None:
        d = self.document
        if d.model is None:
            return
        self.inspector.show_selection(d.model.layer_graph, list(names), self._shown_rates(), d.protected())
        if names:
            self.docks["inspector"].raise_()

    def _on_node_activated(self, name: str) -> None:
        """Enter on a graph node: the inspector shows it, in view, with the keyboard in its controls."""
        dock = self.docks["inspector"]
        dock.show()
        dock.raise_()
        self._on_selection(self.graph.selected_nodes() or [name])
        self.inspector.focus_controls()

    def _refresh_warnings(self) -> None:
        """The warning strip: the model's tracing hazards and why the data does not fit, each in full a click away."""
        d = self.document
        warnings = list(d.model.layer_graph.warnings) if d.model is not None else []
        if self._data_warning:
            warnings.append(f"The open data does not fit the model: {self._data_warning}")
        self.warnings.set_warnings(warnings)

    def _ask_rate(self, names: list) -> None:
        rates = self.document.effective_rates()
        current = rates.get(names[0], self.document.recipe.plan.rate) if names else 0.5
        rate = dialogs.ask_rate(self, current)
        if rate is not None:
            self.document.set_layer_rate(names, rate)

    def _request_histogram(self, layer: str) -> None:
        d = self.document
        if d.model is None:
            return
        if self.job_running:
            self.inspector.show_histogram_message("Importance scores are available when the job finishes.")
            return
        criterion = get_criterion(d.recipe.plan.criterion)
        key = (layer, criterion.name)
        if key in self._scores:   # scores depend on the criterion, not on the rate: no need to rescore
            self.inspector.show_histogram(layer, self._scores[key], self._shown_rates().get(layer, 0.0))
            return
        calibration = None
        if criterion.needs_data:
            if d.data is None:
                self.inspector.show_histogram_message(f"{criterion.title} scores channels with data: "
                                                      "open a dataset (File ▸ Open Data…).")
                return
            calibration = calibration_batches(d.data, 32, 2, d.recipe.seed)
        module, size = d.model.loaded.module, tuple(d.model.loaded.input_size)
        opened = d.model
        self.inspector.show_histogram_message(f"Scoring channels with {criterion.title}…")

        def work():
            example = torch.randn(1, *size, generator=torch.Generator().manual_seed(0))
            return channel_importance(module, layer, criterion.name, example, calibration=calibration)

        def done(scores) -> None:
            if self.document.model is not opened:
                return
            self._scores[key] = scores
            if layer in self.graph.selected_nodes():
                self.inspector.show_histogram(layer, scores, self._shown_rates().get(layer, 0.0))

        def failed(exc: BaseException, details: str) -> None:
            self.inspector.show_histogram_message(str(exc) if isinstance(exc, StudioError)
                                                  else f"Could not score channels: {exc}")
            self._log(details or str(exc), "error")

        self.runner.submit("score channels", work, on_done=done, on_error=failed)

    def _schedule_prediction(self) -> None:
        if self.document.model is not None and self.document.model.loaded.prunable:
            self.strategy.show_prediction(self._now_counts(), None, "estimating…")
            self._prediction_timer.start()

    def _now_counts(self):
        facts = self.document.model.facts
        return (facts["params"], facts["macs"] or 0)

    def _predict(self) -> None:
        d = self.document
        if d.model is None or self.job_running:
            return
        self._prediction_generation += 1
        generation = self._prediction_generation
        plan = copy.deepcopy(d.recipe.plan)
        module, size = d.model.loaded.module, tuple(d.model.loaded.input_size)
        if d.recipe.search is not None:
            self.strategy.show_prediction(self._now_counts(), None, target_note(d.recipe, self._now_counts()))
            return

        found = d.model.facts.get("preflight")
        hazards, groups = (found.hazards, found.group_list) if found is not None else (None, None)

        def work():
            return predict(module, plan, size, hazards, groups)

        def done(pred) -> None:
            if generation == self._prediction_generation:
                self.strategy.show_prediction(self._now_counts(), None if pred.failure else (pred.params, pred.macs),
                                              prediction_note(pred))

        def failed(exc: BaseException, details: str) -> None:
            if generation == self._prediction_generation:
                text = exc.problem if isinstance(exc, StudioError) else f"Cannot estimate: {exc}"
                self.strategy.show_prediction(self._now_counts(), None, text)

        self.runner.submit("estimate", work, on_done=done, on_error=failed)

    def _find(self) -> None:
        found = self.graph.find(self.find_box.text())
        self.statusBar().showMessage(f"{len(found)} layer(s) match '{self.find_box.text()}'" if found
                                     else f"No layer matches '{self.find_box.text()}'")

    def _focus_find(self) -> None:
        self.find_box.setFocus()
        self.find_box.selectAll()

    def _show_result_channels(self, on: bool) -> None:
        self.graph.set_result_channels(self._result_layers if on else None)

    # ================================================================== running
    def build_run_recipe(self) -> Recipe:
        recipe = copy.deepcopy(self.document.recipe)
        self.strategy.apply_to(recipe)
        recipe.data.spec = self.document.data.spec if self.document.data is not None else None
        recipe.validate()
        return recipe

    def run_job(self, recipe: Optional[Recipe] = None) -> None:
        d = self.document
        if self.job_running or d.model is None:
            return
        try:
            recipe = recipe or self.build_run_recipe()
            if get_criterion(recipe.plan.criterion).needs_data and d.data is None:
                raise StudioError(f"The {recipe.plan.criterion} criterion scores channels with data, and no data "
                                  "is open.", "Open a dataset (File ▸ Open Data…) or pick a data-free criterion.")
            if self._data_warning and (recipe.finetune.epochs or recipe.sparse_training.epochs):
                raise StudioError(f"The open data does not fit the model: {self._data_warning}",
                                  "Open data that matches the model's classes and input size.")
        except StudioError as exc:
            self._fail(exc, "")
            return
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        what = (f"search-{re.sub(r'[^A-Za-z0-9.]+', '-', recipe.search.targets[0])}" if recipe.search is not None
                else f"{recipe.plan.criterion}-{round(recipe.plan.rate * 100)}")
        out = self.runs_dir / f"{stamp}-{what}"
        n = 2
        while out.exists():
            out = out.with_name(f"{stamp}-{what}-{n}")
            n += 1
        token = CancelToken()
        loaded, bundle = d.model.loaded, d.data
        started = time.monotonic()

        search = recipe.search is not None

        family = is_family(recipe)

        def work():
            job = run_family if family else run_search if search else run_recipe
            result = yield from job(recipe, out, token=token, loaded=loaded, bundle=bundle)
            yield Phase("report", "Writing report.pdf")
            runs = ([result.run_dir / m["folder"] for m in result.metrics["family"]["members"]
                     if m["outcome"] == "met"] if family else [result.run_dir])
            notes = []
            for run in runs:
                try:
                    write_pdf_report_in_subprocess(run)
                except StudioError as exc:   # the run itself succeeded; say what is missing
                    notes.append(str(exc))
            # The slimmed module stays on the engine thread; the window reads the run folder.
            return {"run_dir": str(runs[-1]) if runs else str(result.run_dir), "runs": [str(r) for r in runs],
                    "pdf_note": " ".join(notes), "family": family}

        self.job_token = token
        self.plots.start_run(dict(d.model.facts))
        self.job_panel.set_running(True, {"sparse-train": recipe.sparse_training.epochs,
                                          "fine-tune": recipe.finetune.epochs, "retrain": recipe.finetune.epochs})
        self.open_bottom("trials" if search else "plots")   # collapsed until now: the plots fill from here
        if search:
            self.target.search_started(recipe)
        self._searching = search
        self._refresh_enabled()
        self._log(f"Run started → {out}")
        self.runner.submit("run", work, token=token, on_events=self._on_job_events,
                           on_done=lambda r: self._on_job_done(r, started),
                           on_error=self._on_job_failed, on_cancel=self._on_job_cancelled)

    def _on_job_events(self, events: list) -> None:
        self.plots.add_events(events)
        self.job_panel.feed(events)
        self.target.feed(events)
        for e in events:
            if isinstance(e, Log):
                self._log(e.message, e.level)

    def _job_ended(self) -> None:
        self.job_token = None
        self._refresh_enabled()
        self._schedule_prediction()   # estimates are held back while a job runs

    def _on_job_done(self, result: dict, started: float) -> None:
        # The plots' timer draws what is left, one chart per tick: drawing all three here would
        # repaint them in one pass on top of the runs table and graph updates below.
        self._job_ended()
        run_dir = Path(result["run_dir"])
        if result["pdf_note"]:
            self._log(result["pdf_note"], "error")
        if not result["runs"]:
            self.job_panel.finish("Done", "no member of the family met its target: see the Trials and Log")
            return
        for folder in result["runs"]:             # a family adds every member that met its target
            summary = read_run(Path(folder))
            if self.document.add_run(summary):
                self.runs_panel.add_run(summary)
        self._result_layers = {layer["name"]: (layer["channels_before"], layer["channels_after"])
                               for layer in summary.layers}
        self.result_check.setEnabled(True)
        self.result_check.show()
        self.result_check.setChecked(True)
        self._show_result_channels(True)
        took = format_duration(time.monotonic() - started)
        top1 = summary.after.get("top1")
        acc = f", top-1 {top1:.1%}" if top1 is not None else ""
        self.job_panel.finish("Done", f"in {took}: {summary.speedup_macs:.2f}× fewer MACs{acc}")
        self._log(f"Run finished: {run_dir}")
        if self._searching and not result["family"]:
            metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
            self.target.search_finished(run_dir, metrics)
            self._log("The winner's per-layer rates are now the plan: edit them in the graph or inspector.")

    def _on_job_failed(self, exc: BaseException, details: str) -> None:
        if self._searching:
            self.target.search_failed(exc.problem if isinstance(exc, StudioError) else str(exc))
        self._job_ended()
        self.plots.restore_previous()
        self.job_panel.finish("Failed", "nothing was changed")
        self._fail(exc, details)

    def _on_job_cancelled(self) -> None:
        self._job_ended()
        self.plots.restore_previous()
        self.job_panel.finish("Cancelled", "nothing was changed")
        self._log("Run cancelled; the model and the runs are as they were before Run.")

    # ================================================================== sensitivity
    def analyse_sensitivity(self) -> None:
        try:
            self.target.analyse()
        except StudioError as exc:
            self._fail(exc, "")

    def _start_job(self, name: str, work: Callable, on_done: Callable) -> None:
        """Run ``work(token)`` (an engine generator) as a job: progress, Pause and Cancel as for a run."""
        if self.job_running:
            return
        token = CancelToken()
        self.job_token, self._searching = token, False
        self.job_panel.set_running(True, {})
        self._refresh_enabled()
        started = time.monotonic()

        def done(result) -> None:
            self._job_ended()
            self.job_panel.finish("Done", f"{name} in {format_duration(time.monotonic() - started)}")
            on_done(result)

        def failed(exc: BaseException, details: str) -> None:
            self._job_ended()
            self.job_panel.finish("Failed", "nothing was changed")
            self._fail(exc, details)

        def cancelled() -> None:
            self._job_ended()
            self.job_panel.finish("Cancelled", "nothing was changed")

        self.runner.submit(name, lambda: work(token), token=token, on_events=self._on_job_events,
                           on_done=done, on_error=failed, on_cancel=cancelled)

    def _pause(self) -> None:
        if self.job_token is not None:
            self.job_token.pause()
            self._log("Paused after the current batch.")

    def _resume(self) -> None:
        if self.job_token is not None:
            self.job_token.resume()
            self._log("Resumed.")

    def _toggle_pause(self) -> None:
        if self.job_running:
            self.job_panel.pause_button.click()

    def cancel_job(self) -> None:
        if self.job_token is not None:
            self.job_token.cancel()
            self._log("Cancelling after the current batch…")

    # ================================================================== export
    def export_run(self, run=None, destination=None) -> Optional[Path]:
        """Copy a run folder (the selected or the latest run) into ``destination`` on the engine thread.

        Returns the folder the export will create, or None when it was refused.
        """
        runs = self.runs_panel.selected_runs() or self.document.runs[-1:]
        run = run or (runs[0] if runs else None)
        if run is None:
            self._fail(StudioError("There is no run to export yet.",
                                   "Press Run first, or open a run folder (File ▸ Open Run Folder…)."), "")
            return None
        if destination is None:
            chosen = QFileDialog.getExistingDirectory(self, f"Export {run.name} into…",
                                                      self.settings.value("paths/export", str(Path.home())))
            if not chosen:
                return None
            destination = chosen
            self.settings.setValue("paths/export", chosen)
        target = Path(destination) / run.name
        if target.exists():
            self._fail(StudioError(f"{target} already exists.", "Choose another folder; exports never overwrite."),
                       "")
            return None
        source = run.path

        def work() -> Path:
            # Copy into a hidden folder and rename at the end: a failed export leaves nothing.
            staging = target.with_name(f".{target.name}.partial")
            try:
                shutil.rmtree(staging, ignore_errors=True)
                shutil.copytree(source, staging)
                if not (staging / "report.pdf").exists():   # a CLI run folder has the HTML report only
                    write_pdf_report_in_subprocess(staging)
                os.replace(staging, target)
            except OSError as exc:
                raise StudioError(f"Export to {destination} failed: {exc.strerror or exc}.",
                                  "Check that the folder is writable and the disk has space.") from exc
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            return target

        def done(path: Path) -> None:
            self._log(f"Exported {run.name} → {path}")
            self.statusBar().showMessage(f"Exported to {path}")

        self.statusBar().showMessage(f"Exporting {run.name}…")
        self.runner.submit("export", work, on_done=done, on_error=self._fail)
        return target

    # ================================================================== sessions
    def snapshot(self) -> Session:
        d = self.document
        model = None
        if d.model is not None:
            model = dict(d.model.request)
            if model.get("input_size"):
                model["input_size"] = list(model["input_size"])
        return Session(model=model, data=d.data.spec if d.data is not None else None,
                       recipe=d.recipe.to_dict(), runs=[str(r.path) for r in d.runs],
                       view={"selected": self.graph.selected_nodes()})

    def choose_session(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open session", self.settings.value("paths/session", ""),
                                              "Studio sessions (*.studio)")
        if path:
            self.open_session(path)

    def save_session(self) -> None:
        if self.session_path is None:
            self.save_session_as()
        else:
            self._write_session(self.session_path)

    def save_session_as(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save session", self.settings.value("paths/session", ""),
                                              "Studio sessions (*.studio)")
        if path:
            if not path.endswith(".studio"):
                path += ".studio"
            self._write_session(Path(path))

    def _write_session(self, path: Path) -> None:
        try:
            save_session(self.snapshot(), path)
        except (StudioError, OSError) as exc:
            self._fail(exc, "")
            return
        self.session_path = Path(path)
        self.settings.setValue("paths/session", str(Path(path).parent))
        self.recent.add("sessions", str(path))
        self._refresh_recent_menus()
        self.statusBar().showMessage(f"Session saved: {path}")
        self._refresh_header()

    def open_session(self, path) -> None:
        try:
            session = load_session(path)
        except StudioError as exc:
            self._fail(exc, "")
            return
        self.session_path = Path(path)
        self.recent.add("sessions", str(path))
        self._refresh_recent_menus()
        self.restore_session(session)

    def restore_session(self, session: Session) -> None:
        """Reopen a session's model, data, recipe and runs (the model loads on the engine thread)."""
        recipe = Recipe.from_dict(session.recipe)
        selected = (session.view or {}).get("selected", [])

        def after_model() -> None:
            self.document.replace_recipe(recipe)
            self.graph.select_nodes(selected)
            if session.data:
                self.open_data(session.data)

        for folder in session.runs:
            try:
                summary = read_run(folder)
            except StudioError as exc:
                self._log(f"Run folder of the session skipped: {exc}", "warning")
                continue
            if self.document.add_run(summary):
                self.runs_panel.add_run(summary)
        if session.model:
            request = dict(session.model)
            if request.pop("trust", False):
                # Never unpickle silently: a session file could have been swapped.
                if not dialogs.ask_trust(self, request["spec"]):
                    return
                request["trust"] = True
            if request.get("input_size"):
                request["input_size"] = tuple(request["input_size"])
            self.open_model(request, then=after_model)
        else:
            self.document.replace_recipe(recipe)

    # ================================================================== recent files, drops
    def _refresh_recent_menus(self) -> None:
        openers = {"models": lambda s: self.open_model({"spec": s}), "data": self.open_data,
                   "sessions": self.open_session}
        for kind, menu in self.recent_menus.items():
            menu.clear()
            entries = self.recent.list(kind)
            for entry in entries:
                menu.addAction(entry, lambda checked=False, e=entry, k=kind: openers[k](e))
            menu.setEnabled(bool(entries) and not self.job_running)

    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt override
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt override
        for url in event.mimeData().urls():
            self.open_path(url.toLocalFile())
        event.acceptProposedAction()

    def open_path(self, path: str) -> None:
        """Open a dropped file or folder by what it is: session, run folder, data, or model."""
        p = Path(path)
        if p.suffix == ".studio":
            self.open_session(p)
        elif p.is_dir() and (p / "metrics.json").is_file():
            self.open_run_folder(p)
        elif p.is_dir() or p.suffix == ".npz":
            self.open_data(str(p))
        else:
            self.open_model({"spec": str(p)})

    # ================================================================== messages
    def _log(self, message: str, level: str = "info") -> None:
        stamp = time.strftime("%H:%M:%S")
        colour = {"warning": "#b45309", "error": "#dc2626"}.get(level)
        text = message.replace("&", "&amp;").replace("<", "&lt;").replace("\n", "<br>")
        self.log.appendHtml(f"<span style='color:#64748b'>{stamp}</span> "
                            + (f"<span style='color:{colour}'>{text}</span>" if colour else text))

    def _fail(self, exc: BaseException, details: str) -> None:
        """Every failure ends here: a readable dialog, the full details in the log."""
        self.last_error = exc
        self.statusBar().showMessage(str(exc)[:200])
        self._log(f"{type(exc).__name__}: {exc}" + (f"\n{details}" if details and not isinstance(exc, StudioError)
                                                     else ""), "error")
        dialogs.show_error(self, exc, details)
        self._refresh_header()

    # ================================================================== window state and size
    def _restore_window_state(self) -> None:
        geometry = self.settings.value("window/geometry")
        state = self.settings.value("window/state")
        if geometry is not None:
            self.restoreGeometry(geometry)
        if state is not None and self.restoreState(state, LAYOUT_VERSION):
            self._side_widths_auto = False   # the user's panel widths: only narrowed, never reset
        self.collapse_bottom()   # the panels under the graph open with a run, whatever was saved

    def fit_to_screen(self, available: Optional[QRect] = None) -> None:
        """Keep the window, and the minimum size its panels ask for, within ``available``.

        ``available`` defaults to the available geometry of the screen the window is on.
        Without an explicit minimum, Qt sets the window's minimum to what its layout needs and
        grows the window to it: one long unbreakable line would push it past the screen.
        """
        available = available or self.screen().availableGeometry()
        frame = self.frameGeometry()
        extra_w, extra_h = frame.width() - self.width(), frame.height() - self.height()
        needed = self.layout().totalMinimumSize()
        self.setMinimumSize(min(needed.width(), available.width() - extra_w),
                            min(needed.height(), available.height() - extra_h))
        fitted = fit_rect(frame, available)
        if fitted != frame:
            self.resize(fitted.width() - extra_w, fitted.height() - extra_h)
            self.move(fitted.topLeft())

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        handle = self.windowHandle()
        if handle is not None and not self._watching_screen:
            self._watching_screen = True
            handle.screenChanged.connect(lambda *_: self.fit_to_screen())
            # The window manager adds the title bar after the first show: fit again with it.
            QTimer.singleShot(300, self.fit_to_screen)
        self.fit_to_screen()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        if event.oldSize().width() != event.size().width():
            # After this resize has been laid out, not in the middle of it.
            QTimer.singleShot(0, self._fit_side_docks)

    def _fit_side_docks(self) -> None:
        """Size the side panels for the window's width, so that the graph keeps the room (`side_widths`).

        Until the user drags a panel's edge (or a saved layout is restored) the panels follow
        the window, up to their preferred widths; after that they are only ever narrowed.
        """
        docks = [self.docks["strategy"], self.docks["inspector"]]
        if self.isVisible() and not all(d.isVisible() and not d.isFloating() for d in docks):
            return
        current = (docks[0].width(), docks[1].width()) if self.isVisible() else SIDE_PANEL_WIDTHS
        minimum = (docks[0].minimumSizeHint().width(), max(MIN_INSPECTOR_WIDTH, docks[1].minimumSizeHint().width()))
        wanted = side_widths(self.width(), SIDE_PANEL_WIDTHS if self._side_widths_auto else current, minimum)
        if wanted != current:
            self.resizeDocks(docks, list(wanted), Qt.Orientation.Horizontal)

    def event(self, event) -> bool:  # noqa: N802 - Qt override
        # A press that reaches the main window itself, not one of its children, is on the
        # separator between a dock and the graph: from now on the user sizes the panels.
        if event.type() == QEvent.Type.MouseButtonPress and self.childAt(event.position().toPoint()) is None:
            self._side_widths_auto = False
        return super().event(event)

    # ================================================================== the panels under the graph
    def collapse_bottom(self) -> None:
        """Hide the plots, runs, trials and log panels; the status bar's buttons reopen them."""
        for key in BOTTOM_DOCKS:
            self.docks[key].hide()

    def open_bottom(self, key: str) -> None:
        """Show the panels under the graph as tabs, ``key``'s in front, at a modest height."""
        was_open = any(self.docks[k].isVisible() for k in BOTTOM_DOCKS)
        for k in BOTTOM_DOCKS:
            self.docks[k].show()
        self.docks[key].raise_()
        if not was_open and self.isVisible():
            # Lay the shown docks out, size them and paint the window now, in one go: sized
            # before the layout pass, Qt would give them their size hint; and the first paint
            # of the charts (~50 ms) is better spent here, before a run starts, than in the
            # middle of its progress updates.
            self.layout().activate()
            height = min(BOTTOM_MAX_HEIGHT, round(BOTTOM_SHARE * self.height()))
            self.resizeDocks([self.docks[key]], [height], Qt.Orientation.Vertical)
            self.layout().activate()
            self.repaint()

    def _toggle_bottom(self, key: str) -> None:
        """A status-bar button: bring its panel to the front, or collapse the area if it is in front already."""
        if self._bottom_in_front() == key:
            self.collapse_bottom()
        else:
            self.open_bottom(key)
        self._update_panel_buttons()

    def _bottom_in_front(self) -> Optional[str]:
        """The bottom panel the user sees now, or None when the area is collapsed."""
        for key in BOTTOM_DOCKS:
            dock = self.docks[key]
            if dock.isVisible() and not dock.visibleRegion().isEmpty():
                return key
        return None

    def _update_panel_buttons(self, *_) -> None:
        front = self._bottom_in_front()
        for key, button in self.panel_buttons.items():
            button.setChecked(key == front)

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 - Qt override
        if event.type() in (QEvent.Type.ShowToParent, QEvent.Type.HideToParent) and watched in (
                self.result_check, self.target.overlay, self.target.legend):
            self._update_graph_tools()
        return super().eventFilter(watched, event)

    def _update_graph_tools(self) -> None:
        """The row above the graph shows only while one of its toggles does (after a run or an analysis)."""
        self.graph_tools.setVisible(any(w.isVisibleTo(self.graph_tools) for w in
                                        (self.result_check, self.target.overlay, self.target.legend)))

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        if self.job_running:
            answer = QMessageBox.question(self, "A job is running",
                                          "Cancel the running job and quit? Nothing it did so far is kept.")
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState(LAYOUT_VERSION))
        self.runner.shutdown()
        self.autosaver.discard()   # a clean exit leaves nothing to restore
        super().closeEvent(event)

