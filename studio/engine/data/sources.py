"""Turn a data spec (folder, file or keyword) into train/val datasets the engine can feed a model.

`load_data` understands ImageFolder trees, torchvision's CIFAR-10/100 and MNIST/FashionMNIST
on-disk formats, `.npz` arrays, the bundled demo subset and a `synthetic:` generator. Small
sources are decoded once into a uint8 tensor and augmented on the fly, because on machines
with few cores decoding JPEGs every epoch costs more than the training itself.
"""
from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import struct
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from studio.engine.data.datasets import Augment, ImageFileDataset, TensorImageDataset
from studio.engine.demo_files import SUBSET as DEMO_SUBSET
from studio.engine.demo_files import demo_file, missing_demo_file
from studio.engine.errors import StudioError

# (mean, std) per channel, on pixels scaled to 0..1.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashionmnist": ((0.2860,), (0.3530,)),
}

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")

# Decoded ImageFolders above this many bytes are read from disk each epoch instead.
CACHE_LIMIT_BYTES = 2 * 1024 ** 3

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
MNIST_CLASSES = [str(d) for d in range(10)]
FASHIONMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

SYNTHETIC_DEFAULTS = {"classes": 10, "size": (3, 32, 32), "train": 256, "val": 128, "seed": 0}

# name → (torchvision class, title, how to fetch the files by hand; {root} is the target folder)
DOWNLOADABLE = {
    "cifar10": ("CIFAR10", "CIFAR-10",
                "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and "
                "extract it so that {root}/cifar-10-batches-py/ holds the batch files"),
    "cifar100": ("CIFAR100", "CIFAR-100",
                 "download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and "
                 "extract it so that {root}/cifar-100-python/ holds the train, test and meta files"),
    "mnist": ("MNIST", "MNIST",
              "download the four *-ubyte.gz files from https://ossci-datasets.s3.amazonaws.com/mnist/ "
              "and put them (gzipped or not) in {root}/MNIST/raw/"),
    "fashionmnist": ("FashionMNIST", "FashionMNIST",
                     "download the four *-ubyte.gz files from "
                     "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ "
                     "and put them (gzipped or not) in {root}/FashionMNIST/raw/"),
}

_SIZE_HELP = "Use a size like 3x32x32 (channels x height x width), 32x32 or 32."


