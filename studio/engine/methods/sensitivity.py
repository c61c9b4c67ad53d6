"""Sensitivity analysis: how much top-1 each coupled group loses when only it is pruned.

For every prunable group (torch-pruning's coupled channels, the classifier head excluded)
the channels are ranked once by the chosen criterion, then the group alone is pruned at
each rate of a grid (default 0.1 … 0.9) and the model is scored on a fixed calibration
split: top-1 and loss, with no training. The result holds one curve per group plus a
non-increasing fit (isotonic regression), as plain data, so the target search, the report
and the window's heat overlay read the same numbers.

The work is shared: the dependency graph is traced once, channels are scored once per
group, and a probe zeroes the removed channels and writes them back afterwards
(`studio.engine.pruning.masks`) instead of copying the model; groups where zeroing is
not exact are pruned for real on a copy. Results are cached under a key of the weights,
criterion, data, grid and calibration size, so a second search on the same model reuses
them.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Generator, Optional

import numpy as np
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from studio.engine.errors import StudioError
from studio.engine.events import NEVER_CANCELLED, CancelToken, Log, Phase, Progress
from studio.engine.files import cache_dir, write_text
from studio.engine.methods.base import Method, MethodInput, MethodResult, Option, register
from studio.engine.methods.probe_runner import ProbeRunner
from studio.engine.pruning import CRITERIA, get_criterion
from studio.engine.pruning.groups import group_members, prunable_groups
from studio.engine.pruning.masks import zeroed, zeroing_plan
from studio.engine.pruning.plan import kept_channels
from studio.engine.pruning.surgery import prepare_scores
from studio.engine.training import is_main_process

CACHE_FORMAT = "studio-sensitivity-1"
DEFAULT_RATES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
FILE_NAME = "sensitivity.json"


@dataclass
class GroupCurve:
    """One coupled group's probes: top-1 and loss with only this group pruned at each rate."""
    root: str                      # the layer torch-pruning ranks the group by
    layers: list                   # every conv/linear whose output channels go with it
    channels: int
    kept: list                     # channels kept at each rate of the grid
    top1: list                     # 0..1 at each rate
    loss: list
    fit: list                      # top-1, made non-increasing in the rate (isotonic regression)
    fit_base: float = 1.0          # the fit at rate 0 (about the unpruned model's top-1)
    probed_by: str = "zeroing"     # 'zeroing' or 'surgery' (see module docstring)

    def predicted_top1(self, rates: list, rate: float) -> float:
        """Top-1 the fit predicts at ``rate`` (linear between grid points; rate 0 is the baseline)."""
        return float(np.interp(rate, [0.0, *rates], [self.fit_base, *self.fit]))


@dataclass
class SensitivityResult:
    """Per-group curves for one model, criterion, grid and calibration split."""
    criterion: str
    rates: list
    images: int
    base_top1: float
    base_loss: float
    groups: list = field(default_factory=list)      # GroupCurve
    seconds: float = 0.0
    probes: int = 0
    key: str = ""

    @property
    def seconds_per_probe(self) -> float:
        return self.seconds / self.probes if self.probes else 0.0

    def curve_of(self, layer: str) -> Optional[GroupCurve]:
        """The curve of the group that ``layer`` belongs to (any member), or None."""
        return next((g for g in self.groups if layer in g.layers), None)

    def drop(self, group: GroupCurve, rate: float) -> float:
        """Predicted top-1 loss (0..1) of pruning ``group`` alone at ``rate``."""
        return max(0.0, self.base_top1 - group.predicted_top1(self.rates, rate))

    def to_dict(self) -> dict:
        return {"format": CACHE_FORMAT, "criterion": self.criterion, "rates": list(self.rates),
                "images": self.images, "base_top1": self.base_top1, "base_loss": self.base_loss,
                "seconds": self.seconds, "probes": self.probes,
                "seconds_per_probe": round(self.seconds_per_probe, 4), "key": self.key,
                "groups": [asdict(g) for g in self.groups]}

    @classmethod
    def from_dict(cls, d: dict) -> "SensitivityResult":
        if not isinstance(d, dict) or d.get("format") != CACHE_FORMAT:
            raise StudioError("This is not a sensitivity file the studio wrote, or it is damaged.",
                              "Delete it and run the analysis again.")
        return cls(criterion=d["criterion"], rates=list(d["rates"]), images=int(d["images"]),
                   base_top1=float(d["base_top1"]), base_loss=float(d["base_loss"]),
                   groups=[GroupCurve(**g) for g in d["groups"]], seconds=float(d["seconds"]),
                   probes=int(d["probes"]), key=d.get("key", ""))


