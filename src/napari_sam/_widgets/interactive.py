"""Interactive point/box segmentation of 2D images and slices of 3D stacks.

The widget is thin: it reads napari layers, hands arrays to the pure logic in
:mod:`napari_sam.workflows.prompts` and :mod:`napari_sam.workflows.interactive`,
and writes the results back into layers, always on the main thread. Model
loading and image encoding run in ``napari.qt.threading`` workers; encoded
planes are kept in an :class:`~napari_sam.workflows.embeddings.EmbeddingStore`, so each
slice is encoded once per model and contrast setting.

Workflow: pick an image; click positive/negative points in "SAM points" or
draw rectangles in "SAM boxes"; the mask appears in "SAM preview"; commit it
into the output Labels layer as a new object. On a 3D stack, the embeddings of
all slices can be precomputed (optionally kept on disk), and objects are
propagated through the stack (:mod:`napari_sam.workflows.propagation`), computed in a
worker and written at the end as one undo step. Key bindings: :data:`KEYS`.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from napari.layers import Image, Labels, Points, Shapes
from napari.qt.threading import thread_worker
from napari.utils import notifications
from napari.utils.progress import progress
from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_sam._widgets.common import (
    CUSTOM_CHECKPOINT,
    MODEL_CHOICES,
    ClosesWithDockMixin,
    ModelChoiceMixin,
    ModelFactory,
    _LayerPicker,
    layer_geometry,
    layer_layout,
    load_sam,
    model_label_text,
    model_moved,
    relay_worker_warnings,
    write_objects,
)
from napari_sam.errors import (
    Cancelled,
    DeviceFallbackWarning,
    EmbeddingCacheError,
    ImageFormatError,
    NapariSamError,
)
from napari_sam.predictors.predictor import SamPredictor
from napari_sam.runtime.files import content_hash
from napari_sam.runtime.loader import LoadedModel
from napari_sam.workflows.embeddings import (
    DiskCache,
    EmbeddingKey,
    EmbeddingStore,
    StackEmbeddings,
    default_cache_dir,
)
from napari_sam.workflows.image import ImageLayout, get_plane, image_layout
from napari_sam.workflows.interactive import (
    ObjectMask,
    compose_preview,
    encode_plane,
    install_cancel_hooks,
    plan_commit,
    predict_objects,
)
from napari_sam.workflows.prompts import (
    SlicePrompts,
    current_slice,
    group_objects,
    slice_prompts_from_layers,
)
from napari_sam.workflows.propagation import (
    PropagationResult,
    PropagationSettings,
    plan_write,
    propagate,
)

if TYPE_CHECKING:
    import napari

__all__ = [
    "CUSTOM_CHECKPOINT",
    "KEYS",
    "MODEL_CHOICES",
    "InteractiveSegmentationWidget",
    "LoadedModel",
    "load_sam",
]

log = logging.getLogger(__name__)

POINTS_NAME = "SAM points"
BOXES_NAME = "SAM boxes"
PREVIEW_NAME = "SAM preview"
LABELS_SUFFIX = " SAM labels"
POSITIVE, NEGATIVE = "positive", "negative"
POINT_COLORS = {POSITIVE: "#00e05a", NEGATIVE: "#ff2e88"}

#: Key bindings of the widget (napari key names) and what they do.
KEYS = {
    "N": "switch new points between positive and negative",
    "Shift+C": "commit the preview as new object(s)",
    "Shift+X": "clear the prompts and preview of this slice",
    "Shift+M": "show the next of SAM's three candidate masks",
    "Shift+P": "propagate the preview (or this slice's objects) through the stack",
}


# --------------------------------------------------------------------------- workers
@dataclass
class _Failed:
    """An expected error caught in a worker, reported on the main thread."""

    error: BaseException


@thread_worker(start_thread=False, ignore_errors=True)
def _load_job(factory: ModelFactory, request: tuple, relay: _Relay, cancel: threading.Event):
    choice, checkpoint, device = request
    try:
        return factory(
            choice,
            checkpoint,
            device,
            progress_callback=lambda event: relay.progress.emit(event.done, event.total),
            should_cancel=cancel.is_set,
        )
    except NapariSamError as exc:
        return _Failed(exc)


@thread_worker(start_thread=False, ignore_errors=True)
def _encode_job(
    model: Any,
    plane: np.ndarray,
    key: EmbeddingKey,
    rgb: bool,
    log: list,
    disk: DiskCache | None = None,
    cancel: threading.Event | None = None,
):
    t0 = time.perf_counter()
    try:
        embedding = encode_plane(
            model, plane, key.contrast, rgb, should_cancel=None if cancel is None else cancel.is_set
        )
    except NapariSamError as exc:
        return _Failed(exc)
    finally:
        log.append((threading.get_ident(), t0, time.perf_counter()))
    disk_error = None
    if disk is not None:
        try:
            disk.put(key, embedding)
        except EmbeddingCacheError as exc:
            disk_error = exc
    return key, embedding, disk_error


@thread_worker(start_thread=False, ignore_errors=True)
def _precompute_job(embeddings: StackEmbeddings, relay: _Relay, cancel: threading.Event):
    try:
        encoded = embeddings.precompute(
            progress=lambda event: relay.job_progress.emit(event.done, event.total),
            should_cancel=cancel.is_set,
        )
    except NapariSamError as exc:
        return _Failed(exc)
    return encoded


@thread_worker(start_thread=False, ignore_errors=True)
def _propagate_job(
    model: Any,
    embeddings: StackEmbeddings,
    seeds: np.ndarray,
    k: int,
    z_range: tuple[int, int],
    settings: PropagationSettings,
    relay: _Relay,
    cancel: threading.Event,
):
    try:
        return propagate(
            model,
            embeddings,
            seeds,
            k,
            z_range=z_range,
            settings=settings,
            progress=lambda event: relay.job_progress.emit(event.done, event.total),
            should_cancel=cancel.is_set,
        )
    except NapariSamError as exc:
        return _Failed(exc)


class _Relay(QObject):
    """Carries download and job progress from worker threads to the main thread."""

    progress = Signal(object, object)
    job_progress = Signal(object, object)


@dataclass
class _PropagationJob:
    """What a running propagation was started from (checked again when it ends)."""

    image: Any
    data: Any  # the image data the propagation was computed from
    labels: Any  # the output Labels layer, or None to create one at the end
    ids: list[int] | None  # ids of committed objects; None for the preview's (new ids)
    k: int
    from_preview: bool


# --------------------------------------------------------------------------- the widget
class InteractiveSegmentationWidget(ClosesWithDockMixin, ModelChoiceMixin, QWidget):
    """Segment objects with SAM from points and boxes, slice by slice.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    model_factory : callable, optional
        ``factory(choice, checkpoint, device, progress_callback=, should_cancel=)
        -> LoadedModel``; default :func:`load_sam`. Tests inject models with
        :meth:`set_model` instead.
    store : EmbeddingStore, optional
        Where encoded planes are kept (default: a new store of 1 GB).
    debounce_ms : int
        Prompt changes within this time trigger one prediction.
    """

    def __init__(
        self,
        napari_viewer: napari.viewer.Viewer,
        model_factory: ModelFactory | None = None,
        store: EmbeddingStore | None = None,
        debounce_ms: int = 150,
    ) -> None:
        super().__init__()
        # napari hands plugin widgets a PublicOnlyProxy of the viewer, which wraps every layer
        # it returns in a new proxy, while layer events carry the layers themselves. This
        # widget tracks its layers by identity, so it keeps the viewer itself (it only uses
        # napari's public API).
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self.model_factory = model_factory or load_sam
        self.store = store if store is not None else EmbeddingStore()
        self._model: LoadedModel | None = None
        self._model_source: tuple | None = None  # the widget settings the model came from
        self._predictor: SamPredictor | None = None
        self._image: Image | None = None
        self._rejected: Image | None = None  # the chosen layer, if it cannot be segmented
        self._layout: ImageLayout | None = None
        self._preview: Labels | None = None
        self._preview_image: Image | None = None  # the image the preview layer was made for
        self._preview_slice: int | None = None
        self._preview_objects: list[ObjectMask] = []
        self._prompts: SlicePrompts | None = None
        self._candidate = 0
        self._warned_outside = 0
        self._warned_degenerate = 0
        self._warned_uniform: set[tuple] = set()
        self._warned_axes: set[tuple] = set()
        self._explained: set[tuple] = set()  # unusable image layers already explained
        self._load_worker = None
        self._load_request: tuple | None = None
        self._failed_request: tuple | None = None  # settings whose model failed to load
        self._cancel_load = threading.Event()
        self._encode_worker = None
        self._encode_failed = False
        self._cancel_encode = threading.Event()
        # the latest encoded plane, usable even if the store has no room for it
        self._last_embedding: tuple[EmbeddingKey, Any] | None = None
        self._watched: list[Any] = []
        self._pbar: progress | None = None
        self._connections: list[tuple[Any, Callable]] = []
        self._closed = False
        #: (thread id, start, end) of every encoding (perf_counter seconds)
        self.encode_log: list[tuple[int, float, float]] = []
        # precompute / propagate: one long job at a time, computed in a worker
        self._job_worker = None
        self._job_kind: str | None = None
        self._job: _PropagationJob | None = None
        self._pending_job: str | None = None  # started once the model has loaded
        self._cancel_job = threading.Event()
        self._job_pbar: progress | None = None
        self._disk: DiskCache | None = None
        #: the result of the last propagation (per-object masks and why each stopped)
        self.last_propagation: PropagationResult | None = None

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(int(debounce_ms))
        self._timer.timeout.connect(self.update_preview)
        self._relay = _Relay()
        self._relay.progress.connect(self._on_download_progress)
        self._relay.job_progress.connect(self._on_job_progress)

        self._build_ui()
        self._connect(self.viewer.layers.events.inserted, self._on_layers_changed)
        self._connect(self.viewer.layers.events.removed, self._on_layer_removed)
        self._connect(self.viewer.layers.events.moved, self._on_layers_changed)
        self._connect(self.viewer.dims.events.point, self._schedule)
        for layer in self.viewer.layers:
            self._connect(layer.events.name, self._on_layers_changed)
        self._refresh_pickers()
        self._bind_keys()
        self._on_image_choice()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)

        box = QGroupBox("Image and model")
        form = QFormLayout(box)
        self._add_image_and_model_rows(form)
        buttons = QHBoxLayout()
        self.load_button = QPushButton("Load model")
        self.load_button.clicked.connect(self.load_model)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self._cancel)
        self.cancel_button.setToolTip("Stop downloading the model, or encoding the current slice.")
        self.cancel_button.setEnabled(False)
        buttons.addWidget(self.load_button)
        buttons.addWidget(self.cancel_button)
        form.addRow(buttons)
        self.model_label = QLabel("Model: not loaded (loads with the first prompt)")
        self.model_label.setWordWrap(True)
        form.addRow(self.model_label)
        self.progress_bar = QProgressBar()
        self.progress_bar.setVisible(False)
        form.addRow(self.progress_bar)
        layout.addWidget(box)

        box = QGroupBox("Prompts")
        form = QFormLayout(box)
        self.points_picker = _LayerPicker(Points, f"new layer “{POINTS_NAME}”")
        self.points_picker.combo.currentIndexChanged.connect(self._on_prompt_layer_choice)
        form.addRow("Points", self.points_picker.combo)
        self.boxes_picker = _LayerPicker(Shapes, f"new layer “{BOXES_NAME}”")
        self.boxes_picker.combo.currentIndexChanged.connect(self._on_prompt_layer_choice)
        form.addRow("Boxes", self.boxes_picker.combo)
        self.negative_check = QCheckBox("New points are negative (background)  [N]")
        self.negative_check.toggled.connect(self._on_negative_toggled)
        form.addRow(self.negative_check)
        cand = QHBoxLayout()
        self.multimask_check = QCheckBox("Multimask (3 candidates)")
        self.multimask_check.setChecked(True)
        self.multimask_check.toggled.connect(self._on_prompts_changed)
        self.next_button = QPushButton("Next candidate  [Shift+M]")
        self.next_button.clicked.connect(self.next_candidate)
        cand.addWidget(self.multimask_check)
        cand.addWidget(self.next_button)
        form.addRow(cand)
        layout.addWidget(box)

        box = QGroupBox("Output")
        form = QFormLayout(box)
        self.labels_picker = _LayerPicker(
            Labels, "new layer “<image> SAM labels”", exclude=lambda lyr: lyr is self._preview
        )
        form.addRow("Labels", self.labels_picker.combo)
        self.overwrite_check = QCheckBox("Overwrite existing objects")
        form.addRow(self.overwrite_check)
        buttons = QHBoxLayout()
        self.commit_button = QPushButton("Commit  [Shift+C]")
        self.commit_button.clicked.connect(self.commit)
        self.clear_button = QPushButton("Clear  [Shift+X]")
        self.clear_button.clicked.connect(self.clear)
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("Undo the last change of the output Labels layer (Ctrl+Z)")
        self.undo_button.clicked.connect(self.undo)
        buttons.addWidget(self.commit_button)
        buttons.addWidget(self.clear_button)
        buttons.addWidget(self.undo_button)
        form.addRow(buttons)
        layout.addWidget(box)
        layout.addWidget(self._build_stack_box())

        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        keys = "<br>".join(f"<b>{k}</b>: {v}" for k, v in KEYS.items())
        help_label = QLabel(
            "Click points in the Points layer (positive/negative), draw rectangles in the "
            "Boxes layer (one object per box). Only prompts on the current slice count.<br>" + keys
        )
        help_label.setWordWrap(True)
        help_label.setTextFormat(Qt.RichText)
        layout.addWidget(help_label)
        layout.addStretch(1)
        self._on_model_choice()

    def _build_stack_box(self) -> QGroupBox:
        box = QGroupBox("3D stack")
        form = QFormLayout(box)
        self.disk_check = QCheckBox("Keep embeddings on disk")
        self.disk_check.setToolTip(
            "Save each encoded slice (float16, 2 MB) in this folder, so that a later session, "
            "or `napari-sam embed`, need not encode the stack again."
        )
        self.cache_edit = QLineEdit(str(default_cache_dir()))
        self.cache_edit.editingFinished.connect(self._on_cache_choice)
        self.disk_check.toggled.connect(self._on_cache_choice)
        form.addRow(self.disk_check)
        form.addRow("Folder", self.cache_edit)
        self.precompute_button = QPushButton("Precompute embeddings of all slices")
        self.precompute_button.clicked.connect(self.precompute)
        form.addRow(self.precompute_button)

        rng = QHBoxLayout()
        self.z_from_spin = QSpinBox()
        self.z_to_spin = QSpinBox()
        rng.addWidget(self.z_from_spin)
        rng.addWidget(QLabel("to"))
        rng.addWidget(self.z_to_spin)
        form.addRow("Slices", rng)
        self.min_score_spin = QDoubleSpinBox()
        self.min_score_spin.setRange(0.0, 1.0)
        self.min_score_spin.setSingleStep(0.05)
        self.min_score_spin.setValue(PropagationSettings.min_score)
        self.min_score_spin.setToolTip("Stop where SAM's predicted IoU of the mask is lower.")
        form.addRow("Min. predicted IoU", self.min_score_spin)
        self.min_overlap_spin = QDoubleSpinBox()
        self.min_overlap_spin.setRange(0.0, 1.0)
        self.min_overlap_spin.setSingleStep(0.05)
        self.min_overlap_spin.setValue(PropagationSettings.min_overlap)
        self.min_overlap_spin.setToolTip(
            "Stop where the mask's IoU with the previous slice's mask is lower."
        )
        form.addRow("Min. overlap with previous slice", self.min_overlap_spin)
        self.min_area_spin = QSpinBox()
        self.min_area_spin.setRange(0, 10**8)
        self.min_area_spin.setValue(PropagationSettings.min_area)
        self.min_area_spin.setToolTip("Stop where the mask has fewer pixels.")
        form.addRow("Min. area (pixels)", self.min_area_spin)
        self.ids_edit = QLineEdit()
        self.ids_edit.setPlaceholderText("all on this slice")
        self.ids_edit.setToolTip(
            "Without a preview, propagate these committed objects (e.g. 3, 5) from the "
            "current slice; empty: every object on the slice."
        )
        form.addRow("Object ids", self.ids_edit)
        self.propagate_button = QPushButton("Propagate  [Shift+P]")
        self.propagate_button.setToolTip(
            "Follow the preview's objects (or the committed objects of this slice) up and "
            "down the stack and write them into the output labels (one undo step)."
        )
        self.propagate_button.clicked.connect(self.propagate)
        self.job_cancel_button = QPushButton("Cancel")
        self.job_cancel_button.setEnabled(False)
        self.job_cancel_button.clicked.connect(self.cancel_job)
        buttons = QHBoxLayout()
        buttons.addWidget(self.propagate_button)
        buttons.addWidget(self.job_cancel_button)
        form.addRow(buttons)
        self.job_bar = QProgressBar()
        self.job_bar.setVisible(False)
        form.addRow(self.job_bar)
        box.setEnabled(False)
        self.stack_box = box
        return box

    # ------------------------------------------------------------------ helpers
    def _connect(self, emitter: Any, callback: Callable) -> None:
        emitter.connect(callback)
        self._connections.append((emitter, callback))

    def _disconnect_layer(self, layer: Any) -> None:
        keep = []
        for emitter, callback in self._connections:
            if getattr(emitter, "source", None) is layer:
                emitter.disconnect(callback)
            else:
                keep.append((emitter, callback))
        self._connections = keep

    def _set_status(self, text: str) -> None:
        self.status_label.setText(text)

    def _report(self, exc: BaseException) -> None:
        """Show an exception as a napari notification (its one sentence)."""
        if isinstance(exc, Cancelled):
            notifications.show_info(str(exc))
        elif isinstance(exc, NapariSamError):
            notifications.show_error(str(exc))
        else:
            notifications.show_error(f"{type(exc).__name__}: {exc}")
        self._set_status(str(exc))

    def _no_image(self) -> bool:
        """Tell the user to choose an image if there is none (True then)."""
        if self._image is not None and self._layout is not None:
            return False
        if self._rejected is not None:
            notifications.show_warning(
                f"The image “{self._rejected.name}” cannot be segmented (see the status line); "
                "choose another image layer."
            )
        else:
            notifications.show_warning("Open an image, or choose one in the Image list, first.")
        return True

    def _schedule(self, event: Any = None) -> None:
        if not self._closed:
            self._timer.start()

    @property
    def busy(self) -> bool:
        """A prediction is scheduled, or a model load or encoding is running."""
        return (
            self._timer.isActive()
            or self._load_worker is not None
            or self._encode_worker is not None
            or self._job_worker is not None
        )

    @property
    def image_layer(self) -> Image | None:
        return self._image

    @property
    def points_layer(self) -> Points | None:
        return self.points_picker.current()

    @property
    def boxes_layer(self) -> Shapes | None:
        return self.boxes_picker.current()

    @property
    def preview_layer(self) -> Labels | None:
        return self._preview

    @property
    def labels_layer(self) -> Labels | None:
        return self.labels_picker.current()

    @property
    def model(self) -> LoadedModel | None:
        return self._model

    # ------------------------------------------------------------------ layers
    def _on_layers_changed(self, event: Any = None) -> None:
        if event is not None and getattr(event, "type", None) == "inserted":
            self._connect(event.value.events.name, self._on_layers_changed)
        self._refresh_pickers()

    def _on_layer_removed(self, event: Any) -> None:
        layer = event.value
        self._disconnect_layer(layer)
        if layer is self._preview:
            self._preview = None
            self._preview_slice = None
            self._preview_objects = []
        old_image = self._image
        self._refresh_pickers()
        if layer is old_image:
            self._on_image_choice()
        else:
            self._schedule()

    def _refresh_pickers(self) -> None:
        layers = list(self.viewer.layers)
        for picker in (self.image_picker, self.points_picker, self.boxes_picker):
            picker.refresh(layers)
        self.labels_picker.refresh(layers)
        current = self.image_picker.current()
        if current is not self._image and current is not self._rejected and not self._closed:
            self._on_image_choice()  # e.g. the first image was opened after the widget

    def _on_image_choice(self, index: int = -1) -> None:
        image = self.image_picker.current()
        if image is self._image and image is not None:
            return
        if self._image is not None:
            self._disconnect_layer(self._image)
        self._clear_preview()
        self._image, self._layout = None, None
        self._update_stack_controls()
        if image is None:
            self._set_status("Open or choose an image layer.")
            return
        try:
            layout = layer_layout(image, "interactive segmentation")
        except ImageFormatError as exc:
            self._rejected = image
            explained = (id(image), tuple(image.data.shape), image.rgb)
            if explained not in self._explained:  # once per layer, not at every list change
                self._explained.add(explained)
                notifications.show_warning(str(exc))
            self._set_status(str(exc))
            return
        self._rejected = None
        self._image, self._layout = image, layout
        self._update_stack_controls()
        for name in ("contrast_limits", "data", "scale", "translate", "rotate", "shear", "affine"):
            self._connect(getattr(image.events, name), self._on_image_changed)
        self._select_default_output()
        self._ensure_prompt_layers()
        self._set_status(
            f"{layout.kind} image “{image.name}” {layout.spatial_shape}: place points or boxes."
        )
        self._schedule()

    def _select_default_output(self) -> None:
        name = f"{self._image.name}{LABELS_SUFFIX}"
        existing = [
            lyr for lyr in self.viewer.layers if isinstance(lyr, Labels) and lyr.name == name
        ]
        self.labels_picker.select(existing[0] if existing else None)

    def _on_image_changed(self, event: Any = None) -> None:
        if getattr(event, "type", None) == "data" and self._image is not None:
            try:
                layout = image_layout(
                    self._image.data.shape, rgb=self._image.rgb, dtype=self._image.data.dtype
                )
            except ImageFormatError as exc:
                self._report(exc)
                self._layout = None
                self._clear_preview()
                return
            if layout != self._layout:
                self._layout = layout
                self._update_stack_controls()
                if self._preview is not None:
                    self._preview.data = np.zeros(layout.spatial_shape, np.uint8)
                self._preview_slice = None
        self._schedule()

    def _update_stack_controls(self) -> None:
        layout = self._layout
        is_stack = layout is not None and layout.is_stack
        self.stack_box.setEnabled(is_stack)
        n = layout.n_slices if is_stack else 1
        if (self.z_from_spin.maximum(), self.z_to_spin.maximum()) != (n - 1, n - 1):
            for spin in (self.z_from_spin, self.z_to_spin):
                spin.setRange(0, n - 1)
            self.z_from_spin.setValue(0)
            self.z_to_spin.setValue(n - 1)

    def _new_layer_kwargs(self) -> dict:
        """The image's geometry (and physical units) for the layers the widget makes."""
        return layer_geometry(self._image)

    def _add_layer_quietly(self, factory: Callable[[], Any]) -> Any:
        """Add a layer without taking the selection away from the user's layer."""
        active = self.viewer.layers.selection.active
        layer = factory()
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
        return layer

    def _ensure_prompt_layers(self) -> None:
        if self._image is None:
            return
        ndim = len(self._layout.spatial_shape)
        size = max(4.0, max(self._layout.plane_shape) / 30.0)
        created_points = None
        if self.points_picker.current() is None:
            created_points = self.viewer.add_points(
                np.zeros((0, ndim)),
                ndim=ndim,
                name=POINTS_NAME,
                features=pd.DataFrame(
                    {"label": pd.Categorical([], categories=[POSITIVE, NEGATIVE])}
                ),
                feature_defaults={
                    "label": NEGATIVE if self.negative_check.isChecked() else POSITIVE
                },
                face_color="label",
                face_color_cycle=POINT_COLORS,
                border_color="white",
                border_width=0.1,
                size=size,
                **self._new_layer_kwargs(),
            )
            self.points_picker.refresh(list(self.viewer.layers))
            self.points_picker.select(created_points)
        if self.boxes_picker.current() is None:
            shapes = self.viewer.add_shapes(
                ndim=ndim,
                name=BOXES_NAME,
                edge_color="#ffd400",
                face_color="transparent",
                edge_width=max(1.0, size / 4),
                **self._new_layer_kwargs(),
            )
            self.boxes_picker.refresh(list(self.viewer.layers))
            self.boxes_picker.select(shapes)
        if created_points is not None:
            self.viewer.layers.selection.active = created_points
            created_points.mode = "add"
        self._watch_prompt_layers()

    def _watch_prompt_layers(self) -> None:
        chosen = [lyr for lyr in (self.points_picker.current(), self.boxes_picker.current()) if lyr]
        for layer in self._watched:
            if layer not in chosen and layer is not self._image:
                self._disconnect_layer(layer)
                self._connect(layer.events.name, self._on_layers_changed)
        for layer in chosen:
            if layer in self._watched:
                continue
            self._connect(layer.events.data, self._on_prompts_changed)
            if isinstance(layer, Points):
                _ensure_label_feature(layer)
                self._connect(layer.events.features, self._on_prompts_changed)
            for name in ("scale", "translate", "rotate", "shear", "affine"):
                self._connect(getattr(layer.events, name), self._schedule)
        self._watched = chosen
        self._explain_prompt_axes(chosen)

    def _explain_prompt_axes(self, layers: list[Any]) -> None:
        """Say once how a prompt layer with more axes than the image is used."""
        if self._image is None or self._layout is None:
            return
        d = len(self._layout.spatial_shape)
        for layer in layers:
            key = (id(layer), id(self._image), layer.ndim, d)
            if layer.ndim <= d or key in self._warned_axes:
                continue
            self._warned_axes.add(key)
            what = "points" if isinstance(layer, Points) else "boxes"
            image = self._image.name
            notifications.show_info(
                f"The layer “{layer.name}” has {layer.ndim} axes and the image “{image}” "
                f"{d}: only the {what} shown at the current position of the other "
                f"{layer.ndim - d} ax{'is' if layer.ndim - d == 1 else 'es'} are used."
            )

    def _on_prompt_layer_choice(self, index: int = -1) -> None:
        if self._image is not None:
            self._ensure_prompt_layers()
        self._on_prompts_changed()

    def _on_prompts_changed(self, event: Any = None) -> None:
        self._candidate = 0
        self._schedule()

    def _on_negative_toggled(self, negative: bool) -> None:
        points = self.points_picker.current()
        if points is not None:
            _ensure_label_feature(points)
            points.feature_defaults = {"label": NEGATIVE if negative else POSITIVE}

    def toggle_negative(self) -> None:
        """Switch new points between positive and negative (key N)."""
        self.negative_check.setChecked(not self.negative_check.isChecked())

    # ------------------------------------------------------------------ model
    def _on_model_choice(self, *args: Any) -> None:
        self._show_checkpoint_row()
        if self._model is not None and self._model_source == self._model_request():
            return
        if self._model is not None:
            self._model = None
            self._predictor = None
            self.model_label.setText("Model: not loaded (loads with the first prompt)")
            self._clear_preview()
            self._schedule()

    def set_model(
        self, sam: Any, model_id: str | None = None, description: str | None = None
    ) -> None:
        """Use a :class:`LoadedModel`, or an already built model (scripting, tests) whose
        weights ``model_id`` names."""
        if isinstance(sam, LoadedModel):
            loaded = sam
        else:
            loaded = LoadedModel.wrap(sam, model_id, description)
        sam = loaded.sam
        install_cancel_hooks(sam)  # before any worker uses the model
        self._model = loaded
        self._model_source = self._model_request()
        self._predictor = SamPredictor(sam)
        self.model_label.setText(model_label_text(self._model))
        self._schedule()

    def load_model(self) -> None:
        """Load the model chosen in the widget, in a worker thread."""
        request = self._model_request()
        if self._load_worker is not None:
            return
        if self._model is not None and self._model_source == request:
            if not model_moved(self._model):
                return
            self._model = self._predictor = None  # moved to the CPU: load it again where asked
        self._cancel_load.clear()
        self._load_request = request
        worker = _load_job(self.model_factory, request, self._relay, self._cancel_load)
        worker.returned.connect(self._on_model_loaded)
        worker.errored.connect(self._on_worker_error)
        worker.finished.connect(self._on_load_finished)
        relay_worker_warnings(worker, self._on_fallback)
        self._load_worker = worker
        self._busy_start(f"Loading {request[0]} model…")
        self.cancel_button.setEnabled(True)
        self.load_button.setEnabled(False)
        worker.start()

    def _cancel(self) -> None:
        """Stop loading the model (a download) or encoding the current plane."""
        self._cancel_load.set()
        if self._load_worker is not None:
            self._set_status("Cancelling the download…")
        if self._encode_worker is not None:
            self._cancel_encode.set()
            self._set_status("Cancelling the encoding…")

    def _on_download_progress(self, done: int, total: int | None) -> None:
        if self._closed:
            return
        if total:
            self.progress_bar.setRange(0, 1000)
            self.progress_bar.setValue(int(1000 * done / total))
            self.progress_bar.setFormat(f"downloading {done / 1e6:.0f} / {total / 1e6:.0f} MB")
            if self._pbar is not None:
                if self._pbar.total != total:
                    self._pbar.total = total
                self._pbar.n = done
                self._pbar.refresh()

    def _on_model_loaded(self, result: Any) -> None:
        if self._closed:
            return
        if isinstance(result, _Failed):
            self._failed_request = self._load_request
            self._report(result.error)
            return
        self._failed_request = None
        if self._load_request != self._model_request():
            return  # the user chose another model meanwhile
        self.set_model(result)
        self._model_source = self._load_request

    def _on_load_finished(self) -> None:
        self._load_worker = None
        self._busy_stop()
        if self._closed:
            return
        self.cancel_button.setEnabled(False)
        self.load_button.setEnabled(True)
        pending, self._pending_job = self._pending_job, None
        if self._model is not None:
            self._schedule()
            if pending == "precompute":
                self.precompute()
            elif pending == "propagate":
                self.propagate()

    def _on_worker_error(self, exc: BaseException) -> None:
        # napari's worker machinery already shows unexpected errors with their traceback
        log.error("napari-sam worker failed", exc_info=exc)
        self._encode_failed = True
        if not self._closed:
            self._set_status(f"Failed: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ busy indicator
    def _busy_start(self, text: str) -> None:
        self._set_status(text)
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setFormat(text)
        self.progress_bar.setVisible(True)
        if self._pbar is None:
            self._pbar = progress(total=0, desc=f"napari-sam: {text}")
        else:
            self._pbar.set_description(f"napari-sam: {text}")

    def _busy_stop(self) -> None:
        if self._load_worker is None and self._encode_worker is None:
            self.progress_bar.setVisible(False)
            if self._pbar is not None:
                self._pbar.close()
                self._pbar = None

    # ------------------------------------------------------------------ encoding
    def _start_encode(self, key: EmbeddingKey, plane: np.ndarray) -> None:
        if self._encode_worker is not None:
            return  # when it finishes, the preview is updated and asks again
        self._warn_if_uniform(key, plane)
        self._cancel_encode.clear()
        worker = _encode_job(
            self._model.sam,
            plane,
            key,
            self._layout.rgb,
            self.encode_log,
            self._disk_cache(),
            self._cancel_encode,
        )
        worker.returned.connect(self._on_encoded)
        worker.errored.connect(self._on_worker_error)
        worker.finished.connect(self._on_encode_finished)
        relay_worker_warnings(worker, self._on_fallback)
        self._encode_worker = worker
        where = f"slice {key.slice}" if key.slice is not None else "the image"
        self._busy_start(f"Encoding {where} with {self._model.name}…")
        self.cancel_button.setEnabled(True)
        worker.start()

    def _warn_if_uniform(self, key: EmbeddingKey, plane: np.ndarray) -> None:
        """Warn (once per plane and contrast) if SAM would see one flat colour."""
        if key in self._warned_uniform or plane.size == 0:
            return
        values = plane[..., :3] if self._layout is not None and self._layout.rgb else plane
        with np.errstate(invalid="ignore"):
            finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        lo, hi = key.contrast if key.contrast is not None else (None, None)
        if finite.size == 0:
            flat = True
        else:
            vmin, vmax = float(finite.min()), float(finite.max())
            flat = vmin == vmax or (
                lo is not None and self._layout is not None and not self._layout.rgb
                and (vmax <= lo or vmin >= hi)
            )
        if not flat:
            return
        self._warned_uniform.add(key)
        name = self._image.name
        where = f"Slice {key.slice} of “{name}”" if key.slice is not None else f"The image “{name}”"
        notifications.show_warning(
            f"{where} looks uniform to SAM at these contrast limits, so "
            "its masks will be meaningless; adjust the contrast limits or choose another slice."
        )

    def _on_encoded(self, result: Any) -> None:
        if self._closed:
            return
        if isinstance(result, _Failed):
            if isinstance(result.error, Cancelled):
                notifications.show_info(str(result.error))
                self._set_status(str(result.error))
            else:
                self._report(result.error)
            self._encode_failed = True
            return
        key, embedding, disk_error = result
        if disk_error is not None:
            self._disk_failed(disk_error)
        if self._model is not None and key.model_id == self._model.model_id:
            self.store.put(key, embedding)
            self._last_embedding = (key, embedding)

    def _on_encode_finished(self) -> None:
        self._encode_worker = None
        self._busy_stop()
        if self._closed:
            return
        if self._load_worker is None:
            self.cancel_button.setEnabled(False)
        if self._encode_failed:  # do not retry at once; the next change of prompts will
            self._encode_failed = False
            return
        self.update_preview()

    # ------------------------------------------------------------------ prediction
    def _current_slice(self) -> int | None:
        from napari_sam.workflows.prompts import layer_affine

        return current_slice(
            layer_affine(self._image), self._layout.spatial_shape, self.viewer.dims.point
        )

    def _plane_axes_ok(self) -> bool:
        """The viewer shows the image's YX planes (not a transposed view)."""
        ndim = self.viewer.dims.ndim
        return tuple(self.viewer.dims.displayed) == (ndim - 2, ndim - 1)

    def update_preview(self) -> None:
        """Predict the current slice from its prompts and show the preview (main thread)."""
        self._timer.stop()
        if self._closed or self._image is None or self._layout is None:
            return
        if self.viewer.dims.ndisplay != 2:
            self._clear_preview()
            self._set_status("Interactive segmentation works in the 2D view (Ctrl+Y toggles).")
            return
        if not self._plane_axes_ok():
            self._clear_preview()
            self._set_status(
                "SAM segments YX planes: show the image's last two axes (View > Axes order, "
                "or Ctrl+E to roll them back)."
            )
            return
        layout = self._layout
        k = self._current_slice() if layout.is_stack else None
        if layout.is_stack and k is None:
            self._clear_preview()
            self._set_status("The current position is outside the stack.")
            return
        prompts = slice_prompts_from_layers(
            layout.spatial_shape,
            self._image,
            k,
            self.viewer.dims.point,
            self.points_picker.current(),
            self.boxes_picker.current(),
        )
        self._prompts = prompts
        if prompts.n_outside > self._warned_outside:
            n = prompts.n_outside
            notifications.show_warning(
                f"{n} prompt{'s' if n > 1 else ''} on this slice lie{'s' if n == 1 else ''} "
                "outside the image and will be ignored."
            )
        self._warned_outside = prompts.n_outside
        if prompts.n_degenerate > self._warned_degenerate:
            n = prompts.n_degenerate
            notifications.show_warning(
                f"{n} box{'es' if n > 1 else ''} on this slice {'have' if n > 1 else 'has'} no "
                "area inside the image and will be ignored; draw a box by dragging a rectangle."
            )
        self._warned_degenerate = prompts.n_degenerate
        objects = group_objects(prompts.points_xy, prompts.point_labels, prompts.boxes)
        if not objects:
            self._clear_preview()
            where = f"slice {k}" if k is not None else "the image"
            hint = " (negative points alone describe no object)" if len(prompts.points_xy) else ""
            self._set_status(f"No prompts on {where}{hint}.")
            return
        if self._model is None:
            if self._failed_request == self._model_request():
                self._set_status("The model could not be loaded; press “Load model” to retry.")
            else:
                self.load_model()
            return
        plane = get_plane(self._image.data, layout, k)
        key = EmbeddingKey(
            data_hash=content_hash(plane),
            slice=k,
            model_id=self._model.model_id,
            contrast=tuple(float(c) for c in self._image.contrast_limits),
        )
        embedding = self.store.get(key)
        if embedding is None and self._last_embedding and self._last_embedding[0] == key:
            embedding = self._last_embedding[1]
        disk = self._disk_cache()
        if embedding is None and disk is not None:
            damaged = disk.corrupted
            embedding = disk.get(key)  # e.g. precomputed earlier, or by `napari-sam embed`
            if disk.corrupted > damaged:
                notifications.show_info(
                    "A damaged file in the embedding cache was deleted; this slice is encoded "
                    "again."
                )
            if embedding is not None:
                self.store.put(key, embedding)
                self._last_embedding = (key, embedding)
        if embedding is None:
            self._start_encode(key, plane)
            return
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", DeviceFallbackWarning)
                self._predictor.set_embedding(embedding)
                results = predict_objects(
                    self._predictor, objects, self.multimask_check.isChecked(), self._candidate
                )
        except NapariSamError as exc:
            self._report(exc)
            return
        finally:
            for w in caught:  # fallbacks in the widget's words; others as napari shows them
                if issubclass(w.category, DeviceFallbackWarning):
                    self._on_fallback(str(w.message))
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self._show_preview(k, results)

    def _ensure_preview(self) -> Labels:
        shape = self._layout.spatial_shape
        layer = self._preview
        if layer is not None and self._preview_image is not self._image:
            self.viewer.layers.remove(layer)  # made for another image: other geometry
            layer = self._preview = None
        if layer is None or layer not in self.viewer.layers:
            layer = self._add_layer_quietly(
                lambda: self.viewer.add_labels(
                    np.zeros(shape, np.uint8),
                    name=PREVIEW_NAME,
                    opacity=0.55,
                    **self._new_layer_kwargs(),
                )
            )
            self._preview = layer
            self._preview_image = self._image
            self._preview_slice = None
            self._refresh_pickers()
        elif layer.data.shape != shape:
            layer.data = np.zeros(shape, np.uint8)
            self._preview_slice = None
        return layer

    def _show_preview(self, k: int | None, results: list[ObjectMask]) -> None:
        layer = self._ensure_preview()
        plane = compose_preview(
            [r.mask for r in results],
            self._layout.plane_shape,
            np.uint8 if len(results) < 256 else np.uint16,
        )
        if plane.dtype != layer.data.dtype:
            layer.data = layer.data.astype(plane.dtype)
        data = layer.data
        if self._layout.is_stack:
            if self._preview_slice is not None and self._preview_slice != k:
                data[self._preview_slice] = 0
            data[k] = plane
        else:
            data[...] = plane
        self._preview_slice = k
        self._preview_objects = results
        layer.refresh()
        scores = ", ".join(f"{r.score:.2f}" for r in results)
        where = f"slice {k}" if k is not None else "image"
        cand = ""
        if results and results[0].n_candidates > 1:
            cand = f"; candidate {results[0].candidate + 1}/{results[0].n_candidates}"
        self._set_status(
            f"Preview on {where}: {len(results)} object{'s' if len(results) != 1 else ''} "
            f"(predicted IoU {scores}{cand}). Commit with Shift+C."
        )

    def _clear_preview(self) -> None:
        layer = self._preview
        self._preview_objects = []
        if layer is None or layer not in self.viewer.layers:
            self._preview_slice = None
            return
        if self._preview_slice is not None or not self._layout or not self._layout.is_stack:
            if (
                self._layout is not None
                and self._layout.is_stack
                and self._preview_slice is not None
            ):
                if self._preview_slice < layer.data.shape[0]:
                    layer.data[self._preview_slice] = 0
            else:
                layer.data[...] = 0
            layer.refresh()
        self._preview_slice = None

    def next_candidate(self) -> None:
        """Show the next of the three multimask candidates (key Shift+M)."""
        if not self.multimask_check.isChecked():
            notifications.show_info("Tick “Multimask” to get three candidate masks per object.")
            return
        self._candidate = (self._candidate + 1) % 3
        self.update_preview()

    # ------------------------------------------------------------------ commit / clear
    def _flush(self) -> bool:
        """Bring the preview up to date with the prompts; False if it cannot be now."""
        if self._timer.isActive():
            self.update_preview()
        if self._encode_worker is not None or self._load_worker is not None:
            notifications.show_info("The preview is still being computed; try again in a moment.")
            return False
        return True

    def _ensure_labels(self) -> Labels:
        layer = self.labels_picker.current()
        if layer is None:
            name = f"{self._image.name}{LABELS_SUFFIX}"
            layer = self._add_layer_quietly(
                lambda: self.viewer.add_labels(
                    np.zeros(self._layout.spatial_shape, np.uint32),
                    name=name,
                    **self._new_layer_kwargs(),
                )
            )
            self._refresh_pickers()
            self.labels_picker.select(layer)
        return layer

    def commit(self) -> None:
        """Write the preview into the output labels as new objects (key Shift+C)."""
        if self._no_image() or not self._flush():
            return
        if not self._preview_objects or self._preview is None:
            notifications.show_info("Nothing to commit: place points or boxes first.")
            return
        k = self._preview_slice
        labels = self._ensure_labels()
        if labels.data.shape != self._layout.spatial_shape:
            notifications.show_error(
                f"The labels layer “{labels.name}” has shape {labels.data.shape}, but the "
                f"image is {self._layout.spatial_shape}; choose another output layer."
            )
            return
        preview_plane = np.asarray(self._preview.data[k] if k is not None else self._preview.data)
        labels_plane = np.asarray(labels.data[k] if k is not None else labels.data)
        next_id = int(np.max(labels.data)) + 1 if labels.data.size else 1
        plan = plan_commit(labels_plane, preview_plane, next_id, self.overwrite_check.isChecked())
        if not preview_plane.any():
            notifications.show_info(
                "Nothing to commit: SAM found no object at these prompts; move the points, add "
                "some, or draw a box."
            )
            return
        if not plan:
            notifications.show_info(
                "Nothing new to commit: the preview lies on existing objects (tick “Overwrite "
                "existing objects” to replace them)."
            )
            return
        note = write_objects(
            labels,
            [
                (new_id, (np.full(rows.shape, k), rows, cols) if k is not None else (rows, cols))
                for new_id, (rows, cols) in plan
            ],
        )
        if note:
            notifications.show_info(note)
        labels.selected_label = plan[-1][0] + 1
        ids = ", ".join(str(p[0]) for p in plan)
        self._remove_slice_prompts()
        self._clear_preview()
        where = f"slice {k}" if k is not None else "the image"
        self._set_status(f"Committed object{'s' if len(plan) > 1 else ''} {ids} on {where}.")

    def clear(self) -> None:
        """Remove the prompts of the current slice and the preview (key Shift+X)."""
        if self._no_image():
            return
        if self._timer.isActive():
            self.update_preview()
        self._remove_slice_prompts()
        self._clear_preview()

    def undo(self) -> None:
        """Undo the last change of the output labels (napari's own undo)."""
        labels = self.labels_picker.current()
        if labels is not None:
            labels.undo()

    def _remove_slice_prompts(self) -> None:
        prompts = self._prompts
        if prompts is None:
            return
        for layer, index in (
            (self.points_picker.current(), prompts.slice_point_index),
            (self.boxes_picker.current(), prompts.slice_box_index),
        ):
            if layer is not None and len(index):
                index = [int(i) for i in index if i < len(layer.data)]
                layer.selected_data = set(index)
                layer.remove_selected()
        self._prompts = None
        self._warned_outside = 0
        self._warned_degenerate = 0

    # ------------------------------------------------------------------ 3D stacks
    def _on_cache_choice(self, *args: Any) -> None:
        self._disk = None  # made again, for the folder now shown, when next needed

    def _disk_cache(self) -> DiskCache | None:
        """The on-disk embedding cache the user asked for, or None (memory only)."""
        if not self.disk_check.isChecked():
            return None
        folder = self.cache_edit.text().strip() or str(default_cache_dir())
        if self._disk is None or str(self._disk.root) != str(Path(folder).expanduser()):
            try:
                self._disk = DiskCache(folder)
            except EmbeddingCacheError as exc:
                self._disk_failed(exc)
                return None
        return self._disk

    def _disk_failed(self, exc: BaseException) -> None:
        """Report a disk cache failure once and go on in memory only."""
        self._disk = None
        self.disk_check.blockSignals(True)
        self.disk_check.setChecked(False)
        self.disk_check.blockSignals(False)
        notifications.show_warning(f"{exc} Embeddings are kept in memory only.")

    def _stack_embeddings(self) -> StackEmbeddings:
        return StackEmbeddings(
            self._model.sam,
            self._image.data,
            model_id=self._model.model_id,
            contrast=tuple(float(c) for c in self._image.contrast_limits),
            store=self.store,
            disk=self._disk_cache(),
        )

    def _job_ready(self, what: str) -> bool:
        """Whether a long job can start now (starting the model load if needed)."""
        if self._no_image():
            return False
        if not self._layout.is_stack:
            notifications.show_info(f"{what.capitalize()} works on 3D stacks (Z, Y, X).")
            return False
        if self._job_worker is not None:
            notifications.show_info(
                "Precomputing or propagation is already running; wait or press Cancel."
            )
            return False
        if self._model is None:
            if self._failed_request == self._model_request():
                self._set_status("The model could not be loaded; press “Load model” to retry.")
                return False
            self._pending_job = what
            self.load_model()
            return False
        return True

    def precompute(self) -> None:
        """Encode every slice of the stack that is not cached yet, in a worker."""
        if not self._job_ready("precompute"):
            return
        embeddings = self._stack_embeddings()
        if embeddings.disk is None:
            per_slice = 4 * 256 * 64 * 64
            fits = self.store.max_bytes // per_slice
            if embeddings.n_slices > fits:
                notifications.show_warning(
                    f"Only about {fits} of the {embeddings.n_slices} slices fit in the memory "
                    "cache; tick “Keep embeddings on disk” to keep them all."
                )
        worker = _precompute_job(embeddings, self._relay, self._cancel_job)
        self._start_job("precompute", worker, f"Encoding the slices of “{self._image.name}”…")

    def propagate(self) -> None:
        """Propagate the preview's objects, or committed ones, through the stack (Shift+P)."""
        if self._timer.isActive():
            self.update_preview()
        if not self._job_ready("propagate"):
            return
        if self._encode_worker is not None or self._load_worker is not None:
            notifications.show_info("The preview is still being computed; try again in a moment.")
            return
        k = self._current_slice()
        if k is None:
            notifications.show_info("The current position is outside the stack.")
            return
        labels = self.labels_picker.current()
        if labels is not None and labels.data.shape != self._layout.spatial_shape:
            notifications.show_error(
                f"The labels layer “{labels.name}” has shape {labels.data.shape}, but the "
                f"image is {self._layout.spatial_shape}; choose another output layer."
            )
            return
        from_preview = bool(self._preview_objects) and self._preview_slice == k
        ids: list[int] | None = None
        if from_preview:
            plane = np.asarray(self._preview.data[k])
            seeds = [plane == i + 1 for i in range(len(self._preview_objects))]
            seeds = [m for m in seeds if m.any()]
        else:
            if labels is None:
                notifications.show_info(
                    "Nothing to propagate: place prompts for a preview, or commit an object "
                    "on this slice first."
                )
                return
            plane = np.asarray(labels.data[k])
            try:
                ids = self._ids_to_propagate(plane, k)
            except ValueError as exc:
                notifications.show_error(str(exc))
                return
            seeds = [plane == i for i in ids]
        if not seeds:
            notifications.show_info(f"Nothing to propagate: there is no object on slice {k}.")
            return
        lo, hi = self.z_from_spin.value(), self.z_to_spin.value()
        if not lo <= k <= hi:
            notifications.show_error(
                f"The slice range {lo}–{hi} does not include the current slice {k}; widen it."
            )
            return
        settings = PropagationSettings(
            min_score=self.min_score_spin.value(),
            min_overlap=self.min_overlap_spin.value(),
            min_area=self.min_area_spin.value(),
        )
        self._job = _PropagationJob(self._image, self._image.data, labels, ids, k, from_preview)
        worker = _propagate_job(
            self._model.sam,
            self._stack_embeddings(),
            np.stack(seeds),
            k,
            (lo, hi),
            settings,
            self._relay,
            self._cancel_job,
        )
        n = len(seeds)
        self._start_job(
            "propagate",
            worker,
            f"Propagating {n} object{'s' if n > 1 else ''} from slice {k} (slices {lo}–{hi})…",
        )

    def _ids_to_propagate(self, plane: np.ndarray, k: int) -> list[int]:
        present = [int(i) for i in np.unique(plane) if i != 0]
        raw = self.ids_edit.text()
        words = raw.replace(",", " ").split()
        if not words:
            return present
        try:
            ids = [int(w) for w in words]
        except ValueError:
            raise ValueError(
                f"Object ids must be whole numbers separated by commas, not “{raw}”."
            ) from None
        absent = [i for i in ids if i not in present]
        if absent:
            raise ValueError(
                f"Object{'s' if len(absent) > 1 else ''} {', '.join(map(str, absent))} "
                f"{'are' if len(absent) > 1 else 'is'} not on slice {k}; go to a slice where "
                "it is, or leave the ids empty for all objects of this slice."
            )
        return list(dict.fromkeys(ids))

    def _start_job(self, kind: str, worker: Any, text: str) -> None:
        self._cancel_job.clear()
        self._job_kind = kind
        worker.returned.connect(self._on_job_returned)
        worker.errored.connect(self._on_worker_error)
        worker.finished.connect(self._on_job_finished)
        relay_worker_warnings(worker, self._on_fallback)
        self._job_worker = worker
        self._set_status(text)
        self.job_bar.setRange(0, 0)
        self.job_bar.setFormat(text)
        self.job_bar.setVisible(True)
        self.job_cancel_button.setEnabled(True)
        self.precompute_button.setEnabled(False)
        self.propagate_button.setEnabled(False)
        self._job_pbar = progress(total=0, desc=f"napari-sam: {text}")
        worker.start()

    def cancel_job(self) -> None:
        """Stop precomputing or propagation (computed slices of a precomputation are kept)."""
        if self._job_worker is not None:
            self._cancel_job.set()
            self._set_status("Cancelling…")

    def _on_job_progress(self, done: int, total: int) -> None:
        if self._closed or self._job_worker is None:
            return
        unit = "slices encoded" if self._job_kind == "precompute" else "slices"
        self.job_bar.setRange(0, max(int(total), 1))
        self.job_bar.setValue(int(done))
        self.job_bar.setFormat(f"%v / %m {unit}")
        if self._job_pbar is not None:
            if self._job_pbar.total != total:
                self._job_pbar.total = total
            self._job_pbar.n = done
            self._job_pbar.refresh()

    def _on_job_returned(self, result: Any) -> None:
        if self._closed:
            return
        if isinstance(result, _Failed):
            if isinstance(result.error, Cancelled):
                notifications.show_info(str(result.error))
                self._set_status(str(result.error))
            elif isinstance(result.error, EmbeddingCacheError):
                self._disk_failed(result.error)
                self._set_status(str(result.error))
            else:
                self._report(result.error)
            return
        if self._job_kind == "precompute":
            n = self._layout.n_slices if self._layout is not None else 0
            self._set_status(
                f"Embeddings of all {n} slices are ready ({result} encoded now, "
                f"{n - result} were cached)."
            )
        elif self._job_kind == "propagate":
            self._write_propagation(result)

    def _on_job_finished(self) -> None:
        self._job_worker = None
        self._job_kind = None
        self._job = None
        if self._job_pbar is not None:
            self._job_pbar.close()
            self._job_pbar = None
        if self._closed:
            return
        self.job_bar.setVisible(False)
        self.job_cancel_button.setEnabled(False)
        self.precompute_button.setEnabled(True)
        self.propagate_button.setEnabled(True)

    def _write_propagation(self, result: PropagationResult) -> None:
        """Write a finished propagation into the output labels as one undo step."""
        job = self._job
        self.last_propagation = result
        if job is None:
            return
        labels = job.labels
        if job.image not in self.viewer.layers or job.image.data is not job.data:
            notifications.show_error(
                f"The image “{job.image.name}” was closed or changed during the propagation; "
                "nothing was written."
            )
            return
        if labels is not None and labels not in self.viewer.layers:
            notifications.show_error(
                f"The labels layer “{labels.name}” was removed during the propagation; "
                "nothing was written."
            )
            return
        if labels is None:
            if job.image is not self._image:
                notifications.show_error(
                    "The image changed during the propagation; nothing was written."
                )
                return
            labels = self._ensure_labels()
        if labels.data.shape != result.shape:
            notifications.show_error(
                f"The labels layer “{labels.name}” has shape {labels.data.shape}, but the "
                f"propagation covers {result.shape}; nothing was written."
            )
            return
        next_id = int(np.max(labels.data)) + 1 if labels.data.size else 1
        plan = plan_write(
            labels.data,
            result,
            job.ids,
            next_id=next_id,
            overwrite=self.overwrite_check.isChecked(),
        )
        note = write_objects(labels, plan)
        if note:
            notifications.show_info(note)
        if job.from_preview:
            if plan:
                labels.selected_label = max(oid for oid, _ in plan) + 1
            if self._preview_slice == job.k:
                self._remove_slice_prompts()
                self._clear_preview()
        ids = job.ids if job.ids is not None else [oid for oid, _ in plan]
        if not plan:
            self._set_status(
                "Propagation found nothing new to write (the objects lie on existing objects; "
                "tick “Overwrite existing objects” to replace them)."
            )
            return
        zs = np.concatenate([index[0] for _, index in plan])
        lines = [
            f"Propagated object{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))} "
            f"over slices {int(zs.min())}–{int(zs.max())} (Ctrl+Z undoes it)."
        ]
        if len(ids) == len(result.objects):
            lines.append(result.summary(ids))
        self._set_status("\n".join(lines))
        notifications.show_info("\n".join(lines))  # the status line changes with the next preview

    # ------------------------------------------------------------------ keys and teardown
    def _bind_keys(self) -> None:
        actions = {
            "N": self.toggle_negative,
            "Shift+C": self.commit,
            "Shift+X": self.clear,
            "Shift+M": self.next_candidate,
            "Shift+P": self.propagate,
        }
        self._key_actions = actions
        for key, action in actions.items():
            self.viewer.bind_key(key, _key_callback(action), overwrite=True)

    def close_session(self) -> None:
        """Disconnect from the viewer, unbind keys and stop workers (on close)."""
        if self._closed:
            return
        self._closed = True
        self._timer.stop()
        self._cancel_load.set()
        self._cancel_encode.set()
        self._cancel_job.set()
        for emitter, callback in self._connections:
            try:
                emitter.disconnect(callback)
            except (TypeError, ValueError, RuntimeError):
                pass
        self._connections = []
        for key in self._key_actions:
            self.viewer.bind_key(key, None)
        for worker in (self._load_worker, self._encode_worker, self._job_worker):
            if worker is not None:
                worker.quit()
        for bar in (self._pbar, self._job_pbar):
            if bar is not None:
                bar.close()
        self._pbar = self._job_pbar = None

    def closeEvent(self, event: Any) -> None:
        self.close_session()
        super().closeEvent(event)


def _ensure_label_feature(points: Points) -> None:
    """Give a Points layer the categorical ``label`` feature (positive/negative) if needed."""
    features = points.features
    label = features["label"] if "label" in features else None
    if (
        label is not None
        and isinstance(label.dtype, pd.CategoricalDtype)
        and {POSITIVE, NEGATIVE} <= set(label.cat.categories)
    ):
        return
    from napari_sam.workflows.prompts import labels_from_feature

    values = labels_from_feature(None if label is None else label.to_numpy(), len(points.data))
    points.features = features.assign(
        label=pd.Categorical(
            np.where(values == 1, POSITIVE, NEGATIVE), categories=[POSITIVE, NEGATIVE]
        )
    )
    points.feature_defaults = {"label": POSITIVE}


def _key_callback(action: Callable[[], None]) -> Callable[[Any], None]:
    def callback(viewer: Any) -> None:
        action()

    callback.__name__ = f"napari_sam_{action.__name__}"
    callback.__doc__ = action.__doc__
    return callback
