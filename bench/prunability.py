"""Benchmark: does any model a user brings prune? The studio and torch-pruning, model by model.

For every model of a set, two runners, each in a child process of its own:

* **studio**: ``python -m studio prune SPEC --rate 0.3 --criterion l1 --export pt --latency none
  --out DIR``, as a new user types it (random weights unless they are already in the local
  cache; no data, so no accuracy; no latency timing, which takes minutes for the largest
  models on a CPU and does not bear on whether they prune).
  Recorded from the exit code, ``DIR/metrics.json`` and stderr: finished (exit 0), the result
  runs (the exported ``model.pt`` was reloaded and compared by the studio), fewer MACs, the
  protected groups, the first error line, and whether stderr says "internal error".
* **tp**: torch-pruning called directly at its defaults on the same architecture and input:
  ``MetaPruner(model, x, MagnitudeImportance(p=1), pruning_ratio=0.3, ignored_layers=[classifier])``
  (the classifier: the last ``nn.Linear``, else the last conv), ``step()``, one forward pass.
  Pass = no exception, the pruned model runs, same output shape, fewer MACs
  (``tp.utils.count_ops_and_params``). This is the comparison the project cites (torch-pruning
  prunes 62 of 80 torchvision models at its defaults).

Sets: ``torchvision`` (every classification model, ``torchvision:NAME``, the input the
studio infers from the weights' metadata), ``timm`` (a sample of widely used CNNs and
hybrids, ``timm:NAME``), ``hard`` (``tests/hard_nets.py``, one tiny net per hard pattern,
given to the studio with ``--input-size 3x16x16``). The direct runner builds the same
architecture itself (random init) at the same input: the default weights' crop size for
torchvision (a ViT: the image size it is built for), timm's pretrained config for timm (224 when neither says). Results go to ``bench/results/prunability.json``, rewritten after every model, so a
long run can be watched and resumed; a run replaces the records of the models it runs and
keeps the others.

Each child gets a wall-clock limit (``--timeout``) and a memory cap (``--mem-cap-gb``). The
cap is enforced by watching the resident memory of the child's whole session (every 0.25 s,
from /proc) and killing it when over: ``RLIMIT_AS`` would count torch's large untouched
virtual reservations, and ``RLIMIT_DATA`` turns an overrun into a MemoryError inside the
child that reads like an engine failure, while the watcher records "over the memory cap"
plainly (a spike shorter than the poll interval can pass the cap unseen). Peak memory is the
kernel's own high-water mark of the child's resident set (``ru_maxrss`` from ``os.wait4`` on
that one child, so not the cumulative maximum RUSAGE_CHILDREN gives over all children).
Wall time is measured around the child, imports included. GB here are 10^9 bytes.

    .venv/bin/python bench/prunability.py --set hard
    .venv/bin/python bench/prunability.py --set torchvision --models resnet18,vit_b_16 --timeout 600
    .venv/bin/python bench/prunability.py --set all --resume          # the full run, resumable
    .venv/bin/python bench/prunability.py --markdown [--per-model]    # the summary of the results file only
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "prunability.json"
HARD_FILE = "tests/hard_nets.py"
HARD_INPUT = "3x16x16"
RATE = 0.3
CRITERION = "l1"
SETS = ("torchvision", "timm", "hard")
RUNNERS = ("studio", "tp")
TIMM_SAMPLE = ("resnet50", "efficientnet_b0", "mobilenetv3_large_100", "convnext_tiny", "regnetx_016",
               "densenet121", "ghostnet_100", "rexnet_100", "dla34", "cspresnet50", "resnext50_32x4d",
               "vit_tiny_patch16_224")
POLL_S = 0.25
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


# ---------------------------------------------------------------------------------------------
# model sets

@dataclass
class Model:
    set: str
    name: str
    spec: str                      # what the studio is given
    input_size: Optional[str]      # --input-size for the studio (None: the studio infers it)


def _child_json(code: str):
    """Run ``code`` in a fresh interpreter (keeps torch out of this process) and parse what it prints."""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def torchvision_models() -> list[Model]:
    """Every torchvision classification model, as ``torchvision:NAME``."""
    names = _child_json("import json, torchvision; "
                        "print(json.dumps(sorted(torchvision.models.list_models(module=torchvision.models))))")
    print(f"torchvision {metadata.version('torchvision')}: {len(names)} classification models")
    return [Model("torchvision", n, f"torchvision:{n}", None) for n in names]


def timm_models() -> list[Model]:
    """The timm sample, as ``timm:NAME``; names this timm does not know are said and skipped."""
    known = _child_json(f"import json, timm; names = {list(TIMM_SAMPLE)!r}; "
                        "print(json.dumps([n for n in names if n in set(timm.list_models())]))")
    missing = [n for n in TIMM_SAMPLE if n not in known]
    print(f"timm {metadata.version('timm')}: {len(known)} of {len(TIMM_SAMPLE)} sample models known"
          + (f" (missing: {', '.join(missing)})" if missing else ""))
    return [Model("timm", n, f"timm:{n}", None) for n in known]


def hard_models() -> list[Model]:
    """Every class in ``tests/hard_nets.py``'s ``ALL``, read with ast (no torch import here)."""
    tree = ast.parse((ROOT / HARD_FILE).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ALL" for t in node.targets):
            names = [elt.id for elt in node.value.elts]
            return [Model("hard", n, f"{HARD_FILE}:{n}", HARD_INPUT) for n in names]
    raise SystemExit(f"{HARD_FILE} has no ALL list")


def select_models(set_name: str, picked: Optional[str]) -> list[Model]:
    """The models of ``set_name`` (or of every set), narrowed to the comma-separated ``picked`` names."""
    listers = {"torchvision": torchvision_models, "timm": timm_models, "hard": hard_models}
    models = [m for s in (SETS if set_name == "all" else (set_name,)) for m in listers[s]()]
    if not picked:
        return models
    wanted = [n.strip() for n in picked.split(",") if n.strip()]
    unknown = [n for n in wanted if not any(n in (m.name, m.spec) for m in models)]
    if unknown:
        raise SystemExit(f"not in --set {set_name}: {', '.join(unknown)}")
    return [m for m in models if m.name in wanted or m.spec in wanted]


# ---------------------------------------------------------------------------------------------
# running one child under a timeout and a memory cap

@dataclass
class ChildResult:
    exit_code: Optional[int]       # negative: killed by that signal
    wall_s: float
    peak_gb: float                 # ru_maxrss of the child (kernel high-water mark)
    killed: str                    # "" or why this script killed it


def session_rss_bytes(sid: int) -> int:
    """Resident memory of every process in session ``sid`` (the child and anything it started)."""
    total = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0   # no /proc: the cap cannot be watched here
    for pid in entries:
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) != sid:       # state, ppid, pgrp, session
                continue
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            continue                        # the process ended while we looked
    return total


