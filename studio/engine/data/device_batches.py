"""Batches of an in-memory image set served from GPU memory, with crop and flip done on the GPU.

With the DataLoader path every batch is cropped, flipped and normalized by one CPU core
and copied over while the GPU waits; on an H100 a ResNet-20 epoch took ~7 s that way. For
a `TensorImageDataset` that fits in GPU memory, `train` uploads the uint8 pixels once and
draws every batch with one gather on the device instead, taking the batch preparation off
the host. `bench/gpu_data.py` measures the gain; it has not yet run on a GPU.

The augmentation is the same as the CPU path's (`data._crop_and_flip`): a random crop of
the zero-padded image, then an optional horizontal flip.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from studio.engine.data.datasets import TensorImageDataset, epoch_seed

# Use at most this share of the free GPU memory for the resident copy of the data.
MEMORY_SHARE = 0.25


def crop_and_flip_gather(padded: torch.Tensor, idx: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
                         flip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """padded[idx] cropped at (dy, dx) to ``size`` and mirrored where ``flip``, as one gather.

    ``padded`` is (N, C, H + 2p, W + 2p); ``idx``, ``dy``, ``dx`` and ``flip`` hold one entry
    per output image. Works on any device; the result has ``padded``'s dtype.
    """
    h, w = size
    channels = padded.shape[1]
    device = padded.device
    rows = dy[:, None] + torch.arange(h, device=device)                       # (B, h)
    cols = torch.arange(w, device=device).expand(len(idx), w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + dx[:, None]       # (B, w)
    chans = torch.arange(channels, device=device)
    return padded[idx[:, None, None, None], chans[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def fits_on_device(dataset: TensorImageDataset, device: torch.device) -> bool:
    """True when a padded copy of ``dataset`` takes at most `MEMORY_SHARE` of the free memory."""
    if device.type != "cuda":
        return False
    pad = dataset.augment.pad if dataset.augment is not None else 0
    n, c, h, w = dataset.images.shape
    needed = n * c * (h + 2 * pad) * (w + 2 * pad) + 8 * n
    free, _ = torch.cuda.mem_get_info(device)
    return needed <= MEMORY_SHARE * free


class DeviceBatches:
    """An epoch-iterable of (images, labels) batches drawn from a copy of the data on ``device``.

    It behaves like the DataLoader it replaces: ``len()`` is the number of batches,
    ``set_epoch`` changes the shuffle (as a DistributedSampler's does), and under DDP each
    rank reads its own disjoint share. The shuffle and augmentation come from generators
    seeded with (seed, epoch), so a run is repeatable whatever the global RNG does.
    """

    def __init__(self, dataset: TensorImageDataset, device: torch.device, batch_size: int, *,
                 shuffle: bool, seed: int = 0, augment: bool = True, rank: int = 0, world: int = 1,
                 equal_shares: Optional[bool] = None):
        self.device = device
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank, self.world = rank, world
        self.epoch = 0
        self.aug = dataset.augment if augment else None
        self.size = tuple(dataset.images.shape[-2:])
        self.out_size = dataset.out_size
        pad = self.aug.pad if self.aug is not None else 0
        images = dataset.images.to(device)
        self.pixels = F.pad(images, (pad, pad, pad, pad)) if pad else images
        self.labels = dataset.labels.to(device)
        channels = images.shape[1]
        self.scale = torch.as_tensor(dataset._scale, device=device).reshape(1, channels, 1, 1)
        self.shift = torch.as_tensor(dataset._shift, device=device).reshape(1, channels, 1, 1)
        n = images.shape[0]
        # Training needs every rank to run the same number of steps; evaluation needs every
        # image exactly once. Shares are cut to equal length only for the first.
        equal = shuffle if equal_shares is None else equal_shares
        self.share = n // world if equal else len(range(rank, n, world))
        # As in the DataLoader path: drop a last batch of one image, which breaks BatchNorm.
        self.drop_last = shuffle and self.share > batch_size and self.share % batch_size == 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.share // self.batch_size
        return -(-self.share // self.batch_size)

    def _order(self, generator: torch.Generator) -> torch.Tensor:
        n = self.pixels.shape[0]
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        return order[self.rank::self.world][:self.share]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Drawn on the CPU, so the order is the same on any GPU, then moved over once per epoch.
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = self._order(generator)
        count = len(order)
        if self.aug is not None:
            p = self.aug.pad
            offsets = torch.randint(0, 2 * p + 1, (count, 2), generator=generator).to(self.device)
            flips = torch.rand(count, generator=generator) < 0.5
            flips = (flips if self.aug.flip else torch.zeros(count, dtype=torch.bool)).to(self.device)
        order = order.to(self.device)
        for b in range(len(self)):
            part = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx = order[part]
            if self.aug is not None:
                x = crop_and_flip_gather(self.pixels, idx, offsets[part, 0], offsets[part, 1],
                                         flips[part], self.size)
            else:
                x = self.pixels[idx]
            x = x.float().mul_(self.scale).sub_(self.shift)
            if self.out_size is not None and tuple(x.shape[-2:]) != self.out_size:
                x = F.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False,
                                  antialias=True)
            yield x, self.labels[idx]
