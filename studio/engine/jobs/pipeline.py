"""The compression job: run a `Recipe` from start to finish and write its run folder.

Phases: analyse → (sparse-train) → prune → (fine-tune or retrain) → measure → export → report.
The job is a generator of events like every long engine operation, so the CLI, the GUI
worker and torchrun all drive the same code. It works on copies: the loaded model is never
changed, and the run folder is assembled in a hidden staging folder that is renamed into
place only when everything succeeded, so a failed or cancelled job leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import datetime
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Generator, Iterator, Optional

import torch
from torch import nn

import studio
from studio.engine.data import DataBundle, check_compatible, load_data, make_loader
from studio.engine.errors import StudioError
from studio.engine.events import CancelToken, Log, MetricsSnapshot, Phase
from studio.engine.export import export_model
from studio.engine.files import atomic_write, write_text
from studio.engine.graph import model_hazards
from studio.engine.jobs.recipe import Recipe, TrainingRecipe
from studio.engine.jobs.report import write_report
from studio.engine.metrics import measure
from studio.engine.models import LoadedModel, load_model, save_checkpoint
from studio.engine.methods import MethodInput, get_method
from studio.engine.pruning import PruningPlan, get_criterion
from studio.engine.pruning.protection import (
    RunsAsBefore,
    as_dicts,
    explicit_requests,
    plan_groups_and_ties,
    prune_with_protection,
)
from studio.engine.training import FixedZeros, is_main_process, seed_everything, train


@dataclass
class RunResult:
    """What a finished job hands back: where its folder is, its numbers and the slimmed model."""
    run_dir: Optional[Path]          # None on non-main torchrun ranks, which write nothing
    metrics: dict
    model: nn.Module


@contextlib.contextmanager
def staged_run_folder(out_dir: Path, main: bool = True) -> Iterator[Optional[Path]]:
    """Yield a hidden staging folder that becomes ``out_dir`` only if the body succeeds.

    An existing non-empty ``out_dir`` is refused (the studio never overwrites a run), and on
    failure or cancel the staging folder is removed, so nothing half-written remains.
    Non-main torchrun ranks get None: they compute but write nothing.
    """
    if not main:
        yield None
        return
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise StudioError(f"The output folder {out_dir} already exists and is not empty.",
                          "Choose a new folder; the studio never overwrites an earlier run.")
    staging = out_dir.parent / f".{out_dir.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)   # left by a crashed earlier attempt at this same folder
    staging.mkdir(parents=True)
    try:
        yield staging
        if out_dir.exists():
            out_dir.rmdir()      # empty, checked above
        os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def calibration_batches(bundle: DataBundle, batch_size: int, count: int, seed: int) -> list:
    """The first ``count`` batches of a seeded shuffle: identical on every torchrun rank."""
    source = bundle.train if bundle.train is not None else bundle.val
    loader = make_loader(source, batch_size, shuffle=True, seed=seed)
    batches = []
    for x, y in loader:
        batches.append((x, y))
        if len(batches) >= count:
            break
    return batches


def reset_weights(model: nn.Module) -> None:
    """Re-initialise every layer that knows how (conv, linear, norm) with its default init."""
    for m in model.modules():
        if callable(getattr(m, "reset_parameters", None)):
            m.reset_parameters()
        if callable(getattr(m, "reset_running_stats", None)):
            m.reset_running_stats()


def json_safe(value):
    """NaN/inf become null so metrics.json stays strict JSON that any reader accepts."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def load_job_inputs(recipe: Recipe, loaded: Optional[LoadedModel], bundle: Optional[DataBundle]
                    ) -> Generator[object, None, tuple]:
    """The recipe's model and data (or the ones given), checked against each other and the plan.

    Everything that can be refused is refused here, before any slow step runs.
    """
    yield Phase("analyse", "Loading the model and data")
    if loaded is None:
        m = recipe.model
        loaded = load_model(m.spec, arch=m.arch, num_classes=m.num_classes, trust=m.trust,
                            input_size=tuple(m.input_size) if m.input_size else None)
    if not loaded.prunable:
        raise StudioError(f"This model cannot be pruned: {loaded.why_not_prunable}", "")
    input_size = tuple(loaded.input_size)
    get_criterion(recipe.plan.criterion)
    recipe.plan.validate(loaded.module)
    if bundle is None and recipe.data.spec:
        bundle = load_data(recipe.data.spec, input_size=input_size, channels=input_size[0])
    if bundle is not None:
        check_compatible(bundle, num_classes=loaded.num_classes, input_size=input_size)
    yield Log(f"Model: {loaded.summary()}")
    if bundle is not None:
        yield Log(f"Data: {bundle.summary()}")
    return loaded, bundle


