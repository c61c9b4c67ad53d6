"""Install check: a studio pip-installed from its wheel into an empty venv opens the demo.

1. builds the wheel from a copy of the project's sources (`pip wheel --no-deps`);
2. creates a fresh venv (`python -m venv`, no system site-packages) and `pip install`s the
   wheel into it, dependencies and all, from the indexes pip is configured with;
3. checks that the installed studio is the venv's and reads the demo files from its own
   package (`studio.resources` in site-packages), not from this checkout;
4. runs `studio prune demo --rate 0.3 --data demo` from a folder outside the project and
   checks the run folder it writes;
5. starts `studio --demo` (offscreen Qt) and checks that it is still up, with no traceback,
   after --gui-seconds.

    .venv/bin/python bench/install_check.py [--workdir DIR] [--keep] [--gui-seconds 60]

Downloads nothing when the dependencies lie in a local index; the torch wheels alone are
several GB unpacked, so the install step takes minutes. Results go to --results as JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "studio", "resources")
RUN_FILES = ("recipe.json", "metrics.json", "report.html", "model.pt", "model.ckpt.pt")
LOOKUP = """
import json, sys, studio
from studio.engine import demo_files
from studio.engine.models import demo_model_path
from studio.engine.data import demo_path
import torch
print(json.dumps({"python": sys.executable, "studio": studio.__file__, "torch_cuda": torch.version.cuda,
                  "files": {n: str(demo_files.demo_file(n)) for n in demo_files.SHIPPED},
                  "model": str(demo_model_path()), "subset": str(demo_path()),
                  "card_beside_model": (demo_model_path().parent / "model_card.json").is_file()}))
"""


def clean_env() -> dict:
    """This process's environment without anything pointing Python at the checkout or its venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(REPO)))
    return env


def step(name: str, cmd: list, *, cwd: Path, timings: dict, env=None, timeout=3600) -> str:
    shown = " ".join("<script>" if "\n" in str(c) else str(c) for c in cmd)
    print(f"▸ {name}: {shown}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(list(map(str, cmd)), cwd=cwd, env=env or clean_env(), capture_output=True, check=False,
                          text=True, timeout=timeout)
    timings[name] = round(time.perf_counter() - start, 1)
    if done.returncode != 0:
        sys.exit(f"{name} failed (exit {done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    print(f"  {timings[name]} s", flush=True)
    return done.stdout


def build_wheel(work: Path, timings: dict) -> Path:
    src = work / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        (shutil.copytree(REPO / name, src / name, ignore=ignore) if (REPO / name).is_dir()
         else shutil.copy2(REPO / name, src / name))
    step("build wheel", [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                         "-w", work / "dist", src], cwd=work, timings=timings, env=dict(os.environ))
    (wheel,) = (work / "dist").glob("compression_studio-*.whl")
    return wheel


def distribution(line: str) -> tuple[str, str]:
    """(normalised name, version) from a `name==version` line of `pip list --format=freeze`."""
    name, version = line.strip().split("==", 1)
    return re.sub(r"[-_.]+", "-", name).lower(), version


def check_gui(studio: Path, cwd: Path, seconds: float) -> dict:
    """`studio --demo` under offscreen Qt: still running after `seconds`, and no traceback printed."""
    env = clean_env() | {"QT_QPA_PLATFORM": "offscreen"}
    log = cwd / "gui.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(studio), "--demo"], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=seconds)
            alive = False
        except subprocess.TimeoutExpired:
            alive = True
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = log.read_text(errors="replace")
    return {"seconds": seconds, "still_running": alive, "exit": None if alive else proc.returncode,
            "traceback": "Traceback" in text, "log_tail": text[-1500:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--workdir", type=Path, help="where the wheel, venv and run go (default: a new temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the workdir (default: removed when done)")
    ap.add_argument("--gui-seconds", type=float, default=60, help="how long `studio --demo` must stay up (0: skip)")
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "install-check.json")
    args = ap.parse_args()

    work = (args.workdir or Path(tempfile.mkdtemp(prefix="studio-install-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if work.is_relative_to(REPO):
        sys.exit(f"--workdir {work} is inside the project: the check must run outside it.")
    timings: dict = {}
    start = time.perf_counter()
    try:
        wheel = build_wheel(work, timings)
        wheel_bytes = wheel.stat().st_size
        venv = work / "venv"
        step("create venv", [sys.executable, "-m", "venv", venv], cwd=work, timings=timings)
        py, studio = venv / "bin" / "python", venv / "bin" / "studio"
        step("pip install wheel", [py, "-m", "pip", "install", "--quiet", wheel], cwd=work, timings=timings)
        installed = dict(distribution(line) for line in
                         step("pip list", [py, "-m", "pip", "list", "--format=freeze"], cwd=work,
                              timings=timings).splitlines() if "==" in line)
        elsewhere = work / "elsewhere"
        elsewhere.mkdir()
        lookup = json.loads(step("resource lookup", [py, "-c", LOOKUP], cwd=elsewhere, timings=timings))
        site = str(venv / "lib")
        assert lookup["python"].startswith(str(venv)), lookup
        assert lookup["studio"].startswith(site), f"studio imported from {lookup['studio']}, not the venv"
        for name, path in lookup["files"].items():
            assert path.startswith(site) and Path(path).is_file(), f"{name}: {path}"
        assert lookup["card_beside_model"], lookup

        run = elsewhere / "run"
        step("studio prune demo", [studio, "prune", "demo", "--rate", "0.3", "--data", "demo",
                                   "--eval-batches", "4", "--out", run], cwd=elsewhere, timings=timings)
        missing = [f for f in RUN_FILES if not (run / f).is_file()]
        assert not missing, f"the run folder lacks {missing}"
        metrics = json.loads((run / "metrics.json").read_text())
        run_files = sorted(f.name for f in run.iterdir())
        venv_bytes = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())

        gui = None
        if args.gui_seconds > 0:
            print(f"▸ studio --demo for {args.gui_seconds:g} s (offscreen)", flush=True)
            gui_start = time.perf_counter()
            gui = check_gui(studio, elsewhere, args.gui_seconds)
            timings["studio --demo"] = round(time.perf_counter() - gui_start, 1)
            assert gui["still_running"] and not gui["traceback"], gui
        total = round(time.perf_counter() - start, 1)   # before the 6 GB venv is removed
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    result = {
        "date": datetime.date.today().isoformat(),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "wheel": {"name": wheel.name, "bytes": wheel_bytes},
        "installed": {k: installed.get(k) for k in ("compression-studio", "torch", "torchvision", "torch-pruning",
                                                    "pyside6-essentials", "onnxruntime", "numpy")},
        "packages_installed": len(installed),
        "venv_gb": round(venv_bytes / 1e9, 2),
        "torch_cuda_build": lookup["torch_cuda"],
        "timings_s": timings | {"total": total},
        "demo_files": {n: p.split("site-packages/")[-1] for n, p in lookup["files"].items()},
        "prune": {"model": metrics["model"]["spec"], "data": metrics["data"]["spec"],
                  "kind": metrics["model"]["kind"], "params": [metrics["before"]["params"], metrics["after"]["params"]],
                  "top1": [metrics["before"]["top1"], metrics["after"]["top1"]],
                  "run_files": run_files},
        "gui": gui and {k: v for k, v in gui.items() if k != "log_tail"},
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"install check passed: written {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
