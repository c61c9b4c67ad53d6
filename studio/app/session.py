"""What the studio remembers between runs: session files, the crash autosave and recent files.

A session (``.studio``, JSON) holds the model and data the user opened, the recipe being
edited, the run folders listed in the Runs panel and a little view state. It is written
atomically, so a crash while saving never damages the previous file.

Trust is never restored silently: ``model["trust"]`` records that the model was a full pickle
the user agreed to open, but reopening a session must load it with ``trust=False`` first and,
when the loader refuses the pickle (`studio.app.dialogs.model_needs_trust`), ask the user again.
A session file can come from anyone; a flag in it must not be enough to run code.
"""
from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from PySide6.QtCore import QObject, QSettings, QStandardPaths, QTimer, Signal

from studio.engine.errors import StudioError
from studio.engine.files import write_text
from studio.engine.jobs import Recipe

SESSION_FORMAT = "compression-studio/session"
SESSION_VERSION = 1
SESSION_SUFFIX = ".studio"
MODEL_KEYS = ("spec", "arch", "num_classes", "input_size", "pretrained", "trust")


@dataclass
class Session:
    """The user's work: what was opened, the recipe being edited and the runs listed.

    ``model`` holds load_model's arguments (spec, arch, num_classes, input_size, pretrained,
    trust) or is None; ``trust`` is a reminder to ask again, never permission (see the module
    docstring). ``data`` is a load_data spec or None. ``recipe`` is `Recipe.to_dict()`.
    """
    model: Optional[dict] = None
    data: Optional[str] = None
    recipe: dict = field(default_factory=lambda: Recipe().to_dict())
    runs: list = field(default_factory=list)
    view: dict = field(default_factory=dict)
    version: int = SESSION_VERSION

    def to_dict(self) -> dict:
        return {"format": SESSION_FORMAT, "version": self.version, "model": self.model, "data": self.data,
                "recipe": self.recipe, "runs": [str(r) for r in self.runs], "view": self.view}


