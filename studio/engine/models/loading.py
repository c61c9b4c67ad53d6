"""Turn what the user typed (a model spec) into a ready `LoadedModel`.

Specs: ``cifar:NAME``, ``torchvision:NAME``, ``timm:NAME``, ``demo``, a ``.pt``/``.pth`` file (state_dict,
studio checkpoint, full pickle with trust, TorchScript archive), an ``.onnx`` file (converted by
onnx2torch) and ``file.py:Class`` or
``file.py:Class:weights.pth``. Files are read with ``torch.load(weights_only=True)``; a full
pickle is only unpickled when the caller passes ``trust=True``. Every problem the user can
fix becomes a `StudioError` saying what is wrong and what to do.
"""
from __future__ import annotations

import http.client
import importlib.util
import inspect
import itertools
import re
import sys
import urllib.error
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import torch
import torch.nn as nn

from studio.engine.demo_files import MODEL as DEMO_MODEL
from studio.engine.demo_files import demo_file, missing_demo_file
from studio.engine.errors import StudioError
from studio.engine.models.architectures import (
    CIFAR_INPUT,
    build_architecture,
    default_input,
    list_torchvision_models,
    split_arch,
    unknown_name,
)
from studio.engine.models.checkpoint import CHECKPOINT_FORMAT, rebuild_from_checkpoint
from studio.engine.models.cifar import CIFAR_MODELS
from studio.engine.models.onnx_import import load_onnx
from studio.engine.models.timm_models import load_timm, timm_input

_PY_SPEC = re.compile(r"^(?P<file>.+?\.py):(?P<cls>[A-Za-z_]\w*)(?::(?P<weights>.+))?$")
_user_module_ids = itertools.count()


@dataclass
class LoadedModel:
    """A model ready for the studio, with what is known about where it came from."""
    module: nn.Module
    spec: str                          # what the user typed
    kind: str                          # cifar | torchvision | state_dict | pruned | pickle | torchscript | python | demo
    arch: Optional[str]                # rebuildable architecture spec, e.g. 'cifar:resnet20'
    input_size: tuple[int, int, int]   # C, H, W
    num_classes: int
    trained: bool                      # False when the weights are a random init
    weights_note: str
    prunable: bool
    why_not_prunable: str = ""
    pruning_history: list = field(default_factory=list)   # a studio checkpoint's: what shaped these layers

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def summary(self) -> str:
        """One line for the CLI and the status bar."""
        n = self.num_params
        params = f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)
        c, h, w = self.input_size
        parts = [self.arch or self.spec, self.kind, f"{params} params", f"{self.num_classes} classes",
                 f"input {c}x{h}x{w}", self.weights_note]
        if not self.prunable:
            parts.append("not prunable")
        return ", ".join(parts)


# ---------------------------------------------------------------- names and architectures


def _head(module: nn.Module) -> tuple[Optional[str], Optional[int]]:
    """(qualified name, outputs) of the classifier: the last Linear, else the last Conv2d.

    Works for TorchScript too, whose submodules keep the original class name.
    """
    last_linear = last_conv = (None, None)
    for name, m in module.named_modules():
        cls = getattr(m, "original_name", type(m).__name__)
        weight = getattr(m, "weight", None)
        if cls == "Linear" and isinstance(weight, torch.Tensor):
            last_linear = (name, int(weight.shape[0]))
        elif cls == "Conv2d" and isinstance(weight, torch.Tensor):
            last_conv = (name, int(weight.shape[0]))
    return last_linear if last_linear[0] is not None else last_conv


def infer_num_classes(module: nn.Module) -> Optional[int]:
    """Outputs of the last nn.Linear (or of the last conv when there is no Linear); None if neither."""
    return _head(module)[1]


# ---------------------------------------------------------------- reading files

