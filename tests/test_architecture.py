"""The engine's layering is checked by import-linter (contracts in pyproject.toml).

The first test is the check itself: a contract that breaks fails the suite. The others
break each kind of contract on a copy of the package, to prove the check can fail.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
QT_FREE = "The engine never imports the app, the CLI or Qt"
WINGS = "Engine wings import only the wings below them"
ACYCLIC = "No import cycles anywhere in studio"


def lint(root: Path) -> subprocess.CompletedProcess:
    # lint-imports puts the working directory first on sys.path, so a copy there is what it reads.
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, capture_output=True, text=True)


def test_import_contracts_hold():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    for contract in (QT_FREE, WINGS, ACYCLIC):
        assert f"{contract} KEPT" in result.stdout


@pytest.fixture
def copy_of_studio(tmp_path):
    shutil.copytree(ROOT / "studio", tmp_path / "studio", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def add_import(root: Path, module: str, line: str) -> None:
    path = root / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + f"\n{line}\n")


@pytest.mark.parametrize("module, line, contract", [
    ("studio.engine.data.sources", "import studio.engine.jobs.recipe", WINGS),
    ("studio.engine.pruning.plan", "from studio.engine.methods import base", WINGS),
    ("studio.engine.methods.base", "import studio.engine.jobs.pipeline", WINGS),
    ("studio.engine.metrics.size", "import PySide6.QtCore", QT_FREE),
    ("studio.engine.export.formats", "import studio.app.document", QT_FREE),
    ("studio.engine.errors", "import studio.engine.events", ACYCLIC),
])
def test_a_broken_contract_fails(copy_of_studio, module, line, contract):
    add_import(copy_of_studio, module, line)
    result = lint(copy_of_studio)
    assert result.returncode != 0
    assert f"{contract} BROKEN" in result.stdout, result.stdout[-3000:]