def run_child(cmd: list, log_dir: Path, timeout_s: float, cap_bytes: int, env: dict) -> ChildResult:
    """Run ``cmd`` in its own session with stdout/stderr in ``log_dir``; kill it on timeout or over the cap."""
    start = time.perf_counter()
    killed = ""
    with open(log_dir / "stdout.txt", "wb") as out, open(log_dir / "stderr.txt", "wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() - start > timeout_s:
                    killed = f"timeout after {timeout_s:.0f} s"
                elif (rss := session_rss_bytes(proc.pid)) > cap_bytes:
                    killed = f"over the memory cap: {rss / 1e9:.3f} GB resident, cap {_num(cap_bytes / 1e9)} GB"
                if killed:
                    os.killpg(proc.pid, signal.SIGKILL)
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(POLL_S)
        except BaseException:               # Ctrl-C here: leave no child behind
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
                os.wait4(proc.pid, 0)
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)   # reaped here, not by Popen
    return ChildResult(proc.returncode, round(time.perf_counter() - start, 2),
                       round(usage.ru_maxrss * 1024 / 1e9, 3), killed)


def child_env(threads: Optional[int]) -> dict:
    """The environment for children: the user's, headless Qt, and an optional thread count."""
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONUNBUFFERED="1")
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def first_line(text: str, limit: int = 300) -> str:
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[:limit - 1] + "…"


