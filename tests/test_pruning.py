"""Criteria and pruning surgery on tiny nets with every kind of channel coupling.

The four nets cover the couplings the studio must keep consistent: a residual add with a
projection shortcut (ResNet), concatenation (DenseNet), depthwise conv + squeeze-excitation
+ Hardswish (MobileNetV3) and flatten into Linear (VGG).
"""
import json

import pytest
import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as torch_prune

from studio.engine.errors import JobCancelled, StudioError
from studio.engine.events import CancelToken, Log, Phase, Progress, run_to_end
from studio.engine.pruning import (
    CRITERIA,
    PruningPlan,
    channel_importance,
    estimate,
    find_classifier,
    get_criterion,
    prune,
)
from studio.engine.pruning.criteria import HRankImportance, SlGammaImportance
from studio.engine.pruning.macs import MacCounter as _MacCounter
from studio.engine.pruning.surgery import _build_pruner


# ----------------------------------------------------------------------------- tiny nets
class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())
        self.relu = nn.ReLU(inplace=True)   # one ReLU used twice, as in torchvision

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        self.block1 = Block(16, 32, 2)
        self.block2 = Block(32, 32, 1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = self.block2(self.block1(x))
        return self.head(x.mean((2, 3)))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth=8):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv(torch.relu(self.bn(x)))], 1)


class TinyDenseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.dense1 = DenseLayer(16)
        self.dense2 = DenseLayer(24)
        self.trans_bn = nn.BatchNorm2d(32)
        self.trans = nn.Conv2d(32, 16, 1, bias=False)
        self.dense3 = DenseLayer(16)
        self.final_bn = nn.BatchNorm2d(24)
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        x = self.dense2(self.dense1(self.stem(x)))
        x = nn.functional.avg_pool2d(self.trans(torch.relu(self.trans_bn(x))), 2)
        x = torch.relu(self.final_bn(self.dense3(x)))
        return self.head(x.mean((2, 3)))


