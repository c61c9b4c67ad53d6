"""Compress to a target: targets, allocation, trials, resume, the run folder, and every bad input."""
import json

import pytest
import torch

from studio.cli import main
from studio.engine.errors import StudioError
from studio.engine.events import CancelToken, TrialEnd, run_to_end
from studio.engine.jobs import DataSource, ModelSource, Recipe, read_run
from studio.engine.jobs.recipe import SearchOptions
from studio.engine.jobs.search import run_search
from studio.engine.methods.allocate import FigureMeter, allocate, plan_for, rates_for
from studio.engine.methods.search import read_trials
from studio.engine.methods.sensitivity import GroupCurve, SensitivityResult
from studio.engine.methods.targets import LatencySetting, Target, parse_targets
from studio.engine.models import build_architecture, load_model
from studio.engine.pruning import PruningPlan, estimate
from studio.engine.training import TrainConfig

SYNTHETIC = "synthetic:classes=10,size=3x32x32,train=64,val=64"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))


# --------------------------------------------------------------------------- targets

@pytest.mark.parametrize("text, kind, ratio, value", [
    ("macs=2x", "macs", 2.0, None), ("MACS = 1.5×", "macs", 1.5, None), ("macs=20M", "macs", None, 20e6),
    ("params=0.5M", "params", None, 0.5e6), ("size=100kB", "size", None, 100e3), ("size=1MiB", "size", None, 1024 ** 2),
    ("latency=3ms", "latency", None, 3.0), ("latency=0.5s", "latency", None, 500.0), ("params=4x", "params", 4.0, None),
])
def test_targets_parse_ratios_and_units(text, kind, ratio, value):
    t = Target.parse(text)
    assert (t.kind, t.ratio, t.value) == (kind, ratio, value)


@pytest.mark.parametrize("text, message", [
    ("flops=2x", "Unknown target kind 'flops'"), ("macs", "not of the form kind=value"),
    ("latency=3kB", "unit this kind does not take"), ("size=100", "unit this kind does not take"),
    ("macs=1x", "removes nothing"), ("macs=0.5x", "removes nothing"), ("macs=0", "is zero"), ("macs=abc", "amount"),
])
def test_bad_targets_are_explained(text, message):
    with pytest.raises(StudioError, match=message):
        Target.parse(text)


def test_target_lists_refuse_none_and_repeats():
    with pytest.raises(StudioError, match="No target"):
        parse_targets([])
    with pytest.raises(StudioError, match="more than once"):
        parse_targets(["macs=2x", "macs=3x"])
    assert [t.kind for t in parse_targets(["macs=2x", "latency=3ms"])] == ["macs", "latency"]


def test_a_goal_is_met_within_the_tolerance():
    t = Target.parse("macs=2x")
    assert t.goal(100.0) == 50.0 and t.met(51.0, 100.0, 0.02) and not t.met(51.5, 100.0, 0.02)


# --------------------------------------------------------------------------- allocation

def toy_curves(model) -> SensitivityResult:
    """Hand-made curves for ResNet-20's groups: residual groups steep, inner convs flat."""
    from studio.engine.methods.sensitivity import prunable_groups
    _, groups = prunable_groups(model.eval(), torch.randn(1, 3, 32, 32))
    names = {m: n for n, m in model.named_modules()}
    curves = []
    for group in groups:
        members = [names[d.target.module] for d, _ in group.items
                   if d.target.module in names and isinstance(d.target.module, (torch.nn.Conv2d, torch.nn.Linear))
                   and d.handler.__name__.endswith("out_channels")]
        root = names[group[0].dep.target.module]
        steep = len(members) > 1
        fit = [0.9 - (0.5 if steep else 0.1) * r for r in (0.25, 0.5, 0.75)]
        curves.append(GroupCurve(root=root, layers=members, channels=len(group[0].idxs), kept=[1, 1, 1],
                                 top1=fit, loss=[1, 1, 1], fit=fit, fit_base=0.9))
    return SensitivityResult("l1", [0.25, 0.5, 0.75], 100, 0.9, 0.5, curves)


def test_allocation_meets_a_macs_target_within_two_percent_and_spares_sensitive_groups():
    model = build_architecture("cifar:resnet20", 10).eval()
    curves = toy_curves(model)
    meter = FigureMeter(model, (3, 32, 32), parse_targets(["macs=2x"]), LatencySetting())
    met, missed = allocate(curves, meter, PruningPlan(rate=0.0))
    goal = meter.original["macs"] / 2
    assert goal * 0.98 <= met.figures["macs"] <= goal * 1.02
    assert missed.figures["macs"] > goal
    plan = plan_for(curves, met.group_rates, PruningPlan(rate=0.0))
    _, macs = estimate(model, plan, torch.randn(1, 3, 32, 32))
    assert macs == met.figures["macs"]                      # the figure is the plan's real count
    steep = [g for g in curves.groups if len(g.layers) > 1]
    flat = [g for g in curves.groups if len(g.layers) == 1]
    assert max(met.group_rates[g.root] for g in steep) < min(met.group_rates[g.root] for g in flat)