def _check_file(path: Path, what: str = "model file") -> None:
    if not path.exists():
        raise StudioError(f"No {what} at {path}.", "Check the path (relative paths start from the current folder).")
    if path.is_dir():
        raise StudioError(f"{path} is a folder, not a {what}.", "Give the .pt/.pth file inside it.")
    if path.stat().st_size == 0:
        raise StudioError(f"{path} is empty (0 bytes).", "The save or copy was probably interrupted; save or copy it again.")


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip holding compiled code/ and constants.pkl, unlike torch.save's zips."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _cause(exc: BaseException) -> str:
    """Exception type and first sentence: torch's messages run on for lines after the cause."""
    text = re.split(r"(?<=\.)\s", str(exc).strip())[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _damaged(path: Path, exc: BaseException) -> StudioError:
    detail = _cause(exc)
    return StudioError(f"{path} is not a PyTorch file or is damaged; it could not be read ({detail}).",
                       "Re-save it with torch.save (or torch.jit.save) or copy it again.")


def _torch_load(path: Path, trust: bool) -> Any:
    """torch.load with weights_only=True; unpickle fully only when the user trusts the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for bad files
        message = str(exc)
        # A real object pickle is refused for naming a class (GLOBAL) or building one; garbage
        # bytes fail with other unpickler errors ("Unsupported operand", "invalid load key")
        # and must be reported as damaged, not offered to the trust dialog.
        is_pickle_refusal = any(key in message for key in ("GLOBAL", "Can only build", "Can only create",
                                                            "Trying to call reduce"))
        if not is_pickle_refusal:
            raise _damaged(path, exc) from exc
        if not trust:
            found = re.search(r"GLOBAL ([\w.]+)", message)
            refers = f" (it refers to {found.group(1)})" if found else ""
            raise StudioError(
                f"{path} holds pickled Python objects{refers}, not just weights; "
                "unpickling it can run arbitrary code, so the studio only opens it when you trust its source.",
                "If you do, open it with --trust (CLI) or confirm the trust dialog (GUI). Safer: save "
                "model.state_dict() instead and load it with --arch.") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError, ImportError) as exc:
        raise StudioError(
            f"{path} is a pickled model whose class cannot be imported here ({exc}).",
            "Load it from its source code instead: file.py:ClassName:weights.pth, or run the studio "
            "from the folder that holds the model's code.") from exc
    except Exception as exc:
        raise _damaged(path, exc) from exc


def _strip_prefixes(sd: dict) -> dict:
    """Drop the 'module.' (DataParallel/DDP) and '_orig_mod.' (torch.compile) key prefixes."""
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _is_tensor_dict(obj: Any) -> bool:
    return (isinstance(obj, dict) and bool(obj)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _find_state_dict(obj: dict, path: Path) -> dict:
    """The name → tensor mapping in a file: the dict itself or one nested under a usual key."""
    if _is_tensor_dict(obj):
        return _strip_prefixes(dict(obj))
    for key in ("state_dict", "model_state_dict", "model", "net", "network"):
        if _is_tensor_dict(obj.get(key)):
            return _strip_prefixes(dict(obj[key]))
    keys = ", ".join(repr(k) for k in list(obj)[:8])
    raise StudioError(f"{path} holds a dict (keys {keys}) but no model weights in it.",
                      "Expected a state_dict (name → tensor), possibly under 'state_dict' or 'model'; "
                      "save one with torch.save(model.state_dict(), path).")


def _shapes(sd: dict) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def _guess_arch(sd: dict) -> Optional[str]:
    """The first built-in architecture whose keys and shapes (bar the head) match ``sd``."""
    import torchvision
    wanted = _shapes(sd)
    candidates = [f"cifar:{n}" for n in CIFAR_MODELS] + [
        f"torchvision:{n}" for n in ("resnet18", "resnet34", "resnet50", "resnet101", "vgg16", "vgg16_bn",
                                     "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
                                     "efficientnet_b0", "densenet121", "convnext_tiny",
                                     "shufflenet_v2_x1_0", "squeezenet1_1", "mnasnet1_0")]
    for arch in candidates:
        prefix, name = arch.split(":")
        try:
            # Meta tensors have shapes but no storage: building 20 models this way takes ~2 s.
            with torch.device("meta"):
                model = CIFAR_MODELS[name][0](10) if prefix == "cifar" else torchvision.models.get_model(name)
        except Exception:  # a hint is best-effort; a builder that cannot run on meta is just skipped
            continue
        have = _shapes(model.state_dict())
        if have.keys() == wanted.keys() and sum(have[k] != wanted[k] for k in have) <= 2:  # head weight + bias
            return arch
    return None


def _load_state_dict(model: nn.Module, sd: dict, source: str, target: str, suggest_arch: bool = True) -> None:
    """Strict load; a mismatch names a few offending keys and says what to load instead."""
    own = _shapes(model.state_dict())
    got = _shapes(sd)
    missing = [k for k in own if k not in got]
    unexpected = [k for k in got if k not in own]
    misshaped = [f"{k} {got[k]} vs {own[k]}" for k in own if k in got and got[k] != own[k]]
    if missing or unexpected or misshaped:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
            if items:
                more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
        head, _ = _head(model)
        head_keys = {f"{head}.weight", f"{head}.bias"}
        if not missing and not unexpected and all(m.split(" ")[0] in head_keys for m in misshaped):
            stored = got[f"{head}.weight"][0]
            fix = f"The weights have a {stored}-class head: pass --num-classes {stored} or leave it out."
        elif not suggest_arch:
            fix = ("Check that the weights were saved from this class, built with the same arguments "
                   "(e.g. --num-classes).")
        else:
            guess = _guess_arch(sd)
            fix = (f"These weights look like {guess}: pass --arch {guess}." if guess and guess != target else
                   "Pass the --arch the weights were trained with (cifar:NAME or torchvision:NAME), "
                   "or load the model's code as file.py:ClassName:weights.pth.")
        raise StudioError(f"The weights in {source} do not fit {target}: {'; '.join(parts)}.", fix)
    model.load_state_dict(sd, strict=True)


def _head_outputs_in(sd: dict, arch: str) -> Optional[int]:
    """Number of classes stored in ``sd``, read at the head that ``arch`` would have."""
    try:
        with torch.device("meta"):  # only the head's name is needed: no memory, no init cost
            probe = build_architecture(arch, 10)
    except StudioError:
        raise
    except Exception:  # a few torchvision builders compute with tensors and cannot run on meta
        probe = build_architecture(arch, 10)
    name, _ = _head(probe)
    weight = sd.get(f"{name}.weight") if name is not None else None
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() >= 1 else None


def _from_state_dict(sd: dict, arch: Optional[str], num_classes: Optional[int], path: Path) -> nn.Module:
    if not arch:
        raise StudioError(f"{path} holds only weights (a state_dict), not the model's architecture.",
                          "Pass --arch cifar:resnet20 or torchvision:resnet50 (the architecture the "
                          "weights were trained with).")
    prefix, _ = split_arch(arch)
    n = num_classes or _head_outputs_in(sd, arch) or (10 if prefix == "cifar" else 1000)
    model = build_architecture(arch, n)
    _load_state_dict(model, sd, str(path), arch)
    return model


# ---------------------------------------------------------------- spec handlers

def _load_cifar(spec: str, name: str, num_classes: Optional[int]) -> LoadedModel:
    n = num_classes or 10
    module = build_architecture(f"cifar:{name}", n)
    return LoadedModel(module, spec, "cifar", f"cifar:{name}", CIFAR_INPUT, n, False,
                       "random init (untrained)", True)


def torchvision_cache_path(name: str) -> Path:
    """Where torch hub keeps (or would keep) the default ImageNet weights of ``torchvision:name``."""
    import torchvision
    weights = torchvision.models.get_model_weights(name).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def _download_weights(name: str, url: str, file: Path) -> None:
    """Fetch the weight file into the hub cache; a network failure says how to copy it by hand."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StudioError(f"Cannot create the torch hub cache folder {file.parent} ({exc.strerror}).",
                          "Set TORCH_HOME to a folder you can write to.") from exc
    found = torch.hub.HASH_REGEX.search(file.name)
    try:
        # Download only: the file is then read by the same weights_only path as any cached file.
        torch.hub.download_url_to_file(url, str(file), found.group(1) if found else None, progress=True)
    except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise StudioError(
            f"Could not download the torchvision:{name} weights from {url} ({reason}); you appear to be offline.",
            f"On a machine with internet, download that URL and copy the file to exactly {file}, "
            f"then load torchvision:{name} again (no --download needed).") from exc
    except RuntimeError as exc:  # the hash check of download_url_to_file
        raise StudioError(f"The downloaded torchvision:{name} weights are corrupt ({exc}).",
                          "Run the download again; if it keeps failing, copy the file by hand to "
                          f"{file}.") from exc


