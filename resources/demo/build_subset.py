"""Build the demo's CIFAR-10 subset from the full JPEG copy, deterministically.

    python resources/demo/build_subset.py ../shared/data/cifar10-jpg.tar.gz resources/demo/cifar10_subset.npz

Picks a stratified sample (default 500 training and 100 test images per class) with a fixed
seed, and stores the original JPEG bytes unchanged (no re-encoding, so pixels equal the
source copy) packed into one uint8 buffer per split with offsets. The .npz therefore loads
with `allow_pickle=False`. The same inputs always give a byte-identical file.
"""
from __future__ import annotations

import argparse
import io
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np


def read_members(tar_path: Path) -> dict:
    """{split: {class: {file name: jpeg bytes}}} for every JPEG in the archive."""
    found: dict = defaultdict(lambda: defaultdict(dict))
    with tarfile.open(tar_path, "r:gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or not parts[-1].lower().endswith(".jpg"):
                continue
            split, cls, name = parts[-3], parts[-2], parts[-1]
            found[split][cls][name] = tar.extractfile(member).read()
    return found


def pack(images: list) -> tuple:
    """Concatenate JPEG byte strings into one uint8 buffer plus N+1 offsets."""
    offsets = np.zeros(len(images) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in images])
    return np.frombuffer(b"".join(images), dtype=np.uint8), offsets


def build(tar_path: Path, out_path: Path, train_per_class: int = 500, test_per_class: int = 100,
          seed: int = 0) -> dict:
    """Write the subset; return counts and the output size."""
    members = read_members(tar_path)
    if "train" not in members or "test" not in members:
        raise SystemExit(f"{tar_path} does not hold train/ and test/ folders")
    classes = sorted(members["train"])
    rng = np.random.default_rng(seed)
    arrays = {"class_names": np.array(classes)}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        images, labels = [], []
        for label, cls in enumerate(classes):
            names = sorted(members[split][cls])
            for i in sorted(rng.choice(len(names), size=per_class, replace=False)):
                images.append(members[split][cls][names[i]])
                labels.append(label)
        arrays[f"{split}_jpeg"], arrays[f"{split}_offsets"] = pack(images)
        arrays[f"{split}_labels"] = np.array(labels, dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)   # JPEG bytes do not compress further, so plain savez
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".part")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(out_path)
    return {"train": len(arrays["train_labels"]), "test": len(arrays["test_labels"]),
            "bytes": out_path.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tar", type=Path, help="cifar10-jpg.tar.gz")
    parser.add_argument("out", type=Path, help="output .npz")
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build(args.tar, args.out, args.train_per_class, args.test_per_class, args.seed))


if __name__ == "__main__":
    main()
