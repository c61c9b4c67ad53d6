"""Sensitivity analysis: zeroing a group equals pruning it, curves and fits, the cache, bad input."""
import copy
import json

import pytest
import torch
import torch_pruning as tp
from torch import nn

from studio.engine.data import load_data
from studio.engine.errors import StudioError
from studio.engine.events import CancelToken, Log, Progress, run_to_end
from studio.engine.methods import MethodInput, get_method
from studio.engine.methods.probe_runner import ProbeRunner
from studio.engine.methods.sensitivity import (FILE_NAME, SensitivityResult, analyse, calibration_split,
                                               check_rates, load_or_analyse)
from studio.engine.models import build_architecture
from studio.engine.pruning import find_classifier
from studio.engine.pruning.masks import zeroed, zeroing_plan


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))


def randomised(arch: str, num_classes: int = 10) -> nn.Module:
    """A zoo model whose BatchNorms look trained, so removed channels change the output."""
    torch.manual_seed(0)
    model = build_architecture(arch, num_classes)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.2, 1.0)
            nn.init.uniform_(m.bias, -0.2, 0.2)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def groups_of(model, example):
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    head = dict(model.named_modules())[find_classifier(model)]
    return dg, list(dg.get_all_groups(ignored_layers=[head], root_module_types=[nn.Conv2d, nn.Linear]))


@pytest.mark.parametrize("arch", ["cifar:resnet20", "cifar:vgg16_bn", "cifar:mobilenetv2",
                                  "cifar:mobilenetv3_large", "cifar:densenet40"])
