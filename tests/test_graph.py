"""Tests for the layer graph (studio.engine.graph) and its layout (studio.engine.layout)."""
from __future__ import annotations

import networkx as nx
import pytest
import torch
import torch.nn as nn
import torchvision

from studio.engine.errors import StudioError
from studio.engine.graph import CATEGORIES, build_graph, find_tracing_hazards, layered_layout

# ---------------------------------------------------------------------- tiny nets

class TinyResidual(nn.Module):
    """conv-bn-relu-conv-bn + 1×1 shortcut conv, add, reused relu, pool, flatten, fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.short = nn.Conv2d(3, 8, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        y = y + self.short(x)
        y = self.relu(y)
        return self.fc(torch.flatten(self.pool(y), 1))


class TinyConcat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 1)
        self.c = nn.Conv2d(10, 5, 3, stride=2, padding=1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        return self.fc(self.c(y).mean((2, 3)))


class DepthwiseSE(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.se_pool = nn.AdaptiveAvgPool2d(1)
        self.se_fc1 = nn.Conv2d(8, 2, 1)
        self.se_fc2 = nn.Conv2d(2, 8, 1)
        self.pw = nn.Conv2d(8, 6, 1)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.dw(x)
        s = torch.sigmoid(self.se_fc2(torch.relu(self.se_fc1(self.se_pool(x)))))
        x = self.pw(x * s)
        return self.head(x.mean((2, 3)))


class TinyVGG(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(8 * 4 * 4, 16), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(16, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class Stacked(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c(torch.stack([self.a(x), self.b(x)], dim=1).flatten(1, 2))


class PixelShuffled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(2, 4, 1)

    def forward(self, x):
        return self.b(nn.functional.pixel_shuffle(self.a(x), 2))


class WeightsOutside(nn.Module):
    """A layer's weights used through F.linear in the parent's forward, as torchvision's Swin does."""

    def __init__(self):
        super().__init__()
        self.a, self.proj = nn.Conv2d(3, 8, 1), nn.Linear(8, 4, bias=False)

    def forward(self, x):
        return nn.functional.linear(self.a(x).mean((2, 3)), self.proj.weight)


class Shuffled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.b(y)


