"""--parallel N: independent trials (grid points, family members) N at a time, one process each."""
import os

import pytest

from studio.cli import main
from studio.engine.errors import JobCancelled, StudioError
from studio.engine.events import CancelToken, TrialEnd, run_to_end
from studio.engine.jobs import DataSource, ModelSource, Recipe
from studio.engine.jobs.family import run_family
from studio.engine.jobs.recipe import SearchOptions
from studio.engine.jobs.search import run_search
from studio.engine.methods.search import read_trials
from studio.engine.training import TrainConfig
from studio.engine.training.pool import SharedToken, worker_devices

SYNTHETIC = "synthetic:classes=10,size=3x32x32,train=64,val=32"
CORES = os.cpu_count() or 1
needs_two_cores = pytest.mark.skipif(CORES < 2, reason="a parallel run needs at least 2 CPU cores")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))


def grid_recipe(parallel: int) -> Recipe:
    """A 2×2 grid whose trials prune, fine-tune one step with the zeros held, and evaluate."""
    return Recipe(model=ModelSource("cifar:resnet20"), data=DataSource(SYNTHETIC, batch_size=16),
                  finetune=TrainConfig(epochs=1, lr=0.01, max_steps_per_epoch=1, device="cpu"),
                  exports=["checkpoint"],
                  search=SearchOptions(method="grid", targets=["size=min"], max_drop=100.0, resolution=0.3,
                                       parallel=parallel))


def _trial_facts(trials: list[dict]) -> list[tuple]:
    return [(t["trial"], t["structured"], t["unstructured"], t["figures"].get("size"), round(t["top1"], 6),
             t["floor_ok"]) for t in trials]


@needs_two_cores
def test_a_parallel_grid_gives_the_same_trials_as_a_sequential_one(tmp_path, monkeypatch):
    from studio.engine.methods import rate_pairs
    monkeypatch.setattr(rate_pairs, "grid_points", lambda res, top: [0.0, 0.3])   # 4 trials
    sequential = run_to_end(run_search(grid_recipe(1), tmp_path / "seq")).metrics["search"]
    events = []
    parallel = run_to_end(run_search(grid_recipe(2), tmp_path / "par"), events.append).metrics["search"]
    assert len(sequential["trials"]) == 4
    assert _trial_facts(parallel["trials"]) == _trial_facts(sequential["trials"])
    assert parallel["winner"] == sequential["winner"]
    assert parallel["ran"].startswith("2 processes") and sequential["ran"] == "one at a time"
    assert _trial_facts(read_trials(tmp_path / "par")) == _trial_facts(sequential["trials"])
    # The window's table still fills in as the trials finish.
    assert sorted(e.trial for e in events if isinstance(e, TrialEnd)) == [0, 1, 2, 3]


def family_recipe(parallel: int) -> Recipe:
    return Recipe(model=ModelSource("cifar:resnet20"), data=DataSource(SYNTHETIC, batch_size=32),
                  finetune=TrainConfig(epochs=1, lr=0.01, max_steps_per_epoch=1, device="cpu"),
                  exports=["checkpoint"],
                  search=SearchOptions(targets=["macs=1.5x,2x"], max_drop=100.0, rates=[0.3, 0.6], images=32,
                                       parallel=parallel))


def _member_facts(rows: list[dict]) -> list[tuple]:
    return [(r["target"], r["outcome"], round(r["ratio"], 6), round(r["top1"], 6), r["trials"]) for r in rows]


@needs_two_cores
def test_a_parallel_family_gives_the_same_members_as_a_sequential_one(tmp_path):
    sequential = run_to_end(run_family(family_recipe(1), tmp_path / "seq")).metrics["family"]["members"]
    events = []
    parallel = run_to_end(run_family(family_recipe(2), tmp_path / "par"), events.append).metrics["family"]["members"]
    assert _member_facts(parallel) == _member_facts(sequential)
    assert {e.values["member"] for e in events if isinstance(e, TrialEnd)} == {"macs=1.5x", "macs=2x"}
    for row in parallel:
        assert (tmp_path / "par" / row["folder"] / "metrics.json").is_file()
    assert "run 2 at a time" in (tmp_path / "par" / "report.html").read_text()


def test_parallel_above_the_cores_is_refused_before_anything_is_written(tmp_path, capsys):
    with pytest.raises(StudioError, match=f"{CORES + 1} processes, and this machine has {CORES} CPU core"):
        run_to_end(run_search(grid_recipe(CORES + 1), tmp_path / "g"))
    assert not (tmp_path / "g").exists()
    code = main(["search", "cifar:resnet20", "--data", SYNTHETIC, "--target", "size=min", "--max-drop", "1",
                 "--method", "grid", "--device", "cpu", "--parallel", str(CORES + 1), "--out", str(tmp_path / "c")])
    assert code != 0
    assert f"Use --parallel {CORES} or fewer" in capsys.readouterr().err


@pytest.mark.parametrize("parallel, device, words", [
    (0, "cpu", "at least 1"),
    (2, "mps", "not on Apple MPS"),
    (2, "cuda:1", "names one GPU"),
])
def test_bad_parallel_settings_get_a_clear_message(parallel, device, words):
    with pytest.raises(StudioError, match=words):
        worker_devices(parallel, device)


def test_more_gpus_than_present_are_refused(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(StudioError, match="asks for 2 GPUs, and this machine has 1"):
        worker_devices(2, "cuda")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(StudioError, match="torchrun"):
        worker_devices(2, "cpu")


def test_a_recipe_with_a_bad_parallel_count_is_refused():
    recipe = grid_recipe(1)
    recipe.search.parallel = "two"
    with pytest.raises(StudioError, match="search.parallel must be a whole number"):
        recipe.validate()


def test_the_shared_token_follows_pause_and_cancel():
    import multiprocessing as mp
    token, shared = CancelToken(), SharedToken(mp.get_context("spawn"))
    token.pause()
    shared.follow(token)
    assert shared.paused and not shared.cancelled
    token.resume()
    shared.follow(token)
    assert not shared.paused
    token.cancel()
    shared.follow(token)
    with pytest.raises(JobCancelled):
        shared.check()


def test_a_studio_error_keeps_its_fix_across_processes():
    import pickle
    error = pickle.loads(pickle.dumps(StudioError("what went wrong", "what to do")))
    assert (error.problem, error.fix) == ("what went wrong", "what to do")
    assert isinstance(pickle.loads(pickle.dumps(JobCancelled("trial"))), JobCancelled)


@needs_two_cores
def test_a_cancelled_parallel_grid_stops_and_keeps_its_finished_trials(tmp_path, monkeypatch):
    from studio.engine.methods import rate_pairs
    monkeypatch.setattr(rate_pairs, "grid_points", lambda res, top: [0.0, 0.3, 0.6])   # 9 trials
    token = CancelToken()

    def cancel_after_first(event):
        if isinstance(event, TrialEnd):
            token.cancel()
    with pytest.raises(JobCancelled):
        run_to_end(run_search(grid_recipe(2), tmp_path / "g", token=token), cancel_after_first)
    kept = read_trials(tmp_path / "g")
    assert 1 <= len(kept) < 9
