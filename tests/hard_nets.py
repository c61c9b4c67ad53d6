"""Tiny models that do what hard third-party architectures do, one pattern each.

Each class stands for a row of the "models that used to fail" table: the pattern is the same
as in the public model it is named after, shrunk to a 3x16x16 input and 4 classes so a prune
takes a second. `tests/test_hard_models.py` prunes each through the studio; `bench/prunability.py`
counts them with the torchvision and timm models. Every module here is self-contained (imports
inside the file) so it can be written to a file and loaded as ``file.py:Symbol``.
"""
import torch
import torch.nn.functional as F
from torch import nn

INPUT = (3, 16, 16)
CLASSES = 4


class OptionA(nn.Module):
    """CIFAR ResNet "option A" shortcuts: a lambda subsamples and zero-pads the channels."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.c1 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(16)
        self.shortcut = Lambda(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 4, 4)))
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        x = F.relu(y + self.shortcut(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Lambda(nn.Module):
    """The public CIFAR ResNet's LambdaLayer."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class Shuffle(nn.Module):
    """A ShuffleNetV2 unit written by hand: split, one branch convolved, concat, channel shuffle."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.pw1 = nn.Conv2d(8, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw2 = nn.Conv2d(8, 8, 1)
        self.out = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x):
        x = F.relu(self.stem(x))
        a, b = x.chunk(2, dim=1)
        b = F.relu(self.pw2(self.dw(F.relu(self.pw1(b)))))
        x = torch.cat([a, b], 1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        x = F.relu(self.out(x))
        return self.head(x.mean((2, 3)))


class ShuffleStage(nn.Module):
    """A ShuffleNetV2 stage of torchvision's own blocks: chunk, concat and shuffle, chained three times."""

    def __init__(self):
        super().__init__()
        from torchvision.models.shufflenetv2 import InvertedResidual
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.stage = nn.Sequential(InvertedResidual(12, 24, 2), InvertedResidual(24, 24, 1),
                                   InvertedResidual(24, 24, 1))
        self.head = nn.Linear(24, CLASSES)

    def forward(self, x):
        return self.head(self.stage(F.relu(self.stem(x))).mean((2, 3)))


class FixedSlice(nn.Module):
    """A dual-path block (DPN): channels split at a fixed index into a residual and a dense path."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.conv = nn.Conv2d(12, 12, 3, padding=1)
        self.head = nn.Linear(12, CLASSES)
        self.split = 8

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = F.relu(self.conv(x))
        res = x[:, :self.split] + y[:, :self.split]
        dense = torch.cat([x[:, self.split:], y[:, self.split:]], 1)
        x = torch.cat([res, dense[:, :4]], 1)
        return self.head(x.mean((2, 3)))


class HardReshape(nn.Module):
    """A hard-coded view(-1, 8 * 4 * 4) before the head, as Inception-v4 writes view(-1, 1536)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, stride=4, padding=1)
        self.head = nn.Linear(8 * 4 * 4, CLASSES)

    def forward(self, x):
        x = torch.relu(self.b(torch.relu(self.a(x))))
        return self.head(x.view(-1, 8 * 4 * 4))


class DropPath(nn.Module):
    """Stochastic depth, as some repositories script it."""

    def __init__(self, p: float = 0.1):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= self.p
        return x * keep / (1.0 - self.p)


class Scripted(nn.Module):
    """An eager model holding a TorchScript submodule (a scripted stochastic-depth layer)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.drop = torch.jit.script(DropPath())
        self.c = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x):
        x = torch.relu(self.a(x))
        x = x + self.drop(torch.relu(self.b(x)))
        return self.head(torch.relu(self.c(x)).mean((2, 3)))


class Stacked(nn.Module):
    """Two branches combined with torch.stack and a sum over the new axis."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.left = nn.Conv2d(8, 8, 3, padding=1)
        self.right = nn.Conv2d(8, 8, 1)
        self.post = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.stack([self.left(x), self.right(x)], 0).sum(0)
        return self.head(torch.relu(self.post(torch.relu(x))).mean((2, 3)))


class Attention(nn.Module):
    """Multi-head self-attention whose head count is read in forward, as ViTs write it."""

    def __init__(self, dim: int = 16, num_heads: int = 4):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        att = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5
        x = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1)
        return self.proj(x)


class HeadsInForward(nn.Module):
    """A tiny ViT: conv patches, one attention block with an MLP, a Linear head."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.norm1 = nn.LayerNorm(16)
        self.attn = Attention()
        self.norm2 = nn.LayerNorm(16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = x + self.attn(self.norm1(x))
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return self.head(x.mean(1))


class ConvHead(nn.Module):
    """A SqueezeNet-style classifier: a 1x1 conv to the classes, pooled, no Linear at all."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(16, CLASSES, 1), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


ALL = [OptionA, Shuffle, ShuffleStage, FixedSlice, HardReshape, Scripted, Stacked, HeadsInForward, ConvHead]