def pruning_plan(recipe: Recipe) -> PruningPlan:
    """The plan surgery uses: the recipe's, with the criterion of a ``lasso`` or ``cap`` reconstruction."""
    method = recipe.reconstruct.method if recipe.reconstruct is not None else "ls"
    if method == "ls" or recipe.plan.criterion == method:
        return recipe.plan
    plan = copy.deepcopy(recipe.plan)
    plan.criterion = method
    return plan


def _return_freed_memory() -> None:
    """Hand memory the job has freed back to the system (Linux, glibc only; elsewhere nothing).

    glibc keeps freed heap blocks for reuse, so after tracing a large model the process
    holds memory it no longer uses. Measured on regnet_y_128gf the gain is small (peak
    13.65 → 13.55 GB): most of the peak is the trace itself.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _snapshot(label: str, values) -> MetricsSnapshot:
    return MetricsSnapshot(label, values.to_dict())


def run_recipe(recipe: Recipe, out_dir, *, token: Optional[CancelToken] = None,
               loaded: Optional[LoadedModel] = None, bundle: Optional[DataBundle] = None
               ) -> Generator[object, None, RunResult]:
    """Run the whole job. ``loaded``/``bundle`` let the GUI pass what it already has open."""
    started = time.perf_counter()
    token = token or CancelToken()
    recipe.validate()
    main = is_main_process()
    with staged_run_folder(out_dir, main) as staging:
        result = yield from _run(recipe, staging, token, loaded, bundle, started)
    if main:
        result.run_dir = Path(out_dir)
        yield Log(f"Run folder written: {out_dir}")
    return result


def _run(recipe, staging, token, loaded, bundle, started):
    main = staging is not None
    seed_everything(recipe.seed)

    loaded, bundle = yield from load_job_inputs(recipe, loaded, bundle)
    input_size = tuple(loaded.input_size)

    hazards = model_hazards(loaded.module, input_size)
    warnings = [h.text for h in hazards]
    for w in warnings:
        yield Log(w, "warning")
    if not loaded.trained:
        warnings.append("The model has random weights (untrained): accuracy figures are meaningless.")

    example = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(recipe.seed))
    runs_as_before = RunsAsBefore(loaded.module, example, warnings)
    # Pre-flight: a model torch-pruning cannot follow fails here, before the slow measurements.
    groups, ties = plan_groups_and_ties(loaded.module, example, recipe.plan)
    hazards = [*hazards, *ties]
    calib = None
    if bundle is not None:
        calib = calibration_batches(bundle, recipe.data.batch_size, recipe.data.calibration_batches, recipe.seed)
    eval_set = bundle.val if bundle is not None else None

    def measured(model):
        return measure(model, input_size, device=recipe.measure.device,
                       batch_sizes=tuple(recipe.measure.batch_sizes), eval_set=eval_set,
                       eval_batches=recipe.data.eval_batches, token=token)

    before = pruned_metrics = after = None
    if main:
        before = yield from measured(loaded.module)
        yield _snapshot("before", before)

    # The loaded model is never touched: sparse training trains a copy, and pruning and
    # reconstruction only read it (pruning works on a copy of its own). A copy made for
    # nothing would hold 2.6 GB more through the whole job on a 600 M-parameter model.
    changes_weights = recipe.sparse_training.epochs > 0 or recipe.reconstruct is not None
    work = copy.deepcopy(loaded.module) if changes_weights else loaded.module
    history: dict = {}
    if recipe.sparse_training.epochs > 0:
        cfg = replace(recipe.sparse_training, batch_size=recipe.data.batch_size, workers=recipe.data.workers,
                      seed=recipe.seed)
        trained = yield from train(work, bundle.train, eval_set, cfg, phase="sparse-train", token=token,
                                   fixed_zeros=FixedZeros.of(work))
        history["sparse-train"] = trained.history
        work = work.cpu()

    plan = pruning_plan(recipe)
    if plan is not recipe.plan:
        yield Log(f"Channels chosen by the {plan.criterion} criterion, as reconstruct.method "
                  f"'{recipe.reconstruct.method}' asks (in place of {recipe.plan.criterion}).")
    pruned, protected = yield from prune_with_protection(
        work, plan, example, calibration=calib, token=token, hazards=hazards, groups=groups,
        check=runs_as_before)
    model = pruned.model.cpu()
    _return_freed_memory()   # the trace's activations: the largest thing this job frees
    warnings.extend(f"Left unpruned: the group of {p.root} ({', '.join(p.layers)}). {p.why}" for p in protected)
    warnings.extend(f"{name} was given a rate in the plan but had to be left unpruned (see above)."
                    for name in explicit_requests(plan, protected))
    if main:
        pruned_metrics = yield from measured(model)
        yield _snapshot("pruned", pruned_metrics)
    reconstruction = reconstructed = None
    if recipe.reconstruct is not None:
        found = yield from get_method("reconstruct").run(
            MethodInput(model=model, input_size=input_size, data=bundle, plan=plan, token=token, seed=recipe.seed,
                        finetune=replace(recipe.finetune, batch_size=recipe.data.batch_size),
                        reference=work, history=pruned.history),
            recipe.reconstruct.method_options())
        model, reconstruction = found.model, found.summary
        warnings.extend(f"Reconstruction: {note}" for note in found.notes if "left as pruned" in note)
        if main:
            reconstructed = yield from measured(model)
            yield _snapshot("reconstructed", reconstructed)

    if recipe.finetune.epochs > 0:
        phase = "fine-tune"
        zeros = FixedZeros.of(model)   # before a re-initialisation: the zeros of pruning stay zeros
        if recipe.retrain:
            # Keep the pruned architecture, drop what the weights learnt (UCP, Chang et al. 2020).
            phase = "retrain"
            torch.manual_seed(recipe.seed)
            reset_weights(model)
            yield Log("Weights re-initialised: retraining the pruned architecture from scratch.")
        cfg = replace(recipe.finetune, batch_size=recipe.data.batch_size, workers=recipe.data.workers,
                      seed=recipe.seed)
        tuned = yield from train(model, bundle.train, eval_set, cfg, phase=phase, token=token, fixed_zeros=zeros)
        history[phase] = tuned.history
        model = model.cpu().eval()

    metrics = {}
    if main:
        after = reconstructed or pruned_metrics
        if recipe.finetune.epochs > 0:
            after = yield from measured(model)
            yield _snapshot("after", after)
        exports = yield from export_model(
            model, staging, formats=tuple(recipe.exports), example_input=example, arch=loaded.arch,
            num_classes=loaded.num_classes, input_size=input_size,
            # A model pruned before (a studio checkpoint) is rebuilt from both histories, in order.
            pruning_history=[*loaded.pruning_history, *pruned.history],
            trained=loaded.trained, token=token)
        warnings.extend(f"Export {e.format}: {e.note}" for e in exports if e.note.startswith("Failed"))
        yield Phase("report", "Writing the run folder")
        metrics = {
            "studio_version": studio.__version__,
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "wall_seconds": round(time.perf_counter() - started, 2),
            "device": recipe.measure.device,
            "model": {"spec": loaded.spec, "kind": loaded.kind, "arch": loaded.arch, "trained": loaded.trained,
                      "weights_note": loaded.weights_note, "input_size": list(input_size),
                      "num_classes": loaded.num_classes},
            "data": None if bundle is None else {
                "spec": bundle.spec, "summary": bundle.summary(), "num_classes": bundle.num_classes,
                "train_samples": len(bundle.train) if bundle.train is not None else 0,
                "val_samples": len(bundle.val)},
            "plan": plan.to_dict(),
            "before": before.to_dict(), "pruned": pruned_metrics.to_dict(), "after": after.to_dict(),
            **({"reconstructed": reconstructed.to_dict(), "reconstruction": reconstruction}
               if reconstructed is not None else {}),
            "layers": [vars(layer) for layer in pruned.layers],
            "protected_groups": as_dicts(protected),
            "history": history,
            "exports": [{**vars(e), "path": Path(e.path).name} for e in exports],
            "warnings": warnings,
        }
        write_text(staging / "recipe.json", json.dumps(recipe.to_dict(), indent=2) + "\n")
        write_text(staging / "metrics.json", json.dumps(json_safe(metrics), indent=2, allow_nan=False) + "\n")
        write_report(staging)
    return RunResult(run_dir=None, metrics=metrics, model=model)


def train_state_path(out_dir) -> Path:
    """Where `run_training` keeps the state of an unfinished run: next to its run folder."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.train-state.pt"