def test_protected_layers_stay_unpruned_in_the_allocation():
    model = build_architecture("cifar:resnet20", 10).eval()
    curves = toy_curves(model)
    rates = rates_for(curves, 0.05, protected={"layer1.0.conv1"})
    assert rates["layer1.0.conv1"] == 0.0 and rates["layer1.1.conv1"] > 0


def test_targets_met_without_pruning_or_out_of_reach_are_refused():
    model = build_architecture("cifar:resnet20", 10).eval()
    curves = toy_curves(model)
    with pytest.raises(StudioError, match="already meets"):
        allocate(curves, FigureMeter(model, (3, 32, 32), parse_targets(["macs=1G"]), LatencySetting()),
                 PruningPlan(rate=0.0))
    with pytest.raises(StudioError, match="cannot be reached: even the largest probed rate"):
        allocate(curves, FigureMeter(model, (3, 32, 32), parse_targets(["macs=50x"]), LatencySetting()),
                 PruningPlan(rate=0.0))


# --------------------------------------------------------------------------- the search job

def search_recipe(**search) -> Recipe:
    options = {"targets": ["macs=2x"], "max_drop": 100.0, "rates": [0.3, 0.6], "images": 64, **search}
    return Recipe(model=ModelSource("cifar:resnet20"), data=DataSource(SYNTHETIC, batch_size=32),
                  finetune=TrainConfig(epochs=1, lr=0.01, max_steps_per_epoch=1), exports=["checkpoint"],
                  search=SearchOptions(**options))


