"""CIFAR-size (3x32x32) CNN architectures that the studio can build from a name.

Each constructor takes ``num_classes`` and returns a randomly initialised `nn.Module`.
They are written for pruning: every shortcut is a real module (1x1 conv + BN, never a
lambda), every op is traceable by `torch.fx.symbolic_trace`, and torch-pruning's
`DependencyGraph` can follow every coupling (residual adds, concatenations, depthwise
convs, squeeze-excitation gates, flatten into a Linear).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn


def _kaiming_init(model: nn.Module) -> nn.Module:
    """He init for convs and linears, unit BN; the init the source papers train from."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round channel counts to a multiple of 8 the way the MobileNet papers do."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # never round down by more than 10%
        new_v += divisor
    return new_v


# ---------------------------------------------------------------- ResNet (He et al. 2016)

class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity or 1x1-conv+BN projection shortcut (option B)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        # An empty Sequential is the identity, and keeps forward free of branches.
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR: 16/32/64 channels in three stages of n blocks."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        layers, cin = [], 16
        for i, width in enumerate((16, 32, 64)):
            stage = []
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                stage.append(BasicBlock(cin, width, stride))
                cin = width
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def resnet20(num_classes: int = 10) -> nn.Module:
    """ResNet-20 for CIFAR (3 blocks per stage, ~0.27M parameters)."""
    return CifarResNet(3, num_classes)


def resnet56(num_classes: int = 10) -> nn.Module:
    """ResNet-56 for CIFAR (9 blocks per stage, ~0.86M parameters)."""
    return CifarResNet(9, num_classes)


# ---------------------------------------------------------------- VGG with batch norm

_VGG_CFG = {
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
         512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class CifarVGG(nn.Module):
    """VGG-BN for CIFAR: conv3x3-BN-ReLU stacks, five max-pools (32 → 1), flatten, two Linears."""

    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in _VGG_CFG[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [*_conv_bn(cin, v, 3), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        # Flatten feeding a Linear is kept on purpose: pruning the last conv must shrink the
        # Linear's input features, a coupling the pruner has to get right.
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(512, 512), nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def vgg16_bn(num_classes: int = 10) -> nn.Module:
    """VGG-16 with batch norm for CIFAR (~15M parameters)."""
    return CifarVGG(16, num_classes)


def vgg19_bn(num_classes: int = 10) -> nn.Module:
    """VGG-19 with batch norm for CIFAR (~20M parameters)."""
    return CifarVGG(19, num_classes)


# ---------------------------------------------------------------- MobileNetV2

class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection, residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True),
                   *_conv_bn(hidden, cout, 1)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # use_res is fixed at construction, so fx traces one branch: no data-dependent flow.
        if self.use_res:
            return x + self.conv(x)
        return self.conv(x)


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 with the stem and second stage at stride 1, so 32x32 ends at 4x4, not 1x1."""

    # (expand t, out channels c, repeats n, first stride s); stage 2's stride is 1 for CIFAR.
    CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(3, 32, 3, 1), nn.ReLU6(inplace=True)]
        cin = 32
        for t, c, n, s in self.CFG:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [*_conv_bn(cin, 1280, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, num_classes))
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def mobilenetv2(num_classes: int = 10) -> nn.Module:
    """MobileNetV2 for CIFAR (~2.2M parameters)."""
    return CifarMobileNetV2(num_classes)


# ---------------------------------------------------------------- MobileNetV3-Large

class SqueezeExcite(nn.Module):
    """Channel gate: global pool, 1x1 reduce, ReLU, 1x1 expand, hard sigmoid, multiply."""

    def __init__(self, channels: int):
        super().__init__()
        squeezed = _make_divisible(channels // 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.gate = nn.Hardsigmoid(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class MobileNetV3Block(nn.Module):
    """MobileNetV3 bneck: optional 1x1 expand, kxk depthwise, optional SE, 1x1 project, residual."""

    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, hswish: bool, stride: int):
        super().__init__()
        act = nn.Hardswish if hswish else nn.ReLU
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if exp != cin:
            layers += [*_conv_bn(cin, exp, 1), act(inplace=True)]
        layers += [*_conv_bn(exp, exp, k, stride, groups=exp), act(inplace=True)]
        if se:
            layers.append(SqueezeExcite(exp))
        layers += _conv_bn(exp, cout, 1)
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res:
            return x + self.block(x)
        return self.block(x)


class CifarMobileNetV3Large(nn.Module):
    """MobileNetV3-Large (Howard et al. 2019) with the stem and first stride-2 bneck at stride 1."""

    # kernel, expansion, out, squeeze-excite, hard-swish, stride  (paper's Table 1)
    CFG = [
        (3, 16, 16, False, False, 1),
        (3, 64, 24, False, False, 1),   # stride 2 in the paper; 1 so CIFAR keeps resolution
        (3, 72, 24, False, False, 1),
        (5, 72, 40, True, False, 2),
        (5, 120, 40, True, False, 1),
        (5, 120, 40, True, False, 1),
        (3, 240, 80, False, True, 2),
        (3, 200, 80, False, True, 1),
        (3, 184, 80, False, True, 1),
        (3, 184, 80, False, True, 1),
        (3, 480, 112, True, True, 1),
        (3, 672, 112, True, True, 1),
        (5, 672, 160, True, True, 2),
        (5, 960, 160, True, True, 1),
        (5, 960, 160, True, True, 1),
    ]

    def __init__(self, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(3, 16, 3, 1), nn.Hardswish(inplace=True)]
        cin = 16
        for k, exp, cout, se, hs, s in self.CFG:
            layers.append(MobileNetV3Block(cin, k, exp, cout, se, hs, s))
            cin = cout
        layers += [*_conv_bn(cin, 960, 1), nn.Hardswish(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(960, 1280), nn.Hardswish(inplace=True),
            nn.Dropout(0.2), nn.Linear(1280, num_classes),
        )
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def mobilenetv3_large(num_classes: int = 10) -> nn.Module:
    """MobileNetV3-Large for CIFAR (~4.2M parameters)."""
    return CifarMobileNetV3Large(num_classes)


# ---------------------------------------------------------------- DenseNet-40

class DenseLayer(nn.Module):
    """BN-ReLU-Conv3x3 producing ``growth`` new channels, concatenated onto its input."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=False)  # in-place would overwrite x, which the cat still needs
        self.conv = nn.Conv2d(cin, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.relu(self.bn(x)))], 1)


