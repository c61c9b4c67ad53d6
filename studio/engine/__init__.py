"""The Qt-free engine of Compression Studio.

Everything the GUI shows is computed here: model loading, data, the layer graph and its
layout, pruning criteria, pruning plans and surgery, training, metrics, export, recipes
and run folders. Long operations are generators that yield plain-data events (see
`studio.engine.events`) and return their result, so the CLI, the GUI worker and tests
drive them the same way. Nothing in this package may import Qt (a test checks it).

The engine is grouped into wings, each importing only the wings below it (import-linter
checks this in the test suite; see docs/ARCHITECTURE.md):

    jobs/       recipes, the job pipeline, run folders, reports
    methods/    compression methods behind one interface (sensitivity, search, ...)
    models/ pruning/ training/ metrics/ export/     the building blocks
    data/ graph/                                    inputs and structure
    errors.py events.py files.py demo_files.py      ground, used by all

The names below are the stable entry points the GUI, the CLI and the benches use. They
are imported on first use, so ``import studio.engine`` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

_ENTRY_POINTS = {
    "StudioError": "studio.engine.errors", "JobCancelled": "studio.engine.errors",
    "CancelToken": "studio.engine.events", "run_to_end": "studio.engine.events",
    "LoadedModel": "studio.engine.models", "load_model": "studio.engine.models",
    "DataBundle": "studio.engine.data", "load_data": "studio.engine.data",
    "LayerGraph": "studio.engine.graph", "build_graph": "studio.engine.graph",
    "PruningPlan": "studio.engine.pruning", "prune": "studio.engine.pruning",
    "TrainConfig": "studio.engine.training", "train": "studio.engine.training",
    "evaluate": "studio.engine.training",
    "ModelMetrics": "studio.engine.metrics", "measure": "studio.engine.metrics",
    "export_model": "studio.engine.export",
    "Method": "studio.engine.methods", "get_method": "studio.engine.methods",
    "Recipe": "studio.engine.jobs", "run_recipe": "studio.engine.jobs",
}

__all__ = sorted(_ENTRY_POINTS)


def __getattr__(name: str) -> Any:
    """Import an entry point's wing the first time the name is used (PEP 562)."""
    home = _ENTRY_POINTS.get(name)
    if home is None:
        # Also how `from studio.engine import graph` finds the sub-package: Python imports
        # it after this AttributeError.
        raise AttributeError(f"module 'studio.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
