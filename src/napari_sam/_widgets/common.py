"""Controls and model loading shared by the napari-sam widgets.

The "Image and model" rows (image picker, model choice, custom-checkpoint row
with Browse…, device) of the interactive and automatic widgets, the layer
picker, and :func:`load_sam`, which loads the model those controls describe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils import notifications
from qtpy.QtCore import QEvent
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from napari_sam.errors import CheckpointError, DeviceFallbackWarning, ImageFormatError
from napari_sam.runtime.loader import LoadedModel, load
from napari_sam.workflows.image import ImageLayout, image_layout
from napari_sam.workflows.labels import dtype_for_ids

__all__ = [
    "CUSTOM_CHECKPOINT",
    "MODEL_CHOICES",
    "ClosesWithDockMixin",
    "ModelChoiceMixin",
    "ModelFactory",
    "load_sam",
    "model_label_text",
    "model_moved",
    "relay_worker_warnings",
    "write_objects",
]

CUSTOM_CHECKPOINT = "custom checkpoint file…"
#: Model choices offered in the widget ("auto": MobileSAM on a CPU, ViT-B on a GPU).
MODEL_CHOICES = ("auto", "vit_t", "vit_b", "vit_l", "vit_h", CUSTOM_CHECKPOINT)


# --------------------------------------------------------------------------- model loading
ModelFactory = Callable[..., LoadedModel]


def load_sam(
    choice: str,
    checkpoint: str | None,
    device: str,
    progress_callback: Callable[[Any], Any] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> LoadedModel:
    """Load the model the widget's controls describe (runs in a worker).

    ``choice`` is one of :data:`MODEL_CHOICES`; with :data:`CUSTOM_CHECKPOINT`
    the model type is detected from the file.
    """
    if choice == CUSTOM_CHECKPOINT:
        if not checkpoint or not str(checkpoint).strip():
            raise CheckpointError(
                "Choose a checkpoint file (Browse…) or pick one of the published models."
            )
        return load("auto", Path(checkpoint).expanduser(), device, progress=False)
    return load(
        choice,
        None,
        device,
        progress=False,
        progress_callback=progress_callback,
        should_cancel=should_cancel,
    )


# --------------------------------------------------------------------------- layers
def layer_geometry(image: Image) -> dict:
    """An image layer's geometry (and physical units), as keyword arguments for new layers."""
    kwargs = {
        "scale": image.scale,
        "translate": image.translate,
        "rotate": image.rotate,
        "shear": image.shear,
        "affine": image.affine,
    }
    units = getattr(image, "units", None)
    if units is not None:
        kwargs["units"] = units
    return kwargs


def layer_layout(image: Image, purpose: str) -> ImageLayout:
    """The layout of an image layer's data; an :class:`ImageFormatError` where ``purpose``
    (e.g. "interactive segmentation") cannot use it, such as a multiscale image."""
    if getattr(image, "multiscale", False):
        raise ImageFormatError(
            f"“{image.name}” is a multiscale (pyramid) image, which {purpose} "
            "does not support; open its full-resolution level as a layer."
        )
    return image_layout(image.data.shape, rgb=image.rgb, dtype=image.data.dtype)


def write_objects(layer: Labels, plan: Sequence[tuple[int, tuple]]) -> str | None:
    """Write ``(id, index)`` pairs into a Labels layer as ONE undo step.

    If the layer's integer type cannot hold the largest id (e.g. object 256 in
    a uint8 layer), its data is first promoted to a wider type
    (:func:`napari_sam.workflows.labels.dtype_for_ids`), so no id is ever truncated; the
    returned sentence says so (None if no promotion was needed).
    """
    if not plan:
        return None
    max_id = max(int(oid) for oid, _ in plan)
    old = np.dtype(layer.data.dtype)
    new = dtype_for_ids(old, max_id)
    note = None
    if new != old:
        # not itself an undo step: the values stay the same, only the type widens
        layer.data = np.asarray(layer.data).astype(new)
        note = (
            f"The labels layer “{layer.name}” was {old}, too small for object id {max_id}; "
            f"it now uses {new} (no id was changed)."
        )
    with layer.block_history():
        for oid, index in plan:
            layer.data_setitem(index, int(oid), refresh=False)
    layer.refresh()
    return note


def model_moved(model: LoadedModel) -> bool:
    """Whether the core moved the model off the device it was loaded on (out of memory)."""
    return model.moved


def model_label_text(model: LoadedModel) -> str:
    """"Model: …" for the widget, naming the device the model's weights are on now."""
    return f"Model: {model.describe()}"


def relay_worker_warnings(worker: Any, on_fallback: Callable[[str], Any]) -> None:
    """Show the warnings a worker raises, and fallbacks in the widget's words.

    napari relays a worker's warnings to its notification manager, which shows
    each distinct warning only once per session. A
    :class:`~napari_sam.errors.DeviceFallbackWarning` (the work was retried
    with smaller batches or on the CPU) is shown every time, as its own plain
    sentence, through ``on_fallback``; other warnings go to napari as before.
    """
    relay = getattr(worker, "_relay_warning", None)
    if relay is not None:
        try:
            worker.warned.disconnect(relay)
        except (TypeError, RuntimeError, ValueError):
            relay = None

    def handle(args: tuple) -> None:
        message, category = args[0], args[1]
        if isinstance(category, type) and issubclass(category, DeviceFallbackWarning):
            on_fallback(str(message))
        elif relay is not None:
            relay(args)

    worker.warned.connect(handle)


