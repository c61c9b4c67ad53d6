"""The shipped demo: its data subset builder is deterministic, and the demo model scores what its card says."""
import importlib.util
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from studio.engine.data import load_data
from studio.engine.demo_files import CARD, demo_file

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "resources" / "demo"


def load_builder():
    spec = importlib.util.spec_from_file_location("build_subset", DEMO / "build_subset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_cifar_tar(path: Path, per_class_train=6, per_class_test=3) -> Path:
    """A tiny archive in the layout of cifar10-jpg.tar.gz (cifar10/<split>/<class>/<n>.jpg)."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for split, count in (("train", per_class_train), ("test", per_class_test)):
            for c, cls in enumerate(("cat", "dog", "ship")):
                for i in range(count):
                    buf = io.BytesIO()
                    pixels = (rng.random((32, 32, 3)) * 80 + c * 60).astype(np.uint8)
                    Image.fromarray(pixels).save(buf, format="JPEG", quality=75)
                    info = tarfile.TarInfo(f"cifar10/{split}/{cls}/{i:04d}.jpg")
                    info.size = len(buf.getvalue())
                    tar.addfile(info, io.BytesIO(buf.getvalue()))
    return path


def test_subset_builder_is_deterministic_and_stratified(tmp_path):
    builder = load_builder()
    tar = fake_cifar_tar(tmp_path / "c.tar.gz")
    a = builder.build(tar, tmp_path / "a.npz", train_per_class=4, test_per_class=2, seed=3)
    b = builder.build(tar, tmp_path / "b.npz", train_per_class=4, test_per_class=2, seed=3)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert a["train"] == 12 and a["test"] == 6
    c = builder.build(tar, tmp_path / "c.npz", train_per_class=4, test_per_class=2, seed=4)
    assert (tmp_path / "c.npz").read_bytes() != (tmp_path / "a.npz").read_bytes()

    bundle = load_data(str(tmp_path / "a.npz"))
    assert bundle.class_names == ["cat", "dog", "ship"]
    assert np.bincount(bundle.train.labels.numpy()).tolist() == [4, 4, 4]
    assert len(bundle.val) == 6 and bundle.input_size == (3, 32, 32)


def test_shipped_subset_is_small_and_complete():
    size = sum(p.stat().st_size for p in DEMO.iterdir() if p.is_file())
    assert size <= 10 * 1024 * 1024, f"resources/demo holds {size / 1e6:.1f} MB, over the 10 MB budget"
    bundle = load_data("demo")
    assert bundle.num_classes == 10 and len(bundle.train) == 5000 and len(bundle.val) == 1000
    assert np.bincount(bundle.val.labels.numpy()).tolist() == [100] * 10


def test_demo_model_scores_what_its_card_records():
    """The shipped weights still give the subset accuracy written when they were installed."""
    from studio.engine.events import run_to_end
    from studio.engine.models import load_model
    from studio.engine.training import evaluate

    card = json.loads(demo_file(CARD).read_text())
    loaded = load_model("demo")
    assert loaded.trained and loaded.arch == "cifar:resnet20"
    result = run_to_end(evaluate(loaded.module, load_data("demo").val, device="cpu"))
    assert abs(result.top1 - card["subset_test_top1"]) <= 0.01
    assert result.top1 > 0.5   # far above the 10% of chance: these are trained weights


def test_studio_prune_demo_without_plan_flags_runs_the_cards_first_run_plan():
    from studio.cli import _recipe_from_prune_args, _wants_demo_plan, build_parser
    from studio.engine.jobs.demo_plan import demo_first_run, with_demo_plan
    first = demo_first_run()
    args = build_parser().parse_args(["prune", "demo", "--out", "x"])
    assert _wants_demo_plan(args)
    recipe = with_demo_plan(_recipe_from_prune_args(args))
    assert recipe.plan.layer_rates == first["plan"]["layer_rates"] and recipe.data.spec == "demo"
    assert recipe.reconstruct.method == first["reconstruct"]["method"]
    assert recipe.finetune.epochs == first["finetune"]["epochs"]
    # Any plan flag of the user's own wins over the card.
    assert not _wants_demo_plan(build_parser().parse_args(["prune", "demo", "--rate", "0.3", "--out", "x"]))


def test_the_demo_plan_reaches_its_2x_target_on_the_shipped_model():
    import torch

    from studio.engine.jobs.demo_plan import demo_first_run
    from studio.engine.models import load_model
    from studio.engine.pruning import PruningPlan, estimate
    first = demo_first_run()
    model = load_model("demo").module
    _, macs = estimate(model, PruningPlan.from_dict(first["plan"]), torch.zeros(1, 3, 32, 32))
    _, full = estimate(model, PruningPlan(rate=0.0), torch.zeros(1, 3, 32, 32))
    assert 1.95 <= full / macs <= 2.1
