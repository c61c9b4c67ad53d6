"""A one-line warning bar: long texts are elided, and the whole of them is one click away.

Warnings about a model (tracing hazards) or about the data (a head that does not match)
can be several sentences long. Shown on one unbroken line they would widen the window past
the screen, so the strip shows the first warning elided to the room there is, and its
"Details…" button opens a message box with every warning in full.
"""
from __future__ import annotations

from typing import Optional

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QMessageBox, QPushButton, QWidget

from studio.app.inspector import ElidedLabel

STRIP_STYLE = ("#warning-strip { background: #fff7e6; border-bottom: 1px solid #f0c36d; }"
               " #warning-strip QLabel { color: #92400e; }")


class WarningStrip(QFrame):
    """Shows a list of warnings as one elided line with a Details… button; hidden when there are none."""

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setObjectName("warning-strip")
        self.setStyleSheet(STRIP_STYLE)
        self._warnings: list[str] = []
        self.details_box: Optional[QMessageBox] = None   # the open Details box, for tests
        row = QHBoxLayout(self)
        row.setContentsMargins(10, 3, 6, 3)
        row.setSpacing(8)
        icon = QLabel("⚠")
        self.text = ElidedLabel(elide=Qt.TextElideMode.ElideRight)
        self.details_button = QPushButton("Details…")
        self.details_button.setToolTip("Show every warning in full")
        self.details_button.setFlat(True)
        self.details_button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.details_button.clicked.connect(self.show_details)
        row.addWidget(icon)
        row.addWidget(self.text, 1)
        row.addWidget(self.details_button)
        self.hide()

    def set_warnings(self, warnings: list[str]) -> None:
        """Show ``warnings`` (the first one on the line, a count of the others); none hides the strip."""
        self._warnings = [w for w in warnings if w]
        if not self._warnings:
            self.hide()
            return
        more = len(self._warnings) - 1
        self.text.setText(self._warnings[0] + (f"  (+{more} more)" if more else ""))
        self.text.setToolTip("\n\n".join(self._warnings))
        self.show()

    def warnings(self) -> list[str]:
        return list(self._warnings)

    def full_text(self) -> str:
        """Every warning in full, one paragraph each (what Details… shows)."""
        return "\n\n".join(self._warnings)

    def show_details(self) -> QMessageBox:
        """Open a non-blocking message box with every warning in full."""
        count = len(self._warnings)
        box = QMessageBox(QMessageBox.Icon.Warning, "Warnings",
                          f"{count} warning{'s' if count > 1 else ''} about the open model or data:",
                          QMessageBox.StandardButton.Close, self.window())
        box.setInformativeText(self.full_text())
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.finished.connect(lambda *_: setattr(self, "details_box", None))
        self.details_box = box
        box.open()
        return box