class ClosesWithDockMixin:
    """Ends the widget's session when napari takes it out of its dock.

    napari's dock close button (and ``remove_dock_widget``) un-parents the
    inner widget without closing it, so ``closeEvent`` never runs and the
    widget would keep its key bindings and layer connections. The widget's
    ``close_session`` is called then; the user's layers are left as they are.
    """

    _was_docked = False

    def close_session(self) -> None:
        raise NotImplementedError

    def event(self, event: Any) -> bool:
        if event.type() == QEvent.ParentChange:
            if self.parent() is not None:
                self._was_docked = True
            elif self._was_docked:
                self.close_session()
        return super().event(event)


class _LayerPicker:
    """A combo box of the viewer's layers of one type, optionally with a 'create' entry."""

    def __init__(
        self,
        layer_type: type,
        create_text: str | None = None,
        exclude: Callable[[Any], bool] | None = None,
    ) -> None:
        self.combo = QComboBox()
        self.layer_type = layer_type
        self.create_text = create_text
        self.exclude = exclude or (lambda layer: False)
        self._layers: list[Any] = []

    def refresh(self, layers: Sequence[Any]) -> None:
        current = self.current()
        self._layers = [
            lyr for lyr in layers if isinstance(lyr, self.layer_type) and not self.exclude(lyr)
        ]
        self.combo.blockSignals(True)
        try:
            self.combo.clear()
            if self.create_text is not None:
                self.combo.addItem(self.create_text)
            for lyr in self._layers:
                self.combo.addItem(lyr.name)
            self._select(current)
        finally:
            self.combo.blockSignals(False)

    def _select(self, layer: Any) -> None:
        offset = 0 if self.create_text is None else 1
        if layer is not None and layer in self._layers:
            self.combo.setCurrentIndex(self._layers.index(layer) + offset)
        else:
            self.combo.setCurrentIndex(0 if self.combo.count() else -1)

    def select(self, layer: Any) -> None:
        self._select(layer)

    def current(self) -> Any:
        i = self.combo.currentIndex()
        if self.create_text is not None:
            i -= 1
        return self._layers[i] if 0 <= i < len(self._layers) else None


def _device_choices() -> list[str]:
    from napari_sam.runtime.device import cuda_available, mps_available

    choices = ["auto", "cpu"]
    if cuda_available():
        choices.append("cuda")
    if mps_available():
        choices.append("mps")
    return choices


# --------------------------------------------------------------------------- image and model rows
class ModelChoiceMixin:
    """The "Image and model" rows of a widget, and what they ask for.

    :meth:`_add_image_and_model_rows` sets ``image_picker``, ``model_combo``,
    ``checkpoint_edit`` and ``device_combo`` on the widget and connects them to
    its ``_on_image_choice`` and ``_on_model_choice``; the latter calls
    :meth:`_show_checkpoint_row`.
    """

    image_picker: _LayerPicker
    model_combo: QComboBox
    checkpoint_edit: QLineEdit
    device_combo: QComboBox

    def _on_fallback(self, message: str) -> None:
        """A worker had to use less memory (smaller batches, or the CPU): say so.

        Needs the widget's ``_closed``, ``_set_status``, ``_model`` and ``model_label``.
        """
        if self._closed:
            return
        notifications.show_warning(message)
        self._set_status(message)
        if self._model is not None:  # e.g. moved to the CPU: the label says where it is now
            self.model_label.setText(model_label_text(self._model))

    def _add_image_and_model_rows(self, form: QFormLayout) -> None:
        self.image_picker = _LayerPicker(Image)
        self.image_picker.combo.currentIndexChanged.connect(self._on_image_choice)
        form.addRow("Image", self.image_picker.combo)
        self.model_combo = QComboBox()
        self.model_combo.addItems(MODEL_CHOICES)
        self.model_combo.setToolTip(
            "auto: MobileSAM (vit_t) on a CPU, ViT-B on a GPU. Published weights are "
            "downloaded once and cached."
        )
        self.model_combo.currentIndexChanged.connect(self._on_model_choice)
        form.addRow("Model", self.model_combo)
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("path to a .pth / .pt checkpoint")
        self.checkpoint_edit.editingFinished.connect(self._on_model_choice)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_checkpoint)
        self._checkpoint_row = QWidget()
        row = QHBoxLayout(self._checkpoint_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.checkpoint_edit)
        row.addWidget(browse)
        self._checkpoint_label = QLabel("Checkpoint")
        form.addRow(self._checkpoint_label, self._checkpoint_row)
        self.device_combo = QComboBox()
        self.device_combo.addItems(_device_choices())
        self.device_combo.currentIndexChanged.connect(self._on_model_choice)
        form.addRow("Device", self.device_combo)

    def _on_image_choice(self, index: int = -1) -> None:
        raise NotImplementedError

    def _on_model_choice(self, *args: Any) -> None:
        raise NotImplementedError

    def _model_request(self) -> tuple[str, str | None, str]:
        """``(choice, checkpoint, device)`` as :func:`load_sam` takes them."""
        choice = self.model_combo.currentText()
        checkpoint = self.checkpoint_edit.text().strip() or None
        return (
            choice,
            checkpoint if choice == CUSTOM_CHECKPOINT else None,
            self.device_combo.currentText(),
        )

    def _show_checkpoint_row(self) -> None:
        custom = self.model_combo.currentText() == CUSTOM_CHECKPOINT
        self._checkpoint_row.setVisible(custom)
        self._checkpoint_label.setVisible(custom)

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "SAM checkpoint", "", "PyTorch checkpoints (*.pth *.pt *.ckpt);;All files (*)"
        )
        if path:
            self.checkpoint_edit.setText(path)
            self._on_model_choice()
