"""The index mappings added to torch-pruning (chunks, channel shuffles) prune exactly.

Exact means: after torch-pruning prunes one group, the model computes what the unpruned
model computes when the pruned channels are cut off where they are read (those input
weights of every conv/Linear that reads them set to zero). A channel mapped to the wrong
place, or a chunk split at a moved point, changes the output.
"""
import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

import hard_nets
import studio.engine.graph.tp_patches  # noqa: F401 - installs the mappings, as the engine does


class NativeShuffle(nn.Module):
    """ShuffleNet v1's shuffle as one op: grouped conv, nn.ChannelShuffle, grouped-free conv."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 12, 1)
        self.shuffle = nn.ChannelShuffle(3)
        self.b = nn.Conv2d(12, 6, 3, padding=1)
        self.head = nn.Linear(6, hard_nets.CLASSES)

    def forward(self, x):
        return self.head(torch.relu(self.b(self.shuffle(torch.relu(self.a(x))))).mean((2, 3)))


class Chunks(nn.Module):
    """``x.chunk(2)`` with each half read by its own conv: the split point moves unless both halves shrink alike."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.left, self.right = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(8, hard_nets.CLASSES)

    def forward(self, x):
        a, b = torch.relu(self.stem(x)).chunk(2, dim=1)
        return self.head(torch.cat([self.left(a), self.right(b)], 1).mean((2, 3)))


class WindowTokens(nn.Module):
    """Swin's layout: channels last, the map cut into 2×2 windows of tokens, an MLP on each token."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 1)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.head = nn.Linear(8, hard_nets.CLASSES)

    def forward(self, x):
        x = self.embed(x).permute(0, 2, 3, 1)                       # N, H, W, C
        n, h, w, c = x.shape
        x = x.view(n, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, 4, c)
        x = x + self.fc2(torch.nn.functional.gelu(self.fc1(x)))
        return self.head(x.mean(1).view(n, -1, c).mean(1))


def _randomise_norms(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):   # so a channel mix-up shows in the output
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)


def prune_one_group(net: type, root: str, idxs: list) -> tuple[nn.Module, float]:
    """Prune ``idxs`` of ``root``'s group; the pruned model and its largest difference from the cut-off original."""
    torch.manual_seed(0)
    model = net().eval()
    _randomise_norms(model)
    x = torch.randn(2, *hard_nets.INPUT)
    cut = copy.deepcopy(model)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    layer = dict(model.named_modules())[root]
    fn = tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d) else tp.prune_linear_out_channels
    group = dg.get_pruning_group(layer, fn, idxs)
    names, cut_layers = {m: n for n, m in model.named_modules()}, dict(cut.named_modules())
    for dep, hit in group.items:
        target = dep.target.module
        reads = isinstance(target, (nn.Conv2d, nn.Linear)) and not dg.is_out_channel_pruning_fn(dep.handler)
        if reads and getattr(target, "groups", 1) == 1:
            with torch.no_grad():
                cut_layers[names[target]].weight[:, [getattr(h, "idx", h) for h in hit]] = 0
    expected = cut(x)
    group.prune()
    return model, (model(x) - expected).abs().max().item()


@pytest.mark.parametrize("root, idxs", [("pw2", [0, 3]), ("stem", [1, 10]), ("pw1", [2])])
def test_a_written_shuffle_prunes_exactly(root, idxs):
    model, diff = prune_one_group(hard_nets.Shuffle, root, idxs)
    assert diff < 1e-5
    assert model.stem.out_channels < 16 or root == "pw1"


def test_a_shuffle_prunes_whole_rows_and_both_chunks_alike():
    model, _ = prune_one_group(hard_nets.Shuffle, "pw2", [0, 3])
    # pw2's channel 0 and 3 share shuffle rows with the pass-through half's 0 and 3, whose
    # equal chunk partners (8 and 11) go too: every width stays even and balanced.
    assert (model.pw2.out_channels, model.stem.out_channels, model.pw1.in_channels, model.out.in_channels) \
        == (6, 12, 6, 12)


@pytest.mark.parametrize("root", ["stage.2.branch2.5", "stage.1.branch2.5", "stage.0.branch1.2", "stem",
                                  "stage.0.branch2.0"])
def test_a_shufflenet_v2_stage_prunes_exactly(root):
    _, diff = prune_one_group(hard_nets.ShuffleStage, root, [0, 5])
    assert diff < 1e-5


def test_a_native_channel_shuffle_prunes_exactly():
    model, diff = prune_one_group(NativeShuffle, "a", [1])
    assert diff < 1e-5
    assert model.a.out_channels == 9 and model.b.in_channels == 9   # row 1 of 3 groups: one channel each


