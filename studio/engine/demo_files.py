"""The demo's files, installed with the studio and read with `importlib.resources`.

The project's top-level ``resources/`` folder is installed as the package ``studio.resources``
(pyproject.toml maps it), in a wheel and in an editable install alike, so a pip-installed
studio finds the demo model, its card and the data subset without a source checkout.
Every reader of a demo file asks this module where it lies.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.resources
from pathlib import Path

from studio.engine.errors import StudioError

PACKAGE = "studio.resources"
MODEL = "demo/model.pt"
SUBSET = "demo/cifar10_subset.npz"
CARD = "demo/model_card.json"
README = "demo/README.md"
# What an installed studio must carry for the demo to open (tests/test_wheel.py checks the wheel).
SHIPPED = (MODEL, SUBSET, CARD, README)

REINSTALL = ("Reinstall the studio (pip install --force-reinstall compression-studio, or "
             "pip install -e . in the project folder)")

_extracted = contextlib.ExitStack()   # files copied out of a zipped install, removed at exit
atexit.register(_extracted.close)


def _root():
    try:
        return importlib.resources.files(PACKAGE)
    except ModuleNotFoundError as exc:
        raise StudioError(f"The studio's demo files are not installed: there is no package {PACKAGE}.",
                          f"{REINSTALL}.") from exc


@functools.cache
def demo_file(name: str) -> Path:
    """The file system path of the shipped demo file ``name`` (one of `SHIPPED`).

    The path may not exist when the installation lost the file: the caller says so with
    `missing_demo_file`. An install that keeps its files in a zip archive has them copied
    to a temporary file, as `importlib.resources.as_file` does, for as long as the process runs.
    """
    ref = _root()
    for part in name.split("/"):
        ref = ref / part
    if isinstance(ref, Path):
        return ref
    if not ref.is_file():
        return Path(str(ref))
    return _extracted.enter_context(importlib.resources.as_file(ref))


def missing_demo_file(path: Path, what: str, rebuild: str = "") -> StudioError:
    """The error for a demo file the installation does not hold, saying how to get it back."""
    fix = f"{REINSTALL}{'; in a checkout of the project, ' + rebuild if rebuild else ''}."
    return StudioError(f"The {what} is missing: {path} does not exist.", fix)