def test_zeroing_a_group_gives_the_output_of_pruning_it(arch):
    """Residual adds, flatten→Linear, depthwise convs, squeeze-excitation and concats."""
    model = randomised(arch)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    example = x[:1]
    dg, groups = groups_of(model, example)
    picked = [groups[0], groups[len(groups) // 2], groups[-1]]
    names = {m: n for n, m in model.named_modules()}
    for group in picked:
        root = group[0].dep.target.module
        n = len(group[0].idxs)
        removed = list(range(0, n, 2))[: n // 2]          # every other channel, half of them
        sub = dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, removed)
        plan = zeroing_plan(dg, sub)
        assert plan is not None, f"{arch}: zeroing should cover the group of {names[root]}"
        with torch.no_grad(), zeroed(plan):
            masked = model(x)
        pruned = copy.deepcopy(model)
        pdg = tp.DependencyGraph().build_dependency(pruned, example_inputs=example, verbose=False)
        proot = dict(pruned.named_modules())[names[root]]
        pdg.get_pruning_group(proot, pdg.get_pruner_of_module(proot).prune_out_channels, removed).prune()
        with torch.no_grad():
            reference = pruned.eval()(x)
        assert torch.allclose(masked, reference, atol=1e-4, rtol=1e-4), f"{arch}: group of {names[root]}"


def test_zeroing_is_undone_also_after_an_error():
    model = randomised("cifar:resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dg, groups = groups_of(model, torch.randn(1, 3, 32, 32))
    root = groups[3][0].dep.target.module
    plan = zeroing_plan(dg, dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, [0, 1, 2]))
    with pytest.raises(RuntimeError):
        with zeroed(plan):
            assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
            raise RuntimeError("probe failed")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_layer_norm_groups_are_not_zeroed():
    """Zeroing is not exact where a normalisation mixes channels: the plan says so (None)."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 4, 3),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    dg = tp.DependencyGraph().build_dependency(net, example_inputs=torch.randn(1, 3, 8, 8), verbose=False)
    group = dg.get_pruning_group(net[0], dg.get_pruner_of_module(net[0]).prune_out_channels, [0, 1])
    assert zeroing_plan(dg, group) is None


def test_the_runner_after_a_cut_matches_a_full_pass():
    model = randomised("cifar:resnet20")
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(2)]
    runner = ProbeRunner(model, batches)
    dg, groups = groups_of(model, batches[0][0][:1])
    names = {m: n for n, m in model.named_modules()}
    late = groups[-1]
    changed = {names[d.target.module] for d, _ in late.items if d.target.module in names}
    score = runner.scorer(changed)
    assert runner._cut(changed) > 10            # most of the network is computed once
    root = late[0].dep.target.module
    sub = dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, list(range(20)))
    with zeroed(zeroing_plan(dg, sub)):
        assert score() == pytest.approx(runner._full(), abs=1e-6)


@pytest.fixture(scope="module")
def demo_like():
    """The demo ResNet-20 on 200 validation images of the shipped subset."""
    from studio.engine.models import load_model
    loaded = load_model("demo")
    bundle = load_data("demo", input_size=tuple(loaded.input_size))
    return loaded, bundle, calibration_split(bundle.val, 200, 100)


def test_analysis_curves_fall_and_fits_never_rise(demo_like):
    loaded, _, batches = demo_like
    events = []
    result = run_to_end(analyse(loaded.module, loaded.input_size, batches, rates=[0.3, 0.6, 0.9]), events.append)
    assert len(result.groups) == 12 and result.probes == 36
    assert 0.8 < result.base_top1 <= 1.0
    for g in result.groups:
        assert len(g.top1) == len(g.fit) == 3
        assert all(a >= b - 1e-9 for a, b in zip([g.fit_base, *g.fit], g.fit))          # non-increasing
        assert g.kept[0] > g.kept[-1] >= 1
    # The stem group (all residual adds of stage 1) is far more sensitive than a block's inner conv.
    stem = result.curve_of("conv1")
    inner = result.curve_of("layer1.1.conv1")
    assert result.drop(stem, 0.6) > result.drop(inner, 0.6) + 0.2
    assert sum(isinstance(e, Progress) for e in events) == 36
    assert result.seconds_per_probe > 0


def test_a_second_analysis_reuses_the_cache(demo_like, tmp_path):
    loaded, bundle, batches = demo_like
    batches = batches[:1]
    first = run_to_end(load_or_analyse(loaded.module, loaded.input_size, batches, data_id="demo|1000",
                                       rates=[0.5], work_dir=tmp_path / "a"))
    assert (tmp_path / "a" / FILE_NAME).is_file()
    events = []
    again = run_to_end(load_or_analyse(loaded.module, loaded.input_size, batches, data_id="demo|1000",
                                       rates=[0.5], work_dir=tmp_path / "b"), events.append)
    assert not any(isinstance(e, Progress) for e in events)
    assert any(isinstance(e, Log) and "reusing" in e.message for e in events)
    assert again.to_dict() == first.to_dict()
    assert json.loads((tmp_path / "b" / FILE_NAME).read_text())["key"] == first.key
    # Other weights, criterion or grid: analysed afresh.
    changed = copy.deepcopy(loaded.module)
    with torch.no_grad():
        changed.conv1.weight.mul_(1.01)
    for kwargs in ({"model": changed}, {"criterion": "l2"}, {"rates": [0.4]}):
        events = []
        args = {"model": loaded.module, "criterion": "l1", "rates": [0.5], **kwargs}
        run_to_end(load_or_analyse(args["model"], loaded.input_size, batches, data_id="demo|1000",
                                   criterion=args["criterion"], rates=args["rates"]), events.append)
        assert any(isinstance(e, Progress) for e in events), kwargs


def test_a_damaged_cache_file_is_analysed_again(demo_like, tmp_path):
    loaded, _, batches = demo_like
    (tmp_path / FILE_NAME).write_text("{not json")
    result = run_to_end(load_or_analyse(loaded.module, loaded.input_size, batches[:1], data_id="x",
                                        rates=[0.5], work_dir=tmp_path))
    assert SensitivityResult.from_dict(json.loads((tmp_path / FILE_NAME).read_text())).key == result.key


def test_the_method_runs_from_a_data_bundle_and_leaves_the_model(demo_like, tmp_path):
    loaded, bundle, _ = demo_like
    before = {k: v.clone() for k, v in loaded.module.state_dict().items()}
    method = get_method("sensitivity")
    options = method.resolve_options({"rates": [0.5], "images": 50, "criterion": "taylor"})
    out = run_to_end(method.run(MethodInput(loaded.module, loaded.input_size, data=bundle, work_dir=tmp_path),
                                options))
    assert out.model is None and out.summary["sensitivity"]["criterion"] == "taylor"
    assert out.summary["sensitivity"]["images"] == 50
    assert all(torch.equal(before[k], v) for k, v in loaded.module.state_dict().items())


def test_cancel_stops_the_analysis(demo_like):
    loaded, _, batches = demo_like
    token = CancelToken()
    token.cancel()
    with pytest.raises(Exception) as err:
        run_to_end(analyse(loaded.module, loaded.input_size, batches, rates=[0.5], token=token))
    assert type(err.value).__name__ == "JobCancelled"


@pytest.mark.parametrize("rates", [[], [0.0, 0.5], [1.0], [0.5, 1.2], ["a"]])
def test_rates_outside_zero_one_are_refused(rates):
    with pytest.raises(StudioError, match="strictly between 0 and 1"):
        check_rates(rates)


def test_the_method_needs_data():
    method = get_method("sensitivity")
    with pytest.raises(StudioError, match="needs data"):
        run_to_end(method.run(MethodInput(randomised("cifar:resnet20"), (3, 32, 32)), method.resolve_options()))
