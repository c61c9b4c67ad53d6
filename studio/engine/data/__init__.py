"""Data: turning a data spec into datasets, and feeding them to a model.

``sources`` reads every supported format (`load_data` → `DataBundle`) and holds the
presets (normalisation, downloadable sets); ``datasets`` holds the in-memory and
file-backed datasets and their augmentation; ``device_batches`` keeps an in-memory set on
the GPU and augments it there.
"""
from studio.engine.data.datasets import Augment, ImageFileDataset, TensorImageDataset, epoch_seed
from studio.engine.data.device_batches import DeviceBatches, fits_on_device
from studio.engine.data.sources import (
                                        DOWNLOADABLE,
                                        IMAGE_EXTENSIONS,
                                        NORMALIZATION,
                                        DataBundle,
                                        check_compatible,
                                        demo_path,
                                        download_dataset,
                                        load_data,
                                        make_loader,
)

__all__ = ["Augment", "DOWNLOADABLE", "DataBundle", "DeviceBatches", "IMAGE_EXTENSIONS", "ImageFileDataset",
           "NORMALIZATION", "TensorImageDataset", "check_compatible", "demo_path", "download_dataset",
           "epoch_seed", "fits_on_device", "load_data", "make_loader"]
