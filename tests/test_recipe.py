"""Recipes round-trip exactly and reject typos and impossible values by name."""
import json

import pytest

from studio.engine.errors import StudioError
from studio.engine.jobs import DataSource, ModelSource, Recipe, load_recipe, save_recipe
from studio.engine.pruning import PruningPlan
from studio.engine.training import TrainConfig


def full_recipe():
    return Recipe(
        model=ModelSource(spec="cifar:resnet20", num_classes=10, input_size=[3, 32, 32]),
        data=DataSource(spec="synthetic", batch_size=32, calibration_batches=2, eval_batches=3),
        plan=PruningPlan(criterion="fpgm", rate=0.3, layer_rates={"conv1": 0.1}, protected=["layer1.0.conv1"],
                         global_ranking=True, round_to=4, iterative_steps=2, unstructured_sparsity=0.2),
        sparse_training=TrainConfig(epochs=1, bn_l1=1e-4),
        finetune=TrainConfig(epochs=2, lr=0.05, optimizer="adam"),
        exports=["onnx", "checkpoint"],
        seed=7,
    )


def test_round_trip_through_a_file(tmp_path):
    recipe = full_recipe()
    path = save_recipe(recipe, tmp_path / "r.json")
    again = load_recipe(path)
    assert again.to_dict() == recipe.to_dict()
    assert again.plan.layer_rates == {"conv1": 0.1}
    assert again.finetune.optimizer == "adam"


def test_defaults_fill_missing_sections():
    recipe = Recipe.from_dict({"model": {"spec": "cifar:resnet20"}})
    assert recipe.finetune.epochs == 0 and recipe.sparse_training.epochs == 0
    assert recipe.data.spec is None


@pytest.mark.parametrize("bad, words", [
    ({"modle": {}}, "modle"),
    ({"model": {"spec": "x", "archh": "y"}}, "archh"),
    ({"exports": ["zip"]}, "zip"),
    ({"version": 99}, "version 99"),
    ({"finetune": {"epochs": 1}}, "names no data"),
    ({"data": {"batch_size": 0}}, "batch_size"),
    ({"model": "cifar:resnet20"}, "must be an object"),
])
def test_bad_recipes_are_named(bad, words):
    with pytest.raises(StudioError) as err:
        Recipe.from_dict(bad)
    assert words in str(err.value)


def test_broken_json_and_missing_file(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"model": {"spec": "x",}')
    with pytest.raises(StudioError, match="not valid JSON"):
        load_recipe(broken)
    with pytest.raises(StudioError, match="not found"):
        load_recipe(tmp_path / "nope.json")


def test_saving_never_leaves_partial_files(tmp_path):
    save_recipe(full_recipe(), tmp_path / "r.json")
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
    assert json.loads((tmp_path / "r.json").read_text())["seed"] == 7
