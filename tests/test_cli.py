"""The CLI end to end on a synthetic ImageFolder, its error lines, and torchrun with gloo."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TEN_CLASSES

from studio.cli import main

REPO = Path(__file__).resolve().parents[1]


def studio_cmd(*args, cwd=None, env_extra=None, module_runner=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    cmd = (module_runner or [sys.executable, "-m", "studio"]) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd or REPO, env=env, timeout=600)


def test_prune_end_to_end_on_an_imagefolder(tmp_path, capsys, make_imagefolder):
    data = make_imagefolder("data", classes=TEN_CLASSES, per_class=6)
    out = tmp_path / "run"
    code = main(["prune", "cifar:resnet20", "--criterion", "taylor", "--rate", "0.4",
                 "--layer-rate", "layer1.0.conv1=0.25", "--protect", "conv1",
                 "--data", str(data), "--finetune-epochs", "1", "--max-steps", "2", "--batch-size", "16",
                 "--export", "pt,torchscript", "--save-recipe", str(tmp_path / "r.json"), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "fewer" in printed and str(out) in printed
    metrics = json.loads((out / "metrics.json").read_text())
    layers = {row["name"]: row for row in metrics["layers"]}
    assert layers["conv1"]["channels_after"] == layers["conv1"]["channels_before"]
    assert metrics["after"]["macs"] < metrics["before"]["macs"]
    assert {"model.pt", "model.torchscript.pt"} <= {p.name for p in out.iterdir()} or \
        len([p for p in out.iterdir() if p.suffix == ".pt"]) == 2
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["plan"]["criterion"] == "taylor"


def test_inspect_prints_layers_and_groups(capsys):
    assert main(["inspect", "cifar:resnet20"]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.conv1" in out and "Conv2d" in out and "coupled groups" in out
    # The reach of a plan, as FastNAS's profile shows it: from every group at 90 % to unpruned.
    line = next(l for l in out.splitlines() if l.startswith("MACs a plan can reach"))
    low, high = (int(v.replace(",", "")) for v in re.findall(r"([\d,]+) \(", line))
    from studio.engine.models import load_model
    from studio.engine.pruning import PruningPlan, estimate
    model = load_model("cifar:resnet20").module
    assert high == estimate(model, PruningPlan(rate=0.0), torch.randn(1, 3, 32, 32))[1]
    assert 0 < low < high / 10


def test_criteria_lists_the_registry(capsys):
    assert main(["criteria"]) == 0
    out = capsys.readouterr().out
    for name in ("l1", "l2", "bn_scale", "slg", "taylor", "fpgm", "hrank", "lamp", "random"):
        assert name in out


@pytest.mark.parametrize("args, words", [
    (["inspect", "no/such/model.pt"], "No model file"),
    (["prune", "cifar:resnet20", "--rate", "1.5", "--out", "OUT"], "rate"),
    (["prune", "cifar:resnet20", "--criterion", "magic", "--out", "OUT"], "magic"),
    (["run", "missing-recipe.json", "--out", "OUT"], "not found"),
])
def test_errors_are_one_line_without_traceback(tmp_path, args, words):
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    proc = studio_cmd(*args)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("error:") and words in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_debug_flag_shows_the_traceback(tmp_path):
    proc = studio_cmd("--debug", "inspect", str(tmp_path / "nope.pt"))
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_run_under_torchrun_with_two_gloo_processes(tmp_path, make_imagefolder):
    data = make_imagefolder("data", classes=TEN_CLASSES, per_class=8)
    recipe = {"model": {"spec": "cifar:resnet20"},
              "data": {"spec": str(data), "batch_size": 8, "calibration_batches": 1},
              "plan": {"criterion": "l1", "rate": 0.3},
              "finetune": {"epochs": 1, "lr": 0.01, "max_steps_per_epoch": 3, "device": "cpu"},
              "exports": ["checkpoint"]}
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    out = tmp_path / "run"
    proc = studio_cmd("run", str(tmp_path / "r.json"), "--out", str(out),
                      module_runner=[sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                                     "--master_port=29517", "-m", "studio"],
                      env_extra={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]["fine-tune"]) == 1
    assert metrics["after"]["params"] < metrics["before"]["params"]


def test_train_writes_a_checkpoint_that_reopens(tmp_path, capsys):
    from studio.engine.models import load_model
    out = tmp_path / "base"
    code = main(["train", "cifar:resnet20", "--data", "synthetic:classes=10,size=3x32x32,train=64,val=32",
                 "--epochs", "1", "--max-steps", "2", "--batch-size", "16", "--out", str(out)])
    assert code == 0
    assert "top-1" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]["train"]) == 1 and metrics["final"]["samples"] == 32
    reopened = load_model(str(out / "model.ckpt.pt"))
    assert reopened.trained and reopened.arch == "cifar:resnet20" and reopened.num_classes == 10
    # A second run into the same folder is refused rather than overwriting the first.
    assert main(["train", "cifar:resnet20", "--data", "synthetic", "--epochs", "1", "--out", str(out)]) == 2


def test_interrupted_training_resumes_from_its_saved_state(tmp_path, capsys, monkeypatch):
    """Stopped after epoch 2 of 3, `--resume` ends with the weights of an uninterrupted run."""
    import torch

    from studio.engine import training
    from studio.engine.jobs import train_state_path
    from studio.engine.models import load_model
    args = ["train", "cifar:resnet20", "--data", "synthetic:classes=10,size=3x32x32,train=48,val=16",
            "--epochs", "3", "--max-steps", "2", "--batch-size", "16", "--lr", "0.05"]
    assert main(args + ["--out", str(tmp_path / "straight")]) == 0
    assert not train_state_path(tmp_path / "straight").exists()     # removed once the run is written

    out = tmp_path / "stopped"
    real_train = training.train

    def train_interrupted_after_epoch_2(*a, **kw):
        saver = kw["save_state"]

        def save_then_stop(state):
            saver(state)
            if state["epoch"] == 2:
                raise KeyboardInterrupt
        return real_train(*a, **{**kw, "save_state": save_then_stop})

    monkeypatch.setattr("studio.engine.jobs.pipeline.train", train_interrupted_after_epoch_2)
    assert main(args + ["--out", str(out)]) == 130
    assert "--resume" in capsys.readouterr().err
    assert not out.exists() and train_state_path(out).exists()
    monkeypatch.undo()

    # Without --resume the saved state is not silently dropped.
    assert main(args + ["--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    saved = torch.load(train_state_path(out), weights_only=True)
    assert main(args + ["--out", str(out), "--resume"]) == 0
    assert "Resuming train after epoch 2 of 3" in capsys.readouterr().err
    assert not train_state_path(out).exists()
    history = json.loads((out / "metrics.json").read_text())["history"]["train"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[:2] == json.loads(json.dumps(saved["history"]))    # epochs 1-2 were not re-run
    straight = load_model(str(tmp_path / "straight" / "model.ckpt.pt")).module.state_dict()
    resumed = load_model(str(out / "model.ckpt.pt")).module.state_dict()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_resume_refuses_other_settings_and_damaged_states(tmp_path, capsys):
    from studio.engine.jobs import train_state_path
    out = tmp_path / "run"
    args = ["train", "cifar:resnet20", "--data", "synthetic:classes=10,size=3x32x32,train=32,val=16",
            "--epochs", "2", "--max-steps", "1", "--batch-size", "16", "--out", str(out)]
    assert main(args + ["--resume"]) == 2
    assert "no saved training state" in capsys.readouterr().err
    train_state_path(out).write_bytes(b"not a state")
    assert main(args + ["--resume"]) == 2
    assert "cannot be read" in capsys.readouterr().err

    import torch

    from studio.engine.training import TRAIN_STATE_FORMAT, TrainConfig
    job = {"model": "cifar:resnet20", "arch": None, "num_classes": None,
           "data": "synthetic:classes=10,size=3x32x32,train=32,val=16"}
    torch.save({"format": TRAIN_STATE_FORMAT, "config": TrainConfig(epochs=2, lr=0.5).to_dict(), "job": job},
               train_state_path(out))
    assert main(args + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "lr" in err


def test_a_training_runs_recipe_repeats_it(tmp_path, capsys):
    """training.json of a run is a recipe: `train --recipe` and `run` give the same weights."""
    import torch

    from studio.engine.models import load_model
    first = tmp_path / "first"
    assert main(["train", "cifar:resnet20", "--data", "synthetic:classes=10,size=3x32x32,train=32,val=16",
                 "--epochs", "1", "--max-steps", "2", "--batch-size", "16", "--lr", "0.02",
                 "--schedule", "cosine", "--out", str(first)]) == 0
    recipe = json.loads((first / "training.json").read_text())
    assert recipe["kind"] == "train" and recipe["train"]["lr"] == 0.02 and recipe["train"]["schedule"] == "cosine"
    assert main(["train", "--recipe", str(first / "training.json"), "--out", str(tmp_path / "again")]) == 0
    assert main(["run", str(first / "training.json"), "--out", str(tmp_path / "via-run")]) == 0
    weights = [load_model(str(tmp_path / name / "model.ckpt.pt")).module.state_dict()
               for name in ("first", "again", "via-run")]
    assert all(torch.equal(weights[0][k], w[k]) for w in weights[1:] for k in weights[0])
    capsys.readouterr()

    # The recipe and the flags it replaces cannot both be given.
    assert main(["train", "--recipe", str(first / "training.json"), "--lr", "0.5", "--out", str(tmp_path / "x")]) == 2
    assert "--lr" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "y")]) == 2
    assert "needs a MODEL and --data" in capsys.readouterr().err
    # A training recipe is not a compression recipe, and the other way round.
    from studio.engine.errors import StudioError
    from studio.engine.jobs import load_recipe
    with pytest.raises(StudioError, match="training recipe"):
        load_recipe(first / "training.json")
    assert main(["run", str(first / "training.json"), "--out", str(tmp_path / "z"), "--resume"]) == 2
    assert "no saved training state" in capsys.readouterr().err


@pytest.mark.parametrize("recipe, message", [
    ({"kind": "train", "data": "synthetic"}, "needs 'model'"),
    ({"kind": "train", "model": "cifar:resnet20", "data": "synthetic", "train": {"lr": -1}}, "lr"),
    ({"kind": "train", "model": "cifar:resnet20", "data": "synthetic", "tarin": {}}, "unknown keys: tarin"),
    ({"kind": "train", "model": "cifar:resnet20", "data": "synthetic", "num_classes": 0}, "num_classes"),
])
def test_bad_training_recipes_are_named(tmp_path, capsys, recipe, message):
    path = tmp_path / "training.json"
    path.write_text(json.dumps(recipe))
    assert main(["train", "--recipe", str(path), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def test_resume_refuses_other_data(tmp_path, capsys, monkeypatch):
    from studio.engine import training
    from studio.engine.jobs import train_state_path
    out = tmp_path / "run"
    args = ["train", "cifar:resnet20", "--epochs", "2", "--batch-size", "16", "--out", str(out)]
    real_train = training.train

    def stop_after_epoch_1(*a, **kw):
        saver = kw["save_state"]

        def save_then_stop(state):
            saver(state)
            raise KeyboardInterrupt
        return real_train(*a, **{**kw, "save_state": save_then_stop})

    monkeypatch.setattr("studio.engine.jobs.pipeline.train", stop_after_epoch_1)
    assert main(args + ["--data", "synthetic:classes=10,size=3x32x32,train=32,val=16"]) == 130
    monkeypatch.undo()
    assert train_state_path(out).exists()
    capsys.readouterr()
    assert main(args + ["--data", "synthetic:classes=10,size=3x32x32,train=64,val=16", "--resume"]) == 2
    assert "belongs to another job (different data)" in capsys.readouterr().err


def test_demo_without_qt_runs_headless(monkeypatch, capsys):
    """With the GUI libraries missing, `studio --demo` runs the demo job in the terminal."""
    import studio.cli as cli
    jobs = []
    monkeypatch.setitem(sys.modules, "studio.app", None)     # import studio.app → ImportError
    monkeypatch.setattr(cli, "_run_job", lambda recipe, out: jobs.append((recipe, out)) or 0)
    assert main(["--demo"]) == 0
    assert "running the demo job in the terminal" in capsys.readouterr().out
    (recipe, out), = jobs
    assert recipe.model.spec == "demo" and recipe.data.spec == "demo" and recipe.finetune.epochs == 1


def test_latency_none_skips_timing_and_bad_values_are_explained(tmp_path, capsys):
    assert main(["prune", "cifar:resnet20", "--rate", "0.3", "--latency", "none", "--export", "pt",
                 "--out", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["before"]["latency"] == {}
    with pytest.raises(SystemExit):
        main(["prune", "cifar:resnet20", "--latency", "fast", "--out", str(tmp_path / "bad")])
    assert "latency batch sizes must look like 1 or 1,8 or none" in capsys.readouterr().err
