"""Hard third-party patterns prune: the unsafe groups are left whole and named, the rest is pruned.

One tiny net per pattern (tests/hard_nets.py), loaded as ``file.py:Symbol`` as a user's model
would be, pruned at rate 0.3 through the whole job (surgery, the check that the pruned model
runs, measurement, export, report).
"""
from pathlib import Path

import pytest

import hard_nets
from studio.engine.errors import StudioError
from studio.engine.events import Log, run_to_end
from studio.engine.jobs import DataSource, ModelSource, Recipe, run_recipe
from studio.engine.pruning import PruningPlan

DATA = "synthetic:classes=4,size=3x16x16,train=16,val=16"
NETS = Path(hard_nets.__file__)

# What each pattern must leave whole (the root of each protected group) and why, in words.
EXPECTED = {
    "OptionA": (["stem"], "constant_pad_nd"),
    "Shuffle": ([], ""),        # mapped exactly across the shuffle (graph.tp_mappings)
    "ShuffleStage": ([], ""),
    "FixedSlice": (["conv"], "sliced at fixed indices"),
    "HardReshape": (["b"], "no longer runs"),
    "Scripted": (["b"], "TorchScript"),
    "Stacked": (["left"], "torch.stack"),
    "ConvHead": ([], ""),
    "HeadsInForward": ([], ""),
}


def prune_net(tmp_path, name: str, exports=("checkpoint",), **plan):
    recipe = Recipe(model=ModelSource(f"{NETS}:{name}", input_size=list(hard_nets.INPUT)),
                    data=DataSource(DATA, batch_size=8), plan=PruningPlan(rate=0.3, **plan), exports=list(exports))
    events = []
    result = run_to_end(run_recipe(recipe, tmp_path / f"run-{name}"), events.append)
    return result.metrics, events


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_hard_pattern_prunes_and_says_what_it_left(tmp_path, name):
    roots, why = EXPECTED[name]
    metrics, events = prune_net(tmp_path, name)
    protected = metrics["protected_groups"]
    assert [p["root"] for p in protected] == roots
    assert all(why in p["why"] for p in protected)
    texts = [e.message for e in events if isinstance(e, Log)] + metrics["warnings"]
    assert not any("internal error" in t.lower() for t in texts)
    if roots:
        assert any(t.startswith(f"Left unpruned: the group of {roots[0]}") for t in metrics["warnings"])
        page = (tmp_path / f"run-{name}" / "report.html").read_text()
        assert "Left unpruned, and why" in page
    if name != "FixedSlice":   # its one group feeds the slice: nothing else to prune
        assert metrics["after"]["macs"] < metrics["before"]["macs"]


def test_hazards_protect_before_surgery_not_by_bisection(tmp_path):
    _, events = prune_net(tmp_path, "Stacked")
    assert not any(isinstance(e, Log) and "finding the groups at fault" in e.message for e in events)


def test_a_conv_classifier_keeps_its_class_count(tmp_path):
    import torch
    prune_net(tmp_path, "ConvHead", exports=["pt"])
    model = torch.load(tmp_path / "run-ConvHead" / "model.pt", weights_only=False)
    assert model.classifier[1].out_channels == hard_nets.CLASSES
    assert model.features[0].out_channels < 16


def test_attention_is_pruned_in_whole_heads_and_its_head_size_follows(tmp_path):
    import torch
    metrics, _ = prune_net(tmp_path, "HeadsInForward", exports=["pt"])
    model = torch.load(tmp_path / "run-HeadsInForward" / "model.pt", weights_only=False)
    attn = model.attn
    assert attn.num_heads == 4 and attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim
    assert attn.head_dim < 4 and metrics["warnings"] == ["The model has random weights (untrained): accuracy "
                                                          "figures are meaningless."]
    assert model(torch.randn(2, *hard_nets.INPUT)).shape == (2, hard_nets.CLASSES)


def test_a_torchscript_submodule_is_an_opaque_leaf_not_a_bad_input():
    from studio.engine.graph import model_hazards
    hazards = model_hazards(hard_nets.Scripted(), hard_nets.INPUT)
    assert len(hazards) == 1 and "TorchScript" in hazards[0].text and hazards[0].layers == ["b"]


def test_strict_refuses_a_hazard_with_the_group_names(tmp_path):
    with pytest.raises(StudioError, match=r"Strict plan.*the group of left \(left, right\).*torch\.stack"):
        prune_net(tmp_path, "Stacked", strict=True)
    assert not (tmp_path / "run-Stacked").exists()


def test_a_layer_the_user_named_that_had_to_be_protected_is_a_warning(tmp_path):
    metrics, _ = prune_net(tmp_path, "Stacked", layer_rates={"left": 0.5})
    assert any("left was given a rate in the plan" in w for w in metrics["warnings"])


def test_a_search_leaves_the_hazard_groups_whole_in_every_trial_and_reports_them(tmp_path):
    from studio.engine.jobs.search import run_search
    from studio.engine.jobs.recipe import SearchOptions
    from studio.engine.training import TrainConfig
    recipe = Recipe(model=ModelSource(f"{NETS}:Stacked", input_size=list(hard_nets.INPUT)),
                    data=DataSource(DATA, batch_size=8), finetune=TrainConfig(epochs=0), exports=["checkpoint"],
                    search=SearchOptions(targets=["macs=1.3x"], max_drop=100.0, rates=[0.3, 0.6], images=16))
    events = []
    result = run_to_end(run_search(recipe, tmp_path / "search"), events.append)
    trials = result.metrics["search"]["trials"]
    assert trials and all(t["protected"] == [] for t in trials)      # protected up front, not found by failing
    assert all(not {"left", "right"} & set(t["layer_rates"]) for t in trials)
    assert any(isinstance(e, Log) and "Left unpruned in every trial: left" in e.message for e in events)
    assert [p["root"] for p in result.metrics["protected_groups"]] == ["left"]


def test_inspect_names_the_blocked_groups_and_why(capsys):
    from studio.cli import main
    assert main(["inspect", f"{NETS}:Stacked", "--input-size", "3x16x16"]) == 0
    out = capsys.readouterr().out
    assert "pre-flight: 2 of 3 groups can be pruned" in out
    assert "blocked: the group of left (left, right): torch.stack" in out


def test_the_prediction_counts_blocked_groups_as_kept_and_says_when_surgery_fails():
    from studio.engine.pruning.preflight import predict
    from studio.engine.pruning.surgery import estimate
    model, plan = hard_nets.Stacked(), PruningPlan(rate=0.3)
    honest = predict(model, plan, hard_nets.INPUT)
    import torch
    naive = estimate(model, plan, torch.zeros(1, *hard_nets.INPUT))
    assert [k.root for k in honest.kept] == ["left"] and honest.macs > naive[1] and not honest.failure
    broken = predict(hard_nets.HardReshape(), PruningPlan(rate=0.5), hard_nets.INPUT)
    assert "no longer runs" in broken.failure