def test_a_search_writes_an_ordinary_run_folder_that_studio_run_repeats(tmp_path):
    out = tmp_path / "search"
    events = []
    result = run_to_end(run_search(search_recipe(), out), events.append)
    for name in ("search.json", "sensitivity.json", "trials.jsonl", "recipe.json", "metrics.json", "report.html",
                 "model.ckpt.pt"):
        assert (out / name).is_file(), name
    assert not (out / "winner").exists()
    search = result.metrics["search"]
    assert search["outcome"] == "met" and search["winner"] == 0 and len(search["trials"]) == 1
    ratio = result.metrics["before"]["macs"] / result.metrics["after"]["macs"]
    assert 2 * 0.98 <= ratio <= 2.2
    assert [e.trial for e in events if isinstance(e, TrialEnd)] == [0]
    winner = json.loads((out / "recipe.json").read_text())
    assert "search" not in winner and winner["plan"]["layer_rates"] == search["trials"][0]["layer_rates"]
    summary = read_run(out)
    assert summary.after["macs"] == result.metrics["after"]["macs"]
    # The winner's recipe alone gives the same model.
    assert main(["run", str(out / "recipe.json"), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["after"]["macs"] == result.metrics["after"]["macs"]


def miss_first_trial(monkeypatch):
    """Make the first trial's measured MACs 10 % above the prediction, so the search must refine."""
    import studio.engine.methods.search as search_mod
    real = search_mod.measure_figure
    calls = []

    def measured(kind, model, input_size, latency):
        calls.append(kind)
        value = real(kind, model, input_size, latency)
        return value * 1.1 if len(calls) == 1 else value
    monkeypatch.setattr(search_mod, "measure_figure", measured)


def test_a_missed_trial_tightens_the_goal_and_the_next_one_meets_it(tmp_path, monkeypatch):
    miss_first_trial(monkeypatch)
    result = run_to_end(run_search(search_recipe(), tmp_path / "s"))
    trials = result.metrics["search"]["trials"]
    assert [t["met"] for t in trials] == [False, True]
    assert trials[1]["predicted"]["macs"] < trials[0]["predicted"]["macs"] / 1.05
    assert result.metrics["search"]["winner"] == 1


def test_resume_after_a_cancel_ends_with_the_uninterrupted_result(tmp_path, monkeypatch):
    miss_first_trial(monkeypatch)
    straight = run_to_end(run_search(search_recipe(), tmp_path / "straight"))
    monkeypatch.undo()
    miss_first_trial(monkeypatch)
    token = CancelToken()

    def cancel_after_trial_0(event):
        if isinstance(event, TrialEnd):
            token.cancel()
    with pytest.raises(Exception) as err:
        run_to_end(run_search(search_recipe(), tmp_path / "stopped", token=token), cancel_after_trial_0)
    assert type(err.value).__name__ == "JobCancelled"
    assert len(read_trials(tmp_path / "stopped")) == 1
    with pytest.raises(StudioError, match="--resume"):
        run_to_end(run_search(search_recipe(), tmp_path / "stopped"))
    resumed = run_to_end(run_search(search_recipe(), tmp_path / "stopped", resume=True))
    strip = [{k: v for k, v in t.items() if k != "seconds"} for t in straight.metrics["search"]["trials"]]
    assert [{k: v for k, v in t.items() if k != "seconds"} for t in resumed.metrics["search"]["trials"]] == strip
    assert resumed.metrics["after"]["macs"] == straight.metrics["after"]["macs"]
    with pytest.raises(StudioError, match="already finished"):
        run_to_end(run_search(search_recipe(), tmp_path / "stopped", resume=True))


def test_resume_refuses_other_settings_and_missing_searches(tmp_path):
    with pytest.raises(StudioError, match="no search to resume"):
        run_to_end(run_search(search_recipe(), tmp_path / "none", resume=True))
    token = CancelToken()
    token.cancel()
    with pytest.raises(Exception):
        run_to_end(run_search(search_recipe(), tmp_path / "s", token=token))
    with pytest.raises(StudioError, match="other settings"):
        run_to_end(run_search(search_recipe(targets=["macs=3x"]), tmp_path / "s", resume=True))


@pytest.fixture(scope="module")
def demo():
    loaded = load_model("demo")
    from studio.engine.data import load_data
    return loaded, load_data("demo", input_size=tuple(loaded.input_size))


def test_a_target_unreachable_under_the_floor_names_the_best_point(tmp_path, demo):
    loaded, bundle = demo
    recipe = search_recipe(max_drop=1.0, images=100, max_trials=2)
    recipe.model.spec, recipe.data.spec, recipe.data.eval_batches = "demo", "demo", 2
    recipe.finetune.epochs = 0
    with pytest.raises(StudioError) as err:
        run_to_end(run_search(recipe, tmp_path / "s", loaded=loaded, bundle=bundle))
    text = str(err.value)
    assert "cannot be met with at most 1 point(s)" in text and "Best point reached: trial 0" in text
    assert "under the floor" in text and "trials.jsonl" in text
    assert len(read_trials(tmp_path / "s")) == 1 and (tmp_path / "s" / "sensitivity.json").is_file()


@pytest.mark.parametrize("change, message", [
    (lambda r: setattr(r.data, "spec", None), "needs data"),
    (lambda r: setattr(r.search, "max_drop", -0.5), "above the original accuracy"),
    (lambda r: setattr(r.search, "targets", ["speed=2x"]), "Unknown target kind"),
    (lambda r: setattr(r.search, "targets", []), "No target"),
    (lambda r: setattr(r.search, "targets", ["macs=2x", "macs=3x"]), "more than once"),
    (lambda r: setattr(r.search, "method", "grid-of-everything"), "Unknown search method"),
])
def test_bad_search_recipes_are_refused_before_any_work(change, message):
    recipe = search_recipe()
    change(recipe)
    with pytest.raises(StudioError, match=message):
        recipe.validate()


def test_a_latency_target_on_a_missing_device_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    recipe = search_recipe(targets=["latency=1ms"])
    recipe.measure.device = "cuda"
    with pytest.raises(StudioError, match="CUDA"):
        run_to_end(run_search(recipe, tmp_path / "s"))


def test_search_recipes_round_trip_and_old_recipes_have_none():
    recipe = search_recipe()
    assert Recipe.from_dict(recipe.to_dict()).to_dict() == recipe.to_dict()
    assert Recipe.from_dict(Recipe().to_dict()).search is None
    with pytest.raises(StudioError, match="unknown keys: budget"):
        Recipe.from_dict({**recipe.to_dict(), "search": {"budget": 3}})


def test_the_cli_searches_and_explains_a_missing_target(tmp_path, capsys):
    args = ["search", "cifar:resnet20", "--data", SYNTHETIC, "--rates", "0.3,0.6", "--images", "64",
            "--max-drop", "100", "--trial-epochs", "0", "--export", "checkpoint", "--batch-size", "32"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 2
    assert "needs at least one --target" in capsys.readouterr().err
    assert main(args + ["--target", "macs=2x", "--out", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    assert "winner: trial 0" in printed and "studio run" in printed
    assert main(args + ["--target", "macs=2x", "--out", str(tmp_path / "b")]) == 2
    assert "--resume" in capsys.readouterr().err


def test_the_cli_prints_a_sensitivity_table(tmp_path, capsys):
    assert main(["sensitivity", "cifar:resnet20", "--data", SYNTHETIC, "--rates", "0.5", "--images", "32",
                 "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "layer1.0.conv1" in printed and "probes" in printed
    assert json.loads((tmp_path / "sensitivity.json").read_text())["rates"] == [0.5]