class SqueezeExcite(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // 4, 1)
        self.fc2 = nn.Conv2d(c // 4, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    def __init__(self, cin, hidden, cout, stride):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                                       nn.BatchNorm2d(hidden), nn.Hardswish())
        self.se = SqueezeExcite(hidden)
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return x + out if self.residual else out


class TinyMobileNetV3(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.block1 = InvertedResidual(16, 32, 16, 1)
        self.block2 = InvertedResidual(16, 32, 24, 2)
        self.last = nn.Sequential(nn.Conv2d(24, 32, 1, bias=False), nn.BatchNorm2d(32), nn.Hardswish())
        self.classifier = nn.Sequential(nn.Linear(32, 24), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(24, 10))

    def forward(self, x):
        x = self.last(self.block2(self.block1(self.stem(x))))
        return self.classifier(x.mean((2, 3)))


class TinyVGG(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(inplace=True),
                                        nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


NETS = {"resnet": TinyResNet, "densenet": TinyDenseNet, "mobilenetv3": TinyMobileNetV3, "vgg": TinyVGG}
HEADS = {"resnet": "head", "densenet": "head", "mobilenetv3": "classifier.3", "vgg": "classifier.3"}


def make(name):
    torch.manual_seed(0)
    model = NETS[name]()
    for m in model.modules():   # BatchNorm as after training, so BN-based criteria have something to rank
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.1, 1.0)
            nn.init.uniform_(m.bias, -0.1, 0.1)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def example(n=1):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def calibration():
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(2)]


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model, snap):
    state = model.state_dict()
    return state.keys() == snap.keys() and all(torch.equal(state[k], snap[k]) for k in snap)


def run(model, plan, **kw):
    events = []
    result = run_to_end(prune(model, plan, example(), **kw), events.append)
    return result, events


def channels(result):
    return {layer.name: layer.channels_after for layer in result.layers}


# ----------------------------------------------------------------------------- every criterion, every net
@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_slims_every_architecture(criterion, net):
    model = make(net)
    before = snapshot(model)
    x = example(2)
    with torch.no_grad():
        expected = model(x)
    result, events = run(model, PruningPlan(criterion=criterion, rate=0.5), calibration=calibration())
    slim = result.model.eval()
    with torch.no_grad():
        out = slim(x)
    assert out.shape == expected.shape
    assert result.params_after < result.params_before
    assert result.macs_after < result.macs_before
    # the counts are torch-pruning's, as its public counter gives them
    assert (result.macs_before, result.params_before) == tuple(int(v) for v in tp.utils.count_ops_and_params(model, example()))
    assert (result.macs_after, result.params_after) == tuple(int(v) for v in tp.utils.count_ops_and_params(slim, example()))
    assert same_state(model, before), "the user's model was modified"
    assert isinstance(events[0], Phase) and events[0].name == "prune"
    head = HEADS[net]
    assert channels(result)[head] == 10, "the classifier head must keep its outputs"


@pytest.mark.parametrize("net", NETS)
def test_rate_zero_keeps_the_output_exactly(net):
    model = make(net)
    x = example(2)
    with torch.no_grad():
        expected = model(x)
    result, _ = run(model, PruningPlan(rate=0.0))
    with torch.no_grad():
        assert torch.equal(result.model.eval()(x), expected)
    assert result.params_after == result.params_before and result.history == []


def test_training_mode_is_kept_and_batchnorm_statistics_untouched():
    model = make("resnet").train()
    model.stem_bn.eval()   # a frozen BatchNorm inside a training model
    before = snapshot(model)
    result, _ = run(model, PruningPlan(criterion="hrank", rate=0.0), calibration=calibration())
    assert model.training and result.model.training and not result.model.stem_bn.training
    assert same_state(result.model, before), "tracing or calibration updated BatchNorm running statistics"


# ----------------------------------------------------------------------------- plan options
def test_layer_rates_and_protected_layers_are_honoured():
    model = make("resnet")
    plan = PruningPlan(rate=0.5, layer_rates={"stem": 0.25}, protected=["block1.conv1"])
    ch = channels(run(model, plan)[0])
    assert ch["stem"] == 12            # int(16 * 0.75)
    assert ch["block1.conv1"] == 32    # protected: untouched
    assert ch["block2.conv1"] == 16    # the global rate applies elsewhere


def test_protecting_one_layer_of_a_residual_group_keeps_the_whole_group():
    ch = channels(run(make("resnet"), PruningPlan(rate=0.5, protected=["block1.shortcut.0"]))[0])
    assert ch["block1.shortcut.0"] == ch["block1.conv2"] == ch["block2.conv2"] == 32
    assert ch["block2.conv1"] == 16


def test_global_ranking_differs_from_per_layer_ranking():
    model = make("resnet")
    local = channels(run(model, PruningPlan(rate=0.5))[0])
    ranked = channels(run(model, PruningPlan(rate=0.5, global_ranking=True))[0])
    assert local != ranked
    prunable = [n for n in local if n != "head"]
    assert {local[n] for n in prunable} == {8, 16}        # per layer: exactly half everywhere
    assert {ranked[n] for n in prunable} - {8, 16}         # global: layers lose different shares


def test_round_to_keeps_channel_counts_multiples():
    result, _ = run(make("resnet"), PruningPlan(rate=0.3, round_to=4))
    ch = channels(result)
    assert ch["block2.conv1"] == 20      # int(32 * 0.7) = 22, rounded down to 20
    assert all(c % 4 == 0 for n, c in ch.items() if n != "head")
    unrounded = channels(run(make("resnet"), PruningPlan(rate=0.3))[0])
    assert unrounded["block2.conv1"] == 22


def test_iterative_steps_report_progress_per_step():
    result, events = run(make("mobilenetv3"), PruningPlan(rate=0.5, iterative_steps=3))
    progress = [e for e in events if isinstance(e, Progress)]
    assert [(p.done, p.total) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    assert channels(result)["block1.expand.0"] == 16
    assert any(isinstance(e, Log) for e in events)


def test_unstructured_sparsity_reaches_the_share_and_is_permanent():
    model = make("vgg")
    result, _ = run(model, PruningPlan(rate=0.25, unstructured_sparsity=0.6))
    slim = result.model
    weights = [m.weight for m in slim.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert result.sparsity == pytest.approx(zeros)
    assert zeros >= 0.6 - 1e-3
    # prune.remove made it permanent: no masks, no hooks, plain parameter names
    assert not any(torch_prune.is_pruned(m) for m in slim.modules())
    assert not any("_orig" in k or "_mask" in k for k in slim.state_dict())
    assert set(slim.state_dict()) == set(model.state_dict())
    assert all(isinstance(w, nn.Parameter) for w in weights)
    assert run(make("vgg"), PruningPlan(rate=0.25))[0].sparsity == 0.0


def test_history_is_json_and_replays_to_the_same_shapes():
    model = make("densenet")
    result, _ = run(model, PruningPlan(criterion="fpgm", rate=0.4, iterative_steps=2))
    history = json.loads(json.dumps(result.history))
    assert history and all(isinstance(h[0], str) and isinstance(h[1], bool) for h in history)
    replay = make("densenet")
    graph = tp.DependencyGraph().build_dependency(replay, example_inputs=example())
    graph.load_pruning_history(history)
    assert {k: v.shape for k, v in replay.state_dict().items()} == \
           {k: v.shape for k, v in result.model.state_dict().items()}


def test_frozen_layers_stay_frozen_after_gradient_scoring():
    model = make("resnet")
    model.stem.weight.requires_grad_(False)
    result, _ = run(model, PruningPlan(criterion="taylor", rate=0.5), calibration=calibration())
    assert not result.model.stem.weight.requires_grad
    assert all(p.grad is None for p in result.model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_estimate_matches_the_real_prune():
    model = make("mobilenetv3")
    plan = PruningPlan(criterion="hrank", rate=0.4, layer_rates={"block2.expand.0": 0.25}, round_to=2)
    result, _ = run(model, plan, calibration=calibration())
    assert estimate(model, plan, example()) == (result.params_after, result.macs_after)


@pytest.mark.parametrize("net", NETS)
def test_macs_replayed_from_traced_shapes_match_torch_pruning(net):
    model = make(net)
    counter = _MacCounter(model)
    with counter.record():
        pruner = _build_pruner(model, PruningPlan(rate=0.5), example(), tp.importance.MagnitudeImportance(p=1))
    assert counter.macs == tp.utils.count_ops_and_params(model, example())[0]
    pruner.step()
    assert counter.replay() == tp.utils.count_ops_and_params(model, example())[0]
    assert not any("__flops__" in m.__dict__ for m in model.modules()), "counter attributes left behind"


class PoolAfterFunctionalRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.head(self.pool(torch.relu(self.conv(x))).flatten(1))


def test_macs_fall_back_to_a_real_count_when_shapes_cannot_be_replayed():
    model = PoolAfterFunctionalRelu().eval()
    counter = _MacCounter(model)
    with counter.record():
        model(example())
    assert counter.replay() is None    # the pool's input comes from an op that is not counted
    result, _ = run(model, PruningPlan(rate=0.5))
    assert result.model.conv.out_channels == 4
    assert result.macs_after == tp.utils.count_ops_and_params(result.model, example())[0]


@pytest.mark.parametrize("net", NETS)
def test_find_classifier(net):
    assert find_classifier(make(net)) == HEADS[net]
    assert find_classifier(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 10, 1))) == "2"


# ----------------------------------------------------------------------------- criteria by hand
def _conv_bn_group(with_bn):
    conv = nn.Conv2d(1, 3, (1, 2), bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[-1.0, 3.0], [2.0, 0.1], [0.2, -0.3]]).view(3, 1, 1, 2))
    layers = [conv]
    if with_bn:
        bn = nn.BatchNorm2d(3)
        with torch.no_grad():
            bn.weight.copy_(torch.tensor([0.5, -2.0, 4.0]))
        layers.append(bn)
    model = nn.Sequential(*layers, nn.ReLU(), nn.Conv2d(3, 2, 1)).eval()
    return model