def stderr_lines(log_dir: Path) -> list[str]:
    """The child's stderr as lines (tqdm's carriage returns split too)."""
    path = log_dir / "stderr.txt"
    text = path.read_text(errors="replace") if path.exists() else ""
    return [s.strip() for s in text.splitlines() if s.strip()]


def failure_reason(child: ChildResult, lines: list[str]) -> str:
    """Why a child failed, in one line: this script's kill, the studio's error line, or stderr's last line."""
    if child.killed:
        return child.killed
    said = [s for s in lines if s.startswith(("error:", "internal error:"))]
    if said:
        return first_line(said[-1])
    if child.exit_code is not None and child.exit_code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by signal {-child.exit_code} ({signal.Signals(-child.exit_code).name})"
        return f"killed by signal {-child.exit_code}"
    return first_line(lines[-1]) if lines else f"exit code {child.exit_code}, nothing on stderr"


# ---------------------------------------------------------------------------------------------
# runner 1: the studio's CLI

def studio_command(model: Model, out: Path) -> list:
    # --latency none: timing a 600 M-parameter model on a 2-core CPU takes minutes and says
    # nothing about whether it prunes.
    cmd = [sys.executable, "-m", "studio", "prune", model.spec, "--rate", str(RATE), "--criterion", CRITERION,
           "--export", "pt", "--latency", "none", "--out", str(out)]
    return cmd + (["--input-size", model.input_size] if model.input_size else [])


