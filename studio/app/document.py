"""What the window has open: the model, the data, its layer graph, the recipe being edited, the runs.

The document is the single place the widgets read from and write to. Plan edits (per-layer
rates, protection) go through its methods, which keep the recipe's plan consistent (a layer
is never both protected and rated) and emit `planChanged` so the graph, the inspector and
the live prediction follow.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Optional

from PySide6.QtCore import QObject, Signal

from studio.engine.data import DataBundle
from studio.engine.graph import LayerGraph, Layout
from studio.engine.jobs import Recipe, RunSummary
from studio.engine.models import LoadedModel


@dataclass
class OpenedModel:
    """What the model-loading task hands over: the model, its graph and its plain numbers."""
    loaded: LoadedModel
    layer_graph: LayerGraph
    layout: Layout
    facts: dict                      # params, macs, dense_bytes
    request: dict = field(default_factory=dict)   # how it was opened (spec, arch, trust, ...)


class Document(QObject):
    """The open model, data, recipe and runs, with change signals."""
    modelChanged = Signal()
    dataChanged = Signal()
    planChanged = Signal()
    runsChanged = Signal()
    accuracyChanged = Signal()

    def __init__(self, parent: Optional[QObject] = None):
        super().__init__(parent)
        self.model: Optional[OpenedModel] = None
        self.data: Optional[DataBundle] = None
        self.recipe = Recipe()
        self.runs: list[RunSummary] = []
        self.accuracy: Optional[dict] = None        # {'top1', 'top5', 'images'} of the open model on the data

    # ------------------------------------------------------------------ model and data
    def set_model(self, opened: OpenedModel) -> None:
        self.model = opened
        self.accuracy = None
        r = self.recipe
        r.model.spec = opened.request.get("spec", opened.loaded.spec)
        r.model.arch = opened.request.get("arch")
        r.model.num_classes = opened.request.get("num_classes")
        size = opened.request.get("input_size")
        r.model.input_size = list(size) if size else None
        r.model.trust = bool(opened.request.get("trust", False))
        # Per-layer choices belong to the previous model's layers.
        r.plan.layer_rates = {}
        r.plan.protected = []
        self.modelChanged.emit()
        self.planChanged.emit()

    def set_data(self, bundle: Optional[DataBundle]) -> None:
        self.data = bundle
        self.recipe.data.spec = bundle.spec if bundle is not None else None
        self.accuracy = None
        self.dataChanged.emit()

    def set_accuracy(self, accuracy: Optional[dict]) -> None:
        self.accuracy = accuracy
        self.accuracyChanged.emit()

    @property
    def layer_graph(self) -> Optional[LayerGraph]:
        return self.model.layer_graph if self.model else None

    def prunable(self) -> list[str]:
        return list(self.model.layer_graph.prunable) if self.model else []

    # ------------------------------------------------------------------ plan edits
    def effective_rates(self) -> dict[str, float]:
        """The rate each prunable layer gets: its own, else the global one (0 when protected)."""
        plan = self.recipe.plan
        protected = set(plan.protected)
        return {name: 0.0 if name in protected else float(plan.layer_rates.get(name, plan.rate))
                for name in self.prunable()}

    def protected(self) -> set[str]:
        return set(self.recipe.plan.protected)

    def set_layer_rate(self, names: list[str], rate: float) -> None:
        plan = self.recipe.plan
        targets = [n for n in names if n in set(self.prunable())]
        for n in targets:
            plan.layer_rates[n] = round(float(rate), 4)
            if n in plan.protected:
                plan.protected.remove(n)
        if targets:
            self.planChanged.emit()

    def set_protected(self, names: list[str], protect: bool) -> None:
        plan = self.recipe.plan
        targets = [n for n in names if n in set(self.prunable())]
        for n in targets:
            plan.layer_rates.pop(n, None)
            if protect and n not in plan.protected:
                plan.protected.append(n)
            if not protect and n in plan.protected:
                plan.protected.remove(n)
        if targets:
            self.planChanged.emit()

    def reset_layers(self, names: list[str]) -> None:
        plan = self.recipe.plan
        changed = False
        for n in names:
            changed |= plan.layer_rates.pop(n, None) is not None
            if n in plan.protected:
                plan.protected.remove(n)
                changed = True
        if changed:
            self.planChanged.emit()

    def replace_recipe(self, recipe: Recipe) -> None:
        """Adopt an edited recipe (strategy panel, session file); emits `planChanged`."""
        self.recipe = copy.deepcopy(recipe)
        self.planChanged.emit()

    # ------------------------------------------------------------------ runs
    def add_run(self, summary: RunSummary) -> bool:
        if any(r.path == summary.path for r in self.runs):
            return False
        self.runs.append(summary)
        self.runsChanged.emit()
        return True