def test_slg_scores_by_hand():
    # M = mean|k| = (1 + 3 + 2 + 0.1 + 0.2 + 0.3) / 6 = 1.1
    # Sl = share of |k| >= M per filter = [1/2, 1/2, 0]; m = Sl * |gamma| = [0.25, 1.0, 0]
    scores = channel_importance(_conv_bn_group(True), "0", "slg", torch.randn(1, 1, 4, 4))
    assert scores.tolist() == pytest.approx([0.25, 1.0, 0.0])
    # no BatchNorm after the conv: Sl alone
    model = _conv_bn_group(False)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 1, 4, 4))
    group = graph.get_pruning_group(model[0], tp.prune_conv_out_channels, [0, 1, 2])
    assert SlGammaImportance()(group).tolist() == pytest.approx([0.5, 0.5, 0.0])
    assert SlGammaImportance.filter_sparsity(model[0]).tolist() == pytest.approx([0.5, 0.5, 0.0])


def test_hrank_scores_by_hand():
    conv = nn.Conv2d(3, 4, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 0], [-1, 0, 0]]).view(4, 3, 1, 1))
    model = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    g = torch.Generator().manual_seed(3)
    images = []
    for _ in range(2):
        full = torch.rand(8, 8, generator=g) + 0.1                                   # rank 8
        rank1 = torch.outer(torch.rand(8, generator=g) + 0.1, torch.rand(8, generator=g) + 0.1)  # rank 1
        images.append(torch.stack([full, rank1, torch.rand(8, 8, generator=g)]))
    x = torch.stack(images)
    scores = channel_importance(model, "0", "hrank", x[:1], calibration=[(x, torch.zeros(2))])
    # channel 2 is all zeros (rank 0); channel 3 is negative, so zero after the ReLU (rank 0)
    assert scores.tolist() == [8.0, 1.0, 0.0, 0.0]
    assert HRankImportance.channel_ranks(torch.zeros(2, 3, 4, 4)).sum() == 0


