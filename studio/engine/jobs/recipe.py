"""The JSON recipe that drives a job: model, data, pruning plan, training, measuring, exports.

The GUI edits a `Recipe`, the CLI builds one from flags or reads it from a file, and the
job runner (`studio.engine.jobs`) executes it. `to_dict`/`from_dict` round-trip exactly,
and unknown or mistyped keys are reported by name instead of being ignored, because a
typo in a recipe silently falling back to a default would waste a long run.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

from studio.engine.errors import StudioError
from studio.engine.files import write_text
from studio.engine.methods import get_method
from studio.engine.methods.targets import family_targets, parse_targets
from studio.engine.pruning import PruningPlan
from studio.engine.training import TrainConfig

RECIPE_VERSION = 1
EXPORT_FORMATS = ("pt", "checkpoint", "torchscript", "onnx")


def _check_keys(section: str, given: dict, cls) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise StudioError(f"Recipe section '{section}' has unknown keys: {', '.join(unknown)}.",
                          f"Valid keys are: {', '.join(sorted(known))}.")


@dataclass
class ModelSource:
    """Which model to load (see `studio.engine.models.load_model`)."""
    spec: str = "demo"
    arch: Optional[str] = None
    num_classes: Optional[int] = None
    input_size: Optional[list] = None     # [C, H, W]; inferred when None
    trust: bool = False                   # allow full pickles (runs code from the file)


@dataclass
class DataSource:
    """Which data to use, and how much of it to feed each step."""
    spec: Optional[str] = None            # None: prune without data (data-free criteria only)
    batch_size: int = 128
    workers: int = 0
    calibration_batches: int = 4          # batches for data-driven criteria (taylor, hrank)
    eval_batches: Optional[int] = None    # limit evaluation to this many batches (None: all)


@dataclass
class MeasureOptions:
    """How to measure latency: device and batch sizes, median over timed runs after warm-up."""
    device: str = "cpu"
    batch_sizes: list = field(default_factory=lambda: [1])
    runs: int = 20


SEARCH_METHODS = ("allocate", "cap", "heuristic", "grid")


@dataclass
class ReconstructOptions:
    """Recover accuracy without training, right after pruning (`studio.engine.methods.reconstruct`).

    ``method``: ``ls`` refits the layers after the plan's criterion chose the channels;
    ``lasso`` and ``cap`` choose the channels by LASSO (He et al. 2017) or by the error left
    after compensation (CaP, our reading), in place of the plan's criterion, then refit.
    """
    method: str = "ls"
    batches: int = 8          # calibration batches of data.batch_size images, from the training split
    ridge: float = 1e-3       # relative to the mean diagonal of XᵀX

    def method_options(self) -> dict:
        return get_method("reconstruct").resolve_options(asdict(self))


@dataclass
class SearchOptions:
    """A target search instead of fixed rates: the studio finds per-layer rates for ``targets``.

    Each trial fine-tunes for the recipe's ``finetune`` budget; the winner's own recipe (with
    its rates, and without this section) is written to the run folder, so `studio run`
    repeats the winner. The keys are the chosen method's options (see `studio.engine.methods`).
    """
    method: str = "allocate"
    targets: list = field(default_factory=lambda: ["macs=2x"])
    max_drop: Optional[float] = 1.0       # points of top-1 the result may lose (size=min needs one)
    max_trials: int = 6
    tolerance: float = 0.02
    rates: list = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    images: int = 1000                    # validation images per sensitivity probe
    latency_batch: int = 1                # latency targets: batch size (device: measure.device)
    resolution: float = 0.1               # heuristic and grid: the step between the rates tried
    parallel: int = 1                     # independent trials (grid points, family members) run at once

    def method_options(self, latency_device: str, eval_batches: Optional[int]) -> dict:
        """The options the search method takes (those it declares), checked by the method itself."""
        method = get_method(self.method)
        given = {"targets": list(self.targets), "max_drop": 1.0 if self.max_drop is None else self.max_drop,
                 "max_trials": self.max_trials, "tolerance": self.tolerance, "rates": list(self.rates),
                 "images": self.images, "eval_batches": eval_batches or 0, "latency_device": latency_device,
                 "latency_batch": self.latency_batch, "resolution": self.resolution}
        declared = {o.name for o in method.options}
        return method.resolve_options({k: v for k, v in given.items() if k in declared})


@dataclass
class Recipe:
    """A whole compression job."""
    model: ModelSource = field(default_factory=ModelSource)
    data: DataSource = field(default_factory=DataSource)
    plan: PruningPlan = field(default_factory=PruningPlan)
    sparse_training: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=0, bn_l1=1e-5))
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=0))
    measure: MeasureOptions = field(default_factory=MeasureOptions)
    exports: list = field(default_factory=lambda: list(EXPORT_FORMATS))
    seed: int = 0
    retrain: bool = False     # after pruning, re-initialise and train from scratch (UCP, Chang et al. 2020)
    search: Optional[SearchOptions] = None   # find the rates for a target (the plan's rates are then ignored)
    reconstruct: Optional[ReconstructOptions] = None   # least-squares refit after pruning, before fine-tuning
    version: int = RECIPE_VERSION

    def to_dict(self) -> dict:
        search = {"search": asdict(self.search)} if self.search is not None else {}
        reconstruct = {"reconstruct": asdict(self.reconstruct)} if self.reconstruct is not None else {}
        return {
            **search,
            **reconstruct,
            "version": self.version,
            "seed": self.seed,
            "retrain": self.retrain,
            "model": asdict(self.model),
            "data": asdict(self.data),
            "plan": self.plan.to_dict(),
            "sparse_training": self.sparse_training.to_dict(),
            "finetune": self.finetune.to_dict(),
            "measure": asdict(self.measure),
            "exports": list(self.exports),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        if not isinstance(d, dict):
            raise StudioError("A recipe must be a JSON object.", "See docs/RECIPES.md for the format.")
        _check_keys("top level", d, cls)
        version = d.get("version", RECIPE_VERSION)
        if version != RECIPE_VERSION:
            raise StudioError(f"Recipe version {version} is not supported (this studio reads version {RECIPE_VERSION}).",
                              "Re-save the recipe with this version of the studio.")
        sections = {}
        for name, section_cls in (("model", ModelSource), ("data", DataSource), ("measure", MeasureOptions)):
            given = d.get(name) or {}
            if not isinstance(given, dict):
                raise StudioError(f"Recipe section '{name}' must be an object.", "See docs/RECIPES.md.")
            _check_keys(name, given, section_cls)
            sections[name] = section_cls(**given)
        recipe = cls(
            model=sections["model"], data=sections["data"], measure=sections["measure"],
            plan=PruningPlan.from_dict(d.get("plan") or {}),
            sparse_training=TrainConfig.from_dict({"epochs": 0, "bn_l1": 1e-5, **(d.get("sparse_training") or {})}),
            finetune=TrainConfig.from_dict({"epochs": 0, **(d.get("finetune") or {})}),
            exports=list(d.get("exports", EXPORT_FORMATS)),
            seed=int(d.get("seed", 0)),
            retrain=d.get("retrain", False),
            search=_search_section(d.get("search")),
            reconstruct=_reconstruct_section(d.get("reconstruct")),
        )
        recipe.validate()
        return recipe

    def validate(self) -> None:
        """Check what can be checked without loading the model (plan vs. layers is checked at run time)."""
        self.plan.check()
        bad = [f for f in self.exports if f not in EXPORT_FORMATS]
        if bad:
            raise StudioError(f"Unknown export format(s): {', '.join(bad)}.",
                              f"Choose from: {', '.join(EXPORT_FORMATS)}.")
        if self.search is not None and not self.data.spec:
            raise StudioError("A target search needs data: it scores every probe and trial.",
                              "Set data.spec (--data) to a dataset with a validation split.")
        needs_data = self.sparse_training.epochs > 0 or self.finetune.epochs > 0
        if needs_data and not self.data.spec:
            raise StudioError("The recipe asks for training but names no data.",
                              "Set data.spec to a dataset folder, or set the training epochs to 0.")
        if self.data.batch_size < 1 or self.data.calibration_batches < 1:
            raise StudioError("data.batch_size and data.calibration_batches must be at least 1.",
                              "Fix the numbers in the recipe.")
        if any(int(b) < 1 for b in self.measure.batch_sizes):   # an empty list: no latency timing
            raise StudioError("measure.batch_sizes must list positive batch sizes.", "For example [1, 32], or [] "
                              "to skip latency.")
        if not isinstance(self.retrain, bool):
            raise StudioError(f"retrain must be true or false (got {self.retrain!r}).", "Fix the recipe.")
        if self.retrain and self.finetune.epochs < 1:
            raise StudioError("The recipe retrains the pruned model from scratch but gives 0 training epochs.",
                              "Set finetune.epochs (retraining from scratch needs many, e.g. 100+), "
                              "or set retrain to false.")
        self.sparse_training.validate()
        self.finetune.validate()
        if self.reconstruct is not None:
            self.reconstruct.method_options()
            if not self.data.spec:
                raise StudioError("Reconstruction fits the pruned layers on calibration images, and the recipe has "
                                  "no data.", "Give data (--data), or drop the reconstruct step.")
            if self.search is not None:
                raise StudioError("A target search does not reconstruct its trials, so its winner would not be the "
                                  "model it verified.", "Drop the reconstruct section from the search, then run the "
                                  "winner's recipe with a reconstruct section added.")
        if self.search is not None:
            if self.search.method not in SEARCH_METHODS:
                raise StudioError(f"Unknown search method '{self.search.method}'.",
                                  f"Use one of: {', '.join(SEARCH_METHODS)}.")
            members = family_targets(self.search.targets)
            if members is not None and self.search.method != "allocate":
                raise StudioError(f"A family of targets is found by the allocate method, not by {self.search.method}.",
                                  "Use --method allocate for a family, or give one target.")
            targets = parse_targets(members[:1] if members else self.search.targets)
            drop = self.search.max_drop
            if drop is None and any(t.minimize for t in targets):
                raise StudioError("size=min pushes the size down as far as an accuracy floor allows, and no floor "
                                  "was given.", "Give --max-drop (points of top-1 the result may lose), e.g. 1.0.")
            if isinstance(drop, (int, float)) and not isinstance(drop, bool) and drop < 0:
                raise StudioError(f"search.max_drop {drop:g} puts the accuracy floor above the original accuracy, "
                                  "which no pruned model can reach.",
                                  "Give the points of top-1 the result may lose, e.g. 1.0 (0 keeps the original).")
            if self.search.method in ("allocate", "cap") and self.sparse_training.epochs > 0:
                raise StudioError(f"The {self.search.method} method analyses the model as it is; it does not "
                                  "sparse-train first.",
                                  "Set the sparse-training epochs to 0, or use --method heuristic or grid.")
            if self.retrain:
                raise StudioError("A target search fine-tunes its trials; it cannot retrain from scratch.",
                                  "Set retrain to false.")
            parallel = self.search.parallel
            if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
                raise StudioError(f"search.parallel must be a whole number of at least 1 (got {parallel!r}).",
                                  "Use 1 to run the trials one after another.")
            self.search.method_options(self.measure.device, self.data.eval_batches)


def _reconstruct_section(given) -> Optional[ReconstructOptions]:
    if given is None:
        return None
    if not isinstance(given, dict):
        raise StudioError("Recipe section 'reconstruct' must be an object.", "See docs/RECIPES.md.")
    _check_keys("reconstruct", given, ReconstructOptions)
    return ReconstructOptions(**given)


def _search_section(given) -> Optional[SearchOptions]:
    if given is None:
        return None
    if not isinstance(given, dict):
        raise StudioError("Recipe section 'search' must be an object.", "See docs/RECIPES.md.")
    _check_keys("search", given, SearchOptions)
    return SearchOptions(**given)


@dataclass
class TrainingRecipe:
    """A baseline training job (`studio train`) as data; every training run folder keeps its own
    as training.json, so `studio train --recipe` or `studio run` can repeat it."""
    model: str
    data: str
    train: TrainConfig = field(default_factory=TrainConfig)
    arch: Optional[str] = None
    num_classes: Optional[int] = None
    kind: str = "train"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "model": self.model, "arch": self.arch, "num_classes": self.num_classes,
                "data": self.data, "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainingRecipe":
        if not isinstance(d, dict):
            raise StudioError("A training recipe must be a JSON object.", "See docs/RECIPES.md for the format.")
        _check_keys("top level", d, cls)
        for key in ("model", "data"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise StudioError(f"The training recipe needs '{key}' as a string.",
                                  "For example \"model\": \"cifar:resnet20\", \"data\": \"path/to/cifar10\".")
        if d.get("kind", "train") != "train":
            raise StudioError(f"Training recipe kind {d['kind']!r} is not 'train'.", "Set \"kind\": \"train\".")
        num_classes = d.get("num_classes")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise StudioError(f"num_classes must be a positive whole number (got {num_classes!r}).",
                              "Fix it or leave it out.")
        return cls(model=d["model"], data=d["data"], train=TrainConfig.from_dict(d.get("train") or {}),
                   arch=d.get("arch"), num_classes=num_classes)


def is_training_recipe(d) -> bool:
    """True for a training job's recipe (training.json) rather than a compression recipe."""
    return isinstance(d, dict) and (d.get("kind") == "train" or ("train" in d and "plan" not in d))


def read_recipe_json(path) -> dict:
    """Read a recipe file's JSON, with clear messages for a missing file or broken JSON."""
    path = Path(path)
    if not path.is_file():
        raise StudioError(f"Recipe file not found: {path}.", "Check the path.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StudioError(f"Recipe {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).",
                          "Fix the JSON syntax and run again.") from exc
    except UnicodeDecodeError as exc:
        raise StudioError(f"Recipe {path} is not a text file.", "Pass a .json recipe.") from exc
    return data


def load_recipe(path) -> Recipe:
    """Read a compression recipe file."""
    data = read_recipe_json(path)
    if is_training_recipe(data):
        raise StudioError(f"{path} is a training recipe, not a compression recipe.",
                          "Run it with `studio train --recipe` (or `studio run`).")
    return Recipe.from_dict(data)


def save_recipe(recipe: Recipe, path) -> Path:
    """Write a recipe atomically as pretty JSON."""
    return write_text(path, json.dumps(recipe.to_dict(), indent=2) + "\n")
