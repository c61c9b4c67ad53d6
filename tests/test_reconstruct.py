"""Reconstruction without training: least squares, LASSO selection and compensation-aware pruning."""
import copy
import json

import pytest
import torch
from torch import nn

from studio.cli import main
from studio.engine.data import DataBundle
from studio.engine.errors import JobCancelled, StudioError
from studio.engine.events import CancelToken, Log, Phase, run_to_end
from studio.engine.jobs import DataSource, ModelSource, Recipe, run_recipe
from studio.engine.jobs.recipe import ReconstructOptions, SearchOptions
from studio.engine.methods import MethodInput, get_method
from studio.engine.pruning import PruningPlan, prune
from studio.engine.pruning.least_squares import (
    NormalEquations,
    elimination_order,
    layer_rows,
    layer_targets,
    sample_positions,
    weight_matrix,
)
from studio.engine.training import TrainConfig

SYNTHETIC = "synthetic:classes=10,size=3x32x32,train=96,val=48"


class Images(torch.utils.data.Dataset):
    """Random images with labels: enough for fits that only need inputs."""

    def __init__(self, n: int, size=(3, 16, 16), seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x, self.y = torch.randn(n, *size, generator=g), torch.randint(0, 4, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def bundle(n: int = 64, size=(3, 16, 16)) -> DataBundle:
    data = Images(n, size)
    return DataBundle(spec="test", kind="test", train=data, val=data, num_classes=4, class_names=list("abcd"),
                      input_size=size, mean=(0.0,) * 3, std=(1.0,) * 3)


def reconstruct(reference, pruned, data, **options):
    method = get_method("reconstruct")
    inputs = MethodInput(model=pruned.model, input_size=tuple(data.input_size), data=data, reference=reference,
                         history=pruned.history, finetune=TrainConfig(batch_size=16))
    return run_to_end(method.run(inputs, method.resolve_options({"batches": 4, **options})))


def output_error(a: nn.Module, b: nn.Module, data) -> float:
    x = torch.stack([data.val[i][0] for i in range(32)])
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    return float(((ya - yb) ** 2).sum() / (ya ** 2).sum())


def pruned_by(model, rate, criterion="l1", data=None, layer_rates=None):
    data = data or bundle()
    example = data.val[0][0][None]
    calibration = [(torch.stack([data.train[i][0] for i in range(16)]), torch.zeros(16, dtype=torch.long))]
    plan = PruningPlan(criterion=criterion, rate=rate, layer_rates=layer_rates or {})
    return run_to_end(prune(model, plan, example, calibration=calibration))


# ---------------------------------------------------------------- the closed form

def test_the_closed_form_fit_matches_lstsq_on_a_small_layer():
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 5, 3, padding=1)
    x = torch.randn(8, 3, 6, 6)
    y = torch.randn(8, 5, 6, 6)
    picks = sample_positions(8, 36, seed=1)
    rows, targets = layer_rows(layer, x, picks), layer_targets(layer, y, picks)
    eq = NormalEquations(bias=True)
    eq.add(rows, targets)
    w, note = eq.solve(ridge=0.0)
    design = torch.cat([rows[:, 0], torch.ones(rows.shape[0], 1, dtype=rows.dtype)], 1)
    expected = torch.linalg.lstsq(design, targets[:, 0]).solution.T
    assert note == ""
    assert torch.allclose(w[0], expected, atol=1e-8)
    # The error of the fit is what lstsq leaves, relative to ‖Y‖².
    residual = float(((design @ expected.T - targets[:, 0]) ** 2).sum() / (targets ** 2).sum())
    assert eq.error(w) == pytest.approx(residual, rel=1e-6)


def test_a_singular_system_falls_back_to_a_ridge_and_says_so():
    layer = nn.Linear(4, 2, bias=False)
    x = torch.randn(32, 2)
    rows = torch.cat([x, x], 1).double().view(32, 1, 4)      # the inputs repeat: XᵀX is singular
    eq = NormalEquations(bias=False)
    eq.add(rows, torch.randn(32, 1, 2).double())
    w, note = eq.solve(ridge=0.0)
    assert "singular system: solved with ridge" in note and torch.isfinite(w).all()
    assert layer.weight.shape == w[0].shape


class Copies(nn.Module):
    """conv1's last four filters are 0.5 × its first four, so removing them loses nothing a refit cannot undo."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.head = nn.Linear(6, 4)
        with torch.no_grad():
            self.conv1.weight[4:] = 0.5 * self.conv1.weight[:4]
            self.conv1.bias[4:] = 0.5 * self.conv1.bias[:4]

    def forward(self, x):
        x = self.conv2(torch.relu(self.conv1(x)))
        return self.head(x.mean((2, 3)))


def test_removed_inputs_that_are_combinations_of_kept_ones_are_reconstructed_exactly():
    torch.manual_seed(0)
    model, data = Copies().eval(), bundle()
    pruned = pruned_by(model, 0.0, data=data, layer_rates={"conv1": 0.5})
    assert pruned.model.conv1.out_channels == 4 and pruned.model.conv2.out_channels == 6
    assert output_error(model, pruned.model, data) > 1e-2          # surgery alone loses the copies' share
    result = reconstruct(model, pruned, data, ridge=0.0)
    conv2 = next(r for r in result.summary["layers"] if r["layer"] == "conv2")
    assert conv2["fitted"] and conv2["after"] < 1e-8
    assert output_error(model, result.model, data) < 1e-4
    assert pruned.model.conv2.weight.shape == result.model.conv2.weight.shape   # same architecture


def test_the_users_model_and_the_pruned_input_are_never_changed():
    torch.manual_seed(0)
    model, data = Copies().eval(), bundle()
    original = copy.deepcopy(model.state_dict())
    pruned = pruned_by(model, 0.5, data=data)
    before = copy.deepcopy(pruned.model.state_dict())
    reconstruct(model, pruned, data)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in original.items())
    assert all(torch.equal(v, pruned.model.state_dict()[k]) for k, v in before.items())


# ---------------------------------------------------------------- shapes of nets

class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.b = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.a(x))
        return self.head(torch.relu(self.b(x)).mean((2, 3)))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.left, self.right = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 6, 1)
        self.mix = nn.Conv2d(12, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], 1)
        return self.head(torch.relu(self.mix(x)).mean((2, 3)))


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(3, 12, 1)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.project = nn.Conv2d(12, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.dw(torch.relu(self.expand(x))))
        return self.head(torch.relu(self.project(x)).mean((2, 3)))


class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3, stride=2, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv(x))))
        return self.head(torch.relu(self.fc(torch.flatten(x, 1))))


@pytest.mark.parametrize("net", [Residual, Concat, Depthwise, FlattenLinear])
def test_residual_concat_depthwise_and_flatten_nets_run_and_match_the_original_better(net):
    torch.manual_seed(0)
    model, data = net().eval(), bundle(128)
    pruned = pruned_by(model, 0.4, data=data)
    result = reconstruct(model, pruned, data)
    fitted = [r for r in result.summary["layers"] if r["fitted"]]
    assert fitted, result.summary["layers"]
    assert all(r["after"] < r["before"] for r in fitted)
    x = data.val[0][0][None]
    assert result.model(x).shape == model(x).shape
    assert output_error(model, result.model, data) < output_error(model, pruned.model, data)
    if net is Depthwise:   # its kept channels see the inputs they saw: nothing to refit, and it says so
        dw = next(r for r in result.summary["layers"] if r["layer"] == "dw")
        assert dw["samples"] > 0 and dw["before"] < 1e-10 and "already matches" in dw["note"]


# ---------------------------------------------------------------- LASSO and CaP

@pytest.mark.parametrize("criterion", ["lasso", "cap"])
def test_the_fit_criteria_keep_exactly_the_requested_count(criterion):
    torch.manual_seed(0)
    model = Residual().eval()
    pruned = pruned_by(model, 0.5, criterion=criterion)
    assert pruned.model.stem[0].out_channels == 4 and pruned.model.b.out_channels == 6


def test_compensation_removes_a_copy_before_a_weak_independent_channel():
    """Channel 3 is 3 × channel 0 (large, but free to remove once its consumer compensates);
    channel 2 is small and independent. CaP removes the copy first; magnitude would not."""
    torch.manual_seed(0)
    x = torch.randn(400, 3)
    x = torch.cat([x, 3 * x[:, :1]], 1).double()                    # inputs 0, 1, 2 and 3 = 3·input 0
    x[:, 2] *= 0.1
    w = torch.randn(5, 4).double()
    scores = elimination_order([(x.T @ x, w, {c: [c] for c in range(4)})], 4, ridge=1e-9)
    assert int(scores.argmin()) in (0, 3)                            # one of the pair goes first, at no cost
    assert float(scores.min()) < 1e-6


def test_a_lasso_run_reports_and_beats_plain_surgery(tmp_path):
    recipe = Recipe(model=ModelSource("cifar:resnet20"), data=DataSource(SYNTHETIC, batch_size=32),
                    plan=PruningPlan(rate=0.3), exports=["checkpoint"],
                    reconstruct=ReconstructOptions(method="lasso", batches=2))
    events = []
    metrics = run_to_end(run_recipe(recipe, tmp_path / "run"), events.append).metrics
    assert metrics["plan"]["criterion"] == "lasso"
    assert any(isinstance(e, Log) and "Channels chosen by the lasso criterion" in e.message for e in events)
    rec = metrics["reconstruction"]
    assert rec["method"] == "lasso" and rec["images"] == 64 and len(rec["layers"]) >= 10
    assert metrics["after"] == metrics["reconstructed"]
    page = (tmp_path / "run" / "report.html").read_text()
    assert "Reconstruction (no training)" in page and "layer1.0.conv2" in page and "Reconstructed" in page
    saved = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert saved["reconstruct"] == {"method": "lasso", "batches": 2, "ridge": 0.001}


# ---------------------------------------------------------------- bad input

def test_too_few_calibration_images_for_a_layer_is_named_and_the_rest_goes_on():
    torch.manual_seed(0)
    model, data = FlattenLinear().eval(), bundle(16)
    pruned = pruned_by(model, 0.4, data=data)
    method = get_method("reconstruct")
    inputs = MethodInput(model=pruned.model, input_size=(3, 16, 16), data=data, reference=model,
                         history=pruned.history, finetune=TrainConfig(batch_size=8))
    result = run_to_end(method.run(inputs, method.resolve_options({"batches": 1})))
    fc = next(r for r in result.summary["layers"] if r["layer"] == "fc")
    assert not fc["fitted"] and "need at least" in fc["note"] and "calibration images" in fc["note"]
    assert any("fc: left as pruned" in n for n in result.notes)
    assert any(r["fitted"] for r in result.summary["layers"] if r["layer"] != "fc")


def test_reconstruction_without_data_or_without_the_original_is_refused():
    with pytest.raises(StudioError, match="no data"):
        Recipe(model=ModelSource("cifar:resnet20"), reconstruct=ReconstructOptions()).validate()
    method = get_method("reconstruct")
    with pytest.raises(StudioError, match="needs data"):
        run_to_end(method.run(MethodInput(model=Copies(), input_size=(3, 16, 16)), method.resolve_options({})))
    with pytest.raises(StudioError, match="model before pruning"):
        run_to_end(method.run(MethodInput(model=Copies(), input_size=(3, 16, 16), data=bundle()),
                              method.resolve_options({})))


@pytest.mark.parametrize("section, words", [
    ({"method": "svd"}, "one of its choices"),
    ({"batches": 0}, "must be at least 1"),
    ({"ridge": -1.0}, "between 0.0 and 1.0"),
])
def test_bad_reconstruct_settings_get_a_clear_message(section, words):
    recipe = Recipe(model=ModelSource("cifar:resnet20"), data=DataSource(SYNTHETIC),
                    reconstruct=ReconstructOptions(**section))
    with pytest.raises(StudioError, match=words):
        recipe.validate()


def test_a_search_with_reconstruction_is_refused():
    recipe = Recipe(model=ModelSource("cifar:resnet20"), data=DataSource(SYNTHETIC),
                    search=SearchOptions(), reconstruct=ReconstructOptions())
    with pytest.raises(StudioError, match="does not reconstruct its trials"):
        recipe.validate()


def test_cancel_within_reconstruction_leaves_nothing(tmp_path):
    token = CancelToken()
    recipe = Recipe(model=ModelSource("cifar:resnet20"), data=DataSource(SYNTHETIC, batch_size=32),
                    plan=PruningPlan(rate=0.3), exports=["checkpoint"], reconstruct=ReconstructOptions(batches=2))

    def cancel_when_reconstructing(event):
        if isinstance(event, Phase) and event.name == "reconstruct":
            token.cancel()
    with pytest.raises(JobCancelled):
        run_to_end(run_recipe(recipe, tmp_path / "run", token=token), cancel_when_reconstructing)
    assert not (tmp_path / "run").exists()


def test_the_cli_flags_build_the_reconstruct_section(tmp_path, capsys):
    code = main(["prune", "cifar:resnet20", "--rate", "0.3", "--data", SYNTHETIC, "--batch-size", "32",
                 "--reconstruct", "cap", "--calib-batches", "2", "--export", "checkpoint",
                 "--out", str(tmp_path / "run")])
    assert code == 0
    out = capsys.readouterr().out
    assert "after pruning" in out and "after reconstruction" in out
    saved = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert saved["reconstruct"]["method"] == "cap" and saved["reconstruct"]["batches"] == 2
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["plan"]["criterion"] == "cap"


# ---------------------------------------------------------------- CaP as a search method

def test_the_cap_search_meets_a_target_and_its_winner_repeats_the_refit(tmp_path, monkeypatch):
    from studio.engine.jobs.search import run_search
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    recipe = Recipe(model=ModelSource("cifar:resnet20"), data=DataSource(SYNTHETIC, batch_size=32),
                    exports=["checkpoint"], finetune=TrainConfig(epochs=0),
                    search=SearchOptions(method="cap", targets=["macs=2x"], max_drop=100.0, images=64))
    events = []
    metrics = run_to_end(run_search(recipe, tmp_path / "s"), events.append).metrics
    search = metrics["search"]
    assert search["method"] == "cap" and search["outcome"] == "met"
    winner = next(t for t in search["trials"] if t["trial"] == search["winner"])
    assert 1.96 <= winner["ratios"]["macs"] <= 2.1 and "top1_reconstructed" in winner
    assert any(isinstance(e, Log) and "Compensated-error curves" in e.message for e in events)
    saved = json.loads((tmp_path / "s" / "recipe.json").read_text())
    assert saved["reconstruct"]["method"] == "cap" and saved["plan"]["criterion"] == "cap"
    assert metrics["reconstruction"]["method"] == "cap"
    # The verified trial and the final run are the same chain: same MACs.
    assert metrics["after"]["macs"] == winner["figures"]["macs"]
