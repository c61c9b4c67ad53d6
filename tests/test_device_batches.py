"""Tests of studio.engine.device_batches: GPU-resident batches with on-device crop and flip.

The batches are device-agnostic, so their logic is checked on the CPU here; the test that
`train` really switches to them needs a CUDA GPU.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from studio.engine.data import Augment, DeviceBatches, TensorImageDataset, fits_on_device
from studio.engine.data.device_batches import crop_and_flip_gather
from studio.engine.events import Log, run_to_end
from studio.engine.training import TrainConfig, train

CPU = torch.device("cpu")
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def image_set(n: int = 50, augment: Augment | None = None, seed: int = 0) -> TensorImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 6, 5), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 4
    return TensorImageDataset(images, labels, list("abcd"), MEAN, STD, augment=augment)


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(STD).reshape(1, 3, 1, 1)
    return (pixels.float() / 255 - mean) / std


def test_gather_matches_slicing_crop_and_flip():
    data = image_set(8)
    p = 2
    padded = torch.nn.functional.pad(data.images, (p, p, p, p))
    idx = torch.tensor([3, 0, 7, 3])
    dy, dx = torch.tensor([0, 4, 2, 1]), torch.tensor([4, 0, 3, 2])
    flip = torch.tensor([False, True, True, False])
    out = crop_and_flip_gather(padded, idx, dy, dx, flip, (6, 5))
    for j in range(4):
        crop = padded[idx[j], :, dy[j]:dy[j] + 6, dx[j]:dx[j] + 5]
        expected = crop.flip(-1) if flip[j] else crop
        assert torch.equal(out[j], expected)
    assert out.dtype == torch.uint8


def test_plain_batches_cover_every_image_once_normalized():
    data = image_set(50)
    batches = DeviceBatches(data, CPU, 16, shuffle=False, augment=False)
    got = list(batches)
    assert len(got) == len(batches) == 4                      # 16 + 16 + 16 + 2
    x = torch.cat([b[0] for b in got])
    y = torch.cat([b[1] for b in got])
    assert torch.equal(y, data.labels)
    assert torch.allclose(x, normalize(data.images), atol=1e-5)


def test_shuffle_is_seeded_and_changes_with_the_epoch():
    data = image_set(50)

    def labels_of(seed, epoch):
        batches = DeviceBatches(data, CPU, 10, shuffle=True, seed=seed, augment=False)
        batches.set_epoch(epoch)
        return torch.cat([x[:, 0, 0, 0] for x, _ in batches])

    first = labels_of(0, 0)
    assert torch.equal(first, labels_of(0, 0))
    assert not torch.equal(first, labels_of(0, 1))
    assert not torch.equal(first, labels_of(1, 0))
    # A permutation of the whole set: the same multiset of pixels.
    assert torch.allclose(first.sort().values, normalize(data.images)[:, 0, 0, 0].sort().values, atol=1e-5)


def test_training_drops_a_last_batch_of_one_image():
    batches = DeviceBatches(image_set(33), CPU, 16, shuffle=True, augment=False)
    assert len(batches) == 2
    assert [len(y) for _, y in batches] == [16, 16]


def test_ranks_get_disjoint_shares():
    data = image_set(51)
    seen = []
    for rank in range(2):
        # Training: equal shares, so every rank runs the same number of steps.
        train_share = DeviceBatches(data, CPU, 8, shuffle=True, seed=3, augment=False, rank=rank, world=2)
        assert train_share.share == 25
        # Evaluation: every image exactly once over the ranks.
        eval_share = DeviceBatches(data, CPU, 8, shuffle=False, augment=False, rank=rank, world=2)
        seen.append(torch.cat([x[:, 0, 0, 0] for x, _ in eval_share]))
    assert len(seen[0]) + len(seen[1]) == 51
    assert torch.allclose(torch.cat(seen).sort().values, normalize(data.images)[:, 0, 0, 0].sort().values,
                          atol=1e-5)


def test_augmented_images_are_padded_crops_or_their_mirrors():
    pad = 2
    data = image_set(12, augment=Augment(pad=pad, flip=True))
    batches = DeviceBatches(data, CPU, 12, shuffle=False, seed=5)
    x, y = next(iter(batches))
    flips = 0
    for j in range(12):
        # The border is zero pixels, normalized like the rest, as on the CPU path.
        source = normalize(torch.nn.functional.pad(data.images[j:j + 1], (pad,) * 4))[0]
        matches = [(dy, dx, f) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for f in (0, 1)
                   if torch.allclose(x[j], (lambda c: c.flip(-1) if f else c)(
                       source[:, dy:dy + 6, dx:dx + 5]), atol=1e-5)]
        assert matches, f"image {j} is not a crop of its padded source"
        flips += matches[0][2]
    assert 0 < flips < 12                                      # both kinds happen
    assert torch.equal(y, data.labels)


def test_fits_on_device_is_false_off_cuda():
    assert not fits_on_device(image_set(4), CPU)


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_training_uses_device_batches_and_learns(device, monkeypatch):
    """On CUDA `train` picks DeviceBatches by itself; on the CPU it is made to, to test the wiring."""
    if device == "cpu":
        monkeypatch.setattr("studio.engine.training.loop.fits_on_device", lambda *a: True)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(512) % 4
    # Each class has its own bright quadrant: learnable after crops and flips.
    images = torch.randint(0, 60, (512, 3, 16, 16), generator=g, dtype=torch.uint8)
    for c in range(4):
        r, col = divmod(c, 2)
        images[labels == c, :, r * 8:r * 8 + 8, col * 8:col * 8 + 8] += 150
    train_set = TensorImageDataset(images, labels, list("abcd"), MEAN, STD, augment=Augment(2, False))
    val_set = TensorImageDataset(images[:128], labels[:128], list("abcd"), MEAN, STD)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4))
    events = []
    result = run_to_end(train(model, train_set, val_set,
                              TrainConfig(epochs=4, lr=0.05, batch_size=64, device=device)), events.append)
    assert any(isinstance(e, Log) and "data and augmentation on" in e.message for e in events)
    assert result.final.samples == 128
    assert result.final.top1 > 0.9