@dataclass
class DataBundle:
    """Datasets ready for a model, with what the model must accept to use them."""
    spec: str
    kind: str
    train: Optional[Dataset]
    val: Dataset
    num_classes: int
    class_names: list[str]
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = ""
    cached: bool = True
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs and the GUI, e.g. 'CIFAR-10 (imagefolder): 10 classes, 50,000 train / 10,000 val, 3x32x32'."""
        train = f"{len(self.train):,} train" if self.train is not None else "no train split"
        size = "x".join(str(v) for v in self.input_size)
        text = (f"{self.name or self.kind} ({self.kind}): {self.num_classes} classes, "
                f"{train} / {len(self.val):,} val, {size}")
        if self.notes:
            text += " (" + "; ".join(self.notes) + ")"
        return text


# ---------------------------------------------------------------------------- datasets


# ---------------------------------------------------------------------------- entry points

def load_data(spec: str, *, input_size: Optional[tuple[int, int, int]] = None, augment: bool = True,
              cache_in_memory: Optional[bool] = None, channels: Optional[int] = None,
              progress: Optional[Callable[[int, int], None]] = None) -> DataBundle:
    """Load the data named by ``spec``: a folder, an .npz file, 'demo' or 'synthetic[:options]'.

    ``input_size`` (C,H,W) resizes the images to what a model expects; ``channels`` converts
    grayscale to RGB (replicated) or RGB to grayscale. ``cache_in_memory`` only matters for
    ImageFolders (None: cache when the decoded images fit in 2 GB); the array formats are
    always in memory. ``progress(done, total)`` is called while an ImageFolder is decoded.
    """
    spec = str(spec).strip()
    if input_size is not None:
        input_size = _check_input_size(input_size)
        if channels is not None and channels != input_size[0]:
            raise StudioError(f"channels={channels} contradicts input_size {_fmt_size(input_size)}.",
                              "Pass only one of them, or make them agree.")
        channels = input_size[0]
    if channels is not None and channels not in (1, 3):
        raise StudioError(f"channels={channels} is not supported.", "Use 1 (grayscale) or 3 (RGB).")
    out_hw = tuple(input_size[1:]) if input_size is not None else None
    opts = _Options(spec, out_hw, augment, cache_in_memory, channels, progress)

    low = spec.lower()
    if low == "synthetic" or low.startswith("synthetic:"):
        return _load_synthetic(opts)
    if low == "demo":
        return _load_demo(opts)
    if not spec:
        raise StudioError("No data was given.",
                          "Pass a dataset folder, an .npz file, 'demo' or 'synthetic'.")
    path = Path(spec).expanduser()
    if not path.exists():
        hint = ""
        if _normalize_name(spec) in DOWNLOADABLE:
            hint = (f" To get {spec}, download it first (download_dataset('{_normalize_name(spec)}', folder)"
                    " or the CLI's download command) and pass that folder.")
        raise StudioError(f"Data not found: {path} does not exist.",
                          "Check the path, or use 'demo' or 'synthetic' to try the studio." + hint)
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return _load_npz(path, opts, kind="npz", name=path.stem)
        raise StudioError(f"{path} is not a supported data file.",
                          "Pass an .npz file (x_train, y_train, x_test, y_test), an ImageFolder "
                          "folder, or a CIFAR/MNIST folder in torchvision's format.")
    return _load_folder(path, opts)


def check_compatible(bundle: DataBundle, *, num_classes: int, input_size: tuple[int, int, int]) -> None:
    """Raise a StudioError when the data cannot feed a model with this head and input size."""
    if bundle.num_classes != num_classes:
        raise StudioError(
            f"The data has {bundle.num_classes} classes but the model's head outputs {num_classes}.",
            f"Load the model with --num-classes {bundle.num_classes} (a new, untrained head) "
            "or choose data with matching classes.")
    c, h, w = bundle.input_size
    mc, mh, mw = input_size
    if c != mc:
        raise StudioError(
            f"The data has {c} channel{'s' if c != 1 else ''} but the model expects {mc}.",
            f"Load the data with channels={mc} (grayscale is replicated to RGB, RGB is converted "
            f"to grayscale) or choose a model built for {c}-channel input.")
    if (h, w) != (mh, mw):
        raise StudioError(
            f"The data is {c}x{h}x{w} but the model expects {mc}x{mh}x{mw}.",
            f"Load the data with input_size=({mc}, {mh}, {mw}) to resize it. Fully convolutional "
            f"models with adaptive pooling may still run on {h}x{w}, but they were built for "
            f"{mh}x{mw}; pass that model input size to use the data as it is.")


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, workers: int = 0,
                drop_last: bool = False, distributed: bool = False) -> DataLoader:
    """A DataLoader whose order depends only on ``seed`` (and the epoch, under DDP).

    With ``distributed`` each rank gets its share through a `DistributedSampler`; the
    training loop must call ``loader.sampler.set_epoch(epoch)`` so shuffling changes per epoch.
    """
    if batch_size < 1:
        raise StudioError(f"Batch size {batch_size} is invalid.", "Use a batch size of 1 or more.")
    if workers < 0:
        raise StudioError(f"workers={workers} is invalid.", "Use 0 (load in the main process) or more.")
    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler = None
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        shuffle = False
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                      num_workers=workers, drop_last=drop_last, generator=generator,
                      pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)


def download_dataset(name: str, root: str) -> str:
    """Download CIFAR-10/100, MNIST or FashionMNIST with torchvision; return the spec to load it."""
    key = _normalize_name(name)
    if key not in DOWNLOADABLE:
        raise StudioError(f"Unknown dataset '{name}' for download.",
                          f"Choose one of: {', '.join(DOWNLOADABLE)}.")
    import torchvision.datasets as tvd
    cls_name, title, manual = DOWNLOADABLE[key]
    root_path = Path(root).expanduser()
    try:
        root_path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StudioError(f"Cannot create folder {root_path}: {exc.strerror}.",
                          "Choose a folder you can write to.") from exc
    cls = getattr(tvd, cls_name)
    try:
        for train in (True, False):
            cls(str(root_path), train=train, download=True)
    except (OSError, RuntimeError) as exc:
        # urllib's URLError is an OSError; torchvision raises RuntimeError when every mirror failed.
        reason = " ".join(str(exc).split())   # torchvision's mirror report spans several lines
        raise StudioError(
            f"Could not download {title}: no internet connection or the server refused ({reason}).",
            f"On a machine with internet, {manual.format(root=root_path)}; then load {root_path}.") from exc
    return str(root_path)


# ---------------------------------------------------------------------------- helpers

@dataclass
class _Options:
    spec: str
    out_hw: Optional[tuple[int, int]]
    augment: bool
    cache: Optional[bool]
    channels: Optional[int]
    progress: Optional[Callable[[int, int], None]]


def _normalize_name(name: str) -> str:
    return str(name).strip().lower().replace("-", "").replace("_", "")


def _fmt_size(size: Sequence[int]) -> str:
    return "x".join(str(v) for v in size)


def _check_input_size(size) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in size)
    except (TypeError, ValueError) as exc:
        raise StudioError(f"Input size {size!r} is not channels x height x width.", _SIZE_HELP) from exc
    if min(c, h, w) < 1:
        raise StudioError(f"Input size {_fmt_size((c, h, w))} has a zero or negative dimension.", _SIZE_HELP)
    return c, h, w


def _preset(kind: str, channels: int, hw: tuple[int, int], num_classes: int):
    """Standard mean/std for the data: CIFAR presets for 32x32 RGB, MNIST for grayscale, else ImageNet."""
    if kind in ("mnist", "fashionmnist"):
        mean, std = NORMALIZATION[kind]
    elif channels == 1:
        mean, std = NORMALIZATION["mnist"]
    elif kind in ("cifar10", "cifar100"):
        mean, std = NORMALIZATION[kind]
    elif tuple(hw) == (32, 32):
        mean, std = NORMALIZATION["cifar100" if num_classes == 100 else "cifar10"]
    else:
        mean, std = NORMALIZATION["imagenet"]
    if len(mean) != channels:
        # Replicated grayscale keeps the grayscale statistics on each channel.
        mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
    return tuple(mean), tuple(std)


def _convert_channels(images: torch.Tensor, channels: Optional[int], source: str) -> torch.Tensor:
    """uint8 (N,C,H,W) → requested channel count: gray is replicated, RGB uses ITU-R 601 luma."""
    have = images.shape[1]
    if channels is None or channels == have:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * weights).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    raise StudioError(f"{source} has {have} channels, which cannot be converted to {channels}.",
                      "Use data with 1 (grayscale) or 3 (RGB) channels.")


def _default_augment(kind: str, hw: tuple[int, int]) -> Augment:
    # Digits change meaning when mirrored, so MNIST-like data only gets small shifts.
    if kind in ("mnist", "fashionmnist"):
        return Augment(pad=2, flip=False)
    return Augment(pad=max(1, min(hw) // 8), flip=True)


def _tensor_bundle(opts: _Options, kind: str, name: str, train: Optional[tuple], val: tuple,
                   class_names: list[str], notes: Optional[list[str]] = None) -> DataBundle:
    """Build a DataBundle from uint8 (images, labels) pairs already in memory."""
    notes = list(notes or [])
    num_classes = len(class_names)
    if num_classes < 2:
        raise StudioError(f"{opts.spec} has {num_classes} class; classification needs at least 2.",
                          "Add images of at least one more class.")
    parts = [p for p in (train, val) if p is not None]
    for images, labels in parts:
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise StudioError(f"{opts.spec} has labels outside 0..{num_classes - 1}.",
                              "Fix the labels or list every class in class_names.")
    src_c = val[0].shape[1]
    train = (_convert_channels(train[0], opts.channels, opts.spec), train[1]) if train is not None else None
    val = (_convert_channels(val[0], opts.channels, opts.spec), val[1])
    c, h, w = val[0].shape[1:]
    if train is not None and tuple(train[0].shape[1:]) != (c, h, w):
        raise StudioError(
            f"{opts.spec}: train images are {_fmt_size(train[0].shape[1:])} but val images are {_fmt_size((c, h, w))}.",
            "Store both splits at the same size.")
    if c != src_c:
        notes.append(f"{'gray replicated to RGB' if c == 3 else 'RGB converted to gray'}")
    out_hw = opts.out_hw if opts.out_hw is not None and opts.out_hw != (h, w) else None
    if out_hw is not None:
        notes.append(f"resized from {h}x{w}")
    final_hw = out_hw or (h, w)
    mean, std = _preset(kind, c, final_hw, num_classes)
    aug = _default_augment(kind, (h, w)) if opts.augment else None
    train_ds = (TensorImageDataset(train[0], train[1], class_names, mean, std, aug, out_hw)
                if train is not None else None)
    val_ds = TensorImageDataset(val[0], val[1], class_names, mean, std, None, out_hw)
    return DataBundle(spec=opts.spec, kind=kind, train=train_ds, val=val_ds, num_classes=num_classes,
                      class_names=list(class_names), input_size=(int(c), *map(int, final_hw)),
                      mean=mean, std=std, name=name, cached=True, notes=notes)


# ---------------------------------------------------------------------------- synthetic

def _parse_synthetic(spec: str) -> dict:
    params = dict(SYNTHETIC_DEFAULTS)
    _, _, rest = spec.partition(":")
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or key not in SYNTHETIC_DEFAULTS:
            raise StudioError(f"'{item}' is not a synthetic data option.",
                              "Use synthetic:classes=10,size=3x32x32,train=256,val=128,seed=0 (any subset).")
        if key == "size":
            params[key] = _parse_size(value)
            continue
        try:
            params[key] = int(value)
        except ValueError as exc:
            raise StudioError(f"synthetic option {key}={value} is not a whole number.",
                              f"Write it like {key}={SYNTHETIC_DEFAULTS[key]}.") from exc
    if params["classes"] < 2:
        raise StudioError(f"synthetic data needs at least 2 classes, got {params['classes']}.",
                          "Use classes=2 or more.")
    if params["val"] < 1 or params["train"] < 0:
        raise StudioError("synthetic data needs val >= 1 and train >= 0 samples.",
                          "Use e.g. train=256,val=128.")
    return params


def _parse_size(text: str) -> tuple[int, int, int]:
    try:
        dims = [int(v) for v in text.lower().split("x")]
    except ValueError as exc:
        raise StudioError(f"Size '{text}' is not understood.", _SIZE_HELP) from exc
    if len(dims) == 1:
        dims = [3, dims[0], dims[0]]
    elif len(dims) == 2:
        dims = [3, *dims]
    if len(dims) != 3 or min(dims) < 1:
        raise StudioError(f"Size '{text}' is not understood.", _SIZE_HELP)
    return tuple(dims)


def _synthetic_split(prototypes: torch.Tensor, n: int, gen: torch.Generator) -> tuple:
    """n noisy samples of the class prototypes, classes balanced and shuffled."""
    k = prototypes.shape[0]
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=gen)]
    noise = torch.randn((n, *prototypes.shape[1:]), generator=gen) * 30.0
    images = (prototypes[labels] + noise).round_().clamp_(0, 255).to(torch.uint8)
    return images, labels


def _load_synthetic(opts: _Options) -> DataBundle:
    params = _parse_synthetic(opts.spec)
    c, h, w = params["size"]
    c = opts.channels or c
    if opts.out_hw is not None:
        h, w = opts.out_hw   # generated directly at the model's size; nothing to resize
    k, n_train, n_val = params["classes"], params["train"], params["val"]
    if (n_train + n_val) * c * h * w > CACHE_LIMIT_BYTES:
        raise StudioError(f"synthetic data of {n_train + n_val:,} images at {c}x{h}x{w} would not fit in memory.",
                          "Use fewer samples or a smaller size.")
    gen = torch.Generator().manual_seed(params["seed"])
    # Smooth, mirror-symmetric class patterns: flips keep the class and small shifts barely
    # change it, so augmentation does not destroy what a tiny model has to learn.
    coarse = torch.rand((k, c, 4, 4), generator=gen)
    coarse = (coarse + coarse.flip(-1)) / 2
    coarse = (coarse - coarse.amin(dim=(1, 2, 3), keepdim=True)) / (
        coarse.amax(dim=(1, 2, 3), keepdim=True) - coarse.amin(dim=(1, 2, 3), keepdim=True) + 1e-6)
    prototypes = 40.0 + 175.0 * F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    train = _synthetic_split(prototypes, n_train, gen) if n_train > 0 else None
    val = _synthetic_split(prototypes, n_val, gen)
    sub = _Options(opts.spec, None, opts.augment, opts.cache, None, opts.progress)
    names = [f"class_{i}" for i in range(k)]
    return _tensor_bundle(sub, "synthetic", "Synthetic", train, val, names)


# ---------------------------------------------------------------------------- npz / demo

def demo_path() -> Path:
    """Where the shipped demo subset lies, installed with the studio (see `studio.engine.demo_files`)."""
    return demo_file(DEMO_SUBSET)


def _load_demo(opts: _Options) -> DataBundle:
    path = demo_path()
    if not path.is_file():
        raise missing_demo_file(path, "demo data", "`make demo` rebuilds it; or pass your own data")
    return _load_npz(path, opts, kind="demo", name="CIFAR-10 demo subset")


def _npz_images(arr: np.ndarray, key: str, path: Path) -> torch.Tensor:
    if arr.dtype != np.uint8:
        raise StudioError(f"{path.name}: {key} has dtype {arr.dtype}, not uint8.",
                          f"Store {key} as uint8 pixels 0..255, shape (N, H, W, C).")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise StudioError(f"{path.name}: {key} has shape {arr.shape}.",
                          f"Store {key} with shape (N, H, W, C) or (N, H, W).")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))


def _npz_labels(arr: np.ndarray, key: str, n: int, path: Path) -> torch.Tensor:
    arr = arr.reshape(-1) if arr.ndim == 2 and 1 in arr.shape else arr
    if arr.ndim != 1 or arr.shape[0] != n or not np.issubdtype(arr.dtype, np.integer):
        raise StudioError(f"{path.name}: {key} must hold {n:,} integer labels, found shape {arr.shape} "
                          f"of {arr.dtype}.", f"Store {key} as integers, one per image.")
    return torch.from_numpy(arr.astype(np.int64))


def _unpack_jpeg_splits(arrays: dict, path: Path) -> dict:
    """Decode JPEG-packed splits (`<split>_jpeg`, `<split>_offsets`, `<split>_labels`) into x_/y_ arrays.

    The demo subset stores the source JPEG bytes unchanged (see resources/demo/build_subset.py):
    a third of the size of raw pixels, and pixel-identical to the copy it was drawn from.
    """
    from PIL import Image
    for split in ("train", "test"):
        if f"{split}_jpeg" not in arrays:
            continue
        buf, offsets = arrays.pop(f"{split}_jpeg"), arrays.pop(f"{split}_offsets")
        images = []
        try:
            for start, stop in zip(offsets[:-1], offsets[1:]):
                with Image.open(io.BytesIO(buf[start:stop].tobytes())) as img:
                    images.append(np.asarray(img.convert("RGB")))
        except (OSError, ValueError, SyntaxError) as exc:
            raise StudioError(f"{path.name}: image {len(images)} of the {split} split is corrupt ({exc}).",
                              "Rebuild the file with resources/demo/build_subset.py.") from exc
        arrays[f"x_{split}"] = np.stack(images)
        arrays[f"y_{split}"] = arrays.pop(f"{split}_labels")
    return arrays


def _load_npz(path: Path, opts: _Options, *, kind: str, name: str) -> DataBundle:
    if not zipfile.is_zipfile(path):
        # np.load would otherwise try the file as a pickle or raw .npy and report that instead.
        raise StudioError(f"Cannot read {path}: it is not a valid .npz file.",
                          "Recreate it with numpy.savez (x_train, y_train, x_test, y_test).")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except ValueError as exc:
        raise StudioError(f"{path} holds Python objects, which are not loaded for safety ({exc}).",
                          "Save class_names as a plain string array (np.array([...], dtype=str)).") from exc
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise StudioError(f"Cannot read {path}: it is not a valid .npz file ({exc}).",
                          "Recreate it with numpy.savez.") from exc
    arrays = _unpack_jpeg_splits(arrays, path)
    val_key = "x_test" if "x_test" in arrays else "x_val" if "x_val" in arrays else None
    if val_key is None or ("y" + val_key[1:]) not in arrays:
        raise StudioError(f"{path.name} lacks evaluation arrays (found: {', '.join(sorted(arrays)) or 'nothing'}).",
                          "Store x_test and y_test (and x_train, y_train for training).")
    y_key = "y" + val_key[1:]
    val_x = _npz_images(arrays[val_key], val_key, path)
    val = (val_x, _npz_labels(arrays[y_key], y_key, val_x.shape[0], path))
    train = None
    if "x_train" in arrays:
        if "y_train" not in arrays:
            raise StudioError(f"{path.name} has x_train but no y_train.", "Store the training labels as y_train.")
        tx = _npz_images(arrays["x_train"], "x_train", path)
        train = (tx, _npz_labels(arrays["y_train"], "y_train", tx.shape[0], path))
    if "class_names" in arrays:
        class_names = [str(s) for s in arrays["class_names"].reshape(-1).tolist()]
    else:
        top = max(int(lab.max()) if lab.numel() else -1 for _, lab in filter(None, (train, val)))
        class_names = [str(i) for i in range(top + 1)]
    notes = [] if train is not None else ["no x_train: evaluation only"]
    return _tensor_bundle(opts, kind, name, train, val, class_names, notes)


# ---------------------------------------------------------------------------- CIFAR / MNIST

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays and plain containers only, never arbitrary objects."""
    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        # numpy 2 renamed numpy.core to numpy._core; CIFAR's pickles use the old name, files
        # written with numpy 2 the new one. Try the current name first to avoid its deprecation warning.
        for candidate in (module.replace("numpy.core", "numpy._core"), module.replace("numpy._core", "numpy.core")):
            try:
                return super().find_class(candidate, name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"cannot find {module}.{name}")


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as exc:
        raise StudioError(f"Cannot read {path}: {exc}.",
                          "Replace the file with one from the original CIFAR python archive.") from exc
    if not isinstance(obj, dict):
        raise StudioError(f"{path} is not a CIFAR batch (no dictionary inside).",
                          "Replace the file with one from the original CIFAR python archive.")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_images(batch: dict, path: Path) -> torch.Tensor:
    data = np.asarray(batch.get("data"))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise StudioError(f"{path}: 'data' is not an (N, 3072) uint8 array.",
                          "Replace the file with one from the original CIFAR python archive.")
    return torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, 32, 32)))


