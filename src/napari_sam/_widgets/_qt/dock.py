"""A dock's frame: its lifetime, a scrolling body of collapsible sections, a fixed footer.

napari's dock close button (and ``remove_dock_widget``) un-parents the inner
widget without closing it, so ``closeEvent`` never runs and the widget would
keep its key bindings and layer connections: :class:`DockFrame` watches for
that and calls ``on_close`` once (the controller's ``close``). Its body scrolls
(so two docks fit one 800-pixel-high screen without squeezing the canvas) and
holds :func:`section` boxes a user can fold; the footer (progress, status) stays
in view.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QEvent, Qt
from qtpy.QtWidgets import (
    QFrame,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

__all__ = ["DockFrame", "section", "wrapped_label"]

#: The dock's width: room for the forms, and most of a 1280-pixel screen left to the canvas.
DOCK_WIDTH = 340


def wrapped_label(text: str = "", rich: bool = False) -> QLabel:
    """A label that wraps its text and can be selected (to copy a message)."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.RichText if rich else Qt.TextFormat.PlainText)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
    return label


def section(title: str, *widgets: QWidget, expanded: bool = True) -> QCollapsible:
    """A foldable section holding ``widgets``."""
    box = QCollapsible(title)
    box.setDuration(0)  # no animation: fold at once (and under Xvfb)
    for widget in widgets:
        box.addWidget(widget)
    if expanded:
        box.expand(animate=False)
    else:
        box.collapse(animate=False)
    return box


class DockFrame(QWidget):
    """The outer widget napari docks: a scrolling body above a fixed footer.

    Parameters
    ----------
    on_close : callable
        Called once when the dock is closed or taken out of napari's dock.
    """

    def __init__(self, on_close: Callable[[], Any]) -> None:
        super().__init__()
        self._on_close = on_close
        self._was_docked = False
        self._ended = False
        self.body = QWidget()
        self.body_layout = QVBoxLayout(self.body)
        self.body_layout.setContentsMargins(4, 4, 4, 4)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(self.body)
        self.scroll = scroll
        self.footer = QWidget()
        self.footer_layout = QVBoxLayout(self.footer)
        self.footer_layout.setContentsMargins(4, 0, 4, 4)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll, 1)
        layout.addWidget(self.footer)
        self.setMinimumWidth(DOCK_WIDTH)
        self.setMaximumWidth(int(DOCK_WIDTH * 1.6))

    def add(self, widget: QWidget) -> None:
        self.body_layout.addWidget(widget)

    def finish(self) -> None:
        """Call after the last :meth:`add`: the body's spare room goes below its sections."""
        self.body_layout.addStretch(1)

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self._on_close()

    def event(self, event: Any) -> bool:
        if event.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._was_docked = True
            elif self._was_docked:
                self.end()
        return super().event(event)

    def closeEvent(self, event: Any) -> None:
        self.end()
        super().closeEvent(event)
