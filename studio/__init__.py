"""Compression Studio: structured pruning of PyTorch CNNs, as a desktop studio and a CLI."""

__version__ = "0.1.0"