def read_metrics(run_dir: Path) -> dict:
    """The figures this benchmark keeps from a run folder's metrics.json."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    before, after = metrics["before"], metrics["after"]
    # The pt file, or the TorchScript file the studio writes instead when pickle cannot save the model.
    written = [e for e in metrics.get("exports", []) if e.get("path") and e.get("max_abs_diff") is not None]
    pt = next((e for e in metrics.get("exports", []) if e.get("format") == "pt"), {})
    protected = metrics.get("protected_groups") or []
    return {
        "runs": bool(written),
        "export": written[0]["format"] if written else None,
        "pt_max_abs_diff": pt.get("max_abs_diff"), "pt_note": pt.get("note", ""),
        "fewer_macs": after["macs"] < before["macs"],
        "macs_before": before["macs"], "macs_after": after["macs"],
        "params_before": before["params"], "params_after": after["params"],
        "protected_groups": len(protected),
        "protected": [{"root": p.get("root"), "layers": len(p.get("layers", [])), "why": first_line(p.get("why", ""))}
                      for p in protected],
        "warnings": [first_line(w) for w in metrics.get("warnings", [])],
        "input_size": metrics.get("model", {}).get("input_size"),
        "trained": metrics.get("model", {}).get("trained"),
        "studio_wall_s": metrics.get("wall_seconds"),
    }


def run_studio(model: Model, work: Path, args, env: dict) -> dict:
    """One `studio prune` as a user runs it, and what its exit code, metrics.json and stderr say."""
    out = work / "run"
    cmd = studio_command(model, out)
    child = run_child(cmd, work, args.timeout, int(args.mem_cap_gb * 1e9), env)
    lines = stderr_lines(work)
    shown = ["python"] + ["DIR" if a == str(out) else a for a in cmd[1:]]
    record = {"runner": "studio", "command": " ".join(shown),
              "exit_code": child.exit_code, "finished": child.exit_code == 0 and not child.killed,
              "wall_s": child.wall_s, "peak_gb": child.peak_gb, "killed": child.killed,
              "internal_error": any("internal error" in s for s in lines), "error": ""}
    if record["finished"] and (out / "metrics.json").is_file():
        record.update(read_metrics(out))
    else:
        record.update(runs=False, fewer_macs=False, protected_groups=0)
        record["error"] = failure_reason(child, lines)
        record["stderr_tail"] = [first_line(s) for s in lines[-8:]]
    return record


def studio_reason(r: dict) -> str:
    """Why a studio record does not count as a pruned model that runs with fewer MACs ('' when it does)."""
    if not r.get("finished"):
        return r.get("error") or "did not finish"
    if not r.get("runs"):
        return f"no export reloaded and checked: {r.get('pt_note') or 'no reload comparison'}"
    if not r.get("fewer_macs"):
        return f"MACs not reduced ({r.get('macs_before'):,} → {r.get('macs_after'):,})"
    return ""


# ---------------------------------------------------------------------------------------------
# runner 2: torch-pruning directly, at its defaults (runs inside the child: --tp-child)

def build_direct(spec: str):
    """The same architecture the studio loads, built without the studio: (model, input size)."""
    import torch
    prefix, _, name = spec.partition(":")
    if prefix == "torchvision":
        import torchvision
        try:
            crop = torchvision.models.get_model_weights(name).DEFAULT.transforms().crop_size[0]
        except (ValueError, KeyError, AttributeError):   # no published weights: 224, as the studio does
            crop = 224
        model = torchvision.models.get_model(name, weights=None)
        side = int(getattr(model, "image_size", crop))   # a ViT built without weights is for its own size
        return model, (3, side, side)
    if prefix == "timm":
        import timm
        cfg = timm.models.get_pretrained_cfg(name)
        size = tuple(getattr(cfg, "input_size", None) or (3, 224, 224))
        return timm.create_model(name, pretrained=False), size
    import importlib.util
    file, _, cls = spec.rpartition(":")
    module_spec = importlib.util.spec_from_file_location("prunability_user_model", ROOT / file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module     # as an import would: TorchScript and pickling look it up
    module_spec.loader.exec_module(module)
    torch.manual_seed(0)
    return getattr(module, cls)(), tuple(int(v) for v in HARD_INPUT.split("x"))


def classifier_of(model):
    """(name, module) of the final classifier: the last nn.Linear, else the last conv."""
    from torch import nn
    for kinds in ((nn.Linear,), (nn.Conv2d, nn.Conv1d)):
        found = [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]
        if found:
            return found[-1]
    return None, None


def output_shapes(out) -> list:
    """Shapes of every tensor in a model output (tensor, tuple/list, dict, namedtuple)."""
    import torch
    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    if isinstance(out, dict):
        out = [out[k] for k in sorted(out)]
    if isinstance(out, (list, tuple)):
        return [s for item in out for s in output_shapes(item)]
    return []


def tp_direct(spec: str) -> dict:
    """Prune ``spec`` with torch-pruning's MetaPruner at its defaults; which stage failed, if any."""
    import torch
    import torch_pruning as tp
    torch.manual_seed(0)
    result = {"stage": "build", "pass": False}
    try:
        model, size = build_direct(spec)
        model.eval()
        x = torch.randn(1, *size)
        result.update(input_size=list(size), stage="forward before")
        with torch.no_grad():
            shapes = output_shapes(model(x))
        macs0, params0 = tp.utils.count_ops_and_params(model, x)
        name, head = classifier_of(model)
        result.update(classifier=name, macs_before=int(macs0), params_before=int(params0), stage="trace")
        pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=RATE, ignored_layers=[head] if head is not None else [])
        result["stage"] = "step"
        pruner.step()
        result["stage"] = "forward after"
        with torch.no_grad():
            after = output_shapes(model(x))
        result.update(runs=True, same_shape=after == shapes, stage="count")
        macs1, params1 = tp.utils.count_ops_and_params(model, x)
        result.update(macs_after=int(macs1), params_after=int(params1), fewer_macs=macs1 < macs0, stage="done")
        if not result["same_shape"]:
            result["error"] = f"output shape changed from {shapes} to {after}"
        elif not result["fewer_macs"]:
            result["error"] = f"MACs not reduced ({int(macs0):,} → {int(macs1):,})"
        result["pass"] = result["same_shape"] and result["fewer_macs"]
    except Exception as exc:   # the benchmark's subject: any failure of torch-pruning or the model
        result["error"] = first_line(f"{result['stage']}: {type(exc).__name__}: {exc}")
    return result