def test_equal_chunks_are_pruned_alike():
    model, diff = prune_one_group(Chunks, "stem", [1])
    assert diff < 1e-5
    assert (model.stem.out_channels, model.left.in_channels, model.right.in_channels) == (6, 3, 3)


@pytest.mark.parametrize("root", ["fc1", "embed"])
def test_window_reshapes_keep_channels_last_and_prune_exactly(root):
    # Only flattens of (N, C, H, W) into features are mapped as such; these reshapes keep
    # the channels last, one index per channel (mapping them made Swin's lists run away).
    model, diff = prune_one_group(WindowTokens, root, [1, 4])
    assert diff < 1e-5
    assert (model.fc1.out_features if root == "fc1" else model.embed.out_channels) == (14 if root == "fc1" else 6)


class Flattened(nn.Module):
    """VGG's layout: a conv map flattened into a Linear layer's features (C·H·W of them)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 16)
        self.head = nn.Linear(16, hard_nets.CLASSES)

    def forward(self, x):
        return self.head(torch.relu(self.fc(torch.relu(self.conv(x)).flatten(1))))


def test_a_flatten_into_a_linear_layer_is_still_mapped():
    model, diff = prune_one_group(Flattened, "conv", [2])
    assert diff < 1e-5
    assert model.fc.in_features == 7 * 4 * 4   # the channel's 16 features went with it


@pytest.mark.parametrize("name", ["swin_t", "swin_s"])
def test_swin_lists_its_groups_without_running_away(name):
    # Mapping Swin's window reshapes as flattens multiplied torch-pruning's index lists
    # until the listing was refused (or memory ran out); Swin-S's deeper stage also has a
    # concat of unknown width that crashed the trace. Now the MLPs' groups are listed.
    import torchvision
    from studio.engine.pruning.groups import prunable_groups
    model = getattr(torchvision.models, name)().eval()
    _, groups = prunable_groups(model, torch.randn(1, 3, 224, 224))
    assert any("mlp" in str(g[0].dep.target.name) for g in groups)


def test_rexnet_lists_its_groups_in_seconds():
    # Its partial residuals meet along many paths in different subsets; torch-pruning's walk
    # re-expanded each subset and had not finished after five minutes.
    import time
    import timm
    from studio.engine.pruning.groups import prunable_groups
    model = timm.create_model("rexnet_100", num_classes=4).eval()
    start = time.perf_counter()
    _, groups = prunable_groups(model, torch.randn(1, 3, 64, 64))
    assert groups and time.perf_counter() - start < 60


@pytest.mark.parametrize("rate", [0.3, 0.5])
def test_a_shuffle_stage_is_cut_to_its_rate_in_whole_sets(rate):
    # One stream channel pulls a set of 4 along (shuffle rows and equal chunks, chained).
    # Ranked channel by channel, the sets picked covered the whole layer and the stream
    # was not pruned at all; averaged per set, the cut is the rate, over by less than a set.
    from studio.engine.events import run_to_end
    from studio.engine.pruning import PruningPlan, prune
    torch.manual_seed(0)
    model = hard_nets.ShuffleStage().eval()
    result = run_to_end(prune(model, PruningPlan(rate=rate), torch.randn(1, *hard_nets.INPUT)), lambda e: None)
    kept = result.model.stage[2].branch2[5].out_channels
    target = round(12 * (1 - rate))
    assert target - 3 <= kept <= target
    assert result.model(torch.randn(2, *hard_nets.INPUT)).shape == (2, hard_nets.CLASSES)


class TiedStage(nn.Module):
    """A narrow ShuffleNetV2 stage: the stream's 4 channels are all tied into one set."""

    def __init__(self):
        super().__init__()
        from torchvision.models.shufflenetv2 import InvertedResidual
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stage = nn.Sequential(InvertedResidual(8, 8, 2), InvertedResidual(8, 8, 1), InvertedResidual(8, 8, 1))
        self.head = nn.Linear(8, hard_nets.CLASSES)

    def forward(self, x):
        return self.head(self.stage(torch.relu(self.stem(x))).mean((2, 3)))


def test_a_group_tied_into_one_set_is_blocked_before_surgery():
    from studio.engine.pruning.preflight import preflight
    found = preflight(TiedStage().eval(), hard_nets.INPUT)
    tied = [b for b in found.blocked if "tied into one set" in b.why]
    assert [b.root for b in tied] == ["stage.2.branch2.5"] and "all 4" in tied[0].why
    assert found.groups - len(found.blocked) >= 4   # the branches' own channels still prune
