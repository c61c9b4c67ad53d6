"""Tests for studio.engine.data: every spec form, augmentation, loaders and every user-facing error."""
from __future__ import annotations

import gzip
import pickle
import struct
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from studio.engine.data import (
    NORMALIZATION,
    Augment,
    DataBundle,
    TensorImageDataset,
    check_compatible,
    datasets,
    download_dataset,
    load_data,
    make_loader,
    sources,
)
from studio.engine.errors import StudioError


def _first_batch(dataset, n=None):
    """All (or the first n) samples of a dataset stacked, in order."""
    n = len(dataset) if n is None else n
    xs, ys = zip(*(dataset[i] for i in range(n)))
    return torch.stack(xs), torch.tensor(ys)


# ---------------------------------------------------------------------------- fabricated formats

def write_cifar10(root: Path, n_train_per_batch=6, n_test=8, folder="cifar-10-batches-py") -> tuple[Path, np.ndarray]:
    """torchvision's CIFAR-10 python layout with tiny batches; returns the folder and the test pixels."""
    rng = np.random.default_rng(0)
    out = root / folder
    out.mkdir(parents=True)
    for i in range(1, 6):
        batch = {b"data": rng.integers(0, 256, (n_train_per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n_train_per_batch)],
                 b"batch_label": b"training batch"}
        (out / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    test = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    labels = [i % 10 for i in range(n_test)]
    (out / "test_batch").write_bytes(pickle.dumps({b"data": test, b"labels": labels}, protocol=2))
    names = [s.encode() for s in sources.CIFAR10_CLASSES]
    (out / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=2))
    return out, test.reshape(-1, 3, 32, 32)