class NoGrad(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        with torch.no_grad():
            return self.b(self.a(x))


class _Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 2


class CustomFn(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.b(_Double.apply(self.a(x)))


class ChannelMean(nn.Module):
    """Spatial-attention style mean over channels: 8 channels in, 1 out, not a conv."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(1, 2, 1)

    def forward(self, x):
        return self.b(self.a(x).mean(1, keepdim=True))


class Branchy(nn.Module):
    """Data-dependent control flow: fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = self.relu(self.bn(self.conv(x)))
        if y.sum() > 0:
            y = y * 2
        return self.fc(y.mean((2, 3)))


class _Pair(nn.Module):
    """A leaf returning (tensor, None), like nn.MultiheadAttention with need_weights=False."""

    def forward(self, x):
        return x * 2, None


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.pair = _Pair()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y, _ = self.pair(self.conv(x))
        return self.fc(y.mean((2, 3)))


def edges_of(lg):
    return set(lg.graph.edges)


# ---------------------------------------------------------------------- graph

def test_residual_nodes_edges_shapes_params_macs():
    model = TinyResidual()
    lg = build_graph(model, (3, 16, 16))
    g = lg.graph
    assert lg.traced_with == "fx" and lg.warnings == []
    assert edges_of(lg) == {
        ("input", "conv1"), ("conv1", "bn1"), ("bn1", "relu"), ("relu", "conv2"), ("conv2", "bn2"),
        ("bn2", "add"), ("input", "short"), ("short", "add"), ("add", "relu:1"), ("relu:1", "pool"),
        ("pool", "flatten"), ("flatten", "fc"), ("fc", "output")}
    assert g.edges["conv1", "bn1"]["shape"] == (8, 16, 16)
    assert g.edges["flatten", "fc"]["shape"] == (8,)
    assert lg.node("pool")["out_shape"] == (8, 1, 1)
    add = lg.node("add")
    assert (add["op"], add["type"], add["category"]) == ("function", "add", "merge")
    relu2 = lg.node("relu:1")
    assert relu2["module"] == "relu" and relu2["params"] == 0
    conv1 = lg.node("conv1")
    assert (conv1["op"], conv1["type"], conv1["category"]) == ("module", "Conv2d", "conv")
    assert (conv1["in_channels"], conv1["out_channels"]) == (3, 8)
    assert conv1["params"] == 8 * 3 * 3 * 3
    # MACs by hand: 8×16×16 outputs, each a 3×3×3 dot product.
    assert conv1["macs"] == 8 * 16 * 16 * 27
    assert lg.node("conv2")["macs"] == 8 * 16 * 16 * 72
    assert lg.node("short")["macs"] == 8 * 16 * 16 * 3
    assert lg.node("fc")["macs"] == 10 * 8
    assert sum(d["params"] for _, d in g.nodes(data=True)) == sum(p.numel() for p in model.parameters())
    for _, d in g.nodes(data=True):
        assert d["category"] in CATEGORIES and d["label"]
    with pytest.raises(KeyError):
        lg.node("nope")


def test_residual_groups_and_prunable():
    lg = build_graph(TinyResidual(), (3, 16, 16))
    # The add ties conv2's and the shortcut's output channels together.
    g_add = lg.group_of["conv2"]
    assert lg.group_of["short"] == g_add and lg.group_of["bn2"] == g_add
    assert set(lg.groups[g_add]) == {"conv2", "bn2", "short"}
    assert set(lg.groups[lg.group_of["conv1"]]) == {"conv1", "bn1"}
    assert lg.prunable == ["conv1", "conv2", "short"]
    assert "fc" not in lg.group_of and not lg.node("fc")["prunable"]
    assert lg.node("conv2")["prunable"] and lg.node("conv2")["group"] == g_add
    assert lg.node("add")["group"] is None


def test_concat_net():
    lg = build_graph(TinyConcat(), (3, 8, 8))
    assert {("a", "cat"), ("b", "cat"), ("cat", "c"), ("c", "mean"), ("mean", "fc")} <= edges_of(lg)
    cat = lg.node("cat")
    assert cat["category"] == "merge" and cat["out_shape"] == (10, 8, 8)
    c = lg.node("c")
    assert c["in_channels"] == 10 and c["out_shape"] == (5, 4, 4)
    assert c["macs"] == 5 * 4 * 4 * 10 * 9
    assert c["params"] == 5 * 10 * 9 + 5
    # Concatenation does not couple its inputs: each branch is its own group.
    assert lg.group_of["a"] != lg.group_of["b"]
    assert lg.prunable == ["a", "b", "c"]


def test_depthwise_and_squeeze_excitation():
    lg = build_graph(DepthwiseSE(), (3, 8, 8))
    dw = lg.node("dw")
    assert dw["label"].startswith("DWConv")
    assert dw["macs"] == 8 * 8 * 8 * 9   # one 3×3 filter per channel
    mul = lg.node("mul")
    assert mul["category"] == "merge" and lg.graph.in_degree("mul") == 2
    assert lg.node("sigmoid")["category"] == "activation"
    # Depthwise conv and the SE gate (multiplied in) are coupled with the stem.
    group = set(lg.groups[lg.group_of["stem"]])
    assert {"stem", "bn", "dw", "se_fc2"} <= group
    assert "head" not in lg.prunable and "pw" in lg.prunable


def test_vgg_flatten_linear_and_classifier():
    lg = build_graph(TinyVGG(), (3, 8, 8))
    flat = lg.node("flatten")
    assert flat["category"] == "reshape" and flat["out_shape"] == (128,)
    fc1 = lg.node("classifier.0")
    assert fc1["macs"] == 128 * 16 and (fc1["in_channels"], fc1["out_channels"]) == (128, 16)
    assert lg.node("classifier.2")["category"] == "dropout"
    assert "classifier.3" not in lg.prunable and not lg.node("classifier.3")["prunable"]
    assert lg.prunable == ["features.0", "classifier.0"]
    assert lg.graph.edges["features.2", "flatten"]["shape"] == (8, 4, 4)


def test_tuple_output_layer_keeps_its_node():
    lg = build_graph(TupleOut(), (3, 8, 8))
    assert edges_of(lg) == {("input", "conv"), ("conv", "pair"), ("pair", "mean"), ("mean", "fc"),
                            ("fc", "output")}
    assert lg.node("pair")["out_shape"] == (4, 8, 8)
    assert lg.graph.edges["pair", "mean"]["shape"] == (4, 8, 8)


def test_model_is_not_touched():
    model = TinyResidual().train()
    model.conv1.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    build_graph(model, (3, 16, 16))
    assert model.training and not model.conv1.weight.requires_grad
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_bad_input_size_is_a_studio_error():
    with pytest.raises(StudioError):
        build_graph(TinyResidual(), (3, 0, 16))
    with pytest.raises(StudioError, match="failed on a 3×16×16 input"):
        build_graph(TinyVGG(), (3, 16, 16))   # its Linear expects 8×8 images


@pytest.mark.parametrize("net, words", [
    (Stacked, "torch.stack"),
    (PixelShuffled, "Pixel shuffle (pixel_shuffle)"),
    (CustomFn, "Custom autograd function _Double"),
    (ChannelMean, "changes the number of channels"),
    (WeightsOutside, "Matrix product 'mm'"),
])
def test_hazards_are_explained(net, words):
    found = find_tracing_hazards(net(), (3, 8, 8))
    assert len(found) == 1 and words in found[0], found
    assert "'a'" in found[0]   # names the layer it follows


def test_clean_nets_have_no_hazards():
    assert find_tracing_hazards(TinyResidual(), (3, 8, 8)) == []
    assert find_tracing_hazards(DepthwiseSE(), (3, 8, 8)) == []
    assert find_tracing_hazards(Shuffled(), (3, 8, 8)) == []   # a channel shuffle is mapped, not a hazard


def test_no_grad_forward_is_reported_and_skips_groups():
    lg = build_graph(NoGrad(), (3, 8, 8))
    assert any("torch.no_grad()" in w for w in lg.warnings)
    assert any("Pruning groups could not be computed" in w for w in lg.warnings)
    assert lg.groups == [] and lg.prunable == []
    assert ("a", "b") in edges_of(lg)   # fx still draws it


def test_untraceable_net_falls_back_to_autograd():
    lg = build_graph(Branchy(), (3, 8, 8))
    assert lg.traced_with == "autograd"
    assert any("control flow" in w for w in lg.warnings)
    g = lg.graph
    assert {("input", "conv"), ("conv", "bn"), ("bn", "relu")} <= set(g.edges)
    assert g.edges["conv", "bn"]["shape"] == (8, 8, 8)
    assert lg.node("mean")["out_shape"] == (8,) and ("fc", "output") in g.edges
    assert lg.node("conv")["macs"] == 8 * 8 * 8 * 27
    assert nx.is_directed_acyclic_graph(g) and nx.has_path(g, "input", "output")
    assert set(lg.groups[lg.group_of["conv"]]) == {"conv", "bn"}
    assert lg.prunable == ["conv"]


# ---------------------------------------------------------------------- layout

def check_layout(g, lay, node_sep=24.0):
    assert set(lay.positions) == set(g.nodes) == set(lay.sizes) == set(lay.rank)
    assert set(lay.edges) == {e for e in g.edges if e[0] != e[1]}
    for (u, v), pts in lay.edges.items():
        (ux, uy), (uw, uh) = lay.positions[u], lay.sizes[u]
        (vx, vy), (vw, vh) = lay.positions[v], lay.sizes[v]
        if lay.rank[v] > lay.rank[u]:
            assert pts[0] == pytest.approx((ux, uy + uh / 2)) and pts[-1] == pytest.approx((vx, vy - vh / 2))
        if lay.rank[v] - lay.rank[u] > 1:
            assert len(pts) > 2   # long edges bend through their dummies
    by_rank = {}
    for n, r in lay.rank.items():
        by_rank.setdefault(r, []).append(n)
    for nodes in by_rank.values():
        nodes.sort(key=lambda n: lay.positions[n][0])
        for a, b in zip(nodes, nodes[1:]):
            gap = (lay.positions[b][0] - lay.sizes[b][0] / 2) - (lay.positions[a][0] + lay.sizes[a][0] / 2)
            assert gap >= node_sep - 1e-6
        assert len({lay.positions[n][1] for n in nodes}) == 1
    for n, (x, y) in lay.positions.items():
        w, h = lay.sizes[n]
        assert -1e-6 <= x - w / 2 and x + w / 2 <= lay.width + 1e-6 and 0 <= y - h / 2 <= lay.height


def test_layout_of_residual_graph():
    lg = build_graph(TinyResidual(), (3, 16, 16), with_groups=False)
    g = lg.graph
    lay = layered_layout(g)
    check_layout(g, lay)
    assert all(lay.rank[v] > lay.rank[u] for u, v in g.edges)
    # The main chain is one straight vertical line ...
    main = ["input", "conv1", "bn1", "relu", "conv2", "bn2", "add", "relu:1", "pool", "flatten", "fc", "output"]
    assert len({round(lay.positions[n][0], 6) for n in main}) == 1
    # ... and the skip path runs beside the blocks, not through them.
    spine_x = lay.positions["conv1"][0]
    half = max(lay.sizes[n][0] for n in main) / 2
    assert abs(lay.positions["short"][0] - spine_x) > half
    bends = lay.edges[("short", "add")][1:-1]
    assert bends and all(abs(x - spine_x) > half for x, _ in bends)


def _segments(lay):
    return [(a, b) for pts in lay.edges.values() for a, b in zip(pts, pts[1:])]


def _crossings(segments):
    """Proper crossings between segments (shared end points and overlaps do not count)."""
    def orient(p, q, r):
        v = (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])
        return 0 if abs(v) < 1e-9 else (1 if v > 0 else -1)
    count = 0
    for i, (p1, p2) in enumerate(segments):
        for p3, p4 in segments[i + 1:]:
            if {p1, p2} & {p3, p4}:
                continue
            if orient(p1, p2, p3) * orient(p1, p2, p4) < 0 and orient(p3, p4, p1) * orient(p3, p4, p2) < 0:
                count += 1
    return count


def _small_resnet():
    """Three residual blocks (the second with a conv-bn downsample shortcut), with nodes
    inserted so that a naive order puts the downsample conv left of the main conv but its
    bn right of the main bn: their edges cross unless the layout reorders."""
    edges = [("in", "stem")]
    prev = "stem"
    for b in range(3):
        main = [f"b{b}.conv1", f"b{b}.bn1", f"b{b}.relu", f"b{b}.conv2", f"b{b}.bn2"]
        add = f"b{b}.add"
        edges += [(prev, main[0]), *zip(main, main[1:]), (main[-1], add)]
        if b == 1:
            edges += [(prev, "b1.ds.conv"), ("b1.ds.conv", "b1.ds.bn"), ("b1.ds.bn", add)]
        else:
            edges.append((prev, add))
        prev = add
    edges.append((prev, "out"))
    g = nx.DiGraph()
    g.add_nodes_from(["b1.ds.conv", "b1.bn1"])   # insertion order = the naive order
    g.add_edges_from(edges)
    return g


def test_layout_has_fewer_crossings_than_a_naive_order():
    g = _small_resnet()
    lay = layered_layout(g)
    check_layout(g, lay)
    # Naive drawing: the same ranks, nodes in insertion order, straight edges.
    slot, pos = {}, {}
    for n in g.nodes:
        r = lay.rank[n]
        pos[n] = (slot.get(r, 0) * 100.0, r * 60.0)
        slot[r] = slot.get(r, 0) + 1
    naive = _crossings([(pos[u], pos[v]) for u, v in g.edges])
    assert naive > 0
    assert _crossings(_segments(lay)) < naive


def test_layout_breaks_cycles_and_handles_dense_fan_in():
    g = nx.DiGraph([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])
    lay = layered_layout(g)
    assert set(lay.positions) == set("abcd") and len(lay.edges) == 4
    # DenseNet-like: every layer feeds every later concatenation.
    dense = nx.DiGraph()
    feats = ["f0"]
    for i in range(1, 6):
        for f in feats:
            dense.add_edge(f, f"cat{i}")
        dense.add_edge(f"cat{i}", f"conv{i}")
        dense.add_edge(f"conv{i}", f"f{i}")
        feats.append(f"f{i}")
    lay = layered_layout(dense)
    check_layout(dense, lay)
    assert all(lay.rank[v] > lay.rank[u] for u, v in dense.edges)


def test_torchvision_resnet18_graph_and_layout():
    model = torchvision.models.resnet18(num_classes=10)
    lg = build_graph(model, (3, 32, 32))
    assert lg.traced_with == "fx" and lg.warnings == []
    assert len(lg.graph) == 71 and "fc" not in lg.prunable and "conv1" in lg.prunable
    # Every residual add couples the convs that feed it.
    assert lg.group_of["layer2.0.conv2"] == lg.group_of["layer2.0.downsample.0"] == lg.group_of["layer2.1.conv2"]
    lay = layered_layout(lg.graph)
    check_layout(lg.graph, lay)
