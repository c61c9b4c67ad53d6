"""Starting the window: a missing display or missing system libraries give a clear message."""
import studio.app as app_package
from studio.app import _debian_package, display_problem, main


def test_no_display_is_explained(monkeypatch, capsys):
    monkeypatch.setattr("sys.platform", "linux")
    for name in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    assert "No display found" in display_problem()
    assert main(demo=True) == 2
    assert "xvfb-run" in capsys.readouterr().err


def test_missing_x11_libraries_are_named_with_the_install_command(monkeypatch):
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(app_package, "missing_display_libraries",
                        lambda: ["libxcb-cursor.so.0", "libxcb-icccm.so.4", "libxkbcommon-x11.so.0"])
    problem = display_problem()
    assert "libxcb-icccm.so.4" in problem
    assert "sudo apt install libxcb-cursor0 libxcb-icccm4 libxkbcommon-x11-0" in problem


def test_offscreen_needs_nothing(monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert display_problem() is None


def test_debian_package_names():
    assert _debian_package("libxcb-keysyms.so.1") == "libxcb-keysyms1"
    assert _debian_package("libxkbcommon-x11.so.0") == "libxkbcommon-x11-0"