def tp_child_main(spec: str, out_file: str) -> int:
    """Entry point of the torch-pruning child: run `tp_direct` and write its result as JSON."""
    Path(out_file).write_text(json.dumps(tp_direct(spec)))
    return 0


def run_tp(model: Model, work: Path, args, env: dict) -> dict:
    """The torch-pruning child for ``model``, with the same limits as the studio's."""
    out_file = work / "tp.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--tp-child", model.spec, "--child-out", str(out_file)]
    child = run_child(cmd, work, args.timeout, int(args.mem_cap_gb * 1e9), env)
    record = {"runner": "tp", "exit_code": child.exit_code, "wall_s": child.wall_s, "peak_gb": child.peak_gb,
              "killed": child.killed}
    if child.exit_code == 0 and out_file.is_file():
        record.update(json.loads(out_file.read_text()))
    else:
        record.update({"pass": False, "stage": "child", "error": failure_reason(child, stderr_lines(work))})
    return record


# ---------------------------------------------------------------------------------------------
# the results file

def machine_line() -> str:
    """CPU, cores, memory, GPU and versions, as docs/BENCHMARKS.md states a machine."""
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError, AttributeError):
        mem = float("nan")
    gpus = sorted(os.listdir("/proc/driver/nvidia/gpus")) if os.path.isdir("/proc/driver/nvidia/gpus") else []
    versions = ", ".join(f"{p} {_version(p)}" for p in ("torch", "torchvision", "timm", "torch-pruning"))
    return (f"{cpu_model()}, {os.cpu_count()} cores, {mem:.0f} GiB, "
            f"{f'{len(gpus)} NVIDIA GPU(s)' if gpus else 'no GPU'} (children run on the CPU), {versions}, "
            f"Python {platform.python_version()}")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def load_results(path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    return {"meta": {}, "records": []}


def save_results(path: Path, results: dict) -> None:
    """Write atomically, so a watcher or a killed run never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, path)


def put_record(results: dict, record: dict) -> None:
    """Add ``record``, replacing an earlier one of the same model and runner."""
    key = (record["spec"], record["runner"])
    results["records"] = [r for r in results["records"] if (r["spec"], r["runner"]) != key] + [record]


def done_keys(results: dict) -> set:
    return {(r["spec"], r["runner"]) for r in results["records"]}


# ---------------------------------------------------------------------------------------------
# the summary

def by_model(records: list) -> dict:
    """{spec: {"set":…, "name":…, "studio": record, "tp": record}} in first-seen order."""
    models: dict = {}
    for r in records:
        entry = models.setdefault(r["spec"], {"set": r["set"], "name": r["model"]})
        entry[r["runner"]] = r
    return models


def set_line(entries: list) -> str:
    """'studio: N/M finish, …; torch-pruning direct: N/M' for one set."""
    studio = [e["studio"] for e in entries if "studio" in e]
    tp = [e["tp"] for e in entries if "tp" in e]
    parts = []
    if studio:
        finish = sum(bool(r.get("finished")) for r in studio)
        good = sum(not studio_reason(r) for r in studio)
        protected = sum(r.get("protected_groups", 0) > 0 for r in studio)
        internal = sum(bool(r.get("internal_error")) for r in studio)
        parts.append(f"studio: {finish}/{len(studio)} finish, {good} run with fewer MACs, "
                     f"{protected} with protected groups, {internal} internal error{'' if internal == 1 else 's'}")
    if tp:
        parts.append(f"torch-pruning direct: {sum(bool(r.get('pass')) for r in tp)}/{len(tp)}")
    return "; ".join(parts)


def _num(value) -> str:
    """600.0 → '600', 0.5 → '0.5', None → '?'."""
    return "?" if value is None else f"{value:g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def failure_table(entries: list) -> list[str]:
    """Rows for every model that failed in either runner, with each runner's reason."""
    rows = []
    for e in entries:
        s = studio_reason(e["studio"]) if "studio" in e else "not run"
        t = ("" if e["tp"].get("pass") else e["tp"].get("error") or "failed") if "tp" in e else "not run"
        if s or t:
            rows.append(f"| {e['set']} | {e['name']} | {_cell(s) or 'ok'} | {_cell(t) or 'pass'} |")
    if not rows:
        return ["No model failed in either runner."]
    return ["| set | model | studio | torch-pruning direct |", "| --- | --- | --- | --- |", *rows]


def per_model_table(entries: list) -> list[str]:
    """Every model's figures from both runners."""
    rows = [("| set | model | studio finished | runs | fewer MACs | MACs ratio | protected groups | wall s | peak GB "
             "| tp direct | tp wall s | tp peak GB |"),
            "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    yes = {True: "yes", False: "no", None: "—"}
    for e in entries:
        s, t = e.get("studio", {}), e.get("tp", {})
        ratio = (f"{s['macs_before'] / max(s['macs_after'], 1):.2f}×" if s.get("macs_after") else "—")
        tp_cell = "—" if not t else ("pass" if t.get("pass") else f"fail ({_cell(t.get('stage', ''))})")
        rows.append(f"| {e['set']} | {e['name']} | {yes[s.get('finished')]} | {yes[s.get('runs')]} | "
                    f"{yes[s.get('fewer_macs')]} | {ratio} | {s.get('protected_groups', '—')} | "
                    f"{s.get('wall_s', '—')} | {s.get('peak_gb', '—')} | {tp_cell} | {t.get('wall_s', '—')} | "
                    f"{t.get('peak_gb', '—')} |")
    return rows


def summary(results: dict, specs: Optional[set] = None, per_model: bool = False) -> str:
    """The markdown summary of ``results`` (only the models in ``specs`` when given)."""
    records = [r for r in results["records"] if specs is None or r["spec"] in specs]
    models = by_model(sorted(records, key=lambda r: SETS.index(r["set"])))
    meta = results.get("meta", {})
    lines = [f"Rate {RATE}, {CRITERION}, random weights, no data; each runner in its own child process. "
             "Commands that wrote these results:", ""]
    lines += [f"    {c['command']}    # {c['date'][:10]}, timeout {_num(c['timeout_s'])} s, "
              f"memory cap {_num(c['mem_cap_gb'])} GB" for c in meta.get("commands", [])]
    lines.append("")
    for set_name in SETS:
        entries = [e for e in models.values() if e["set"] == set_name]
        if entries:
            lines.append(f"- **{set_name}** ({len(entries)} model{'' if len(entries) == 1 else 's'}): {set_line(entries)}")
    lines += ["", *failure_table(list(models.values()))]
    if per_model:
        lines += ["", *per_model_table(list(models.values()))]
    wall = {k: sum(r.get("wall_s", 0) for r in records if r["runner"] == k) for k in RUNNERS}
    dates = sorted({r["date"][:10] for r in records if r.get("date")})
    lines += ["", (f"Total wall time: {sum(wall.values()):,.0f} s (studio {wall['studio']:,.0f} s, "
                   f"torch-pruning direct {wall['tp']:,.0f} s). Machine: {meta.get('machine', '?')}. "
                   f"Date: {', '.join(dates) or '?'}.")]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# main

def benchmark(models: list[Model], args) -> dict:
    """Run both runners on every model, saving the results file after each record."""
    results = load_results(args.results)
    invocation = {"command": ".venv/bin/python bench/prunability.py " + " ".join(sys.argv[1:]),
                  "timeout_s": args.timeout, "mem_cap_gb": args.mem_cap_gb,
                  "date": datetime.datetime.now().isoformat(timespec="seconds")}
    runners = [r.strip() for r in args.runners.split(",") if r.strip()]
    skip = done_keys(results) if args.resume else set()
    env = child_env(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="prunability-", dir=args.work_dir))
    try:
        for i, model in enumerate(models, 1):
            said = []
            for runner in runners:
                if (model.spec, runner) in skip:
                    said.append(f"{runner}: kept")
                    continue
                work = scratch / f"{model.set}-{model.name}-{runner}"
                work.mkdir()
                record = (run_studio if runner == "studio" else run_tp)(model, work, args, env)
                record.update(set=model.set, model=model.name, spec=model.spec,
                              date=datetime.datetime.now().isoformat(timespec="seconds"))
                if invocation:   # noted with the first record it writes: a --resume with nothing left adds none
                    results["meta"].update(machine=machine_line(), rate=RATE, criterion=CRITERION)
                    results["meta"].setdefault("commands", []).append(invocation)
                    invocation = None
                put_record(results, record)
                save_results(args.results, results)
                said.append(progress_text(record))
                if not args.keep_runs:
                    shutil.rmtree(work, ignore_errors=True)
            print(f"[{i}/{len(models)}] {model.spec}: " + " | ".join(said), flush=True)
    finally:
        if args.keep_runs:
            print(f"run folders and child logs kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return results


def progress_text(r: dict) -> str:
    """One runner's outcome for the progress line."""
    if r["runner"] == "studio":
        how = studio_reason(r) or f"ok, MACs {r['macs_before'] / max(r['macs_after'], 1):.2f}× fewer, " \
                                  f"{r['protected_groups']} protected"
        return f"studio: {how} ({r['wall_s']:.1f} s, {r['peak_gb']:.2f} GB)"
    how = "pass" if r.get("pass") else f"fail: {r.get('error', '')}"
    return f"tp: {how} ({r['wall_s']:.1f} s, {r['peak_gb']:.2f} GB)"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", default="all", choices=(*SETS, "all"), help="model set (default: all)")
    p.add_argument("--models", help="comma-separated names within the set (e.g. resnet18,vit_b_16)")
    p.add_argument("--resume", action="store_true", help="skip models (per runner) already in the results file")
    p.add_argument("--runners", default="studio,tp", help="studio, tp or both (default: studio,tp)")
    p.add_argument("--timeout", type=float, default=900, help="per-model, per-runner wall-clock limit in s")
    p.add_argument("--mem-cap-gb", type=float, default=14, help="kill a child whose resident memory passes this")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the children (default: torch's own)")
    p.add_argument("--results", type=Path, default=RESULTS, help=f"results file (default: {RESULTS.relative_to(ROOT)})")
    p.add_argument("--work-dir", help="where the children's run folders go (default: the system temp folder)")
    p.add_argument("--keep-runs", action="store_true", help="keep the run folders and child logs")
    p.add_argument("--markdown", action="store_true", help="only print the summary of the existing results file")
    p.add_argument("--per-model", action="store_true", help="add a table of every model's figures to the summary")
    p.add_argument("--tp-child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not {r.strip() for r in args.runners.split(",") if r.strip()} <= set(RUNNERS):
        p.error(f"--runners takes {', '.join(RUNNERS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.tp_child:
        return tp_child_main(args.tp_child, args.child_out)
    if args.markdown:
        if not args.results.is_file():
            raise SystemExit(f"no results file at {args.results}")
        print(summary(load_results(args.results), per_model=args.per_model))
        return 0
    started = time.perf_counter()
    models = select_models(args.set, args.models)
    results = benchmark(models, args)
    print("\n" + summary(results, {m.spec for m in models}, per_model=args.per_model))
    print(f"\nThis invocation: {time.perf_counter() - started:,.0f} s for {len(models)} model(s); "
          f"results in {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