def built_input(module: nn.Module, fallback: tuple) -> tuple:
    """The input the built model expects: a ViT is built for one image size (224 without weights,
    518 with ViT-H/14's default weights), which can differ from the weights' crop."""
    size = getattr(module, "image_size", None)
    return (3, size, size) if isinstance(size, int) else fallback


def _load_torchvision(spec: str, name: str, num_classes: Optional[int], pretrained: bool,
                      download: bool) -> LoadedModel:
    import torchvision
    valid = list_torchvision_models()
    if name not in valid:
        raise unknown_name("torchvision", name, valid, show_all=False)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    input_size = default_input(f"torchvision:{name}")
    imagenet_classes = len(weights.meta["categories"])
    file = torchvision_cache_path(name)
    arch = f"torchvision:{name}"

    def random_init(n: int, note: str) -> LoadedModel:
        module = torchvision.models.get_model(name, weights=None, num_classes=n)
        return LoadedModel(module, spec, "torchvision", arch, built_input(module, input_size), n, False, note, True)

    if num_classes is not None and num_classes != imagenet_classes:
        return random_init(num_classes, f"random init (untrained): the ImageNet weights have a "
                                        f"{imagenet_classes}-class head, {num_classes} classes were asked")
    if not pretrained:
        return random_init(imagenet_classes, "random init (untrained), pretrained weights not requested")
    if not file.exists() and download:
        _download_weights(name, weights.url, file)
    if not file.exists():
        return random_init(imagenet_classes,
                           f"random init (untrained): ImageNet weights not in the local cache; copy "
                           f"{file.name} from {weights.url} to {file}, or load again with --download")
    try:
        # torchvision reads the cache with weights_only=False; read it once with weights_only=True
        # first so a tampered file is refused before it can run code. The file exists: no network.
        torch.hub.load_state_dict_from_url(weights.url, model_dir=str(file.parent), map_location="cpu",
                                           progress=False, weights_only=True)
        module = torchvision.models.get_model(name, weights=weights)
    except Exception as exc:  # damaged, truncated or foreign files fail in several ways
        raise StudioError(f"The cached weight file {file} is damaged or is not {name}'s weights ({_cause(exc)}).",
                          f"Delete it and copy a fresh one from {weights.url}.") from exc
    return LoadedModel(module, spec, "torchvision", arch, built_input(module, input_size), imagenet_classes, True,
                       "ImageNet weights from local cache", True)