def save_session(session: Session, path) -> Path:
    """Write ``session`` to ``path`` as pretty JSON, atomically (the old file survives a failed write)."""
    try:
        text = json.dumps(session.to_dict(), indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:  # a non-JSON value in view or model: a bug, but say where
        raise StudioError(f"The session cannot be saved as JSON ({exc}).",
                          "Report this as a bug; the previous session file was left unchanged.") from exc
    return write_text(path, text + "\n")


def _check_recipe(recipe, path: Path) -> None:
    """Refuse a recipe the engine cannot read, but accept one that is only unfinished.

    `Recipe.from_dict` also validates the recipe as a runnable job, and a session may be saved
    mid-edit, e.g. with fine-tune epochs set before any data was opened: such a recipe is
    checked again with placeholder data and accepted when that was its only problem.
    """
    try:
        Recipe.from_dict(recipe)
        return
    except StudioError as exc:
        first = exc
    data = recipe.get("data") if isinstance(recipe, dict) else None
    if isinstance(data, dict) and not data.get("spec"):
        trial = copy.deepcopy(recipe)
        trial["data"]["spec"] = "demo"
        try:
            Recipe.from_dict(trial)
            return
        except StudioError:
            pass
    raise StudioError(f"Session {path} holds a recipe this studio cannot read: {first.problem}",
                      first.fix or "Fix the recipe in the file, or start a new session.") from first


def _bad(path: Path, what: str) -> StudioError:
    return StudioError(f"Session {path} is damaged: {what}.",
                       "Open another session, or start a new one (the file was left unchanged).")


def load_session(path) -> Session:
    """Read a session file; every problem is a StudioError saying what is wrong and what to do."""
    path = Path(path)
    if not path.is_file():
        raise StudioError(f"Session file not found: {path}.", "Check the path, or pick it from File ▸ Open Session.")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StudioError(f"Session {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).",
                          "The file may be truncated or edited by hand; fix the JSON or start a new "
                          "session.") from exc
    except UnicodeDecodeError as exc:
        raise StudioError(f"{path} is not a session file (it is not text).",
                          f"Open a {SESSION_SUFFIX} file saved by Compression Studio.") from exc
    except OSError as exc:
        raise StudioError(f"Cannot read session {path}: {exc.strerror}.", "Check that the file is readable.") from exc
    if not isinstance(d, dict) or d.get("format") != SESSION_FORMAT:
        hint = (" It looks like a recipe: open it with File ▸ Open Recipe." if isinstance(d, dict) and "plan" in d
                else "")
        raise StudioError(f"{path} is not a Compression Studio session.{hint}",
                          f"Open a {SESSION_SUFFIX} file saved by Compression Studio.")
    version = d.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _bad(path, f"its version {version!r} is not a number")
    if version > SESSION_VERSION:
        raise StudioError(f"Session {path} was saved by a newer Compression Studio (session version {version}; "
                          f"this one reads up to {SESSION_VERSION}).",
                          "Update Compression Studio to open it.")
    model = d.get("model")
    if model is not None:
        if not isinstance(model, dict) or not isinstance(model.get("spec"), str):
            raise _bad(path, "'model' must be an object with a 'spec' string, or null")
        unknown = sorted(set(model) - set(MODEL_KEYS))
        if unknown:
            raise _bad(path, f"'model' has unknown keys {', '.join(unknown)}")
        model = {**{k: None for k in MODEL_KEYS}, "pretrained": True, "trust": False, **model}
        if model["input_size"] is not None:
            model["input_size"] = tuple(model["input_size"])
    data = d.get("data")
    if data is not None and not isinstance(data, str):
        raise _bad(path, "'data' must be a data spec string or null")
    runs = d.get("runs", [])
    if not isinstance(runs, list) or not all(isinstance(r, str) for r in runs):
        raise _bad(path, "'runs' must be a list of folder paths")
    view = d.get("view", {})
    if not isinstance(view, dict):
        raise _bad(path, "'view' must be an object")
    recipe = d.get("recipe")
    if not isinstance(recipe, dict):
        raise _bad(path, "it has no 'recipe' object")
    _check_recipe(recipe, path)
    return Session(model=model, data=data, recipe=recipe, runs=runs, view=view, version=SESSION_VERSION)


# ---------------------------------------------------------------- autosave

def autosave_path() -> Path:
    """Where the crash autosave lives: the per-user application data folder."""
    folder = QStandardPaths.writableLocation(QStandardPaths.AppDataLocation)
    return Path(folder or Path.home() / ".compression-studio") / "autosave.studio"


def pending_restore(path) -> Optional[Session]:
    """The session a crash left in ``path``, or None when there is none.

    A damaged autosave is renamed to ``*.corrupt`` (kept for a bug report, out of the way of
    the next start) and None is returned: a broken autosave must never stop the studio opening.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return load_session(path)
    except Exception:  # any failure to read it means there is nothing usable to restore
        try:
            os.replace(path, path.with_name(path.name + ".corrupt"))
        except OSError:
            pass  # read-only folder: the file stays; the next start will try (and fail) again
        return None


class Autosaver(QObject):
    """Writes the session to ``path`` at most every ``interval_ms`` while there are unsaved changes.

    `mark_dirty` starts a single-shot timer, so the first change after a save is on disk within
    ``interval_ms`` and a burst of edits costs one write. Failures are reported by `failed`
    instead of raised: an autosave that cannot write must not interrupt the user.
    """

    saved = Signal(str)       # path written
    failed = Signal(str)      # why it could not be written

    def __init__(self, path, snapshot: Callable[[], Session], interval_ms: int = 30000,
                 parent: Optional[QObject] = None):
        super().__init__(parent)
        self.path = Path(path)
        self._snapshot = snapshot
        self._dirty = False
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.save_now)

    @property
    def dirty(self) -> bool:
        return self._dirty

    def mark_dirty(self) -> None:
        """Note a change; it is written when the timer fires."""
        self._dirty = True
        if not self._timer.isActive():
            self._timer.start()

    def save_now(self) -> bool:
        """Write the snapshot now if anything changed; True when the file is up to date."""
        self._timer.stop()
        if not self._dirty:
            return True
        try:
            save_session(self._snapshot(), self.path)
        except (StudioError, OSError) as exc:
            # Stay dirty so the next change retries; the previous autosave file is intact.
            self.failed.emit(str(exc))
            return False
        self._dirty = False
        self.saved.emit(str(self.path))
        return True

    def discard(self) -> None:
        """On a clean exit: stop saving and remove the autosave so the next start offers no restore."""
        self._timer.stop()
        self._dirty = False
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass  # nothing more to do: at worst the next start offers an up-to-date restore


# ---------------------------------------------------------------- recent files

# Entries that name built-in things rather than files: never dropped for not existing.
_SPEC_ENTRY = re.compile(r"^(demo|synthetic(:.*)?|cifar:\w+|torchvision:\w+)$", re.IGNORECASE)
_PY_ENTRY = re.compile(r"^(?P<file>.+?\.py):[A-Za-z_]\w*(:.+)?$")


class RecentFiles:
    """Most-recently-used models, data and sessions, kept in QSettings under ``recent/<kind>``."""

    KINDS = ("models", "data", "sessions")

    def __init__(self, settings: QSettings, limit: int = 10):
        self.settings = settings
        self.limit = limit

    def _key(self, kind: str) -> str:
        if kind not in self.KINDS:
            raise ValueError(f"unknown recent-file kind {kind!r}; expected one of {self.KINDS}")
        return f"recent/{kind}"

    def _stored(self, kind: str) -> list[str]:
        value = self.settings.value(self._key(kind), [])
        # INI files give back a single-item list as a plain string, and an empty one as None.
        if value is None:
            return []
        if isinstance(value, str):
            return [value] if value else []
        return [str(v) for v in value]

    def add(self, kind: str, entry) -> None:
        """Put ``entry`` (a path or a spec) first, removing an older copy of it."""
        entry = str(entry)
        entries = [e for e in self._stored(kind) if e != entry]
        self.settings.setValue(self._key(kind), [entry, *entries][: self.limit])

    @staticmethod
    def _available(entry: str) -> bool:
        if _SPEC_ENTRY.match(entry) or Path(entry).expanduser().exists():
            return True
        py = _PY_ENTRY.match(entry)
        return bool(py and Path(py["file"]).expanduser().is_file())

    def list(self, kind: str) -> list[str]:
        """Entries most recent first, without files that no longer exist.

        Missing files are hidden, not forgotten: a file on an unplugged drive comes back when
        the drive does.
        """
        return [e for e in self._stored(kind) if self._available(e)][: self.limit]

    def clear(self, kind: str) -> None:
        self.settings.remove(self._key(kind))
