"""Session files, the crash autosave and the recent-files lists."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import QSettings  # noqa: E402

from studio.app.session import (  # noqa: E402
    Autosaver,
    RecentFiles,
    Session,
    autosave_path,
    load_session,
    pending_restore,
    save_session,
)
from studio.engine.errors import StudioError  # noqa: E402
from studio.engine.jobs import Recipe  # noqa: E402


def sample_session() -> Session:
    recipe = Recipe()
    recipe.plan.rate = 0.4
    recipe.plan.layer_rates = {"layer1.0.conv1": 0.2}
    recipe.data.spec = "demo"
    recipe.finetune.epochs = 2
    return Session(model={"spec": "cifar:resnet20", "arch": None, "num_classes": 10, "input_size": (3, 32, 32),
                          "pretrained": True, "trust": False},
                   data="demo", recipe=recipe.to_dict(), runs=["/runs/a", "/runs/b"],
                   view={"selected": ["conv1"]})


def test_round_trip(tmp_path):
    path = tmp_path / "work.studio"
    session = sample_session()
    save_session(session, path)
    text = path.read_text()
    assert text.startswith('{\n  "format": "compression-studio/session"')  # pretty and marked
    assert load_session(path) == session
    assert Recipe.from_dict(load_session(path).recipe).plan.rate == 0.4
    assert [p.name for p in tmp_path.iterdir()] == ["work.studio"]  # no temp file left behind


def test_trust_flag_is_kept_as_a_reminder(tmp_path):
    session = Session(model={"spec": "/m/full.pt", "trust": True})
    save_session(session, tmp_path / "s.studio")
    model = load_session(tmp_path / "s.studio").model
    assert model["trust"] is True and model["arch"] is None and model["pretrained"] is True


def test_unfinished_recipe_loads(tmp_path):
    """Fine-tune epochs set before data was opened: not runnable yet, but a valid session."""
    recipe = Recipe()
    recipe.finetune.epochs = 3
    session = Session(recipe=recipe.to_dict())
    save_session(session, tmp_path / "s.studio")
    assert load_session(tmp_path / "s.studio").recipe["finetune"]["epochs"] == 3


def write(path, content) -> None:
    path.write_text(content if isinstance(content, str) else json.dumps(content))


@pytest.mark.parametrize("content, problem, fix", [
    (None, "Session file not found", "Check the path"),
    ("{not json", "is not valid JSON (line 1", "fix the JSON"),
    ({"version": 1, "plan": {}}, "is not a Compression Studio session. It looks like a recipe", "Open a .studio"),
    ({"format": "compression-studio/session", "version": 7, "recipe": {}}, "saved by a newer Compression Studio",
     "Update"),
    ({"format": "compression-studio/session", "version": 1, "recipe": {"plan": {"rate": 1.5}}},
     "holds a recipe this studio cannot read: The pruning rate 1.5", "share of channels"),
    ({"format": "compression-studio/session", "version": 1, "recipe": {"plan": {"ratee": 0.5}}},
     "cannot read", "Valid keys"),
    ({"format": "compression-studio/session", "version": 1, "recipe": {}, "runs": "/runs/a"},
     "damaged: 'runs' must be a list", "start a new one"),
    ({"format": "compression-studio/session", "version": 1, "recipe": {}, "model": {"arch": "x"}},
     "damaged: 'model' must be an object with a 'spec'", "start a new one"),
    ({"format": "compression-studio/session", "version": 1}, "damaged: it has no 'recipe'", "start a new one"),
])
def test_bad_files_give_studio_errors(tmp_path, content, problem, fix):
    path = tmp_path / "bad.studio"
    if content is not None:
        write(path, content)
    with pytest.raises(StudioError) as err:
        load_session(path)
    assert problem in err.value.problem
    assert fix in err.value.fix


def test_binary_file_is_refused(tmp_path):
    path = tmp_path / "model.studio"
    path.write_bytes(b"\x80\x04\x95\xff\xfe")
    with pytest.raises(StudioError, match="not a session file"):
        load_session(path)


class Snapshots:
    """Hands out the session to autosave and counts how often it was asked."""

    def __init__(self):
        self.session = sample_session()
        self.calls = 0

    def __call__(self) -> Session:
        self.calls += 1
        return self.session


def test_autosave_writes_after_a_change_and_discard_removes(qtbot, tmp_path):
    path = tmp_path / "auto" / "autosave.studio"
    snap = Snapshots()
    saver = Autosaver(path, snap, interval_ms=30)
    assert not saver.dirty
    qtbot.wait(80)
    assert not path.exists() and snap.calls == 0  # nothing changed, nothing written
    with qtbot.waitSignal(saver.saved, timeout=2000):
        saver.mark_dirty()
        saver.mark_dirty()  # a burst of edits costs one write
    assert snap.calls == 1 and not saver.dirty
    assert load_session(path) == snap.session

    snap.session.data = "/data/cifar"
    saver.mark_dirty()
    qtbot.waitUntil(lambda: load_session(path).data == "/data/cifar", timeout=2000)
    assert saver.save_now() and snap.calls == 2  # clean: save_now does not snapshot again

    saver.discard()
    assert not path.exists()
    saver.discard()  # twice is harmless


def test_autosave_failure_is_reported_not_raised(qtbot, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    saver = Autosaver(blocker / "autosave.studio", Snapshots(), interval_ms=10)
    with qtbot.waitSignal(saver.failed, timeout=2000) as blocker_signal:
        saver.mark_dirty()
    assert "Cannot create folder" in blocker_signal.args[0]
    assert saver.dirty  # still unsaved: the next change retries


def test_pending_restore(tmp_path):
    path = tmp_path / "autosave.studio"
    assert pending_restore(path) is None
    save_session(sample_session(), path)
    assert pending_restore(path) == sample_session()
    path.write_text('{"format": "compression-studio/session", "version": 1, "recipe": ')  # cut off mid-write
    assert pending_restore(path) is None
    assert not path.exists()
    assert (tmp_path / "autosave.studio.corrupt").read_text().endswith('"recipe": ')
    assert autosave_path().name == "autosave.studio"


@pytest.fixture
def settings(qapp, tmp_path):
    return QSettings(str(tmp_path / "studio.ini"), QSettings.IniFormat)


def test_recent_files_order_limit_and_dedupe(settings, tmp_path):
    recent = RecentFiles(settings)
    files = []
    for i in range(12):
        f = tmp_path / f"model, {i}.pt"  # a comma must survive the INI list format
        f.write_text("x")
        files.append(str(f))
        recent.add("models", f)
    assert recent.list("models") == files[::-1][:10]
    recent.add("models", files[5])
    assert recent.list("models")[:2] == [files[5], files[11]]
    assert len(recent.list("models")) == 10 and len(set(recent.list("models"))) == 10
    settings.sync()
    reopened = RecentFiles(QSettings(str(tmp_path / "studio.ini"), QSettings.IniFormat))
    assert reopened.list("models") == recent.list("models")
    assert recent.list("data") == []
    recent.clear("models")
    assert recent.list("models") == []
    with pytest.raises(ValueError):
        recent.add("pictures", "x")


def test_recent_files_hide_missing_files_but_keep_specs(settings, tmp_path):
    recent = RecentFiles(settings)
    code = tmp_path / "net.py"
    code.write_text("")
    gone = tmp_path / "gone.pt"
    gone.write_text("x")
    for entry in ("cifar:resnet20", str(gone), "demo", f"{code}:Net", f"{tmp_path}/absent.py:Net"):
        recent.add("models", entry)
    gone.unlink()
    assert recent.list("models") == [f"{code}:Net", "demo", "cifar:resnet20"]
    gone.write_text("x")  # back again (a remounted drive): listed again
    assert str(gone) in recent.list("models")


def test_recent_single_entry_survives_ini(tmp_path, qapp):
    path = str(tmp_path / "one.ini")
    RecentFiles(QSettings(path, QSettings.IniFormat)).add("sessions", "demo")
    assert RecentFiles(QSettings(path, QSettings.IniFormat)).list("sessions") == ["demo"]