def _load_checkpoint(obj: dict, spec: str, path: Path, arch: Optional[str],
                     num_classes: Optional[int]) -> LoadedModel:
    """Our own checkpoint: architecture, weights and the pruning history that shaped them."""
    sd = obj.get("state_dict")
    if not _is_tensor_dict(sd):
        raise StudioError(f"{path} is a Compression Studio checkpoint without usable weights.",
                          "Export the model again from the studio.")
    history = list(obj.get("pruning_history") or [])
    ck_arch = obj.get("arch") or arch
    stored_classes = obj.get("num_classes")
    if num_classes is not None and stored_classes is not None and num_classes != stored_classes:
        raise StudioError(f"{path} has a {stored_classes}-class head but {num_classes} classes were asked.",
                          "Drop --num-classes, or fine-tune the model for the new classes first.")
    if history:
        module = rebuild_from_checkpoint(dict(obj, arch=ck_arch))
    else:
        module = _from_state_dict(_strip_prefixes(dict(sd)), ck_arch, stored_classes or num_classes, path)
    stored_size = obj.get("input_size")
    note = obj.get("note") or ""
    return LoadedModel(
        module, spec, "pruned" if history else "state_dict", ck_arch,
        tuple(int(v) for v in stored_size) if stored_size else  # type: ignore[arg-type]
        (default_input(ck_arch) if ck_arch else CIFAR_INPUT),
        int(stored_classes) if stored_classes else 0, bool(obj.get("trained", True)),
        f"weights from {path.name}" + (f" ({note})" if note else ""), True, pruning_history=history)


