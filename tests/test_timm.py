"""timm:NAME models: built by name, weights only from the local Hugging Face cache, pruned as usual."""
import json

import pytest
import torch

from studio.engine.errors import StudioError
from studio.engine.events import run_to_end
from studio.engine.jobs import DataSource, ModelSource, Recipe, run_recipe
from studio.engine.models import load_model
from studio.engine.pruning import PruningPlan

timm = pytest.importorskip("timm")
TINY = "mobilenetv3_small_050"


def fake_cache(tmp_path, monkeypatch, name: str) -> dict:
    """Put weights for ``name`` where huggingface_hub looks for them, as a download would."""
    from huggingface_hub import constants
    from safetensors.torch import save_file
    repo = timm.models.get_pretrained_cfg(name).hf_hub_id
    snapshot = tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    torch.manual_seed(1)
    weights = timm.create_model(name, pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(snapshot / "model.safetensors"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return weights


def test_a_timm_model_without_cached_weights_is_untrained_and_says_where_they_come_from(monkeypatch, tmp_path):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    loaded = load_model(f"timm:{TINY}")
    assert loaded.kind == "timm" and loaded.arch == f"timm:{TINY}" and not loaded.trained
    assert loaded.input_size == (3, 224, 224) and loaded.num_classes == 1000
    assert "Hugging Face cache" in loaded.weights_note and "timm/" in loaded.weights_note


def test_cached_weights_are_read_and_num_classes_gives_a_new_head(monkeypatch, tmp_path):
    weights = fake_cache(tmp_path, monkeypatch, TINY)
    loaded = load_model(f"timm:{TINY}")
    assert loaded.trained and "local cache" in loaded.weights_note
    key = next(k for k in weights if k.endswith("conv_stem.weight"))
    assert torch.equal(loaded.module.state_dict()[key], weights[key])
    ten = load_model(f"timm:{TINY}", num_classes=10)
    assert ten.num_classes == 10 and not ten.trained and "new 10-class head" in ten.weights_note
    assert torch.equal(ten.module.state_dict()[key], weights[key])


def test_an_unknown_timm_name_gets_close_matches():
    with pytest.raises(StudioError, match="Did you mean timm:resnet18"):
        load_model("timm:resnett18")


def test_a_timm_model_prunes_exports_and_reloads(tmp_path, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    recipe = Recipe(model=ModelSource(f"timm:{TINY}", num_classes=10, input_size=[3, 64, 64]),
                    data=DataSource("synthetic:classes=10,size=3x64x64,train=32,val=32", batch_size=16),
                    plan=PruningPlan(rate=0.3), exports=["checkpoint"])
    metrics = run_to_end(run_recipe(recipe, tmp_path / "run")).metrics
    assert metrics["after"]["macs"] < metrics["before"]["macs"]
    reloaded = load_model(str(tmp_path / "run" / "model.ckpt.pt"))
    assert reloaded.arch == f"timm:{TINY}"
    assert sum(p.numel() for p in reloaded.module.parameters()) == metrics["after"]["params"]
    assert json.loads((tmp_path / "run" / "recipe.json").read_text())["model"]["spec"] == f"timm:{TINY}"
