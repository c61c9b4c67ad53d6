"""Recover a pruned model's accuracy without training: least-squares reconstruction, layer by layer.

After surgery, every layer whose *input* channels were removed (the consumers of the pruned
groups: the next conv, the Linear after a flatten, each branch that reads a residual or a
concat) has its weights refit so that, on calibration images, its output in the pruned model
matches its output in the original model at the outputs it kept (He, Zhang & Sun, ICCV 2017):
ordinary least squares with a small ridge, in closed form, on unfolded input patches at 10
sampled positions per image (`studio.engine.pruning.least_squares`).

Layers go in the order the forward pass reaches them, and each fit uses the inputs produced
by the layers already refit before it, so errors do not pile up. The fit is folded into the
layer's weight and bias; the architecture does not change. A BatchNorm after a layer needs
nothing: matching the layer's output matches what the BatchNorm makes of it. Grouped and
depthwise convs are fitted group by group. A layer that cannot be fitted (an op other than
Conv2d or Linear, fewer samples than unknowns, a singular system at every ridge) is left as
surgery made it, and the summary and report name it and say why.

The three choices of the recipe's ``reconstruct.method`` differ in which channels surgery
removes (``ls``: the plan's criterion; ``lasso`` and ``cap``: the criteria of the same names,
see `studio.engine.pruning.fit_criteria`); this step then refits in the same way.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Generator

import numpy as np
import torch
from torch import nn

from studio.engine.errors import StudioError
from studio.engine.events import Log, Phase, Progress
from studio.engine.methods.base import Method, MethodInput, MethodResult, Option, register
from studio.engine.methods.sensitivity import calibration_split
from studio.engine.pruning.channel_map import kept_outputs
from studio.engine.pruning.least_squares import (
    MAX_UNKNOWNS,
    POSITIONS_PER_IMAGE,
    NormalEquations,
    fittable,
    layer_rows,
    layer_targets,
    sample_positions,
    set_weight_matrix,
    unknowns,
    weight_matrix,
)
from studio.engine.pruning.plan import WEIGHTED_LAYERS

RECONSTRUCT_METHODS = ("ls", "lasso", "cap")


class _Reached(Exception):
    """Raised by a hook to stop a forward pass once the layer being fitted has its input."""


def in_width(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def consumers_of(reference: nn.Module, pruned: nn.Module) -> list[str]:
    """The conv/Linear layers of ``pruned`` that lost input channels, by name."""
    ref = dict(reference.named_modules())
    return [name for name, m in pruned.named_modules()
            if isinstance(m, WEIGHTED_LAYERS) and isinstance(ref.get(name), WEIGHTED_LAYERS)
            and in_width(m) < in_width(ref[name])]


def forward_order(model: nn.Module, example: torch.Tensor, names: list[str]) -> list[str]:
    """``names`` in the order a forward pass first reaches them (unreached ones last)."""
    seen: list[str] = []
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: seen.append(n) if n not in seen else None)
             for n in names]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return seen + [n for n in names if n not in seen]


@register
class Reconstruct(Method):
    """Refit the layers that lost inputs so their outputs match the original's (no training)."""
    name = "reconstruct"
    title = "Reconstruct (least squares, no training)"
    paper = ("He, Zhang & Sun, \"Channel Pruning for Accelerating Very Deep Neural Networks\", ICCV 2017; "
             "Xie et al., \"Pruning with Compensation\", arXiv:2108.13728, 2021 (our reading)")
    needs_data = True
    options = (
        Option("method", "choice", "ls", "ls: refit after the plan's criterion; lasso / cap: channels chosen "
               "by LASSO or by compensated error, then refit", choices=RECONSTRUCT_METHODS),
        Option("batches", "int", 8, "calibration batches of the training split", minimum=1),
        Option("ridge", "float", 1e-3, "ridge term, relative to the mean diagonal of XᵀX", minimum=0.0,
               maximum=1.0),
    )

    def check_input(self, inputs: MethodInput) -> None:
        super().check_input(inputs)
        if inputs.reference is None or inputs.history is None:
            raise StudioError("Reconstruction needs the model before pruning and the pruning history.",
                              "Run it as the step right after pruning (recipe section 'reconstruct').")

    def run(self, inputs: MethodInput, options: dict) -> Generator[object, None, MethodResult]:
        self.check_input(inputs)
        started = time.perf_counter()
        token = inputs.token
        reference = copy.deepcopy(inputs.reference).cpu().eval()
        model = copy.deepcopy(inputs.model).cpu().eval()
        batches = self._batches(inputs, options["batches"])
        images = sum(len(y) for _, y in batches)
        example = batches[0][0][:1]
        kept = kept_outputs(reference, inputs.history, example)
        names = forward_order(model, example, consumers_of(reference, model))
        yield Phase("reconstruct", f"Reconstructing {len(names)} layer(s) by least squares on {images} images")
        targets = self._targets(reference, names, kept, batches, dict(model.named_modules()))
        keep_zeros = bool(inputs.plan is not None and inputs.plan.unstructured_sparsity > 0)
        records, notes = [], []
        for k, name in enumerate(names):
            token.check("reconstruction")
            record = self._fit(model, name, k, batches, targets.get(name), options["ridge"], keep_zeros, token)
            records.append(record)
            if record["note"]:
                notes.append(f"{name}: {record['note']}")
                skipped = record["note"].startswith("left as pruned")
                yield Log(f"Reconstruction, {name}: {record['note']}", "warning" if skipped else "info")
            yield Progress("reconstruct", k + 1, len(names),
                           f"{name}: error {record['before']:.3f} → {record['after']:.3f}" if record["fitted"]
                           else f"{name}: {record['note']}")
        fitted = [r for r in records if r["fitted"]]
        seconds = round(time.perf_counter() - started, 2)
        yield Log(f"Reconstructed {len(fitted)} of {len(records)} layer(s) in {seconds:.1f} s on {images} images"
                  + (f"; mean output error {np.mean([r['before'] for r in fitted]):.3f} → "
                     f"{np.mean([r['after'] for r in fitted]):.3f}" if fitted else "") + ".")
        summary = {"method": options["method"], "images": images, "ridge": options["ridge"],
                   "positions_per_image": POSITIONS_PER_IMAGE, "seconds": seconds, "layers": records}
        return MethodResult(model=model, summary=summary, notes=notes)

    @staticmethod
    def _batches(inputs: MethodInput, count: int) -> list:
        data = inputs.data
        source = data.train if data.train is not None and len(data.train) else data.val
        size = inputs.finetune.batch_size if inputs.finetune is not None else 64
        return calibration_split(source, count * size, size, inputs.seed)

    @staticmethod
    def _targets(reference: nn.Module, names: list[str], kept: dict, batches: list, pruned: dict) -> dict:
        """Each layer's original output at the sampled positions and kept channels, per batch
        (grouped as the pruned layer is: ``pruned`` maps names to its modules)."""
        modules = dict(reference.named_modules())
        targets: dict = {n: [] for n in names}
        batch_no = [0]

        def on_forward(layer, inputs, output, name):
            picks = _picks(layer, output, batch_no[0], names.index(name))
            groups = getattr(pruned[name], "groups", 1)
            targets[name].append(layer_targets(layer, output, picks, kept.get(name), groups).float())

        hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: on_forward(m, i, o, n))
                 for n in names if n in modules]
        try:
            with torch.no_grad():
                for i, (x, _) in enumerate(batches):
                    batch_no[0] = i
                    reference(x)
        finally:
            for h in hooks:
                h.remove()
        return targets

    def _fit(self, model: nn.Module, name: str, layer_no: int, batches: list, targets, ridge: float,
             keep_zeros: bool, token) -> dict:
        """Fit one layer on the inputs the (already partly refit) pruned model gives it."""
        layer = dict(model.named_modules())[name]
        record = {"layer": name, "type": type(layer).__name__, "unknowns": unknowns(layer), "samples": 0,
                  "before": float("nan"), "after": float("nan"), "fitted": False, "note": ""}
        why = fittable(layer)
        if why is None and unknowns(layer) > MAX_UNKNOWNS:
            why = f"{unknowns(layer)} unknowns per output, above the {MAX_UNKNOWNS} this step solves"
        if why is None and not targets:
            why = "the original model never runs this layer on the calibration images"
        if why is not None:
            record["note"] = f"left as pruned: {why}"
            return record
        eq = NormalEquations(bias=layer.bias is not None)
        index = [0]

        def on_forward(module, inputs, output):
            picks = _picks(module, output, index[0], layer_no)
            y = targets[index[0]].double()
            x = layer_rows(module, inputs[0], picks)
            if x.shape[:2] != y.shape[:2]:
                raise StudioError(f"{name}: its pruned input and its original output do not line up "
                                  f"({tuple(x.shape)} against {tuple(y.shape)}).", "")
            eq.add(x, y)
            raise _Reached

        hook = layer.register_forward_hook(on_forward)
        try:
            with torch.no_grad():
                for i, (x, _) in enumerate(batches):
                    token.check("reconstruction")
                    index[0] = i
                    try:
                        model(x)
                    except _Reached:
                        pass
        except StudioError as exc:
            record["note"] = f"left as pruned: {exc.problem}"
            return record
        finally:
            hook.remove()
        return self._solve(layer, eq, ridge, keep_zeros, record)

    @staticmethod
    def _solve(layer: nn.Module, eq: NormalEquations, ridge: float, keep_zeros: bool, record: dict) -> dict:
        d = unknowns(layer)
        record["samples"] = eq.samples
        if eq.samples < d:
            per_image = 1 if isinstance(layer, nn.Linear) else POSITIONS_PER_IMAGE
            record["note"] = (f"left as pruned: {d} unknowns per output need at least {math.ceil(d / per_image)} "
                              f"calibration images, and {eq.samples // per_image} were given "
                              "(raise the calibration batches)")
            return record
        current = weight_matrix(layer)
        record["before"] = eq.error(current)
        if record["before"] < 1e-10:
            record["after"] = record["before"]
            record["note"] = "already matches the original: its kept inputs did not change"
            return record
        try:
            w, note = eq.solve(ridge)
        except np.linalg.LinAlgError:
            record["note"] = "left as pruned: the system is singular even with a ridge of 1e-2"
            return record
        record["after"] = eq.error(w)
        record["note"] = note
        if not record["after"] < record["before"]:
            record["after"] = record["before"]
            record["note"] = "left as pruned: the fit did not lower the error"
            return record
        set_weight_matrix(layer, w, keep_zeros=keep_zeros)
        record["fitted"] = True
        return record


def _picks(layer: nn.Module, output: torch.Tensor, batch: int, layer_no: int):
    """The sampled output positions of ``layer`` for one batch (None for a Linear)."""
    if not isinstance(layer, nn.Conv2d) or output.dim() != 4:
        return None
    return sample_positions(output.shape[0], output.shape[2] * output.shape[3], 1000 * batch + 17 * layer_no)
