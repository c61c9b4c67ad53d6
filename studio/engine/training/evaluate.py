"""Evaluation: top-1/top-5 accuracy and mean cross-entropy over a dataset or loader, also under DDP."""
from __future__ import annotations

from typing import Any, Generator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from studio.engine.errors import StudioError
from studio.engine.events import NEVER_CANCELLED, CancelToken, Phase, Progress
from studio.engine.training.config import EvalResult
from studio.engine.training.devices import is_oom, model_device, oom_error, select_device, uses_channels_last
from studio.engine.training.distributed import is_distributed, unwrap


def check_not_empty(data: Any, what: str) -> None:
    try:
        n = len(data)
    except TypeError:
        return  # an iterable-style source: its length is only known once it is read
    if n == 0:
        raise StudioError(f"The {what} data is empty.", "Check the data folder, split or subset size.")


def logits_of(output: Any) -> torch.Tensor:
    # Some torchvision models return (logits, aux) tuples in train mode; the first is the answer.
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def eval_loop(model: nn.Module, loader: Any, device: torch.device, token: CancelToken,
               max_batches: Optional[int], phase: str, batch_size: int,
               distributed: bool = False) -> Generator[Any, None, EvalResult]:
    """Evaluate ``model`` over ``loader``; yields Progress.

    With ``distributed`` every rank must call this on its share of the data: the sums are
    all-reduced so each rank returns the numbers of the whole set.
    """
    net = unwrap(model)
    was_training = net.training
    net.eval()
    channels_last = uses_channels_last(net)
    total = len(loader) if hasattr(loader, "__len__") else 0
    if max_batches is not None:
        total = min(total, max_batches) if total else max_batches
    # Sums stay on the device so evaluation costs one host sync at the very end; the
    # image count is known on the host and joins them only for the all-reduce.
    sums = torch.zeros(3, dtype=torch.float64, device=device)   # loss, top-1 hits, top-5 hits
    samples = 0
    non_blocking = device.type == "cuda"
    try:
        with torch.inference_mode():
            for i, (x, y) in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                token.check(phase)
                x = x.to(device, non_blocking=non_blocking)
                if channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = y.to(device, non_blocking=non_blocking).long()
                try:
                    logits = logits_of(net(x)).float()
                except RuntimeError as exc:
                    if is_oom(exc):
                        raise oom_error(exc, batch_size, "evaluation") from exc
                    raise
                k = min(5, logits.shape[1])
                top = logits.topk(k, dim=1).indices
                hits = top.eq(y[:, None])
                sums += torch.stack((F.cross_entropy(logits, y, reduction="sum").double(),
                                     hits[:, 0].sum().double(), hits.any(dim=1).sum().double()))
                samples += y.shape[0]
                yield Progress(phase, i + 1, total, "evaluating")
    finally:
        net.train(was_training)
    totals = torch.cat((sums, torch.tensor([float(samples)], dtype=torch.float64, device=device)))
    if distributed:
        torch.distributed.all_reduce(totals)
    loss, top1, top5, n = totals.tolist()
    n = int(round(n))
    if n == 0:
        raise StudioError("No images were evaluated.", "Check that the evaluation data is not empty.")
    return EvalResult(top1=top1 / n, top5=top5 / n, loss=loss / n, samples=n)


def eval_source(data: Any, batch_size: int, device: torch.device, workers: int = 0,
                 shard: bool = False, max_batches: Optional[int] = None) -> Any:
    """A loader for evaluation; with ``shard`` each DDP rank reads its own disjoint share of a dataset.

    With ``max_batches`` a dataset is sampled at random with a fixed seed (the same images on
    every call): validation folders are usually sorted by class, so their first batches
    would hold a single class and give a meaningless accuracy.
    """
    if isinstance(data, DataLoader) or not isinstance(data, Dataset):
        return data
    if max_batches is not None and max_batches * batch_size < len(data):
        picked = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:max_batches * batch_size]
        data = Subset(data, picked.sort().values.tolist())
    if shard:
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        data = Subset(data, range(rank, len(data), world))
    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=False)


def evaluate(model: nn.Module, dataset_or_loader: Any, *, device: Any = None, batch_size: int = 256,
             token: Optional[CancelToken] = None, max_batches: Optional[int] = None,
             phase: str = "evaluate", distributed: bool = False) -> Generator[Any, None, EvalResult]:
    """Top-1 / top-5 accuracy and mean cross-entropy of ``model`` on a dataset or DataLoader.

    The model's weights are not changed and its train/eval mode is restored afterwards;
    when ``device`` is given the model is moved there. Yields `Phase` and `Progress`.
    Under torchrun, ``distributed=True`` splits a dataset over the ranks (every rank must
    then call this); by default each process evaluates all of it on its own.
    """
    token = token or NEVER_CANCELLED
    check_not_empty(dataset_or_loader, "evaluation")
    dev = select_device(device) if isinstance(device, str) else (device or model_device(model))
    if model_device(model) != dev:
        model.to(dev)
    yield Phase(phase)
    distributed = distributed and is_distributed()
    loader = eval_source(dataset_or_loader, batch_size, dev, shard=distributed, max_batches=max_batches)
    result = yield from eval_loop(model, loader, dev, token, max_batches, phase, batch_size, distributed)
    return result