def write_cifar100(root: Path) -> Path:
    rng = np.random.default_rng(1)
    out = root / "cifar-100-python"
    out.mkdir(parents=True)
    for name, n in (("train", 12), ("test", 6)):
        split = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "fine_labels": [int(v) for v in rng.integers(0, 100, n)],
                 "coarse_labels": [0] * n}
        (out / name).write_bytes(pickle.dumps(split))
    (out / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    return out


def _idx_bytes(array: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(folder: Path, n_train=10, n_test=6, gz=False) -> np.ndarray:
    """The four MNIST idx files in folder; returns the test images."""
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True, exist_ok=True)
    test_images = None
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            raw = _idx_bytes(arr)
            if gz:
                (folder / (stem + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (folder / stem).write_bytes(raw)
        if prefix == "t10k":
            test_images = images
    return test_images


def write_npz(path: Path, *, train=True, class_names=True, dtype=np.uint8, size=(16, 16, 3)) -> Path:
    rng = np.random.default_rng(3)
    arrays = {"x_test": rng.integers(0, 256, (6, *size)).astype(dtype), "y_test": np.array([0, 1, 2, 0, 1, 2])}
    if train:
        arrays |= {"x_train": rng.integers(0, 256, (9, *size)).astype(dtype), "y_train": np.arange(9) % 3}
    if class_names:
        arrays["class_names"] = np.array(["red", "green", "blue"])
    np.savez(path, **arrays)
    return path


# ---------------------------------------------------------------------------- ImageFolder

def test_imagefolder_train_val(synthetic_imagefolder):
    bundle = load_data(str(synthetic_imagefolder))
    assert isinstance(bundle, DataBundle)
    assert bundle.kind == "imagefolder" and bundle.cached
    assert bundle.class_names == ["cat", "dog", "frog"] and bundle.num_classes == 3
    assert len(bundle.train) == 18 and len(bundle.val) == 9
    assert bundle.input_size == (3, 32, 32)
    assert (bundle.mean, bundle.std) == NORMALIZATION["cifar10"]   # 32x32 RGB → CIFAR preset
    assert bundle.summary() == "imagefolder (imagefolder): 3 classes, 18 train / 9 val, 3x32x32"
    x, y = bundle.val[4]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 1
    assert bundle.train.targets == [0] * 6 + [1] * 6 + [2] * 6


def test_imagefolder_pixels_match_files(synthetic_imagefolder):
    from PIL import Image
    bundle = load_data(str(synthetic_imagefolder), augment=False)
    expected = np.array(Image.open(synthetic_imagefolder / "val" / "dog" / "0001.png").convert("RGB"))
    x, _ = bundle.val[4]
    mean = torch.tensor(bundle.mean).view(3, 1, 1)
    std = torch.tensor(bundle.std).view(3, 1, 1)
    pixels = (x * std + mean) * 255
    assert torch.allclose(pixels, torch.from_numpy(expected).permute(2, 0, 1).float(), atol=1e-3)


def test_imagefolder_test_split_name_and_jpeg(make_imagefolder):
    root = make_imagefolder("tv", splits=("train", "test"), fmt="jpg", per_class=2)
    bundle = load_data(str(root))
    assert len(bundle.train) == 6 and len(bundle.val) == 6
    assert "test/ used as validation split" in bundle.summary()


def test_flat_imagefolder_is_val_only(make_imagefolder):
    root = make_imagefolder("flat", splits=(), per_class=3)
    bundle = load_data(str(root))
    assert bundle.train is None and len(bundle.val) == 9
    assert "no train split" in bundle.summary() and "evaluation only" in bundle.summary()


def test_imagefolder_grayscale_and_channels(make_imagefolder):
    root = make_imagefolder("gray", mode="L", per_class=2, size=(20, 20))
    as_gray = load_data(str(root), channels=1)
    assert as_gray.input_size == (1, 20, 20)
    assert (as_gray.mean, as_gray.std) == NORMALIZATION["mnist"]
    as_rgb = load_data(str(root))
    assert as_rgb.input_size == (3, 20, 20)
    assert (as_rgb.mean, as_rgb.std) == NORMALIZATION["imagenet"]
    x, _ = as_rgb.val[0]
    # A grayscale file read as RGB has three identical channels before normalization.
    assert torch.allclose(x[0] * as_rgb.std[0] + as_rgb.mean[0], x[1] * as_rgb.std[1] + as_rgb.mean[1], atol=1e-5)


def test_imagefolder_mixed_sizes_are_resized(make_imagefolder):
    root = make_imagefolder("mixed", per_class=2, size=(24, 24))
    make_imagefolder(root.name, classes=("cat",), per_class=1, size=(40, 30), splits=("val",), seed=5)
    (root / "val" / "cat" / "0000.png").rename(root / "val" / "cat" / "zz_big.png")
    make_imagefolder(root.name, classes=("cat",), per_class=1, size=(24, 24), splits=("val",), seed=6)
    bundle = load_data(str(root))
    assert bundle.input_size == (3, 24, 24)
    assert "resized to 24x24" in bundle.summary()
    resized = load_data(str(root), input_size=(3, 16, 16))
    assert resized.input_size == (3, 16, 16) and resized.val[0][0].shape == (3, 16, 16)


def test_imagefolder_uncached_uses_files(synthetic_imagefolder):
    bundle = load_data(str(synthetic_imagefolder), cache_in_memory=False)
    assert not bundle.cached and isinstance(bundle.val, datasets.ImageFileDataset)
    assert bundle.input_size == (3, 32, 32)   # no larger than the images themselves
    x, y = bundle.train[7]
    assert x.shape == (3, 32, 32) and y == 1
    v1, v2 = bundle.val[2][0], bundle.val[2][0]
    assert torch.equal(v1, v2)
    sized = load_data(str(synthetic_imagefolder), cache_in_memory=False, input_size=(3, 24, 24))
    assert sized.val[0][0].shape == (3, 24, 24) and sized.train[0][0].shape == (3, 24, 24)


def test_decode_reports_progress(synthetic_imagefolder):
    calls = []
    load_data(str(synthetic_imagefolder), progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1] == (27, 27)


# ---------------------------------------------------------------------------- augmentation

def test_augmentation_changes_train_but_not_val(synthetic_imagefolder):
    bundle = load_data(str(synthetic_imagefolder))
    torch.manual_seed(0)
    a, _ = _first_batch(bundle.train)
    b, _ = _first_batch(bundle.train)
    assert not torch.equal(a, b)
    v1, _ = _first_batch(bundle.val)
    v2, _ = _first_batch(bundle.val)
    assert torch.equal(v1, v2)
    plain = load_data(str(synthetic_imagefolder), augment=False)
    p1, _ = _first_batch(plain.train)
    p2, _ = _first_batch(plain.train)
    assert torch.equal(p1, p2)


def test_crop_and_flip_is_a_shift_or_mirror_of_the_padded_image():
    torch.manual_seed(1)
    images = torch.randint(1, 256, (40, 2, 6, 6), dtype=torch.uint8)
    picked = np.arange(0, 40, 2)
    out = torch.from_numpy(datasets.crop_and_flip(images.numpy(), picked, Augment(pad=2, flip=True)))
    padded = torch.nn.functional.pad(images[picked], (2, 2, 2, 2))
    flipped_seen = shifted_seen = False
    for img, res in zip(padded, out):
        candidates = {(dy, dx, f): (img[:, dy:dy + 6, dx:dx + 6].flip(-1) if f else img[:, dy:dy + 6, dx:dx + 6])
                      for dy in range(5) for dx in range(5) for f in (False, True)}
        matches = [key for key, cand in candidates.items() if torch.equal(cand, res)]
        assert matches, "augmented image is not a crop (or mirrored crop) of the padded original"
        flipped_seen |= any(f for _, _, f in matches) and not any(not f for _, _, f in matches)
        shifted_seen |= all((dy, dx) != (2, 2) for dy, dx, _ in matches)
    assert flipped_seen and shifted_seen


def test_tensor_dataset_survives_pickling_for_spawned_workers():
    bundle = load_data("synthetic:classes=2,train=4,val=4,size=3x8x8")
    clone = pickle.loads(pickle.dumps(bundle.val))
    assert torch.equal(clone[1][0], bundle.val[1][0]) and clone[1][1] == bundle.val[1][1]


def test_tensor_dataset_resizes_to_out_size():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    ds = TensorImageDataset(images, torch.arange(4), ["a", "b", "c", "d"], (0.5,) * 3, (0.25,) * 3, out_size=(16, 12))
    x, y = ds[3]
    assert x.shape == (3, 16, 12) and y == 3


# ---------------------------------------------------------------------------- CIFAR / MNIST

@pytest.mark.parametrize("point_at_batches_folder", [False, True])
def test_cifar10_python_format(tmp_path, point_at_batches_folder):
    folder, test_pixels = write_cifar10(tmp_path)
    bundle = load_data(str(folder if point_at_batches_folder else tmp_path), augment=False)
    assert bundle.kind == "cifar10" and bundle.name == "CIFAR-10"
    assert bundle.class_names == sources.CIFAR10_CLASSES
    assert len(bundle.train) == 30 and len(bundle.val) == 8 and bundle.input_size == (3, 32, 32)
    assert (bundle.mean, bundle.std) == NORMALIZATION["cifar10"]
    x, y = bundle.val[3]
    assert y == 3
    restored = (x * torch.tensor(bundle.std).view(3, 1, 1) + torch.tensor(bundle.mean).view(3, 1, 1)) * 255
    assert torch.allclose(restored, torch.from_numpy(test_pixels[3]).float(), atol=1e-3)
    assert bundle.summary() == "CIFAR-10 (cifar10): 10 classes, 30 train / 8 val, 3x32x32"


def test_cifar10_grayscale_and_resize(tmp_path):
    write_cifar10(tmp_path)
    bundle = load_data(str(tmp_path), input_size=(1, 40, 40))
    assert bundle.input_size == (1, 40, 40) and bundle.val[0][0].shape == (1, 40, 40)
    assert len(bundle.mean) == 1 and "resized from 32x32" in bundle.summary()


def test_cifar100_python_format(tmp_path):
    write_cifar100(tmp_path)
    bundle = load_data(str(tmp_path))
    assert bundle.kind == "cifar100" and bundle.num_classes == 100
    assert len(bundle.train) == 12 and len(bundle.val) == 6
    assert (bundle.mean, bundle.std) == NORMALIZATION["cifar100"]


def test_cifar_pickle_with_code_is_refused(tmp_path):
    folder, _ = write_cifar10(tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}))
    with pytest.raises(StudioError, match="test_batch"):
        load_data(str(tmp_path))
    assert not marker.exists()


def test_cifar_missing_training_batch(tmp_path):
    folder, _ = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(StudioError, match="missing data_batch_3"):
        load_data(str(tmp_path))


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files(tmp_path, gz):
    test_images = write_mnist(tmp_path / "MNIST" / "raw", gz=gz)
    bundle = load_data(str(tmp_path), augment=False)
    assert bundle.kind == "mnist" and bundle.input_size == (1, 28, 28)
    assert len(bundle.train) == 10 and len(bundle.val) == 6 and bundle.num_classes == 10
    assert (bundle.mean, bundle.std) == NORMALIZATION["mnist"]
    x, y = bundle.val[5]
    assert y == 5
    assert torch.allclose((x[0] * bundle.std[0] + bundle.mean[0]) * 255, torch.from_numpy(test_images[5]).float(),
                          atol=1e-3)


def test_mnist_to_rgb_and_fashion_folder(tmp_path):
    write_mnist(tmp_path / "FashionMNIST" / "raw")
    bundle = load_data(str(tmp_path / "FashionMNIST"), channels=3)
    assert bundle.kind == "fashionmnist" and bundle.class_names[0] == "T-shirt/top"
    assert bundle.input_size == (3, 28, 28) and len(bundle.mean) == 3
    x, _ = bundle.val[0]
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_mnist_errors(tmp_path):
    folder = tmp_path / "digits"
    write_mnist(folder)
    (folder / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(StudioError, match="train-labels-idx1-ubyte"):
        load_data(str(folder))
    (folder / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(StudioError, match="not a valid MNIST idx file"):
        load_data(str(folder))


# ---------------------------------------------------------------------------- synthetic

def test_synthetic_defaults_and_options():
    bundle = load_data("synthetic")
    assert bundle.kind == "synthetic" and bundle.num_classes == 10
    assert len(bundle.train) == 256 and len(bundle.val) == 128 and bundle.input_size == (3, 32, 32)
    small = load_data("synthetic:classes=3, size=1x12x10, train=0, val=9, seed=4")
    assert small.train is None and len(small.val) == 9 and small.input_size == (1, 12, 10)
    assert sorted(small.val.targets) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert load_data("synthetic:size=16").input_size == (3, 16, 16)
    assert load_data("synthetic:classes=2,train=4,val=4", input_size=(3, 8, 8)).input_size == (3, 8, 8)


def test_synthetic_is_deterministic_per_seed():
    a = load_data("synthetic:train=16,val=8,seed=3")
    b = load_data("synthetic:train=16,val=8,seed=3")
    c = load_data("synthetic:train=16,val=8,seed=4")
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.labels, b.train.labels)
    assert not torch.equal(a.val.images, c.val.images)


def test_synthetic_is_learnable_by_a_tiny_model():
    torch.manual_seed(0)
    bundle = load_data("synthetic:classes=10,size=3x16x16,train=512,val=256")
    model = torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 10))
    # One epoch of plain SGD by hand: torch.optim's first step pulls in the compiler stack.
    for x, y in make_loader(bundle.train, 64, shuffle=True):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for param in model.parameters():
                param -= 0.5 * param.grad
    x, y = next(iter(make_loader(bundle.val, 256, shuffle=False)))
    accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.8


