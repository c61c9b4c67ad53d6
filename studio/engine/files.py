"""Safe file writing: every file the engine writes goes through `atomic_write`.

The data goes to a temporary file in the same folder and is renamed over the target only
when complete, so a failed or cancelled write never leaves a partial file and never
damages an existing one.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from studio.engine.errors import StudioError


def ensure_free_space(folder: Path, needed_bytes: int) -> None:
    """Raise a clear error when ``folder``'s disk has less than ``needed_bytes`` free."""
    folder = Path(folder)
    probe = folder if folder.exists() else folder.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise StudioError(
            f"Not enough disk space in {folder}: {needed_bytes / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free.",
            "Free some space or choose another output folder.")


@contextlib.contextmanager
def atomic_write(path: os.PathLike | str) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was.
    A full disk becomes a `StudioError` that says so.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StudioError(f"Cannot create folder {path.parent}: {exc.strerror}.",
                          "Choose a folder you can write to.") from exc
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StudioError(f"The disk is full while writing {path}.",
                              "Free some space and export again; no partial file was left.") from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: os.PathLike | str, text: str) -> Path:
    """Atomically write a UTF-8 text file."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def cache_dir(name: str) -> Path:
    """The user's cache folder for ``name`` (``$STUDIO_CACHE_DIR`` or ``$XDG_CACHE_HOME``/~/.cache).

    Only results that can be recomputed live here (sensitivity curves); deleting it is safe.
    """
    root = os.environ.get("STUDIO_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "compression-studio")
    return Path(root) / name