def _read_train_state(path: Path, resume: bool) -> Optional[dict]:
    """The saved state to resume from, or None to start afresh; refuses to drop one silently."""
    if not resume:
        if path.exists():
            raise StudioError(f"An interrupted training run left its state in {path}.",
                              "Add --resume to continue it, or delete that file to start again.")
        return None
    if not path.is_file():
        raise StudioError(f"There is no saved training state at {path} to resume.",
                          "Run the same command without --resume to start training.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # a truncated or foreign file: say so instead of a pickle traceback
        raise StudioError(f"The saved training state {path} cannot be read ({exc.__class__.__name__}).",
                          "Delete it and start the training again.") from exc


def _write_train_state(path: Path, state: dict) -> None:
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def run_training(recipe: TrainingRecipe, out_dir, *, token: Optional[CancelToken] = None,
                 resume: bool = False) -> Generator[object, None, RunResult]:
    """Train a model from scratch (or continue from its weights) and write a run folder.

    The folder holds `training.json` (the recipe, which repeats the run), `metrics.json` (per-epoch history and
    final accuracy) and `model.ckpt.pt`, a checkpoint that `load_model` opens with
    `weights_only=True`. Like `run_recipe`, nothing is left behind in it on failure or cancel.
    After every epoch the state (weights, optimizer, history) is saved to
    `train_state_path(out_dir)`; if the run stops, ``resume=True`` continues from there.
    """

    token = token or CancelToken()
    started = time.perf_counter()
    main = is_main_process()
    cfg, model_spec, data_spec = recipe.train, recipe.model, recipe.data
    cfg.validate()
    state_path = train_state_path(out_dir)
    state = _read_train_state(state_path, resume)
    job = {"model": model_spec, "arch": recipe.arch, "num_classes": recipe.num_classes, "data": data_spec}
    if state is not None and isinstance(state, dict) and state.get("job") != job:
        saved = state.get("job") or {}
        changed = [k for k in job if saved.get(k) != job[k]]
        raise StudioError(f"The saved training state in {state_path} belongs to another job "
                          f"(different {', '.join(changed) or 'job'}).",
                          "Resume with the model and data the run started with, or delete the saved state.")
    with staged_run_folder(out_dir, main) as staging:
        yield Phase("analyse", "Loading the model and data")
        seed_everything(cfg.seed)   # a model built from scratch gets the same initial weights every time
        loaded = load_model(model_spec, arch=recipe.arch, num_classes=recipe.num_classes)
        if loaded.arch is None:
            raise StudioError(f"{model_spec} has no rebuildable architecture name, so its checkpoint could not be reopened.",
                              "Train a cifar:/torchvision: model, or a .pt checkpoint written by the studio.")
        input_size = tuple(loaded.input_size)
        bundle = load_data(data_spec, input_size=input_size, channels=input_size[0])
        check_compatible(bundle, num_classes=loaded.num_classes, input_size=input_size)
        if bundle.train is None:
            raise StudioError(f"{data_spec} has no training split.", "Use data with a train/ folder.")
        yield Log(f"Model: {loaded.summary()}")
        yield Log(f"Data: {bundle.summary()}")
        model = copy.deepcopy(loaded.module)
        result = yield from train(model, bundle.train, bundle.val, cfg, phase="train", token=token,
                                  fixed_zeros=FixedZeros.of(model),
                                  resume=state, save_state=lambda s: _write_train_state(state_path, {**s, "job": job}))
        model = model.cpu().eval()
        metrics = {}
        if main:
            yield Phase("report", "Writing the run folder")
            final = result.final.to_dict() if result.final is not None else None
            note = (f"trained by `studio train` for {cfg.epochs} epochs on {bundle.summary()}; "
                    f"top-1 {final['top1'] * 100:.2f}%" if final else f"trained for {cfg.epochs} epochs")
            save_checkpoint(staging / "model.ckpt.pt", model, arch=loaded.arch, num_classes=loaded.num_classes,
                            input_size=input_size, pruning_history=loaded.pruning_history, trained=True,
                            note=note)
            metrics = {"studio_version": studio.__version__,
                       "created": datetime.datetime.now().isoformat(timespec="seconds"),
                       "wall_seconds": round(time.perf_counter() - started, 2),
                       "model": {"spec": model_spec, "arch": loaded.arch, "num_classes": loaded.num_classes,
                                 "input_size": list(input_size), "params": sum(p.numel() for p in model.parameters())},
                       "data": {"spec": data_spec, "summary": bundle.summary()},
                       "final": final, "images_per_s": result.images_per_s,
                       "history": {"train": result.history}}
            write_text(staging / "training.json", json.dumps(recipe.to_dict(), indent=2) + "\n")
            write_text(staging / "metrics.json", json.dumps(json_safe(metrics), indent=2, allow_nan=False) + "\n")
    if main:
        state_path.unlink(missing_ok=True)
        yield Log(f"Run folder written: {out_dir}")
    return RunResult(run_dir=Path(out_dir) if main else None, metrics=metrics, model=model)