# --------------------------------------------------------------------------- inputs

def check_rates(rates) -> list[float]:
    """A sorted grid of rates strictly inside (0, 1)."""
    try:
        grid = sorted({round(float(r), 6) for r in rates})
    except (TypeError, ValueError):
        grid = []
    if not grid or any(not 0 < r < 1 for r in grid):
        raise StudioError(f"The sensitivity rates {rates!r} must be shares of channels strictly between 0 and 1.",
                          "Use for example 0.1,0.2,...,0.9.")
    return grid


def calibration_split(dataset, images: int, batch_size: int, seed: int = 0) -> list:
    """A fixed random subset of ``dataset`` as (x, y) batches, loaded once (the same on every call)."""
    n = len(dataset)
    if n == 0:
        raise StudioError("The calibration data is empty.", "Check the data's validation split.")
    picked = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:min(images, n)].sort().values
    batches, xs, ys = [], [], []
    for i in picked.tolist():
        x, y = dataset[i]
        xs.append(x)
        ys.append(int(y))
        if len(xs) == batch_size:
            batches.append((torch.stack(xs), torch.tensor(ys)))
            xs, ys = [], []
    if xs:
        batches.append((torch.stack(xs), torch.tensor(ys)))
    return batches


def weights_hash(model: nn.Module) -> str:
    """A digest of the model's parameters and buffers (names, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        digest.update(str((tuple(t.shape), t.dtype)).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def cache_key(model: nn.Module, criterion: str, rates: list, images: int, data_id: str,
              input_size, round_to: Optional[int]) -> str:
    """What a cached analysis must match to be reused."""
    parts = [CACHE_FORMAT, weights_hash(model), criterion, ",".join(f"{r:g}" for r in rates), str(images),
             data_id, "x".join(map(str, input_size)), str(round_to)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


# --------------------------------------------------------------------------- probes

def _score(model: nn.Module, batches: list) -> tuple[float, float]:
    """(top-1, mean cross-entropy) over the calibration batches."""
    hits = loss = n = 0.0
    with torch.inference_mode():
        for x, y in batches:
            logits = model(x)
            logits = logits[0] if isinstance(logits, (tuple, list)) else logits
            loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            hits += float((logits.argmax(1) == y).sum())
            n += len(y)
    return hits / n, loss / n


def _fit(rates: list, top1: list, base: float) -> tuple[float, list]:
    """Non-increasing least-squares fit of top-1 against rate, the baseline at rate 0 included."""
    from sklearn.isotonic import IsotonicRegression  # scikit-learn: a well-kept PAV implementation
    fitted = IsotonicRegression(increasing=False).fit_transform([0.0, *rates], [base, *top1])
    return float(fitted[0]), [float(v) for v in fitted[1:]]


def _probe_by_surgery(base: nn.Module, example: torch.Tensor, root: str, idxs: list, batches: list):
    """Prune a copy for real (for groups where zeroing is not exact) and score it."""
    work = copy.deepcopy(base)
    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(work, example_inputs=example, verbose=False)
    layer = dict(work.named_modules())[root]
    dg.get_pruning_group(layer, dg.get_pruner_of_module(layer).prune_out_channels, idxs).prune()
    return _score(work.eval(), batches)


def analyse(model: nn.Module, input_size, batches: list, *, criterion: str = "l1",
            rates=DEFAULT_RATES, round_to: Optional[int] = None, token: CancelToken = NEVER_CANCELLED,
            ) -> Generator[object, None, SensitivityResult]:
    """Probe every prunable group of a copy of ``model`` at every rate; yields Progress per probe.

    ``batches`` is the calibration split as (x, y) CPU batches (see `calibration_split`).
    ``model`` is never changed.
    """
    rates = check_rates(rates)
    crit = get_criterion(criterion)
    started = time.perf_counter()
    work = copy.deepcopy(model).cpu().eval()
    example = torch.randn(1, *input_size)
    yield Phase("sensitivity", f"Tracing the coupled groups and ranking channels by {crit.title}")
    dg, groups = prunable_groups(work, example)
    if not groups:
        raise StudioError("The model has no prunable groups to analyse.",
                          "Check `studio inspect` for the reasons (tracing hazards, protected heads).")
    # Channels are ranked once per group, before any probe zeroes a weight (Taylor reads gradients).
    importance = crit.make()
    prepare_scores(importance, crit, work, batches[:4], None)
    rankings = [importance(group) for group in groups]
    work.zero_grad(set_to_none=True)
    names = {m: n for n, m in work.named_modules()}
    runner = ProbeRunner(work, batches)
    base_top1, base_loss = _score(work, batches)
    yield Log(f"Sensitivity: {len(groups)} groups × {len(rates)} rates on {sum(len(y) for _, y in batches)} "
              f"images; unpruned top-1 {base_top1:.2%}.")
    curves, total, done = [], len(groups) * len(rates), 0
    for group, scores in zip(groups, rankings):
        root_module = group[0].dep.target.module
        root, layers = group_members(dg, group, names)
        channels = len(group[0].idxs)
        order = (torch.argsort(scores.detach().float().cpu()).tolist() if scores is not None
                 else list(range(channels)))
        # Every probe of this group changes only its members: the forward pass up to the first
        # of them is computed once (ProbeRunner).
        changed = {names[dep.target.module] for dep, _ in group.items
                   if isinstance(dep.target.module, nn.Module) and dep.target.module in names
                   and any(True for _ in dep.target.module.parameters(recurse=False))}
        score = runner.scorer(changed)
        top1, loss, kept, probed_by = [], [], [], "zeroing"
        for rate in rates:
            token.check("sensitivity")
            keep = max(1, kept_channels(channels, rate, round_to))
            removed = sorted(order[:channels - keep])
            if removed:
                sub = dg.get_pruning_group(root_module, dg.get_pruner_of_module(root_module).prune_out_channels,
                                           removed)
                plan = zeroing_plan(dg, sub)
                if plan is None:
                    probed_by = "surgery"
                    acc, ce = _probe_by_surgery(work, example, root, removed, batches)
                else:
                    with zeroed(plan):
                        acc, ce = score()
            else:
                acc, ce = base_top1, base_loss
            top1.append(acc)
            loss.append(ce)
            kept.append(keep)
            done += 1
            yield Progress("sensitivity", done, total, f"{root} at {rate:.0%}: top-1 {acc:.1%}")
        fit_base, fit = _fit(rates, top1, base_top1)
        curves.append(GroupCurve(root=root, layers=layers, channels=channels, kept=kept, top1=top1,
                                 loss=loss, fit=fit, probed_by=probed_by, fit_base=fit_base))
    seconds = round(time.perf_counter() - started, 3)   # as stored, so a reloaded result is equal
    result = SensitivityResult(criterion=criterion, rates=rates, images=sum(len(y) for _, y in batches),
                               base_top1=base_top1, base_loss=base_loss, groups=curves, seconds=seconds,
                               probes=total)
    yield Log(f"Sensitivity analysis: {total} probes in {seconds:.1f} s ({result.seconds_per_probe * 1000:.0f} ms each).")
    return result


# --------------------------------------------------------------------------- cache

def _cached(path: Path, key: str) -> Optional[SensitivityResult]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    try:
        return SensitivityResult.from_dict(data)
    except (StudioError, KeyError, TypeError, ValueError):
        return None


def load_or_analyse(model: nn.Module, input_size, batches: list, *, data_id: str, criterion: str = "l1",
                    rates=DEFAULT_RATES, round_to: Optional[int] = None, work_dir: Optional[Path] = None,
                    token: CancelToken = NEVER_CANCELLED) -> Generator[object, None, SensitivityResult]:
    """`analyse`, unless a result with the same key is in ``work_dir`` or the user's cache.

    The result is written to ``work_dir/sensitivity.json`` (when given) and to the cache.
    """
    rates = check_rates(rates)
    key = cache_key(model, criterion, rates, sum(len(y) for _, y in batches), data_id, input_size, round_to)
    cached_file = cache_dir("sensitivity") / f"{key}.json"
    for path in ([Path(work_dir) / FILE_NAME] if work_dir else []) + [cached_file]:
        found = _cached(path, key)
        if found is not None:
            yield Log(f"Sensitivity: reusing the analysis in {path} (same weights, criterion, data and grid).")
            if work_dir and path != Path(work_dir) / FILE_NAME:
                write_text(Path(work_dir) / FILE_NAME, json.dumps(found.to_dict(), indent=1) + "\n")
            return found
    result = yield from analyse(model, input_size, batches, criterion=criterion, rates=rates,
                                round_to=round_to, token=token)
    result.key = key
    if not is_main_process():
        return result       # torchrun: every rank analyses alike; rank 0 writes
    text = json.dumps(result.to_dict(), indent=1) + "\n"
    if work_dir:
        write_text(Path(work_dir) / FILE_NAME, text)
    try:
        write_text(cached_file, text)
    except (OSError, StudioError):
        pass   # a read-only home is no reason to fail the analysis; the run folder has the result
    return result


def data_id(bundle) -> str:
    """What identifies a calibration source for the cache: its spec and split size."""
    return f"{bundle.spec}|{len(bundle.val)}"


# --------------------------------------------------------------------------- the method

@register
class SensitivityAnalysis(Method):
    """Per-group sensitivity curves, as a method the pipeline, CLI and window can run."""
    name = "sensitivity"
    title = "Sensitivity analysis"
    paper = "per-layer sensitivity profiles, as in Li et al., ICLR 2017 (Fig. 2)"
    needs_data = True
    options = (
        Option("criterion", "choice", "l1", "how channels are ranked within a group", choices=tuple(CRITERIA)),
        Option("rates", "floats", list(DEFAULT_RATES), "the grid of rates each group is probed at",
               minimum=0.01, maximum=0.99),
        Option("images", "int", 1000, "validation images each probe is scored on", minimum=10),
        Option("batch_size", "int", 250, "images per forward pass", minimum=1),
    )

    def run(self, inputs: MethodInput, options: dict) -> Generator[object, None, MethodResult]:
        self.check_input(inputs)
        if inputs.data.val is None or len(inputs.data.val) == 0:
            raise StudioError("Sensitivity analysis scores the model on validation images, and the data has none.",
                              "Use data with a validation (test) split.")
        batches = calibration_split(inputs.data.val, options["images"], options["batch_size"], inputs.seed)
        round_to = inputs.plan.round_to if inputs.plan is not None else None
        result = yield from load_or_analyse(inputs.model, inputs.input_size, batches, data_id=data_id(inputs.data),
                                            criterion=options["criterion"], rates=options["rates"],
                                            round_to=round_to, work_dir=inputs.work_dir, token=inputs.token)
        return MethodResult(model=None, summary={"sensitivity": result.to_dict()})