def _load_file(spec: str, path: Path, arch: Optional[str], num_classes: Optional[int],
               trust: bool) -> LoadedModel:
    _check_file(path)
    if path.suffix.lower() == ".onnx":
        module, size = load_onnx(path)
        return LoadedModel(module, spec, "onnx", None, size or CIFAR_INPUT, infer_num_classes(module) or 0, True,
                           f"converted from ONNX ({path.name}) by onnx2torch", True)
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # jit is deprecated, still the format users have
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise _damaged(path, exc) from exc
        return LoadedModel(module, spec, "torchscript", None, CIFAR_INPUT, 0, True,
                           f"TorchScript from {path.name}", False,
                           "TorchScript holds compiled graph code, not Python modules, so torch-pruning cannot "
                           "rewrite its layers. It can be inspected and evaluated; to prune, load the original "
                           "model code (file.py:Class:weights.pth) or a state_dict with --arch.")
    obj = _torch_load(path, trust)
    if isinstance(obj, nn.Module):  # only reachable with trust: weights_only refuses modules
        return LoadedModel(obj, spec, "pickle", None, CIFAR_INPUT, 0, True,
                           f"full pickled model from {path.name} (trusted)", True)
    if not isinstance(obj, dict):
        raise StudioError(f"{path} holds a {type(obj).__name__}, not a model or its weights.",
                          "Save the model with torch.save(model.state_dict(), path) and load it with --arch.")
    if obj.get("format") == CHECKPOINT_FORMAT:
        return _load_checkpoint(obj, spec, path, arch, num_classes)
    for key in ("model", "net"):  # training checkpoints sometimes hold the module itself
        if isinstance(obj.get(key), nn.Module):
            return LoadedModel(obj[key], spec, "pickle", None, CIFAR_INPUT, 0, True,
                               f"full pickled model from {path.name} (trusted)", True)
    sd = _find_state_dict(obj, path)
    module = _from_state_dict(sd, arch, num_classes, path)
    return LoadedModel(module, spec, "state_dict", arch.strip(), default_input(arch),  # type: ignore[union-attr,arg-type]
                       infer_num_classes(module) or 0, True, f"weights from {path.name}", True)


def _accepts_num_classes(target: Any) -> bool:
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "num_classes" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _import_user_file(file: Path) -> Any:
    """Import a user's .py under a unique name, its folder on sys.path so sibling imports work."""
    mod_name = f"studio_user_model_{next(_user_module_ids)}_{re.sub(r'[^0-9a-zA-Z_]', '_', file.stem)}"
    spec = importlib.util.spec_from_file_location(mod_name, file)
    if spec is None or spec.loader is None:
        raise StudioError(f"Python cannot import {file}.", "Give a .py source file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # dataclasses and pickling look classes up here
    folder = str(file.parent.resolve())
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(mod_name, None)
        raise StudioError(f"{file} has a syntax error at line {exc.lineno}: {exc.msg}.",
                          "Fix the file and load it again.") from exc
    except (Exception, SystemExit) as exc:  # user code can fail in any way while importing
        sys.modules.pop(mod_name, None)
        raise StudioError(f"Importing {file} failed: {type(exc).__name__}: {exc}.",
                          "Fix the file (or install what it imports) and load it again.") from exc
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def _load_python(spec: str, file: Path, cls_name: str, weights: Optional[str], num_classes: Optional[int],
                 trust: bool) -> LoadedModel:
    if not file.is_file():
        raise StudioError(f"No Python file at {file}.", "Check the path before the ':' in file.py:ClassName.")
    user_module = _import_user_file(file)
    target = getattr(user_module, cls_name, None)
    if target is None:
        classes = [n for n, v in vars(user_module).items()
                   if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == user_module.__name__]
        found = f"It defines: {', '.join(classes)}." if classes else "It defines no nn.Module subclass."
        raise StudioError(f"{file} has no class {cls_name}.", found + " Write file.py:ClassName with one of those.")
    kwargs = {"num_classes": num_classes} if num_classes is not None and _accepts_num_classes(target) else {}
    try:
        module = target(**kwargs)
    except Exception as exc:  # user code
        raise StudioError(f"Creating {cls_name}({', '.join(f'{k}={v}' for k, v in kwargs.items())}) from {file} "
                          f"failed: {type(exc).__name__}: {exc}.",
                          "Give the constructor's arguments default values, or add a function taking no "
                          "arguments that returns the model and name it instead.") from exc
    if not isinstance(module, nn.Module):
        raise StudioError(f"{cls_name} in {file} returned a {type(module).__name__}, not an nn.Module.",
                          "Name a torch.nn.Module subclass (or a function returning one).")
    note, trained = "random init (untrained)", False
    if weights:
        wpath = Path(weights).expanduser()
        _check_file(wpath, "weights file")
        obj = _torch_load(wpath, trust)
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, dict):
            raise StudioError(f"{wpath} holds a {type(obj).__name__}, not weights.",
                              "Save them with torch.save(model.state_dict(), path).")
        sd = (_strip_prefixes(dict(obj["state_dict"])) if obj.get("format") == CHECKPOINT_FORMAT
              else _find_state_dict(obj, wpath))
        _load_state_dict(module, sd, str(wpath), f"{file.name}:{cls_name}", suggest_arch=False)
        note, trained = f"weights from {wpath.name}", True
    return LoadedModel(module, spec, "python", None, CIFAR_INPUT, 0, trained, note, True)


