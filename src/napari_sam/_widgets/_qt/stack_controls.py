"""The 3D stack controls of the interactive dock: embeddings on disk, precompute, propagate.

Shows the :class:`~napari_sam._widgets.interactive.stack.StackController`: the
on-disk embedding cache, Precompute, the slice range, the propagation
thresholds (a form made from ``PropagationSettings``, tooltips from its help),
the object ids, Propagate, and the summary of the last propagation (kept until
the next run).
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import Container, LineEdit, SpinBox
from qtpy.QtWidgets import QCheckBox, QPushButton, QVBoxLayout, QWidget

from napari_sam._widgets._qt.dock import wrapped_label
from napari_sam._widgets._qt.forms import settings_form, sync_form
from napari_sam._widgets.notices import notice_for
from napari_sam.errors import PropagationError
from napari_sam.workflows.propagation import PropagationSettings

__all__ = ["StackControls"]

#: The propagation settings a user adjusts in the dock.
SHOWN = ("min_score", "min_overlap", "min_area")


class StackControls(QWidget):
    """Disk cache, precompute, slice range, thresholds, ids, propagate, summary."""

    def __init__(self, controller: Any) -> None:
        super().__init__()
        c = self.controller = controller
        self.disk_check = QCheckBox("Keep embeddings on disk")
        self.disk_check.setToolTip(
            "Save each encoded slice (float16, 2 MB) in this folder, so that a later session, "
            "or `napari-sam embed`, need not encode the stack again."
        )
        self.cache_edit = LineEdit(label="Folder", value=c.embeddings.folder)
        self.disk_check.toggled.connect(self._disk_changed)
        self.cache_edit.changed.connect(self._disk_changed)
        self.precompute_button = QPushButton("Precompute embeddings of all slices")
        self.precompute_button.clicked.connect(c.stack.precompute)
        self.z_from = SpinBox(label="From slice", min=0, max=0)
        self.z_to = SpinBox(label="To slice", min=0, max=0)
        for spin in (self.z_from, self.z_to):
            spin.changed.connect(self._range_changed)
        self.settings_form = settings_form(PropagationSettings, c.stack.settings, SHOWN,
                                           self._settings_changed)
        self.ids_edit = LineEdit(label="Object ids", value=c.stack.ids_text)
        self.ids_edit.native.setPlaceholderText("all on this slice")
        self.ids_edit.tooltip = (
            "Without a preview, propagate these committed objects (e.g. 3, 5) from the "
            "current slice; empty: every object on the slice."
        )
        self.ids_edit.changed.connect(lambda text: setattr(c.stack, "ids_text", str(text)))
        self.form = Container(widgets=[self.cache_edit, self.z_from, self.z_to,
                                       *self.settings_form, self.ids_edit], labels=True)
        self.form.margins = (0, 0, 0, 0)
        self.propagate_button = QPushButton("Propagate  [Shift+F]")
        self.propagate_button.setToolTip(
            "Follow the preview's objects (or the committed objects of this slice) up and "
            "down the stack and write them into the output labels (one undo step)."
        )
        self.propagate_button.clicked.connect(c.stack.propagate)
        self.summary_label = wrapped_label()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.disk_check)
        layout.addWidget(self.precompute_button)
        layout.addWidget(self.form.native)
        layout.addWidget(self.propagate_button)
        layout.addWidget(self.summary_label)
        self.sync()

    def _disk_changed(self, *args: Any) -> None:
        self.controller.embeddings.set_disk(self.disk_check.isChecked(),
                                            str(self.cache_edit.value))

    def _range_changed(self, *args: Any) -> None:
        self.controller.stack.z_range = (int(self.z_from.value), int(self.z_to.value))

    def _settings_changed(self, changes: dict) -> None:
        try:
            self.controller.stack.set_settings(**changes)
        except PropagationError as exc:
            self.controller.notify(notice_for(exc))
            sync_form(self.settings_form, self.controller.stack.settings)

    def sync(self, what: str = "") -> None:
        """Show the controller's stack state (after ``what`` changed)."""
        c = self.controller
        layout = c.layout
        self.setEnabled(layout is not None and layout.is_stack)
        n = layout.n_slices if layout is not None and layout.is_stack else 1
        lo, hi = c.stack.z_range
        for spin, value in ((self.z_from, lo), (self.z_to, hi)):
            with spin.changed.blocked():
                spin.max = n - 1
                spin.value = value
        if self.disk_check.isChecked() != c.embeddings.use_disk:
            self.disk_check.blockSignals(True)
            self.disk_check.setChecked(c.embeddings.use_disk)
            self.disk_check.blockSignals(False)
        sync_form(self.settings_form, c.stack.settings)
        self.summary_label.setText(c.stack.summary)
        self.summary_label.setVisible(bool(c.stack.summary))
        busy = c.stack.running
        self.precompute_button.setEnabled(not busy)
        self.propagate_button.setEnabled(not busy)
