"""The whole job: run folder contents, no mutation of the loaded model, cancel and refusals."""
import json

import pytest
import torch

from studio.engine.errors import JobCancelled, StudioError
from studio.engine.events import CancelToken, EpochEnd, Phase, TrainStep, run_to_end
from studio.engine.jobs import DataSource, ModelSource, Recipe, run_recipe
from studio.engine.models import load_model
from studio.engine.pruning import PruningPlan
from studio.engine.training import TrainConfig

SYNTHETIC = "synthetic:classes=10,size=3x32x32,train=96,val=48"


def small_recipe(**plan):
    return Recipe(model=ModelSource(spec="cifar:resnet20"),
                  data=DataSource(spec=SYNTHETIC, batch_size=32, calibration_batches=1),
                  plan=PruningPlan(**{"criterion": "l1", "rate": 0.5, **plan}),
                  finetune=TrainConfig(epochs=1, lr=0.02, max_steps_per_epoch=2),
                  exports=["checkpoint", "onnx"])


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_job_writes_a_complete_run_folder(tmp_path):
    loaded = load_model("cifar:resnet20")
    original = state(loaded.module)
    events = []
    result = run_to_end(run_recipe(small_recipe(), tmp_path / "run", loaded=loaded), events.append)

    run = tmp_path / "run"
    names = {p.name for p in run.iterdir()}
    assert {"recipe.json", "metrics.json", "report.html", "model.onnx"} <= names
    assert any(n.endswith(".ckpt.pt") for n in names)
    assert not any(n.endswith(".part") for n in names)
    assert not (tmp_path / ".run.partial").exists()

    m = json.loads((run / "metrics.json").read_text())
    assert m["after"]["params"] < m["before"]["params"]
    assert m["after"]["macs"] < m["before"]["macs"]
    assert m["before"]["top1"] is not None and 0 <= m["after"]["top1"] <= 1
    assert len(m["history"]["fine-tune"]) == 1
    assert any(layer["channels_after"] < layer["channels_before"] for layer in m["layers"])
    assert all(e["max_abs_diff"] < 1e-3 for e in m["exports"])
    assert json.loads((run / "recipe.json").read_text()) == small_recipe().to_dict()

    phases = [e.name for e in events if isinstance(e, Phase)]
    for phase in ("analyse", "prune", "fine-tune", "measure", "export", "report"):
        assert phase in phases
    assert sum(isinstance(e, TrainStep) for e in events) == 2
    assert sum(isinstance(e, EpochEnd) for e in events) == 1

    # The model the user loaded is exactly as it was.
    for k, v in loaded.module.state_dict().items():
        assert torch.equal(v, original[k]), k
    assert sum(p.numel() for p in result.model.parameters()) == m["after"]["params"]


def test_cancel_leaves_nothing_behind(tmp_path):
    loaded = load_model("cifar:resnet20")
    original = state(loaded.module)
    token = CancelToken()

    def cancel_on_first_step(event):
        if isinstance(event, TrainStep):
            token.cancel()

    with pytest.raises(JobCancelled):
        run_to_end(run_recipe(small_recipe(), tmp_path / "run", loaded=loaded, token=token), cancel_on_first_step)
    assert list(tmp_path.iterdir()) == []
    for k, v in loaded.module.state_dict().items():
        assert torch.equal(v, original[k]), k


def test_refuses_to_overwrite_an_earlier_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "report.html").write_text("earlier")
    with pytest.raises(StudioError, match="not empty"):
        run_to_end(run_recipe(small_recipe(), out))
    assert (out / "report.html").read_text() == "earlier"


def test_impossible_plan_fails_before_writing(tmp_path):
    with pytest.raises(StudioError, match="conv1"):
        run_to_end(run_recipe(small_recipe(layer_rates={"conv1": 1.0}), tmp_path / "run"))
    assert list(tmp_path.iterdir()) == []


def test_mismatched_data_is_refused(tmp_path):
    recipe = small_recipe()
    recipe.data.spec = "synthetic:classes=7,size=3x32x32,train=32,val=16"
    with pytest.raises(StudioError, match="7"):
        run_to_end(run_recipe(recipe, tmp_path / "run"))
    assert list(tmp_path.iterdir()) == []


def test_retrain_from_scratch_reinitialises_before_training(tmp_path):
    recipe = small_recipe()
    recipe.retrain = True
    events = []
    run_to_end(run_recipe(recipe, tmp_path / "run", loaded=load_model("cifar:resnet20")), events.append)
    phases = [e.name for e in events if isinstance(e, Phase)]
    assert "retrain" in phases and "fine-tune" not in phases
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(m["history"]) == ["retrain"]
    assert json.loads((tmp_path / "run" / "recipe.json").read_text())["retrain"] is True


def test_retrain_without_epochs_is_refused():
    recipe = small_recipe()
    recipe.retrain = True
    recipe.finetune.epochs = 0
    with pytest.raises(StudioError, match="retrains the pruned model from scratch"):
        recipe.validate()


def test_reset_weights_changes_every_weighted_layer():
    from studio.engine.jobs.pipeline import reset_weights
    model = load_model("cifar:resnet20").module
    before = state(model)
    torch.manual_seed(123)
    reset_weights(model)
    changed = [k for k, v in model.state_dict().items() if k.endswith("conv1.weight") and not torch.equal(v, before[k])]
    assert len(changed) == sum(1 for k in before if k.endswith("conv1.weight"))
