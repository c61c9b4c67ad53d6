"""A family of models in one job: one verified, exported model per target (CACP, our reading)."""
import json

import pytest

from studio.cli import main
from studio.engine.errors import StudioError
from studio.engine.events import CancelToken, Log, Phase, TrialEnd, run_to_end
from studio.engine.jobs import DataSource, ModelSource, Recipe, read_run
from studio.engine.jobs.family import member_folder, run_family
from studio.engine.jobs.recipe import SearchOptions
from studio.engine.methods.targets import family_targets
from studio.engine.training import TrainConfig

SYNTHETIC = "synthetic:classes=10,size=3x32x32,train=64,val=64"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))


def family_recipe(targets="macs=1.5x,2x,3x") -> Recipe:
    return Recipe(model=ModelSource("cifar:resnet20"), data=DataSource(SYNTHETIC, batch_size=32),
                  finetune=TrainConfig(epochs=1, lr=0.01, max_steps_per_epoch=1), exports=["checkpoint"],
                  search=SearchOptions(targets=[targets], max_drop=100.0, rates=[0.3, 0.6], images=64))


def test_each_member_meets_its_own_target_and_is_a_run_folder(tmp_path):
    events = []
    result = run_to_end(run_family(family_recipe(), tmp_path / "fam"), events.append)
    rows = result.metrics["family"]["members"]
    assert [r["target"] for r in rows] == ["macs=1.5x", "macs=2x", "macs=3x"]
    for row, goal in zip(rows, (1.5, 2.0, 3.0)):
        assert row["outcome"] == "met" and goal * 0.98 <= row["ratio"] <= goal * 1.1, row
        summary = read_run(tmp_path / "fam" / row["folder"])
        assert summary.speedup_macs == pytest.approx(row["ratio"])
    # The analysis is shared: only the first member probes; the others read it back.
    reused = [e for e in events if isinstance(e, Log) and "reusing the analysis" in e.message]
    assert len(reused) == 2
    assert {e.values["member"] for e in events if isinstance(e, TrialEnd)} == {"macs=1.5x", "macs=2x", "macs=3x"}
    page = (tmp_path / "fam" / "report.html").read_text()
    assert "members/macs-2x/report.html" in page and "<svg" in page
    assert json.loads((tmp_path / "fam" / "family.json").read_text())["members"][2]["target"] == "macs=3x"


def test_a_resumed_family_keeps_finished_members(tmp_path):
    token = CancelToken()

    def stop_in_second_member(event):
        if isinstance(event, Phase) and event.name == "family" and "Member 2" in event.message:
            token.cancel()
    with pytest.raises(Exception) as err:
        run_to_end(run_family(family_recipe("macs=1.5x,2x"), tmp_path / "f", token=token), stop_in_second_member)
    assert type(err.value).__name__ == "JobCancelled"
    assert (member_folder(tmp_path / "f", "macs=1.5x") / "metrics.json").is_file()
    with pytest.raises(StudioError, match="--resume"):
        run_to_end(run_family(family_recipe("macs=1.5x,2x"), tmp_path / "f"))
    events = []
    result = run_to_end(run_family(family_recipe("macs=1.5x,2x"), tmp_path / "f", resume=True), events.append)
    assert [r["outcome"] for r in result.metrics["family"]["members"]] == ["met", "met"]
    assert any(isinstance(e, Log) and "macs=1.5x: finished earlier, kept" in e.message for e in events)


@pytest.mark.parametrize("targets, message", [
    (["macs=2x,,3x"], "empty value"), (["macs=2x,2x"], "more than once"), (["macs=2x,3x", "params=2x"], "alone"),
    (["size=min,100kB"], "one model"), (["macs=2x,fast"], "amount or unit"),
])
def test_bad_families_are_refused(targets, message):
    with pytest.raises(StudioError, match=message):
        family_targets(targets)


def test_a_family_needs_the_allocate_method():
    recipe = family_recipe()
    recipe.search.method = "heuristic"
    with pytest.raises(StudioError, match="allocate method"):
        recipe.validate()


def test_the_cli_lists_the_members(tmp_path, capsys):
    assert main(["search", "cifar:resnet20", "--data", SYNTHETIC, "--target", "macs=1.5x,2x", "--max-drop", "100",
                 "--rates", "0.3,0.6", "--images", "64", "--trial-epochs", "0", "--batch-size", "32",
                 "--export", "checkpoint", "--out", str(tmp_path / "f")]) == 0
    printed = capsys.readouterr().out
    assert "macs=1.5x: met" in printed and "macs=2x: met" in printed and "family folder" in printed
