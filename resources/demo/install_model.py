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
from studio.engine.models import load_model
from studio.engine.training import evaluate

DEMO = Path(__file__).resolve().parent


def training_commands(run_dir: Path) -> list:
    """The `studio train` commands that produced this run, oldest first.

    A run that continued from an earlier run's checkpoint names it as its model; follow
    that chain so the card tells the whole recipe.
    """
    training = json.loads((run_dir / "training.json").read_text())
    t = training["train"]
    command = (f"studio train {training['model']} --data <cifar10-jpg extracted> --epochs {t['epochs']} "
               f"--lr {t['lr']} --schedule {t['schedule']} --batch-size {t['batch_size']} --seed {t['seed']}")
    earlier = Path(training["model"]).parent
    if (earlier / "training.json").is_file():
        return training_commands(earlier) + [command]
    return [command]


def install(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    shutil.copyfile(run_dir / "model.ckpt.pt", DEMO / "model.pt")
    loaded = load_model("demo")
    subset = run_to_end(evaluate(loaded.module, load_data("demo").val, device="cpu"))
    card = {
        "model": "cifar:resnet20",
        "params": metrics["model"]["params"],
        "trained_on": metrics["data"]["summary"],
        "commands": training_commands(run_dir),
        "last_run_seconds": metrics["wall_seconds"],
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
