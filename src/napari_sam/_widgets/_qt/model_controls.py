"""The model controls of a dock: model, checkpoint file, device, precision, and the model line.

They show the viewer's :class:`~napari_sam._widgets.model_session.ModelSession`
(shared by both docks: a choice made in one shows in the other) and change it
when the user picks something; the choice is remembered between sessions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from magicgui.widgets import ComboBox, Container, FileEdit
from qtpy.QtWidgets import QPushButton, QVBoxLayout, QWidget

from napari_sam._widgets._qt.dock import wrapped_label
from napari_sam._widgets._qt.forms import compact, row
from napari_sam._widgets.model_session import (
    CUSTOM_CHECKPOINT,
    MODEL_CHOICES,
    PRECISIONS,
    ModelSession,
    choice_label,
    model_description,
)

__all__ = ["ModelControls", "device_choices"]


def device_choices() -> list[str]:
    """"auto", "cpu", and the GPUs this machine has."""
    from napari_sam.runtime.device import cuda_available, mps_available

    choices = ["auto", "cpu"]
    if cuda_available():
        choices.append("cuda")
    if mps_available():
        choices.append("mps")
    return choices


class ModelControls(QWidget):
    """Model, checkpoint, device and precision pickers bound to a model session.

    Parameters
    ----------
    session : ModelSession
    not_loaded : str
        The model line while no model is loaded.
    on_load : callable, optional
        With it, a "Load model" button calls it.
    """

    def __init__(self, session: ModelSession, not_loaded: str,
                 on_load: Callable[[], Any] | None = None) -> None:
        super().__init__()
        self.session = session
        self.not_loaded = not_loaded
        request = session.request
        devices = device_choices()
        self.model_combo = ComboBox(
            label="Model", choices=[(choice_label(c), c) for c in MODEL_CHOICES],
            value=request.choice,
        )
        self.checkpoint_edit = FileEdit(
            label="Checkpoint", mode="r", value=request.checkpoint or "",
            filter="PyTorch checkpoints (*.pth *.pt *.ckpt)",
        )
        self.checkpoint_edit.tooltip = "A .pth / .pt checkpoint file (e.g. a fine-tuned SAM)."
        if request.device not in devices:  # e.g. remembered from a machine with a GPU
            devices.append(request.device)
        self.device_combo = ComboBox(label="Device", choices=devices, value=request.device)
        self.precision_combo = ComboBox(
            label="Precision", choices=PRECISIONS, value=request.precision,
            tooltip="Image-encoder arithmetic: auto = bf16 where the hardware has fast bf16 "
            "units, fp32 elsewhere. Masks are always computed in fp32.",
        )
        self.form = Container(widgets=[self.model_combo, self.checkpoint_edit,
                                       self.device_combo, self.precision_combo], labels=True)
        self.form.margins = (0, 0, 0, 0)
        for widget in self.form:
            compact(widget)
            widget.changed.connect(self._picked)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.form.native)
        self.model_label = wrapped_label()
        self.load_button: QPushButton | None = None
        if on_load is not None:
            self.load_button = QPushButton("Load model")
            self.load_button.setToolTip("Load (or download) the chosen model now.")
            self.load_button.clicked.connect(on_load)
            layout.addWidget(row(self.model_label, self.load_button, stretch=0))
        else:
            layout.addWidget(self.model_label)
        self._syncing = False
        for emitter in (session.events.request, session.events.model, session.events.loading):
            emitter.connect(self.sync)
        self.sync()

    def _picked(self, *args: Any) -> None:
        if self._syncing:
            return
        path = self.checkpoint_edit.value
        self.session.update(
            choice=self.model_combo.value,
            checkpoint=str(path) if str(path) not in ("", ".") else "",
            device=self.device_combo.value,
            precision=self.precision_combo.value,
        )

    def sync(self, event: Any = None) -> None:
        """Show the session's request and model (another dock may have changed them)."""
        request = self.session.request
        self._syncing = True
        try:
            for widget, value in ((self.model_combo, request.choice),
                                  (self.device_combo, request.device),
                                  (self.precision_combo, request.precision)):
                if widget.value != value and value in widget.choices:
                    widget.value = value
            if request.checkpoint and str(self.checkpoint_edit.value) != request.checkpoint:
                self.checkpoint_edit.value = request.checkpoint
        finally:
            self._syncing = False
        self.model_combo.tooltip = (
            f"{model_description(request.choice)} Published weights are downloaded once and "
            "cached. The choice is shared by the napari-sam docks of this window and remembered."
        )
        self.checkpoint_edit.visible = request.choice == CUSTOM_CHECKPOINT
        self.model_label.setText(self.session.describe(self.not_loaded))
        if self.load_button is not None:
            self.load_button.setEnabled(not self.session.loading)

    def close_session(self) -> None:
        """Stop following the session (the dock closes)."""
        for emitter in (self.session.events.request, self.session.events.model,
                        self.session.events.loading):
            emitter.disconnect(self.sync)