def demo_model_path() -> Path:
    """The shipped demo model, installed with the studio (see `studio.engine.demo_files`)."""
    return demo_file(DEMO_MODEL)


def _probe_num_classes(module: nn.Module, spec: str, input_size: tuple[int, int, int]) -> int:
    """Classes from a dry run, for models without a Linear or conv head to read it from."""
    c, h, w = input_size
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, c, h, w))
    except Exception as exc:  # any model code
        raise StudioError(f"Cannot tell how many classes {spec} predicts: it has no Linear head and running it on "
                          f"a 1x{c}x{h}x{w} input failed ({type(exc).__name__}: {exc}).",
                          "Pass --input-size C,H,W matching the model, and --num-classes N.") from exc
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise StudioError(f"{spec} is not a classifier: its output is {shape}, not (batch, classes).",
                          "The studio prunes image classifiers; load one that returns class scores.")
    return int(out.shape[1])


# ---------------------------------------------------------------- entry point

def load_model(spec: str, *, arch: Optional[str] = None, num_classes: Optional[int] = None, trust: bool = False,
               input_size: Optional[tuple[int, int, int]] = None, pretrained: bool = True,
               download: bool = False) -> LoadedModel:
    """Load the model that ``spec`` names; the returned module is in eval mode on the CPU."""
    spec = (spec or "").strip()
    if not spec:
        raise StudioError("No model given.",
                          "Give cifar:NAME, torchvision:NAME, timm:NAME, demo, a .pt/.pth file, or "
                          "file.py:ClassName.")
    if num_classes is not None and num_classes < 1:
        raise StudioError(f"--num-classes must be at least 1, got {num_classes}.", "Give the number of classes.")
    if input_size is not None:
        if len(input_size) != 3 or any(int(v) < 1 for v in input_size):
            raise StudioError(f"Input size {input_size} is not C,H,W with positive numbers.",
                              "Give it like 3,32,32.")
        input_size = tuple(int(v) for v in input_size)  # type: ignore[assignment]
    if arch is not None and not arch.strip():
        arch = None

    py = _PY_SPEC.match(spec)
    if spec.startswith("cifar:"):
        loaded = _load_cifar(spec, spec[len("cifar:"):], num_classes)
    elif spec.startswith("torchvision:"):
        loaded = _load_torchvision(spec, spec[len("torchvision:"):], num_classes, pretrained, download)
    elif spec.startswith("timm:"):
        name = spec[len("timm:"):]
        module, classes, trained, note = load_timm(name, num_classes, pretrained)
        loaded = LoadedModel(module, spec, "timm", f"timm:{name}", timm_input(name), classes, trained, note, True)
    elif spec == "demo":
        path = demo_model_path()
        if not path.is_file():
            raise missing_demo_file(path, "demo model", "`make demo` rebuilds it")
        loaded = _load_file(spec, path, arch, num_classes, trust)
        loaded.kind = "demo"
    elif py:
        loaded = _load_python(spec, Path(py["file"]).expanduser(), py["cls"], py["weights"], num_classes, trust)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            hint = ("Did you mean cifar:{0}? " if spec in CIFAR_MODELS else
                    "Did you mean torchvision:{0}? " if spec in list_torchvision_models() else "").format(spec)
            if hint:  # a bare built-in name is a likelier mistake than a missing file
                raise StudioError(f"No model file named {spec}.", hint + "Built-in models need their prefix.")
        loaded = _load_file(spec, path, arch, num_classes, trust)

    if input_size is not None:
        loaded.input_size = input_size  # type: ignore[assignment]
    found = infer_num_classes(loaded.module)
    if num_classes is not None and found is not None and found != num_classes:
        raise StudioError(f"{spec} predicts {found} classes but {num_classes} were asked.",
                          "Drop --num-classes, or load a model built for that many classes.")
    if not loaded.num_classes:
        loaded.num_classes = num_classes or found or _probe_num_classes(loaded.module, spec, loaded.input_size)
    loaded.module.eval()
    return loaded