def _names(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _find_cifar(path: Path) -> Optional[tuple[str, Path]]:
    for kind, folder, marker in (("cifar10", "cifar-10-batches-py", "batches.meta"),
                                 ("cifar100", "cifar-100-python", "meta")):
        if (path / folder).is_dir():
            return kind, path / folder
        if path.name == folder or (path / marker).is_file() and (
                (path / "data_batch_1").is_file() or (path / "train").is_file()):
            return kind, path
    return None


def _load_cifar(kind: str, folder: Path, opts: _Options) -> DataBundle:
    if kind == "cifar10":
        train_files = [folder / f"data_batch_{i}" for i in range(1, 6)]
        test_file, meta_file, label_key, names_key = folder / "test_batch", folder / "batches.meta", "labels", "label_names"
        title = "CIFAR-10"
    else:
        train_files = [folder / "train"]
        test_file, meta_file, label_key, names_key = folder / "test", folder / "meta", "fine_labels", "fine_label_names"
        title = "CIFAR-100"
    present_train = [f for f in train_files if f.is_file()]
    if not test_file.is_file():
        raise StudioError(f"{folder} has no {test_file.name} file, so there is no evaluation split.",
                          f"Extract the complete {title} python archive into {folder.parent}.")
    if present_train and len(present_train) != len(train_files):
        missing = ", ".join(f.name for f in train_files if not f.is_file())
        raise StudioError(f"{folder} is an incomplete {title} copy: missing {missing}.",
                          f"Extract the complete {title} python archive into {folder.parent}.")

    def split(files: list[Path]) -> tuple:
        images, labels = [], []
        for f in files:
            batch = _read_pickle(f)
            if label_key not in batch:
                raise StudioError(f"{f} has no '{label_key}' entry.",
                                  f"Replace it with the file from the original {title} python archive.")
            images.append(_cifar_images(batch, f))
            labels.append(torch.as_tensor(np.asarray(batch[label_key], dtype=np.int64)))
        return torch.cat(images), torch.cat(labels)

    val = split([test_file])
    train = split(present_train) if present_train else None
    if meta_file.is_file():
        class_names = _names(_read_pickle(meta_file).get(names_key, []))
    else:
        class_names = CIFAR10_CLASSES if kind == "cifar10" else [str(i) for i in range(100)]
    notes = [] if train is not None else ["no training batches: evaluation only"]
    return _tensor_bundle(opts, kind, title, train, val, class_names, notes)


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_mnist(path: Path) -> Optional[tuple[str, Path]]:
    # torchvision's layout is <root>/MNIST/raw; users also point at raw/ or a plain folder.
    # The files of MNIST and FashionMNIST look alike, so the folder name tells them apart.
    candidates = [(path / sub / "raw", sub) for sub in ("MNIST", "FashionMNIST")]
    candidates += [(path / "raw", path.name), (path, path.parent.name if path.name == "raw" else path.name)]
    for folder, label in candidates:
        if _idx_file(folder, _MNIST_FILES["test"][0]) is not None:
            return ("fashionmnist" if "fashion" in label.lower() else "mnist"), folder
    return None


def _idx_file(folder: Path, stem: str) -> Optional[Path]:
    for candidate in (folder / stem, folder / (stem + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, expect_dims: int) -> np.ndarray:
    """Read an IDX file (the MNIST format): magic, dimension sizes, then uint8 data."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08 or ndim != expect_dims:
            raise ValueError("bad magic number")
        shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        if data.size != math.prod(shape):
            raise ValueError(f"expected {math.prod(shape)} values, found {data.size}")
    except (OSError, EOFError, struct.error, ValueError, gzip.BadGzipFile) as exc:
        raise StudioError(f"Cannot read {path}: not a valid MNIST idx file ({exc}).",
                          "Replace it with the original file from the MNIST archive.") from exc
    return data.reshape(shape)


def _load_mnist(kind: str, folder: Path, opts: _Options) -> DataBundle:
    title = "FashionMNIST" if kind == "fashionmnist" else "MNIST"

    def split(name: str) -> Optional[tuple]:
        img_file, lab_file = (_idx_file(folder, stem) for stem in _MNIST_FILES[name])
        if img_file is None and lab_file is None:
            return None
        if img_file is None or lab_file is None:
            missing = _MNIST_FILES[name][0 if img_file is None else 1]
            raise StudioError(f"{folder} lacks {missing} (or {missing}.gz).",
                              f"Put all four {title} files in {folder}.")
        images, labels = _read_idx(img_file, 3), _read_idx(lab_file, 1)
        if images.shape[0] != labels.shape[0]:
            raise StudioError(f"{img_file.name} has {images.shape[0]:,} images but {lab_file.name} "
                              f"has {labels.shape[0]:,} labels.", f"Replace them with the original {title} files.")
        return (torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))

    val = split("test")
    train = split("train")
    names = FASHIONMNIST_CLASSES if kind == "fashionmnist" else MNIST_CLASSES
    notes = [] if train is not None else ["no training files: evaluation only"]
    return _tensor_bundle(opts, kind, title, train, val, list(names), notes)


# ---------------------------------------------------------------------------- ImageFolder

def _visible_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _scan_classes(split_dir: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Class folders of one split and their image files, like torchvision's ImageFolder."""
    classes = [p.name for p in _visible_dirs(split_dir)]
    loose = [p.name for p in split_dir.iterdir() if p.is_file() and _is_image(p.name)]
    if not classes:
        if loose:
            raise StudioError(f"{split_dir} holds images directly, not in class folders.",
                              f"Put each class's images in its own subfolder, e.g. {split_dir}/cat/001.jpg.")
        raise StudioError(f"{split_dir} has no images.",
                          "Add one subfolder per class with its images (.jpg, .png, ...).")
    samples: list[tuple[str, int]] = []
    for label, cls in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(split_dir / cls, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found += [os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f)]
        if not found:
            raise StudioError(f"Class folder {split_dir / cls} has no images.",
                              "Add its images (.jpg, .png, ...) or remove the empty folder.")
        samples += [(f, label) for f in found]
    return classes, samples


def _load_folder(path: Path, opts: _Options) -> DataBundle:
    found = _find_cifar(path)
    if found is not None:
        return _load_cifar(found[0], found[1], opts)
    found = _find_mnist(path)
    if found is not None:
        return _load_mnist(found[0], found[1], opts)
    try:
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    except OSError as exc:
        raise StudioError(f"Cannot open folder {path}: {exc.strerror}.",
                          "Check that the folder is readable.") from exc
    if not entries:
        raise StudioError(f"The folder {path} is empty.",
                          "Put the images there in train/ and val/ subfolders with one folder per class.")
    names = {p.name.lower(): p for p in entries if p.is_dir()}
    # A folder named train/val/test is a split unless it holds images itself (then it is a class).
    splits = {k: names[k] for k in ("train", "val", "test")
              if k in names and not any(_is_image(f.name) for f in names[k].iterdir())}
    if splits:
        val_dir = splits.get("val") or splits.get("test")
        if val_dir is None:
            raise StudioError(f"{path} has a train/ folder but no val/ or test/ folder.",
                              "Add a val/ folder with the same class folders, or pass the train/ "
                              "folder itself to use it as evaluation data only.")
        train_dir = splits.get("train")
        return _load_imagefolder(path, train_dir, val_dir, opts)
    return _load_imagefolder(path, None, path, opts)


def _load_imagefolder(root: Path, train_dir: Optional[Path], val_dir: Path, opts: _Options) -> DataBundle:
    classes, val_samples = _scan_classes(val_dir)
    train_samples = None
    if train_dir is not None:
        train_classes, train_samples = _scan_classes(train_dir)
        if train_classes != classes:
            only_train = sorted(set(train_classes) - set(classes))
            only_val = sorted(set(classes) - set(train_classes))
            diff = "; ".join(filter(None, [
                f"only in {train_dir.name}/: {', '.join(only_train)}" if only_train else "",
                f"only in {val_dir.name}/: {', '.join(only_val)}" if only_val else ""]))
            raise StudioError(f"The class folders of {train_dir.name}/ and {val_dir.name}/ differ ({diff}).",
                              "Give both splits the same class folders (an empty class is not allowed).")
    if len(classes) < 2:
        raise StudioError(f"{val_dir} has only {len(classes)} class folder ({classes[0]}); "
                          "classification needs at least 2.",
                          "Add a folder per class, or point at the parent folder if this is one class of many.")
    mode = "L" if opts.channels == 1 else "RGB"
    channels = 1 if mode == "L" else 3
    notes = []
    if train_dir is None:
        notes.append(f"no train/ split: {val_dir.name} used for evaluation only")
    elif val_dir.name.lower() == "test":
        notes.append("test/ used as validation split")
    name = "CIFAR-10" if classes == CIFAR10_CLASSES else root.name
    all_samples = (train_samples or []) + val_samples
    first_hw = _image_hw(all_samples[0][0])
    target_hw = opts.out_hw or first_hw
    decoded_bytes = len(all_samples) * channels * target_hw[0] * target_hw[1]
    cache = opts.cache if opts.cache is not None else decoded_bytes <= CACHE_LIMIT_BYTES
    if not cache:
        return _uncached_imagefolder(opts, name, classes, train_samples, val_samples, mode, first_hw, notes)

    images, resized = _decode_all([p for p, _ in all_samples], target_hw, mode, opts.progress)
    if resized:
        notes.append(f"{resized:,} images resized to {target_hw[0]}x{target_hw[1]}")
    labels = torch.tensor([label for _, label in all_samples], dtype=torch.int64)
    n_train = len(train_samples or [])
    train = (images[:n_train], labels[:n_train]) if train_samples else None
    val = (images[n_train:], labels[n_train:])
    # Images were decoded in the requested mode and size, so nothing is left to convert.
    sub = _Options(opts.spec, None, opts.augment, opts.cache, None, opts.progress)
    return _tensor_bundle(sub, "imagefolder", name, train, val, classes, notes)


def _image_hw(path: str) -> tuple[int, int]:
    from PIL import Image
    try:
        with Image.open(path) as img:
            w, h = img.size
    except (OSError, ValueError, SyntaxError) as exc:
        raise StudioError(f"Cannot read image {path}: {exc}.",
                          "Delete or replace that file, then load the data again.") from exc
    return h, w


def _decode_all(paths: list[str], hw: tuple[int, int], mode: str,
                progress: Optional[Callable[[int, int], None]]) -> tuple[torch.Tensor, int]:
    """Decode every image once into a uint8 (N,C,H,W) tensor; returns it and how many were resized."""
    from PIL import Image
    h, w = hw
    channels = 1 if mode == "L" else 3
    # Filled in (N,C,H,W) order directly: a final permute would need a second full-size copy.
    out = np.empty((len(paths), channels, h, w), dtype=np.uint8)

    def decode(start: int, stop: int) -> int:
        resized = 0
        for i in range(start, stop):
            try:
                with Image.open(paths[i]) as img:
                    if img.size != (w, h):
                        # JPEG can decode at 1/2, 1/4, 1/8 scale directly, far cheaper than full size.
                        img.draft(mode, (w, h))
                    img = img.convert(mode)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                raise StudioError(f"Cannot read image {paths[i]}: {exc}.",
                                  "Delete or replace that file, then load the data again.") from exc
            if img.size != (w, h):
                img = img.resize((w, h), Image.BILINEAR)
                resized += 1
            arr = np.asarray(img)
            out[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return resized

    chunk = 512
    ranges = [(s, min(s + chunk, len(paths))) for s in range(0, len(paths), chunk)]
    resized = 0
    # PIL releases the GIL while decoding, so threads use every core without copying data.
    pool = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)))
    try:
        futures = [pool.submit(decode, s, e) for s, e in ranges]
        for future, (_, stop) in zip(futures, ranges):
            resized += future.result()
            if progress is not None:
                progress(stop, len(paths))
    finally:
        # On a bad file, stop at once instead of decoding the rest of a large folder.
        pool.shutdown(wait=True, cancel_futures=True)
    return torch.from_numpy(out), resized


