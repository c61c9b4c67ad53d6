"""size=min: structured + unstructured rates pushed to the floor, by the heuristic and by the grid."""
import json
import time

import pytest

from studio.cli import main
from studio.engine.errors import StudioError
from studio.engine.events import CancelToken, TrialEnd, run_to_end
from studio.engine.jobs import DataSource, ModelSource, Recipe
from studio.engine.jobs.recipe import SearchOptions
from studio.engine.jobs.search import run_search
from studio.engine.methods import rate_pairs
from studio.engine.methods.rate_pairs import grid_points
from studio.engine.methods.search import read_trials
from studio.engine.methods.targets import Target
from studio.engine.training import TrainConfig

SYNTHETIC = "synthetic:classes=10,size=3x32x32,train=64,val=32"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))


def recipe(method: str, resolution: float = 0.1, **search) -> Recipe:
    return Recipe(model=ModelSource("cifar:resnet20"), data=DataSource(SYNTHETIC, batch_size=16),
                  finetune=TrainConfig(epochs=0), exports=["checkpoint"],
                  search=SearchOptions(**{"method": method, "targets": ["size=min"], "max_drop": 10.0,
                                          "resolution": resolution, **search}))


def modelled(monkeypatch, accuracy):
    """Replace a trial's pruning and training by a model of it: size and top-1 as functions of (s, u).

    The search logic is what is tested; it then runs in milliseconds per trial.
    """
    def run(self, s, u):
        yield from ()
        record = self._record(s, u, self.plan(s, u), 1e6 * (1 - s) ** 2 * (1 - 0.9 * u), accuracy(s, u), u,
                              time.perf_counter())
        return record
    monkeypatch.setattr(rate_pairs._PairTrials, "_run", run)
    monkeypatch.setattr(rate_pairs._PairTrials, "evaluate", lambda self, model: _const(0.9))


def _const(value):
    yield from ()
    return value


SURFACES = {
    "both help": lambda s, u: 0.9 - 0.4 * s ** 2 - 0.2 * u ** 2 - 0.1 * s * u,
    "structured fragile": lambda s, u: 0.9 - 2.0 * s - 0.1 * u ** 3,
    "unstructured fragile": lambda s, u: 0.9 - 0.1 * s - 0.5 * u ** 2,
}


@pytest.mark.parametrize("surface", SURFACES)
def test_heuristic_and_grid_agree_and_the_heuristic_needs_a_tenth_of_the_trials(tmp_path, monkeypatch, surface):
    modelled(monkeypatch, SURFACES[surface])
    grid = run_to_end(run_search(recipe("grid"), tmp_path / "grid")).metrics["search"]
    heuristic = run_to_end(run_search(recipe("heuristic"), tmp_path / "heuristic")).metrics["search"]
    assert len(grid["trials"]) == 100 == grid["grid_size"]
    assert len(heuristic["trials"]) <= len(grid["trials"]) / 10
    size = {name: next(t for t in s["trials"] if t["trial"] == s["winner"])["figures"]["size"]
            for name, s in (("grid", grid), ("heuristic", heuristic))}
    assert size["heuristic"] <= size["grid"] * 1.05, size
    assert all(t["floor_ok"] for t in heuristic["trials"] if t["trial"] == heuristic["winner"])


def test_the_heuristic_never_tries_a_pair_twice_or_off_the_grid(tmp_path, monkeypatch):
    modelled(monkeypatch, SURFACES["both help"])
    trials = run_to_end(run_search(recipe("heuristic", 0.05), tmp_path / "h")).metrics["search"]["trials"]
    pairs = [(t["structured"], t["unstructured"]) for t in trials]
    assert len(pairs) == len(set(pairs))
    grid = set(grid_points(0.05, 0.9))
    assert all(s in grid and u in grid for s, u in pairs)


def test_resume_of_a_killed_grid_ends_with_the_same_result(tmp_path, monkeypatch):
    modelled(monkeypatch, SURFACES["both help"])
    straight = run_to_end(run_search(recipe("grid", 0.3), tmp_path / "straight")).metrics["search"]
    token, seen = CancelToken(), []

    def kill_after_five(event):
        if isinstance(event, TrialEnd):
            seen.append(event.trial)
            if len(seen) == 5:
                token.cancel()
    with pytest.raises(Exception) as err:
        run_to_end(run_search(recipe("grid", 0.3), tmp_path / "killed", token=token), kill_after_five)
    assert type(err.value).__name__ == "JobCancelled"
    assert len(read_trials(tmp_path / "killed")) == 5
    resumed = run_to_end(run_search(recipe("grid", 0.3), tmp_path / "killed", resume=True)).metrics["search"]

    def key(trials):
        return [(t["structured"], t["unstructured"], t["top1"], t["figures"]) for t in trials]
    assert key(resumed["trials"]) == key(straight["trials"]) and resumed["winner"] == straight["winner"]


def test_a_real_heuristic_search_writes_a_winner_that_keeps_its_zeros(tmp_path):
    r = recipe("heuristic", 0.45, max_drop=100.0)
    result = run_to_end(run_search(r, tmp_path / "s"))
    search, after = result.metrics["search"], result.metrics["after"]
    winner = next(t for t in search["trials"] if t["trial"] == search["winner"])
    assert winner["structured"] == 0.9 and winner["unstructured"] == 0.9    # no floor to speak of: all the way
    assert after["sparsity"] == pytest.approx(winner["zeros"], abs=1e-6)
    assert after["compressed_bytes"] == pytest.approx(winner["figures"]["size"], rel=1e-6)
    saved = json.loads((tmp_path / "s" / "recipe.json").read_text())
    assert saved["plan"]["unstructured_sparsity"] == 0.9 and saved["plan"]["criterion"] == "bn_scale"


def test_size_min_needs_a_floor_and_a_pair_method():
    with pytest.raises(StudioError, match="no floor was given"):
        _validate(recipe("heuristic"), max_drop=None)
    with pytest.raises(StudioError, match="push to the floor"):
        Target.parse("macs=min")
    with pytest.raises(StudioError, match="does not sparse-train"):
        r = recipe("allocate")
        r.search.targets, r.sparse_training.epochs = ["macs=2x"], 1
        r.validate()


def _validate(r, **changes):
    for k, v in changes.items():
        setattr(r.search, k, v)
    r.validate()


def test_size_min_is_refused_by_the_allocation_and_fixed_targets_by_the_pair_methods(tmp_path):
    with pytest.raises(StudioError, match="heuristic or grid"):
        run_to_end(run_search(recipe("allocate", rates=[0.5], images=32), tmp_path / "a"))
    r = recipe("grid", 0.45)
    r.search.targets = ["macs=2x"]
    with pytest.raises(StudioError, match="its target is size=min"):
        run_to_end(run_search(r, tmp_path / "b"))


def test_the_cli_runs_the_heuristic(tmp_path, capsys):
    assert main(["search", "cifar:resnet20", "--data", SYNTHETIC, "--target", "size=min", "--max-drop", "100",
                 "--method", "heuristic", "--resolution", "0.45", "--trial-epochs", "0", "--batch-size", "16",
                 "--export", "checkpoint", "--out", str(tmp_path / "s")]) == 0
    assert "winner: trial" in capsys.readouterr().out
    assert main(["search", "cifar:resnet20", "--data", SYNTHETIC, "--target", "size=min", "--method", "grid",
                 "--out", str(tmp_path / "t")]) == 2
    assert "no floor was given" in capsys.readouterr().err
