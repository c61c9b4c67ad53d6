"""Install a `studio train` run as the shipped demo model and write its model card.

    python resources/demo/install_model.py runs/demo-train

Copies the run's `model.ckpt.pt` to `resources/demo/model.pt`, evaluates it on the shipped
test subset, and writes `resources/demo/model_card.json` with the training command, the
accuracy on the full test set (from the run's metrics) and on the subset. The test suite
checks that the demo still scores the subset figure recorded here.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from studio.engine.data import load_data
from studio.engine.events import run_to_end
from studio.engine.model_loading import load_model
from studio.engine.training import evaluate

DEMO = Path(__file__).resolve().parent


def install(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    training = json.loads((run_dir / "training.json").read_text())
    shutil.copyfile(run_dir / "model.ckpt.pt", DEMO / "model.pt")
    loaded = load_model("demo")
    subset = run_to_end(evaluate(loaded.module, load_data("demo").val, device="cpu"))
    train = training["train"]
    card = {
        "model": "cifar:resnet20",
        "params": metrics["model"]["params"],
        "trained_on": metrics["data"]["summary"],
        "command": (f"studio train cifar:resnet20 --data <cifar10-jpg extracted> --epochs {train['epochs']} "
                    f"--lr {train['lr']} --schedule {train['schedule']} --batch-size {train['batch_size']} "
                    f"--seed {train['seed']}"),
        "train_seconds": metrics["wall_seconds"],
        "full_test_top1": metrics["final"]["top1"],
        "full_test_top5": metrics["final"]["top5"],
        "subset_test_top1": subset.top1,
        "subset_test_top5": subset.top5,
    }
    (DEMO / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    print(json.dumps(install(parser.parse_args().run_dir), indent=2))
