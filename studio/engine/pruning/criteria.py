"""Registry of channel-importance criteria, as small strategy objects (Torch-Pruning style).

Each `Criterion` describes one way of scoring the output channels of a coupled group of
layers and makes a fresh torch-pruning `Importance` object on demand. Most criteria are
torch-pruning's own classes; Sl(n)·γ (Liu & Lei 2022) and HRank are written here in the same
interface (`__call__(group) -> 1-D tensor`), so torch-pruning's pruner can use any of them.
"""
from __future__ import annotations

import difflib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function as tp_fn

from studio.engine.errors import StudioError
from studio.engine.pruning.fit_criteria import CompensationImportance, LassoImportance

# Pruning functions that remove a layer's *output* channels (its filters / neurons).
_OUT_CHANNEL_FNS = (
    tp_fn.prune_conv_out_channels,
    tp_fn.prune_depthwise_conv_out_channels,
    tp_fn.prune_linear_out_channels,
)
_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Mish,
                nn.PReLU, nn.Hardtanh, nn.CELU, nn.SELU)


def _filters(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as one row per output channel."""
    w = layer.weight.detach()
    if getattr(layer, "transposed", False):
        w = w.transpose(0, 1)
    return w.flatten(1)


class SlGammaImportance(tp.importance.GroupMagnitudeImportance):
    """Sl(n)·|γ| of Liu & Lei 2022 (MobileNetV3 slimming), as we read the paper's text.

    The paper's formula images are missing, so this is our reading of its words: for a
    conv with weight k (N×C×H×W), M = mean |k| over the whole layer and
    Sl(n) = share of filter n's C·H·W coefficients with |k| ≥ M (near 0 = redundant).
    The importance of filter n is m_n = Sl(n)·|γ_n|, with γ the scale of the BatchNorm right
    after the conv. A layer with no BatchNorm after it falls back to Sl(n) alone; within a
    coupled group such layers only count when no member has a BatchNorm, so a group is never
    ranked on a mix of γ-weighted and unweighted scores. Linear layers are scored the same way
    (N neurons × C inputs). Members are averaged like torch-pruning's magnitude criteria.
    Scores are not normalised: the paper prunes with one global threshold over the raw m_n.
    """

    def __init__(self, group_reduction: str = "mean", normalizer: Optional[str] = None):
        super().__init__(p=1, group_reduction=group_reduction, normalizer=normalizer, bias=False,
                         target_types=list(_WEIGHTED))

    @staticmethod
    def filter_sparsity(layer: nn.Module) -> torch.Tensor:
        """Sl(n) for every output channel of a conv or linear layer."""
        w = _filters(layer).abs()
        return (w >= w.mean()).float().mean(dim=1)

    @staticmethod
    def following_batchnorm(node) -> Optional[nn.modules.batchnorm._BatchNorm]:
        """The BatchNorm fed directly by this dependency-graph node, if any."""
        for out in node.outputs:
            if isinstance(out.module, nn.modules.batchnorm._BatchNorm) and out.module.affine:
                return out.module
        return None

    @torch.no_grad()
    def __call__(self, group) -> Optional[torch.Tensor]:
        with_bn, without_bn = ([], []), ([], [])
        for i, (dep, idxs) in enumerate(group):
            layer = dep.layer
            if dep.pruning_fn not in _OUT_CHANNEL_FNS or not isinstance(layer, _WEIGHTED):
                continue
            score = self.filter_sparsity(layer)[idxs]
            bn = self.following_batchnorm(dep.target)
            bucket = without_bn
            if bn is not None:
                score = score * bn.weight.detach().abs()[idxs].to(score.device)
                bucket = with_bn
            bucket[0].append(score)
            bucket[1].append(group[i].root_idxs)
        scores, idxs = with_bn if with_bn[0] else without_bn
        if not scores:
            return None
        return self._normalize(self._reduce(scores, idxs), self.normalizer)


class HRankImportance(tp.importance.GroupMagnitudeImportance):
    """HRank (Lin et al., CVPR 2020): average matrix rank of each channel's feature maps.

    Call `collect(model, batches)` before scoring (and again after every pruning step, since
    channel indices change). It runs the batches through the model with forward hooks and
    records, for every conv, the rank of each output channel's H×W map averaged over images.
    The map is taken after the BatchNorm and activation *modules* that directly follow the
    conv when there are any (as in the paper's code, which hooks the ReLU outputs); a
    functional activation cannot be hooked, so the map before it is used then. Tensors are
    followed by identity, so an in-place op in between (`out += identity` in torchvision's
    ResNet blocks) is seen through, and a block's last conv is measured after the residual
    add and its ReLU, again as in the paper's ResNet code. A Linear
    neuron's map is 1×1, so its rank is 1 where it is non-zero. Members of a coupled group
    are averaged like torch-pruning's magnitude criteria; scores are raw ranks.
    """

    def __init__(self, group_reduction: str = "mean", normalizer: Optional[str] = None):
        super().__init__(p=1, group_reduction=group_reduction, normalizer=normalizer, bias=False,
                         target_types=list(_WEIGHTED))
        self.ranks: Optional[dict] = None     # layer -> mean rank per output channel

    @staticmethod
    def channel_ranks(feature_maps: torch.Tensor) -> Optional[torch.Tensor]:
        """Rank of every (image, channel) map of a (B, C, H, W), (B, C, L) or (B, C) tensor."""
        fm = feature_maps.detach().float()
        if fm.dim() == 2:
            return (fm != 0).float()
        if fm.dim() == 3:
            fm = fm.unsqueeze(2)
        if fm.dim() != 4:
            return None
        return torch.linalg.matrix_rank(fm).float()

    @staticmethod
    def _taps(model: nn.Module, x: torch.Tensor) -> dict:
        """For each conv/linear: (module, call number) whose output is its feature map.

        One forward with recording hooks follows each layer's output tensor to the BatchNorm
        and activation modules that consume it. Call numbers tell apart the uses of a module
        called several times per forward (torchvision ResNets reuse one ReLU per block).
        """
        calls = []   # (module, first input, output, call number of this module)
        seen: dict = defaultdict(int)

        def record(module, inputs, output):
            first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            calls.append((module, first, output, seen[module]))
            seen[module] += 1

        hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
        try:
            with torch.no_grad():
                model(x)
        finally:
            for h in hooks:
                h.remove()
        consumers: dict = defaultdict(list)
        for module, first, _, number in calls:
            if first is not None:
                consumers[id(first)].append((module, number))
        outputs = {(module, number): output for module, _, output, number in calls}

        def next_of(key, kinds):
            for cand in consumers.get(id(outputs[key]), []):
                if isinstance(cand[0], kinds):
                    return cand
            return None

        taps = {}
        for module, _, output, number in calls:
            if not isinstance(module, _WEIGHTED) or module in taps or not isinstance(output, torch.Tensor):
                continue
            key = (module, number)
            bn = next_of(key, nn.modules.batchnorm._BatchNorm)
            key = bn or key
            act = next_of(key, _ACTIVATIONS)
            taps[module] = act or key
        return taps

    def collect(self, model: nn.Module, batches: Iterable) -> None:
        """Run ``batches`` ((x, y) pairs) through ``model`` and store per-channel mean ranks."""
        batches = list(batches)
        if not batches:
            raise StudioError("HRank needs at least one calibration batch.", "Pass calibration data.")
        # Eval mode: BatchNorm must use (and not update) its running statistics.
        was_training = model.training
        model.eval()
        try:
            self._collect(model, batches)
        finally:
            model.train(was_training)

    def _collect(self, model: nn.Module, batches: list) -> None:
        taps = self._taps(model, batches[0][0][:1])
        wanted = defaultdict(list)               # (tap module, call number) -> layers
        for layer, key in taps.items():
            wanted[key].append(layer)
        sums: dict = {}
        counts: dict = defaultdict(int)
        calls: dict = defaultdict(int)

        def on_output(module, inputs, output):
            number = calls[module]
            calls[module] += 1
            layers = wanted.get((module, number))
            if not layers or not isinstance(output, torch.Tensor):
                return
            ranks = self.channel_ranks(output)
            if ranks is None:
                return
            for layer in layers:
                sums[layer] = sums.get(layer, 0) + ranks.sum(0)
                counts[layer] += ranks.shape[0]

        hooks = [m.register_forward_hook(on_output) for m in {key[0] for key in wanted}]
        try:
            with torch.no_grad():
                for x, _ in batches:
                    calls.clear()
                    model(x)
        finally:
            for h in hooks:
                h.remove()
        self.ranks = {layer: sums[layer] / counts[layer] for layer in sums}

    @torch.no_grad()
    def __call__(self, group) -> Optional[torch.Tensor]:
        if self.ranks is None:
            raise RuntimeError("HRankImportance.collect() must run before channels are scored.")
        scores, root_idxs = [], []
        for i, (dep, idxs) in enumerate(group):
            layer = dep.layer
            if dep.pruning_fn not in _OUT_CHANNEL_FNS or layer not in self.ranks:
                continue
            ranks = self.ranks[layer]
            if len(ranks) != _filters(layer).shape[0]:
                raise RuntimeError("HRank ranks are stale: call collect() again after pruning.")
            scores.append(ranks[idxs])
            root_idxs.append(group[i].root_idxs)
        if not scores:
            return None
        return self._normalize(self._reduce(scores, root_idxs), self.normalizer)


@dataclass(frozen=True)
class Criterion:
    """One importance criterion: what it is, where it comes from, and what it needs."""
    name: str
    title: str
    description: str
    paper: str
    needs_data: bool
    needs_gradients: bool
    factory: Callable[[], tp.importance.Importance] = field(repr=False, compare=False, default=None)

    def make(self) -> tp.importance.Importance:
        """A fresh importance object (some keep per-run state, so never share one)."""
        return self.factory()


CRITERIA: dict[str, Criterion] = {c.name: c for c in (
    Criterion("l1", "L1 norm", "Sum of absolute filter weights across the coupled group.",
              "Li et al., ICLR 2017", False, False, lambda: tp.importance.MagnitudeImportance(p=1)),
    Criterion("l2", "L2 norm", "Sum of squared filter weights across the coupled group.",
              "Li et al., ICLR 2017", False, False, lambda: tp.importance.MagnitudeImportance(p=2)),
    Criterion("bn_scale", "BN scale (network slimming)", "Magnitude of the BatchNorm scale γ of each channel.",
              "Liu et al., ICCV 2017", False, False, tp.importance.BNScaleImportance),
    Criterion("slg", "Sl(n)·γ", "Share of a filter's weights above the layer mean, times its BatchNorm |γ|.",
              "MobileNetV3 slimming (Liu & Lei, 2022; our reading of the paper)", False, False, SlGammaImportance),
    Criterion("taylor", "Taylor", "First-order Taylor estimate |w·∂L/∂w| of the loss change on removal.",
              "Molchanov et al., CVPR 2019", True, True, tp.importance.TaylorImportance),
    Criterion("fpgm", "FPGM", "Distance of each filter to the others (filters near the geometric median go).",
              "He et al., CVPR 2019", False, False, tp.importance.FPGMImportance),
    Criterion("hrank", "HRank", "Average matrix rank of each channel's feature maps on calibration images.",
              "Lin et al., CVPR 2020", True, False, HRankImportance),
    Criterion("lamp", "LAMP", "Layer-adaptive magnitude score, comparable across layers.",
              "Lee et al., ICLR 2021", False, False, tp.importance.LAMPImportance),
    Criterion("lasso", "LASSO selection", "Channels a LASSO regression of the next layers' outputs on each "
              "channel's contribution keeps longest (then refit by least squares: --reconstruct lasso).",
              "He, Zhang & Sun, ICCV 2017", True, False, LassoImportance),
    Criterion("cap", "Compensation-aware (CaP)", "Channels whose removal leaves the least error after the next "
              "layers are refit without them.", "Xie et al., arXiv:2108.13728, 2021 (our reading)", True, False,
              CompensationImportance),
    Criterion("random", "Random", "Uniformly random scores: the baseline every criterion must beat.",
              "baseline", False, False, tp.importance.RandomImportance),
)}


def get_criterion(name: str) -> Criterion:
    """The criterion called ``name``; an unknown name is a `StudioError` listing the valid ones."""
    try:
        return CRITERIA[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), CRITERIA, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise StudioError(f"Unknown pruning criterion '{name}'.{hint}",
                          f"Choose one of: {', '.join(CRITERIA)}.") from None