@pytest.mark.parametrize("spec, message", [
    ("synthetic:colors=3", "not a synthetic data option"),
    ("synthetic:classes=ten", "not a whole number"),
    ("synthetic:classes=1", "at least 2 classes"),
    ("synthetic:size=3x32x32x2", "not understood"),
    ("synthetic:val=0", "val >= 1"),
])
def test_synthetic_spec_errors(spec, message):
    with pytest.raises(StudioError, match=message):
        load_data(spec)


# ---------------------------------------------------------------------------- npz / demo

def test_npz_with_and_without_class_names(tmp_path):
    bundle = load_data(str(write_npz(tmp_path / "colours.npz")))
    assert bundle.kind == "npz" and bundle.class_names == ["red", "green", "blue"]
    assert len(bundle.train) == 9 and len(bundle.val) == 6 and bundle.input_size == (3, 16, 16)
    assert (bundle.mean, bundle.std) == NORMALIZATION["imagenet"]
    bare = load_data(str(write_npz(tmp_path / "bare.npz", class_names=False, train=False, size=(16, 16))))
    assert bare.class_names == ["0", "1", "2"] and bare.train is None and bare.input_size == (1, 16, 16)


def test_npz_errors(tmp_path):
    with pytest.raises(StudioError, match="not uint8"):
        load_data(str(write_npz(tmp_path / "float.npz", dtype=np.float32)))
    np.savez(tmp_path / "nokeys.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(StudioError, match="x_test and y_test"):
        load_data(str(tmp_path / "nokeys.npz"))
    np.savez(tmp_path / "objects.npz", x_test=np.zeros((2, 4, 4, 3), np.uint8), y_test=np.array([0, 1]),
             class_names=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(StudioError, match="Python objects"):
        load_data(str(tmp_path / "objects.npz"))
    np.savez(tmp_path / "labels.npz", x_test=np.zeros((2, 4, 4, 3), np.uint8), y_test=np.array([0, 5]),
             class_names=np.array(["a", "b"]))
    with pytest.raises(StudioError, match="labels outside 0..1"):
        load_data(str(tmp_path / "labels.npz"))
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(StudioError, match="not a valid .npz"):
        load_data(str(tmp_path / "broken.npz"))


def test_demo_missing_says_how_to_rebuild(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "demo_path", lambda: tmp_path / "nope" / "cifar10_subset.npz")
    with pytest.raises(StudioError, match="make demo"):
        load_data("demo")


def test_demo_loads_from_its_path(tmp_path, monkeypatch):
    path = write_npz(tmp_path / "cifar10_subset.npz")
    monkeypatch.setattr(sources, "demo_path", lambda: path)
    bundle = load_data("demo")
    assert bundle.kind == "demo" and bundle.num_classes == 3


def test_demo_path_is_the_installed_resource():
    """The subset is read from the installed package studio.resources (the checkout's resources/)."""
    from studio.engine import demo_files
    path = sources.demo_path()
    assert path == demo_files.demo_file(demo_files.SUBSET) and path.is_file()
    assert path.parts[-2:] == ("demo", "cifar10_subset.npz")


# ---------------------------------------------------------------------------- errors

def test_missing_path_and_unsupported_file(tmp_path):
    with pytest.raises(StudioError, match="does not exist") as err:
        load_data(str(tmp_path / "nothing-here"))
    assert err.value.fix
    with pytest.raises(StudioError, match="download_dataset"):
        load_data("cifar10")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(StudioError, match="not a supported data file"):
        load_data(str(tmp_path / "notes.txt"))


def test_empty_and_imageless_folders(tmp_path, make_imagefolder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudioError, match="is empty"):
        load_data(str(tmp_path / "empty"))
    (tmp_path / "textonly").mkdir()
    (tmp_path / "textonly" / "readme.txt").write_text("x")
    with pytest.raises(StudioError, match="has no images"):
        load_data(str(tmp_path / "textonly"))
    loose = make_imagefolder("loose", classes=("a",), per_class=2, splits=())
    for f in (loose / "a").iterdir():
        f.rename(loose / f.name)
    (loose / "a").rmdir()
    with pytest.raises(StudioError, match="not in class folders"):
        load_data(str(loose))


def test_split_folder_without_images(make_imagefolder):
    root = make_imagefolder("noval", per_class=1, splits=("train",))
    (root / "val").mkdir()
    with pytest.raises(StudioError, match="val has no images"):
        load_data(str(root))
    for cls in ("cat", "dog", "frog"):
        (root / "val" / cls).mkdir()
    with pytest.raises(StudioError, match="Class folder .*cat has no images"):
        load_data(str(root))
    only_train = make_imagefolder("onlytrain", per_class=1, splits=("train",))
    with pytest.raises(StudioError, match="no val/ or test/ folder"):
        load_data(str(only_train))


def test_corrupt_image_is_named(synthetic_imagefolder):
    bad = synthetic_imagefolder / "train" / "dog" / "0003.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    with pytest.raises(StudioError, match="0003.png") as err:
        load_data(str(synthetic_imagefolder))
    assert "replace" in err.value.fix.lower()


def test_truncated_jpeg_is_named(make_imagefolder):
    root = make_imagefolder("trunc", splits=(), per_class=2, fmt="jpg")
    bad = root / "dog" / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(StudioError, match="0001.jpg"):
        load_data(str(root))


def test_class_mismatch_names_the_difference(make_imagefolder):
    root = make_imagefolder("mm", classes=("cat", "dog", "frog"), per_class=1, splits=("train",))
    make_imagefolder(root.name, classes=("cat", "dog", "horse"), per_class=1, splits=("val",))
    with pytest.raises(StudioError, match=r"only in train/: frog; only in val/: horse"):
        load_data(str(root))


def test_fewer_than_two_classes(make_imagefolder):
    root = make_imagefolder("one", classes=("cat",), per_class=2)
    with pytest.raises(StudioError, match="at least 2"):
        load_data(str(root))


def test_bad_channels_and_input_size():
    with pytest.raises(StudioError, match="channels=4"):
        load_data("synthetic", channels=4)
    with pytest.raises(StudioError, match="contradicts"):
        load_data("synthetic", channels=1, input_size=(3, 32, 32))
    with pytest.raises(StudioError, match="Input size"):
        load_data("synthetic", input_size=(3, 0, 32))


def test_check_compatible():
    bundle = load_data("synthetic:classes=100,train=0,val=100,size=3x32x32")
    check_compatible(bundle, num_classes=100, input_size=(3, 32, 32))
    with pytest.raises(StudioError) as err:
        check_compatible(bundle, num_classes=10, input_size=(3, 32, 32))
    assert "The data has 100 classes but the model's head outputs 10" in str(err.value)
    assert "--num-classes 100" in err.value.fix
    with pytest.raises(StudioError, match="3 channels but the model expects 1") as err:
        check_compatible(bundle, num_classes=100, input_size=(1, 32, 32))
    assert "channels=1" in err.value.fix
    with pytest.raises(StudioError, match="model expects 3x224x224") as err:
        check_compatible(bundle, num_classes=100, input_size=(3, 224, 224))
    assert "adaptive pooling" in err.value.fix and "224x224" in err.value.fix


# ---------------------------------------------------------------------------- loaders

def _order(loader) -> list[int]:
    return [int(v) for _, y in loader for v in y]


def test_make_loader_order_depends_on_seed():
    images = torch.zeros((40, 1, 4, 4), dtype=torch.uint8)
    ds = TensorImageDataset(images, torch.arange(40), [str(i) for i in range(40)], (0.0,), (1.0,))
    first = _order(make_loader(ds, 8, shuffle=True, seed=7))
    assert first == _order(make_loader(ds, 8, shuffle=True, seed=7))
    assert first != _order(make_loader(ds, 8, shuffle=True, seed=8))
    assert sorted(first) == list(range(40))
    assert _order(make_loader(ds, 8, shuffle=False)) == list(range(40))
    assert len(make_loader(ds, 16, shuffle=False, drop_last=True)) == 2
    x, y = next(iter(make_loader(ds, 8, shuffle=False)))
    assert x.shape == (8, 1, 4, 4) and y.dtype == torch.int64
    with pytest.raises(StudioError, match="Batch size 0"):
        make_loader(ds, 0, shuffle=True)


def test_make_loader_distributed(tmp_path):
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ds = TensorImageDataset(torch.zeros((20, 1, 2, 2), dtype=torch.uint8), torch.arange(20),
                                [str(i) for i in range(20)], (0.0,), (1.0,))
        loader = make_loader(ds, 5, shuffle=True, seed=3, distributed=True)
        assert isinstance(loader.sampler, DistributedSampler)
        loader.sampler.set_epoch(0)
        epoch0 = _order(loader)
        assert epoch0 == _order(make_loader(ds, 5, shuffle=True, seed=3, distributed=True))
        loader.sampler.set_epoch(1)
        assert sorted(_order(loader)) == list(range(20)) and _order(loader) != epoch0
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------- download

def test_download_unknown_name(tmp_path):
    with pytest.raises(StudioError, match="Unknown dataset 'imagenet'"):
        download_dataset("imagenet", str(tmp_path))


def test_download_offline_says_where_to_put_files(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(StudioError, match="no internet") as err:
        download_dataset("CIFAR-10", str(tmp_path / "cifar"))
    assert str(tmp_path / "cifar" / "cifar-10-batches-py") in err.value.fix
    assert "\n" not in str(err.value)


def test_download_returns_a_loadable_spec(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def fake_mnist(root, train, download):
        folder = Path(root) / "MNIST" / "raw"
        if not folder.exists():
            write_mnist(folder, gz=True)

    monkeypatch.setattr(tvd, "MNIST", fake_mnist)
    spec = download_dataset("mnist", str(tmp_path / "mn"))
    assert load_data(spec).kind == "mnist"


# ---------------------------------------------------------------------------- the real CIFAR-10 copy

@pytest.mark.shared_data
def test_shared_cifar10_test_split(shared_cifar_test_dir):
    start = time.perf_counter()
    bundle = load_data(str(shared_cifar_test_dir))
    seconds = time.perf_counter() - start
    print(f"decoded the CIFAR-10 test split in {seconds:.2f} s")
    assert bundle.num_classes == 10 and bundle.class_names == sources.CIFAR10_CLASSES
    assert len(bundle.val) == 10_000 and bundle.input_size == (3, 32, 32)
    assert bundle.name == "CIFAR-10" and bundle.val.targets.count(3) == 1000
    assert (bundle.mean, bundle.std) == NORMALIZATION["cifar10"]
    x, _ = next(iter(make_loader(bundle.val, 1000, shuffle=True)))   # the split is sorted by class
    # Normalized with CIFAR statistics, a real batch is roughly zero-mean, unit-variance.
    assert abs(x.mean().item()) < 0.3 and 0.7 < x.std().item() < 1.3
