"""The stack controls of the interactive dock: embeddings on disk, precompute, propagate.

Shows the :class:`~napari_sam._widgets.interactive.stack.StackController`: the
on-disk embedding cache, Precompute, the axis to follow (an image with more
leading axes, e.g. (T, Z, Y, X): "Propagate along" z or t), the range along it,
the propagation method
("SAM 2 memory" with a SAM 2.1 model, or "slice-to-slice (SAM 1)") and its
thresholds (a form made from ``PropagationSettings`` or
``MemoryPropagationSettings``), the object ids, Propagate, Export prompts (CSV,
SAM 2 memory) and the summary of the last propagation (kept until the next run).
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import Container, LineEdit, SpinBox
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_sam._widgets._qt.dock import wrapped_label
from napari_sam._widgets._qt.forms import row, settings_form, sync_form
from napari_sam._widgets.interactive.memory import MEMORY, METHODS, wants_sam2
from napari_sam._widgets.notices import notice_for
from napari_sam.errors import PropagationError
from napari_sam.workflows.memory_propagation import MemoryPropagationSettings
from napari_sam.workflows.propagation import PropagationSettings

__all__ = ["StackControls"]

#: The propagation settings a user adjusts in the dock.
SHOWN = ("min_score", "min_overlap", "min_area")
#: The SAM 2 memory settings a user adjusts in the dock, and what they mean.
MEMORY_SHOWN = {
    "stop_when_absent": "Stop following an object where SAM 2's object score says it is "
                        "absent (off: every slice of the range is visited).",
    "absent_slices": "Slices in a row an object must be absent before it stops (2 or more "
                     "bridge a slice where it briefly disappears).",
    "min_area": "A mask of fewer pixels counts as absent (0: any non-empty mask counts).",
}


def range_word(axis_name: str, only_axis: bool = False) -> str:
    """How the range fields name positions along the followed axis: slices of z, frames of
    t, otherwise the axis' own name; the unnamed axis of a plain stack (``only_axis``, napari's
    default label) is a stack of slices too."""
    name = str(axis_name)
    if only_axis and name.startswith("axis "):
        return "slice"
    return {"z": "slice", "t": "frame", "time": "frame"}.get(name.lower(), name)


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
        self.method_combo = QComboBox()
        for key, name in METHODS.items():
            self.method_combo.addItem(name, key)
        self.method_combo.setToolTip(
            "SAM 2 memory (SAM 2.1 models): follows all objects up and down the stack with "
            "SAM 2's memory of their appearance; clicks on another slice correct an object "
            "and keep its earlier prompts. Slice-to-slice (SAM 1 models): each slice is "
            "prompted from the previous slice's mask."
        )
        self.method_combo.currentIndexChanged.connect(self._method_changed)
        self.axis_combo = QComboBox()
        self.axis_combo.setToolTip(
            "The axis objects are followed along (z or t, by napari's axis labels); the "
            "image's other axes stay where the viewer shows them."
        )
        self.axis_combo.currentIndexChanged.connect(self._axis_changed)
        self.axis_row = row(QLabel("Propagate along"), self.axis_combo, stretch=1)
        self.settings_form = settings_form(PropagationSettings, c.stack.settings, SHOWN,
                                           self._settings_changed)
        self.memory_form = settings_form(MemoryPropagationSettings, c.stack.memory.settings,
                                         tuple(MEMORY_SHOWN), self._memory_changed)
        for widget in self.memory_form:
            widget.tooltip = MEMORY_SHOWN[widget.name]
        self.ids_edit = LineEdit(label="Object ids", value=c.stack.ids_text)
        self.ids_edit.native.setPlaceholderText("all on this slice")
        self.ids_edit.tooltip = (
            "Without a preview, propagate these committed objects (e.g. 3, 5) from the "
            "current slice; empty: every object on the slice."
        )
        self.ids_edit.changed.connect(lambda text: setattr(c.stack, "ids_text", str(text)))
        self.form = Container(widgets=[self.cache_edit, self.z_from, self.z_to], labels=True)
        self.form_after = Container(widgets=[*self.settings_form, *self.memory_form,
                                             self.ids_edit], labels=True)
        self.form_after.margins = (0, 0, 0, 0)
        self.form.margins = (0, 0, 0, 0)
        self.propagate_button = QPushButton("Propagate  [Shift+F]")
        self.propagate_button.setToolTip(
            "Follow the preview's objects (or the committed objects of this slice) up and "
            "down the stack and write them into the output labels (one undo step)."
        )
        self.propagate_button.clicked.connect(c.stack.propagate)
        self.export_button = QPushButton("Export prompts (CSV)…")
        self.export_button.setToolTip(
            "Save the clicks of the objects followed with SAM 2 memory as z,y,x,label,object "
            "rows, to replay them with `napari-sam propagate STACK --prompts FILE`."
        )
        self.export_button.clicked.connect(lambda: self.export_prompts())
        self.summary_label = wrapped_label()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.disk_check)
        layout.addWidget(self.precompute_button)
        layout.addWidget(self.axis_row)
        layout.addWidget(self.form.native)
        layout.addWidget(row(QLabel("Method"), self.method_combo, stretch=1))
        layout.addWidget(self.form_after.native)
        layout.addWidget(self.propagate_button)
        layout.addWidget(self.export_button)
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

    def _method_changed(self, index: int) -> None:
        method = self.method_combo.itemData(index)
        if method and method != self.controller.stack.method and wants_sam2(self.controller):
            self.controller.stack.set_method(method)

    def _axis_changed(self, index: int) -> None:
        axis = self.axis_combo.itemData(index)
        if axis is not None and axis != self.controller.stack.axis_in_use():
            self.controller.stack.set_axis(int(axis))

    def _memory_changed(self, changes: dict) -> None:
        try:
            self.controller.stack.set_memory_settings(**changes)
        except PropagationError as exc:
            self.controller.notify(notice_for(exc))
            sync_form(self.memory_form, self.controller.stack.memory.settings)

    def export_prompts(self, path: str | None = None) -> bool:
        """Save the SAM 2 prompts as a CSV prompt table (asks for a file without ``path``)."""
        if path is None:
            image = self.controller.image
            name = f"{image.name} prompts.csv" if image is not None else "prompts.csv"
            path, _ = QFileDialog.getSaveFileName(self, "Export prompts", name,
                                                  "Prompt table (*.csv)")
            if not path:
                return False
        return self.controller.stack.export_prompts(str(path))

    def sync(self, what: str = "") -> None:
        """Show the controller's stack state (after ``what`` changed)."""
        c = self.controller
        choices = c.stack.axis_choices()
        self.setEnabled(bool(choices))
        n = c.stack.length()
        shown = [(self.axis_combo.itemData(i), self.axis_combo.itemText(i))
                 for i in range(self.axis_combo.count())]
        self.axis_combo.blockSignals(True)
        if shown != choices:
            self.axis_combo.clear()
            for axis, name in choices:
                self.axis_combo.addItem(name, axis)
        axis = c.stack.axis_in_use()
        self.axis_combo.setCurrentIndex(-1 if axis is None else self.axis_combo.findData(axis))
        self.axis_combo.blockSignals(False)
        self.axis_row.setVisible(len(choices) > 1)
        word = range_word(dict(choices).get(axis, "z"), only_axis=len(choices) <= 1)
        for spin, end in ((self.z_from, "From"), (self.z_to, "To")):
            if spin.label != f"{end} {word}":
                spin.label = f"{end} {word}"
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
        sync_form(self.memory_form, c.stack.memory.settings)
        sam2 = wants_sam2(c)
        memory = c.stack.method_in_use() == MEMORY
        index = self.method_combo.findData(c.stack.method_in_use())
        if index != self.method_combo.currentIndex():
            self.method_combo.blockSignals(True)
            self.method_combo.setCurrentIndex(index)
            self.method_combo.blockSignals(False)
        self.method_combo.setEnabled(sam2)  # a SAM 1 model always goes slice to slice
        for widget in self.settings_form:
            widget.visible = not memory
        for widget in self.memory_form:
            widget.visible = memory
        self.export_button.setVisible(memory)
        self.summary_label.setText(c.stack.summary)
        self.summary_label.setVisible(bool(c.stack.summary))
        busy = c.stack.running
        self.precompute_button.setEnabled(not busy)
        self.propagate_button.setEnabled(not busy)
        session = c.stack.memory.session
        self.export_button.setEnabled(not busy and session is not None
                                      and bool(session.object_ids))
