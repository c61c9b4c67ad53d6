"""Shared pytest fixtures: tiny image datasets built on the fly and the shared CIFAR-10 copy.

`make_imagefolder` / `synthetic_imagefolder` write small ImageFolder trees with PIL into a
temporary folder. `shared_cifar_dir` (train/ + test/) and `shared_cifar_test_dir` (test/ only)
extract ../shared/data/cifar10-jpg.tar.gz once per session and skip the test, with the reason,
where that file is absent, as on a user's clone.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
TEN_CLASSES = [f"class{i}" for i in range(10)]

# One torch thread per process: the suite runs tiny models on 2-core CI machines, where a
# second thread mostly spins against subprocesses (CLI, torchrun) and slows runs several-fold.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
SHARED_CIFAR_TARBALL = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"

# Qt's offscreen platform (`make test`) has one 800×800 screen unless told otherwise. The
# window keeps itself within its screen, so give it the screens the tests size it for: a
# 1920×1080 desktop and, to its right, a 1366×768 laptop (tests/test_app_layout.py).
OFFSCREEN_SCREENS = REPO_ROOT / "tests" / "offscreen-screens.json"
if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
    os.environ["QT_QPA_PLATFORM"] = f"offscreen:configfile={OFFSCREEN_SCREENS}"


def write_imagefolder(root: Path, *, classes: Sequence[str] = ("cat", "dog", "frog"), per_class: int = 4,
                      size: tuple[int, int] = (32, 32), splits: Sequence[str] = ("train", "val"),
                      fmt: str = "png", mode: str = "RGB", seed: int = 0) -> Path:
    """Write an ImageFolder tree: <root>/<split>/<class>/<i>.<fmt>, or <root>/<class>/... when splits is empty.

    Each class has its own base colour plus noise, so the classes are separable. Returns root.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    channels = 1 if mode == "L" else 3
    for split in (splits or [""]):
        for k, cls in enumerate(classes):
            folder = root / split / cls if split else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            base = rng.integers(30, 225, size=channels)
            for i in range(per_class):
                pixels = np.clip(base + rng.normal(0, 20, size=(h, w, channels)), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
                image.save(folder / f"{i:04d}.{fmt}")
    return root


@pytest.fixture
def make_imagefolder(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_imagefolder('name', classes=..., per_class=..., size=..., splits=...)`` → folder under tmp_path."""
    def make(name: str = "images", **kwargs) -> Path:
        return write_imagefolder(tmp_path / name, **kwargs)
    return make


@pytest.fixture
def synthetic_imagefolder(tmp_path: Path) -> Path:
    """A 3-class ImageFolder with train/ (6 per class) and val/ (3 per class), 32x32 RGB PNGs."""
    root = write_imagefolder(tmp_path / "imagefolder", per_class=6, splits=("train",), seed=1)
    write_imagefolder(root, per_class=3, splits=("val",), seed=2)
    return root


def _extract_shared_cifar(target: Path, members: Sequence[str] = ()) -> None:
    """Extract the shared tarball (or only ``members``, e.g. 'test') into target; skip when it is absent."""
    if not SHARED_CIFAR_TARBALL.is_file():
        pytest.skip(f"shared CIFAR-10 copy not found at {SHARED_CIFAR_TARBALL} "
                    "(only present in the development workspace, not in a user's clone)")
    tar = shutil.which("tar")
    if tar is not None:
        # The tar tool writes the 60,000 small files several times faster than tarfile.
        subprocess.run([tar, "-xzf", str(SHARED_CIFAR_TARBALL), "-C", str(target), *members], check=True)
    else:
        with tarfile.open(SHARED_CIFAR_TARBALL) as archive:
            chosen = [m for m in archive.getmembers()
                      if not members or m.name.split("/")[0] in members]
            archive.extractall(target, members=chosen, filter="data")
    for split in (members or ("train", "test")):
        if not (target / split).is_dir():
            pytest.fail(f"{SHARED_CIFAR_TARBALL} did not contain a {split}/ folder")


@pytest.fixture(scope="session")
def shared_cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The shared CIFAR-10 JPEG copy extracted once per session: a folder with train/ and test/."""
    target = tmp_path_factory.mktemp("cifar10-jpg")
    _extract_shared_cifar(target)
    yield target
    # 236 MB in 60,000 files: remove now rather than leave it to pytest's tmp rotation.
    shutil.rmtree(target, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_cifar_test_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Only the 10,000-image test/ split of the shared CIFAR-10 copy (a flat ImageFolder), much faster to extract."""
    target = tmp_path_factory.mktemp("cifar10-jpg-test")
    _extract_shared_cifar(target, members=("test",))
    yield target / "test"
    shutil.rmtree(target, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_pruning_run(tmp_path_factory):
    """One real, tiny pruning job (ResNet-20, synthetic data, 2 fine-tune steps): (run folder, its events).

    Shared by the GUI tests that need a real run folder or a real event stream; tests that
    change the folder must copy it first.
    """
    from studio.engine.events import run_to_end
    from studio.engine.jobs import DataSource, ModelSource, Recipe, run_recipe
    from studio.engine.pruning import PruningPlan
    from studio.engine.training import TrainConfig

    recipe = Recipe(model=ModelSource(spec="cifar:resnet20"),
                    data=DataSource(spec="synthetic:classes=10,size=3x32x32,train=96,val=48", batch_size=32,
                                    calibration_batches=1),
                    plan=PruningPlan(criterion="l1", rate=0.5),
                    finetune=TrainConfig(epochs=1, lr=0.02, max_steps_per_epoch=2), exports=["checkpoint"])
    folder = tmp_path_factory.mktemp("tiny-run") / "run"
    events = []
    run_to_end(run_recipe(recipe, folder), events.append)
    return folder, events