def test_channel_importance_covers_the_whole_group_and_names_problems():
    model = make("resnet")
    before = snapshot(model)
    scores = channel_importance(model, "block1.conv2", "taylor", example(), calibration=calibration())
    assert scores.shape == (32,) and (scores >= 0).all()
    assert same_state(model, before) and all(p.grad is None for p in model.parameters())
    with pytest.raises(StudioError, match="nothing to score in the group of layer 'classifier.1'"):
        channel_importance(make("vgg"), "classifier.1", "bn_scale", example())   # no BatchNorm after it
    with pytest.raises(StudioError, match="'block1.conv1'"):
        channel_importance(model, "block1.conv", "l1", example())
    with pytest.raises(StudioError, match="no channels to score"):
        channel_importance(model, "block1.bn1", "l1", example())


def test_hrank_follows_a_reused_inplace_relu():
    model = make("resnet")
    taps = HRankImportance._taps(model, example())
    names = {m: n for n, m in model.named_modules()}
    assert (names[taps[model.block1.conv1][0]], taps[model.block1.conv1][1]) == ("block1.relu", 0)
    assert (names[taps[model.block1.conv2][0]], taps[model.block1.conv2][1]) == ("block1.relu", 1)
    assert names[taps[model.stem][0]] == "stem_bn"     # functional relu: the BN output is used


def test_hrank_must_collect_before_scoring():
    model = _conv_bn_group(True)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 1, 4, 4))
    group = graph.get_pruning_group(model[0], tp.prune_conv_out_channels, [0, 1, 2])
    with pytest.raises(RuntimeError, match="collect"):
        HRankImportance()(group)


