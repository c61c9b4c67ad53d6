"""Compression Studio desktop GUI (PySide6): `main()` opens the window.

The window lives in `studio.app.main_window`; it is imported inside `main` so that
``import studio.app`` stays cheap for the CLI.
"""
from __future__ import annotations

import sys
import traceback
from typing import Optional, Sequence

ORGANIZATION = "CompressionStudio"
APPLICATION = "Compression Studio"


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
