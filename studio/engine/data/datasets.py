"""Datasets the engine trains on: decoded images in memory, or image files read per epoch.

`TensorImageDataset` holds uint8 pixels and crops/flips them on the fly (`Augment`);
`ImageFileDataset` decodes files each time. `epoch_seed` makes each epoch's shuffle and
augmentation a function of (seed, epoch), which is what makes resumed training exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from studio.engine.errors import StudioError


@dataclass(frozen=True)
class Augment:
    """Random crop (after zero padding by ``pad`` pixels) and optional horizontal flip."""
    pad: int
    flip: bool


class TensorImageDataset(Dataset):
    """Images held as one uint8 tensor (N,C,H,W); augmented and normalized when fetched.

    `__getitems__` lets the DataLoader fetch a whole batch in one call. The per-batch work is
    done in numpy on purpose: torch's small indexing kernels run multi-threaded, and on a busy
    2-core machine their thread hand-offs made a batch several times slower than plain numpy.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
                 mean: Sequence[float], std: Sequence[float], augment: Optional[Augment] = None,
                 out_size: Optional[tuple[int, int]] = None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("images must be a uint8 tensor of shape (N, C, H, W)")
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64)
        self.classes = list(classes)
        self.augment = augment
        self.out_size = tuple(out_size) if out_size is not None else None
        self._pixels = self.images.numpy()   # shares memory with self.images
        self._labels = self.labels.numpy()
        channels = images.shape[1]
        mean_a = np.asarray(mean, dtype=np.float32).reshape(1, channels, 1, 1)
        std_a = np.asarray(std, dtype=np.float32).reshape(1, channels, 1, 1)
        # (x/255 - mean)/std folded into one multiply and one subtract, done in place.
        self._scale = 1.0 / (255.0 * std_a)
        self._shift = mean_a / std_a

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def __getstate__(self) -> dict:
        # Spawned DataLoader workers get a pickled copy: send the tensors once, not the numpy views too.
        state = dict(self.__dict__)
        del state["_pixels"], state["_labels"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pixels = self.images.numpy()
        self._labels = self.labels.numpy()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list:
        idx = np.asarray(indices, dtype=np.int64)
        if self.augment is not None:
            x = crop_and_flip(self._pixels, idx, self.augment)
        else:
            x = self._pixels[idx]
        x = x.astype(np.float32)
        x *= self._scale
        x -= self._shift
        batch = torch.from_numpy(x)
        if self.out_size is not None and tuple(batch.shape[-2:]) != self.out_size:
            # Bilinear weights sum to one, so resizing after normalizing gives the same result.
            batch = F.interpolate(batch, size=self.out_size, mode="bilinear", align_corners=False,
                                  antialias=True)
        return list(zip(batch.unbind(0), self._labels[idx].tolist()))


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffle and augmentation (different per epoch, fixed per run)."""
    return (seed * 1_000_003 + epoch) % 2**63


def crop_and_flip(pixels: np.ndarray, indices: np.ndarray, aug: Augment) -> np.ndarray:
    """Random crop (zero padding ``aug.pad``) and optional horizontal flip of pixels[indices].

    The random numbers come from torch's generator, so `torch.manual_seed` makes a run
    repeatable and each DataLoader worker draws its own.
    """
    n = len(indices)
    _, c, h, w = pixels.shape
    p = aug.pad
    offsets = torch.randint(0, 2 * p + 1, (n, 2)).numpy()
    flips = (torch.rand(n) < 0.5).numpy() if aug.flip else np.zeros(n, dtype=bool)
    padded = np.zeros((c, h + 2 * p, w + 2 * p), dtype=np.uint8)
    out = np.empty((n, c, h, w), dtype=np.uint8)
    for j, i in enumerate(indices):
        padded[:, p:p + h, p:p + w] = pixels[i]   # the border stays zero
        dy, dx = offsets[j]
        crop = padded[:, dy:dy + h, dx:dx + w]
        out[j] = crop[:, :, ::-1] if flips[j] else crop
    return out


def open_image(path: str, mode: str):
    """Open an image file fully decoded in ``mode``; a bad file becomes a StudioError naming it."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise StudioError(f"Cannot read image {path}: {exc}.",
                          "Delete or replace that file, then load the data again.") from exc


class ImageFileDataset(Dataset):
    """Images read from disk on every access (for folders too large to decode into memory)."""

    def __init__(self, samples: list[tuple[str, int]], classes: Sequence[str], transform: Callable,
                 mode: str):
        self.samples = samples
        self.classes = list(classes)
        self.transform = transform
        self.mode = mode

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return self.transform(open_image(path, self.mode)), label
