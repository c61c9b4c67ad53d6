"""The wheel carries the demo: its model, card and data subset, where the code looks for them.

The wheel is built from a copy of the project's sources (so the build writes nothing into the
checkout), then read as the zip it is, unpacked and imported from, and imported as a zip.
"""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from studio.engine import demo_files
from studio.engine.errors import StudioError

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "studio", "resources")
LOOKUP = ("from studio.engine import demo_files as d; "
          "print('\\n'.join(str(d.demo_file(n)) for n in d.SHIPPED)); "
          "print(all(d.demo_file(n).is_file() for n in d.SHIPPED))")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        (shutil.copytree(REPO / name, src / name, ignore=ignore) if (REPO / name).is_dir()
         else shutil.copy2(REPO / name, src / name))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--quiet", "-w", str(root / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BuildBackendWarning" not in done.stderr, done.stderr
    (built,) = (root / "dist").glob("compression_studio-*.whl")
    return built


def in_package(name: str) -> str:
    return f"{demo_files.PACKAGE.replace('.', '/')}/{name}"


def test_wheel_holds_the_demo_files_the_code_reads(wheel):
    with zipfile.ZipFile(wheel) as z:
        sizes = {info.filename: info.file_size for info in z.infolist()}
    for name in (demo_files.MODEL, demo_files.SUBSET, demo_files.CARD, demo_files.README):
        assert name in demo_files.SHIPPED
        assert in_package(name) in sizes, f"the wheel lacks {in_package(name)}"
        # The same bytes as the files this (editable) install reads.
        assert sizes[in_package(name)] == demo_files.demo_file(name).stat().st_size
    assert in_package("__init__.py") in sizes
    assert not [n for n in sizes if "__pycache__" in n or n.endswith(".pyc")]
    # The build scripts rebuild the files in a checkout; they are not installed.
    assert not [n for n in sizes if n.startswith(in_package("demo/")) and n.endswith(".py")]


def test_wheel_holds_every_module_of_the_studio(wheel):
    """pyproject lists the packages (to map resources/ into the studio): a new one must be listed too."""
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    modules = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "studio").rglob("*.py")
                     if "__pycache__" not in p.parts)
    missing = [m for m in modules if m not in names]
    assert not missing, (f"the wheel lacks {missing}: add their packages to [tool.setuptools] packages "
                         "in pyproject.toml")


@pytest.mark.parametrize("layout", ["unpacked", "zipped"])
def test_installed_code_finds_the_demo_in_its_own_package(wheel, tmp_path, layout):
    """Imported from the wheel alone, the lookup names files inside the wheel's package, and they exist."""
    if layout == "unpacked":
        with zipfile.ZipFile(wheel) as z:
            z.extractall(tmp_path / "site")
        entry, prefix = tmp_path / "site", str(tmp_path / "site" / demo_files.PACKAGE.replace(".", "/"))
    else:
        entry, prefix = wheel, None  # zipimport: the files are copied out to temporary files
    done = subprocess.run([sys.executable, "-c", LOOKUP], capture_output=True, text=True, timeout=60, check=False,
                          cwd=tmp_path, env={"PYTHONPATH": str(entry), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    *paths, found = done.stdout.split("\n")[:-1]
    assert found == "True", done.stdout
    for path, name in zip(paths, demo_files.SHIPPED):
        assert path == f"{prefix}/{name}" if prefix else path.endswith(Path(name).name)
        assert not path.startswith(str(REPO))


def test_missing_demo_files_say_how_to_get_them_back(tmp_path, monkeypatch):
    error = demo_files.missing_demo_file(tmp_path / "model.pt", "demo model", "`make demo` rebuilds it")
    assert "demo model is missing" in error.problem and "Reinstall the studio" in error.fix
    assert "make demo" in error.fix
    monkeypatch.setattr(demo_files, "PACKAGE", "studio.no_such_resources")
    demo_files.demo_file.cache_clear()
    with pytest.raises(StudioError, match="not installed") as caught:
        demo_files.demo_file(demo_files.MODEL)
    assert "Reinstall the studio" in caught.value.fix
    demo_files.demo_file.cache_clear()