def _uncached_imagefolder(opts: _Options, name: str, classes: list[str], train_samples, val_samples,
                          mode: str, first_hw: tuple[int, int], notes: list[str]) -> DataBundle:
    """ImageNet-style pipeline reading files each epoch: RandomResizedCrop for train, resize + center crop for val."""
    from torchvision import transforms as T
    size = opts.out_hw or (min(224, *first_hw),) * 2
    channels = 1 if mode == "L" else 3
    mean, std = _preset("imagefolder", channels, size, len(classes))
    normalize = [T.ToTensor(), T.Normalize(mean, std)]
    if opts.augment:
        train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *normalize])
    else:
        train_tf = T.Compose([T.Resize(round(min(size) * 256 / 224)), T.CenterCrop(size), *normalize])
    val_tf = T.Compose([T.Resize(round(min(size) * 256 / 224)), T.CenterCrop(size), *normalize])
    train = ImageFileDataset(train_samples, classes, train_tf, mode) if train_samples else None
    val = ImageFileDataset(val_samples, classes, val_tf, mode)
    notes = notes + ["read from disk each epoch"]
    return DataBundle(spec=opts.spec, kind="imagefolder", train=train, val=val, num_classes=len(classes),
                      class_names=list(classes), input_size=(channels, *size), mean=mean, std=std,
                      name=name, cached=False, notes=notes)