def test_registry():
    assert list(CRITERIA) == ["l1", "l2", "bn_scale", "slg", "taylor", "fpgm", "hrank", "lamp", "lasso", "cap", "random"]
    for c in CRITERIA.values():
        first, second = c.make(), c.make()
        assert isinstance(first, tp.importance.Importance) and first is not second
        assert c.title and c.description and c.paper
    assert [c.name for c in CRITERIA.values() if c.needs_data] == ["taylor", "hrank", "lasso", "cap"]
    assert [c.name for c in CRITERIA.values() if c.needs_gradients] == ["taylor"]
    with pytest.raises(StudioError, match="l1, l2, bn_scale"):
        get_criterion("magic")


# ----------------------------------------------------------------------------- bad plans and failures
@pytest.mark.parametrize("plan, words", [
    (PruningPlan(rate=1.0), "rate 1.0"),
    (PruningPlan(rate=-0.1), "rate -0.1"),
    (PruningPlan(layer_rates={"block1.conv9": 0.3}), "'block1.conv9'"),
    (PruningPlan(protected=["stemm"]), "'stem'"),          # a close name is suggested
    (PruningPlan(criterion="magic"), "magic"),
    (PruningPlan(layer_rates={"stem": 0.99}), "no channel in layer 'stem'"),
    (PruningPlan(layer_rates={"stem": 1.2}), "layer 'stem'"),
    (PruningPlan(layer_rates={"head": 0.3}), "classifier head"),
    (PruningPlan(layer_rates={"stem_bn": 0.3}), "no conv or linear"),
    (PruningPlan(rate=0.3, round_to=16), "no channel in layer 'stem'"),
    (PruningPlan(iterative_steps=0), "iterative_steps"),
    (PruningPlan(unstructured_sparsity=1.0), "unstructured_sparsity"),
])
def test_bad_plans_are_named(plan, words):
    model = make("resnet")
    before = snapshot(model)
    with pytest.raises(StudioError) as err:
        run(model, plan)
    assert words in str(err.value)
    assert same_state(model, before)


def test_plan_round_trip_and_unknown_keys():
    plan = PruningPlan(criterion="slg", rate=0.3, layer_rates={"stem": 0.1}, protected=["block1.conv1"],
                       global_ranking=True, round_to=4, iterative_steps=2, unstructured_sparsity=0.2)
    assert PruningPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    with pytest.raises(StudioError, match="ratee"):
        PruningPlan.from_dict({"ratee": 0.5})
    with pytest.raises(StudioError, match="rate"):
        PruningPlan.from_dict({"rate": 1.5})


@pytest.mark.parametrize("criterion", ["taylor", "hrank"])
def test_data_criteria_need_calibration(criterion):
    with pytest.raises(StudioError, match="calibration"):
        run(make("vgg"), PruningPlan(criterion=criterion))


def test_cancel_after_the_first_step_leaves_the_model_unchanged():
    model = make("resnet")
    before = snapshot(model)
    token = CancelToken()
    gen = prune(model, PruningPlan(rate=0.5, iterative_steps=3), example(), token=token)
    seen = []
    with pytest.raises(JobCancelled):
        for event in gen:
            seen.append(event)
            if isinstance(event, Progress):
                token.cancel()
    assert [e.done for e in seen if isinstance(e, Progress)] == [1]
    assert same_state(model, before)


def test_failure_midway_leaves_the_model_unchanged():
    model = make("resnet")
    before = snapshot(model)
    calls = []

    def flaky_loss(out, y):
        calls.append(1)
        if len(calls) > 2:     # the first step (two batches) succeeds, the second fails
            raise StudioError("boom")
        return nn.functional.cross_entropy(out, y)

    with pytest.raises(StudioError, match="boom"):
        run(model, PruningPlan(criterion="taylor", iterative_steps=2), calibration=calibration(), loss_fn=flaky_loss)
    assert same_state(model, before)
    assert all(p.grad is None for p in model.parameters())
