"""Compression Studio desktop GUI (PySide6): `main()` opens the window.

The window lives in `studio.app.main_window`; it is imported inside `main` so that
``import studio.app`` stays cheap for the CLI.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Optional, Sequence

ORGANIZATION = "CompressionStudio"
APPLICATION = "Compression Studio"


def _debian_package(soname: str) -> str:
    """libxcb-icccm.so.4 → libxcb-icccm4, libxkbcommon-x11.so.0 → libxkbcommon-x11-0 (Debian's naming)."""
    m = re.match(r"(lib.+?)\.so\.(\d+)", soname)
    if not m:
        return soname
    name, version = m.groups()
    return f"{name}-{version}" if name[-1].isdigit() else f"{name}{version}"


def missing_display_libraries() -> list[str]:
    """System libraries Qt's X11 plugin needs and cannot find (Linux only; empty elsewhere).

    Without them Qt aborts with a one-line "could not load the Qt platform plugin" message;
    naming the libraries lets the user fix it with one command.
    """
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM", "xcb") != "xcb" \
            or not shutil.which("ldd"):
        return []
    import ctypes.util

    import PySide6
    qt = Path(PySide6.__file__).parent / "Qt"
    libs = [qt / "plugins" / "platforms" / "libqxcb.so", qt / "lib" / "libQt6XcbQpa.so.6"]
    missing: list[str] = []
    for lib in (p for p in libs if p.is_file()):
        try:
            out = subprocess.run(["ldd", str(lib)], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        missing += [line.split()[0] for line in out.splitlines() if "not found" in line]
    if ctypes.util.find_library("xcb-cursor") is None:   # loaded at run time, so ldd cannot see it
        missing.append("libxcb-cursor.so.0")
    return sorted(set(missing))


def display_problem() -> Optional[str]:
    """Why the window cannot open here, in words that say what to do; None when it can."""
    if sys.platform.startswith("linux") and not os.environ.get("QT_QPA_PLATFORM") \
            and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return ("No display found (neither DISPLAY nor WAYLAND_DISPLAY is set), so the studio window cannot "
                "open. Run it on a desktop session, use `xvfb-run make run` on a server, or use the command "
                "line: `.venv/bin/studio prune demo --data demo --finetune-epochs 1 --out runs/demo`.")
    missing = missing_display_libraries() if os.environ.get("DISPLAY") else []
    if missing:
        packages = " ".join(_debian_package(lib) for lib in missing)
        return (f"Qt's X11 plugin needs system libraries that are missing: {', '.join(missing)}. "
                f"On Debian/Ubuntu: sudo apt install {packages} "
                "(Fedora: sudo dnf install xcb-util-cursor xcb-util-wm xcb-util-keysyms). Then run again.")
    return None


def install_error_hook(window) -> None:
    """Show unexpected exceptions raised in Qt callbacks as a dialog instead of losing them."""
    from studio.app import dialogs

    def hook(kind, value, tb):
        details = "".join(traceback.format_exception(kind, value, tb))
        sys.__stderr__.write(details)
        if isinstance(value, KeyboardInterrupt):
            return
        try:
            window._fail(value, details)
        except Exception:  # noqa: BLE001 - never let the hook itself raise
            dialogs.show_error(None, value, details)

    sys.excepthook = hook


def main(demo: bool = False, argv: Optional[Sequence[str]] = None) -> int:
    """Run the studio; with ``demo`` it opens the shipped model and data. Returns the exit code."""
    problem = display_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from PySide6.QtWidgets import QApplication, QMessageBox

    app = QApplication.instance() or QApplication(list(argv) if argv is not None else sys.argv[:1])
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)

    from studio.app.main_window import MainWindow
    from studio.app.session import autosave_path, pending_restore

    window = MainWindow()
    install_error_hook(window)
    window.show()
    crashed = pending_restore(autosave_path())
    if crashed is not None and QMessageBox.question(
            window, "Restore the last session?",
            "The studio did not close cleanly last time. Restore the model, data, plan and runs it had open?"
    ) == QMessageBox.StandardButton.Yes:
        window.restore_session(crashed)
    elif demo:
        window.open_demo()
    return app.exec()