class Transition(nn.Module):
    """BN-ReLU-Conv1x1-AvgPool between dense blocks (no compression, as in DenseNet-40)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.bn(x))))


class CifarDenseNet(nn.Module):
    """DenseNet (Huang et al. 2017) for CIFAR: 3 dense blocks of equal depth, growth rate k."""

    def __init__(self, depth: int = 40, growth: int = 12, num_classes: int = 10):
        super().__init__()
        n = (depth - 4) // 3
        channels = 16  # the paper's non-bottleneck DenseNets start with 16 channels
        self.conv1 = nn.Conv2d(3, channels, 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        for b in range(3):
            layers = []
            for _ in range(n):
                layers.append(DenseLayer(channels, growth))
                channels += growth
            blocks.append(nn.Sequential(*layers))
            if b < 2:
                blocks.append(Transition(channels, channels))
        self.features = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.conv1(x))
        return self.fc(self.flatten(self.pool(self.relu(self.bn(x)))))


def densenet40(num_classes: int = 10) -> nn.Module:
    """DenseNet-40 for CIFAR (growth 12, 3 blocks of 12 layers, ~1.0M parameters)."""
    return CifarDenseNet(40, 12, num_classes)


CIFAR_MODELS: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "resnet20": (resnet20, "ResNet-20 (He et al. 2016), 0.27M params, projection shortcuts"),
    "resnet56": (resnet56, "ResNet-56 (He et al. 2016), 0.86M params, projection shortcuts"),
    "vgg16_bn": (vgg16_bn, "VGG-16 with batch norm, 15M params, flatten into Linear head"),
    "vgg19_bn": (vgg19_bn, "VGG-19 with batch norm, 20M params, flatten into Linear head"),
    "mobilenetv2": (mobilenetv2, "MobileNetV2, 2.2M params, inverted residuals, depthwise convs"),
    "mobilenetv3_large": (mobilenetv3_large,
                          "MobileNetV3-Large, 4.2M params, squeeze-excitation, hard-swish"),
    "densenet40": (densenet40, "DenseNet-40 (growth 12), 1.0M params, concatenations"),
}
