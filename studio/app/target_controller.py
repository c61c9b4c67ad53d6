"""Sensitivity analysis and target searches in the window.

`TargetController` owns the Trials panel and the graph's sensitivity legend, runs the
analysis on the engine thread (as a job: progress, Pause and Cancel as for a run), and
shows what the engine returns: the heat overlay on the graph, the curve in the inspector,
the trials as they finish, and at the end the winner's per-layer rates, which land in the
plan as ordinary rates the user can still edit. The search itself is a recipe with a
``search`` section that the main window runs like any job.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QCheckBox

from studio.app.sensitivity_view import HeatLegend, heat_values
from studio.app.target_panel import TrialsPanel
from studio.engine.errors import StudioError
from studio.engine.events import CancelToken, TrialEnd
from studio.engine.jobs import Recipe
from studio.engine.methods import MethodInput, get_method


class TargetController(QObject):
    """Runs sensitivity analyses, shows them, and turns a finished search into editable rates."""

    def __init__(self, document, graph, inspector, start_job: Callable, parent: Optional[QObject] = None):
        super().__init__(parent)
        self.document, self.graph, self.inspector = document, graph, inspector
        self._start_job = start_job
        self.trials = TrialsPanel()
        self.legend = HeatLegend()
        self.overlay = QCheckBox("Colour by sensitivity")
        self.overlay.setToolTip("Colour each prunable layer by the top-1 its group loses when pruned alone.")
        self.overlay.toggled.connect(self._show_overlay)
        self.sensitivity: Optional[dict] = None
        self.clear()

    # ---- the analysis --------------------------------------------------------------
    def analyse(self) -> None:
        """Analyse the open model on the open data (a job on the engine thread)."""
        d = self.document
        if d.model is None:
            raise StudioError("No model is open.", "Open a model first (File ▸ Open Model…).")
        if d.data is None:
            raise StudioError("Sensitivity analysis scores the model on validation images, and no data is open.",
                              "Open a dataset (File ▸ Open Data…) first.")
        loaded, bundle, plan = d.model.loaded, d.data, d.recipe.plan
        search = d.recipe.search
        method = get_method("sensitivity")
        options = method.resolve_options({"criterion": plan.criterion, **(
            {"rates": list(search.rates), "images": search.images} if search is not None else {})})

        def work(token: CancelToken):
            out = yield from method.run(MethodInput(loaded.module, tuple(loaded.input_size), data=bundle,
                                                    plan=plan, token=token), options)
            return out.summary["sensitivity"]
        self._start_job("sensitivity", work, self.show_sensitivity)

    def show_sensitivity(self, result: Optional[dict]) -> None:
        """Show an analysis (a `SensitivityResult` dict, or a search's compact one); None clears it."""
        self.sensitivity = result
        self.inspector.set_sensitivity(result)
        has = bool(result and result.get("groups"))
        self.overlay.setVisible(has)
        self.legend.setVisible(has and self.overlay.isChecked())
        if has and not self.overlay.isChecked():
            self.overlay.setChecked(True)      # shows it, through _show_overlay
        else:
            self._show_overlay(self.overlay.isChecked())

    def _show_overlay(self, on: bool) -> None:
        values, worst = heat_values(self.sensitivity) if self.sensitivity else ({}, 0.0)
        self.graph.set_heat(values if on and values else None)
        self.legend.set_worst(worst)
        self.legend.setVisible(bool(on and values))

    def clear(self) -> None:
        """A new model: its analysis and trials are gone."""
        self.sensitivity = None
        self.inspector.set_sensitivity(None)
        self.graph.set_heat(None)
        self.overlay.setChecked(False)
        self.overlay.hide()
        self.legend.hide()

    # ---- a search ------------------------------------------------------------------
    def search_started(self, recipe: Recipe) -> None:
        self.trials.start(list(recipe.search.targets))

    def feed(self, events: list) -> None:
        for e in events:
            if isinstance(e, TrialEnd):
                self.trials.add_trial(e.values, e.best)

    def search_finished(self, run_dir: Path, metrics: dict) -> None:
        """Show the finished search and land the winner's rates in the plan, ready to edit."""
        search = metrics.get("search") or {}
        self.trials.show_search(search)
        if search.get("sensitivity"):
            self.show_sensitivity(search["sensitivity"])
        winner = next((t for t in search.get("trials") or [] if t.get("trial") == search.get("winner")), None)
        if winner is None:
            return
        recipe = self.document.recipe
        recipe.search = None
        recipe.plan.rate, recipe.plan.global_ranking = 0.0, False
        recipe.plan.layer_rates = dict(winner["layer_rates"])
        self.document.replace_recipe(recipe)   # the graph and strategy panel show them as ordinary rates

    def search_failed(self, message: str) -> None:
        self.trials.finish(f"Search stopped: {message}")
