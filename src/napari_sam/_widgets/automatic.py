"""The "Automatic segmentation (SAM)" widget: label every object of an image or stack.

The widget reads the chosen image layer, runs :func:`napari_sam.workflows.segment.segment_iter`
(SAM's automatic mask generator, plane by plane) in a ``thread_worker`` with a
progress bar and a Cancel button, and writes the result into the Labels layer
"<image> SAM auto" on the main thread, as one undo step. A cancelled or failed
run leaves the layer untouched. On a stack it segments the current slice or all
slices, optionally linking objects through the slices
(:func:`napari_sam.workflows.segment.link_slices`). The result can be exported as COCO
JSON (:meth:`AutomaticSegmentationWidget.export_coco`); the Labels layer is saved
as TIFF with ``File > Save Selected Layers…`` (napari-sam's writer).

Model choice and loading are shared with the interactive widget
(:mod:`napari_sam._widgets.common`, :func:`~napari_sam._widgets.common.load_sam`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import thread_worker
from napari.utils import notifications
from napari.utils.progress import progress
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_sam._widgets.common import (
    CUSTOM_CHECKPOINT,
    ClosesWithDockMixin,
    ModelChoiceMixin,
    ModelFactory,
    layer_geometry,
    layer_layout,
    load_sam,
    model_label_text,
    model_moved,
    relay_worker_warnings,
)
from napari_sam.errors import Cancelled, CheckpointError, ImageFormatError, NapariSamError
from napari_sam.runtime.files import content_hash
from napari_sam.runtime.loader import LoadedModel
from napari_sam.workflows.image import ImageLayout, image_layout
from napari_sam.workflows.labels import dtype_for_ids
from napari_sam.workflows.prompts import current_slice, layer_affine
from napari_sam.workflows.segment import (
    AutoSettings,
    SegmentationResult,
    SegmentProgress,
    segment_iter,
)

if TYPE_CHECKING:
    import napari

__all__ = ["OUTPUT_SUFFIX", "SCOPES", "AutomaticSegmentationWidget"]

log = logging.getLogger(__name__)

OUTPUT_SUFFIX = " SAM auto"
CURRENT_SLICE, ALL_SLICES = "current slice", "all slices"
#: What to segment in a stack.
SCOPES = (CURRENT_SLICE, ALL_SLICES)


# --------------------------------------------------------------------------- worker
@dataclass
class _Failed:
    error: BaseException
    expected: bool = True


@dataclass
class _ModelReady:
    model: LoadedModel
    request: tuple


@dataclass
class _Job:
    """What one run was asked to do (kept to write its result)."""

    image: Image
    data: Any  # the image data the run segments
    layout: ImageLayout
    slice: int | None  # the slice of a current-slice run on a stack
    settings: AutoSettings
    cancel: threading.Event
    pbar: Any = None


@thread_worker(start_thread=False, ignore_errors=True)
def _segment_job(
    factory: ModelFactory,
    request: tuple,
    model: LoadedModel | None,
    data: Any,
    rgb: bool,
    contrast: tuple[float, float],
    settings: AutoSettings,
    slices: list[int] | None,
    cancel: threading.Event,
):
    # RuntimeErrors escaping a generator worker are taken for a deleted worker and
    # dropped; every error is therefore caught here and returned for the main thread.
    try:
        if model is None:
            yield "loading"
            choice, checkpoint, device = request
            model = factory(choice, checkpoint, device, should_cancel=cancel.is_set)
            yield _ModelReady(model, request)
        steps = segment_iter(
            model.sam,
            data,
            rgb=rgb,
            contrast_limits=contrast,
            settings=settings,
            slices=slices,
        )
        try:
            while True:
                if cancel.is_set():
                    return None
                yield next(steps)
        except StopIteration as stop:
            return stop.value
        finally:
            steps.close()
    except NapariSamError as exc:
        return _Failed(exc)
    except Exception as exc:
        log.error("napari-sam automatic segmentation failed", exc_info=exc)
        return _Failed(exc, expected=False)


# --------------------------------------------------------------------------- widget
class AutomaticSegmentationWidget(ClosesWithDockMixin, ModelChoiceMixin, QWidget):
    """Label every object of a 2D image, or of one or all slices of a stack, with SAM.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    model_factory : callable, optional
        ``factory(choice, checkpoint, device, progress_callback=, should_cancel=)
        -> LoadedModel`` (default: :func:`napari_sam._widgets.common.load_sam`).
        Tests inject a model with :meth:`set_model` instead.
    """

    def __init__(
        self,
        napari_viewer: napari.viewer.Viewer,
        model_factory: ModelFactory | None = None,
    ) -> None:
        super().__init__()
        # see InteractiveSegmentationWidget: keep the real viewer, not napari's proxy
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self.model_factory = model_factory or load_sam
        self._model: LoadedModel | None = None
        self._model_source: tuple | None = None
        self._worker = None
        self._job: _Job | None = None
        self._output: Labels | None = None
        self._output_image: Image | None = None
        # SAM's scores of the objects last written, valid while the layer is unchanged
        self._scores: dict[tuple[int | None, int], dict[str, float]] = {}
        self._scores_digest: tuple[Any, str] | None = None
        self._closed = False
        self._connections: list[tuple[Any, Callable]] = []
        self._build_ui()
        for emitter in (
            self.viewer.layers.events.inserted,
            self.viewer.layers.events.removed,
            self.viewer.layers.events.moved,
        ):
            self._connect(emitter, self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        d = AutoSettings()

        box = QGroupBox("Image and model")
        form = QFormLayout(box)
        self._add_image_and_model_rows(form)
        self.model_label = QLabel("Model: not loaded (loads when you run)")
        self.model_label.setWordWrap(True)
        form.addRow(self.model_label)
        layout.addWidget(box)

        box = QGroupBox("What counts as an object")
        form = QFormLayout(box)
        self.points_spin = _int_spin(
            d.points_per_side,
            1,
            256,
            "SAM is prompted with an N × N grid of points per image. Objects smaller than the "
            "grid spacing can be missed; time grows with N².",
        )
        form.addRow("Points per side", self.points_spin)
        self.iou_spin = _float_spin(
            d.pred_iou_thresh,
            0.0,
            1.0,
            "Keep masks whose quality, as SAM estimates it, is above this. Lower: more "
            "objects, more of them poor.",
        )
        form.addRow("Predicted-IoU threshold", self.iou_spin)
        self.stability_spin = _float_spin(
            d.stability_score_thresh,
            0.0,
            1.0,
            "Keep masks whose outline barely changes when SAM's mask threshold is moved.",
        )
        form.addRow("Stability threshold", self.stability_spin)
        self.nms_spin = _float_spin(
            d.box_nms_thresh,
            0.0,
            1.0,
            "Of two masks whose bounding boxes overlap more than this (IoU), keep the better.",
        )
        form.addRow("Box NMS threshold", self.nms_spin)
        self.crop_spin = _int_spin(
            d.crop_n_layers,
            0,
            3,
            "Also run on overlapping zoomed-in crops (finds smaller objects in large images; "
            "several times slower).",
        )
        form.addRow("Crop layers", self.crop_spin)
        self.min_area_spin = _int_spin(
            d.min_area,
            0,
            10**7,
            "Drop objects smaller than this many pixels; fill holes smaller than this.",
        )
        form.addRow("Minimum area (px)", self.min_area_spin)
        self.max_area_spin = _float_spin(
            d.max_area_fraction,
            0.01,
            1.0,
            "Drop masks covering more than this fraction of the image (e.g. the background).",
        )
        form.addRow("Maximum area (fraction)", self.max_area_spin)
        layout.addWidget(box)

        box = QGroupBox("3D stacks")
        form = QFormLayout(box)
        self.scope_combo = QComboBox()
        self.scope_combo.addItems(SCOPES)
        self.scope_combo.setToolTip("Segment the slice shown in the viewer, or every slice.")
        form.addRow("Segment", self.scope_combo)
        self.link_check = QCheckBox("Link objects across slices")
        self.link_check.setToolTip(
            "Give an object the same label in every slice it spans: each object takes the "
            "label of the object of the previous slice it overlaps most (greedy matching by "
            "IoU, at least the threshold below); others get new labels."
        )
        self.link_check.setChecked(True)
        form.addRow(self.link_check)
        self.link_spin = _float_spin(
            d.link_iou, 0.01, 1.0, "Least overlap (IoU) with the previous slice to keep a label."
        )
        form.addRow("Linking IoU threshold", self.link_spin)
        self._stack_box = box
        layout.addWidget(box)

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        self.progress_bar = QProgressBar()
        self.progress_bar.setVisible(False)
        layout.addWidget(self.progress_bar)
        self.coco_button = QPushButton("Export COCO JSON…")
        self.coco_button.setToolTip(
            "Save the objects of the output layer as COCO JSON (run-length encoded masks, "
            "one COCO image per slice)."
        )
        self.coco_button.clicked.connect(lambda: self.export_coco())
        layout.addWidget(self.coco_button)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        help_label = QLabel(
            "The result goes to the Labels layer “<image> SAM auto” (Ctrl+Z undoes a run). "
            "Save it with File > Save Selected Layers… as .tif."
        )
        help_label.setWordWrap(True)
        layout.addWidget(help_label)
        layout.addStretch(1)
        self._on_model_choice()

    # ------------------------------------------------------------------ helpers
    def _connect(self, emitter: Any, callback: Callable) -> None:
        emitter.connect(callback)
        self._connections.append((emitter, callback))

    def _set_status(self, text: str) -> None:
        self.status_label.setText(text)

    def _report(self, exc: BaseException, expected: bool = True) -> None:
        if isinstance(exc, Cancelled):
            notifications.show_info(str(exc))
        elif expected and isinstance(exc, NapariSamError):
            notifications.show_error(str(exc))
        else:
            notifications.show_error(f"Automatic segmentation failed: {type(exc).__name__}: {exc}")
        self._set_status(str(exc))

    @property
    def busy(self) -> bool:
        """A run is in progress."""
        return self._worker is not None

    @property
    def image_layer(self) -> Image | None:
        return self.image_picker.current()

    @property
    def output_layer(self) -> Labels | None:
        """The Labels layer the last run wrote to (if it is still in the viewer)."""
        layer = self._output
        return layer if layer is not None and layer in self.viewer.layers else None

    @property
    def model(self) -> LoadedModel | None:
        return self._model

    def settings(self) -> AutoSettings:
        """The settings shown in the widget."""
        return AutoSettings(
            points_per_side=int(self.points_spin.value()),
            pred_iou_thresh=float(self.iou_spin.value()),
            stability_score_thresh=float(self.stability_spin.value()),
            box_nms_thresh=float(self.nms_spin.value()),
            crop_n_layers=int(self.crop_spin.value()),
            min_area=int(self.min_area_spin.value()),
            max_area_fraction=float(self.max_area_spin.value()),
            link_slices=bool(self.link_check.isChecked()),
            link_iou=float(self.link_spin.value()),
        )

    # ------------------------------------------------------------------ layers
    def _refresh_layers(self, event: Any = None) -> None:
        if event is not None and getattr(event, "type", None) == "inserted":
            self._connect(event.value.events.name, self._refresh_layers)
        self.image_picker.refresh(list(self.viewer.layers))
        self._on_image_choice()

    def _on_image_choice(self, index: int = -1) -> None:
        image = self.image_picker.current()
        is_stack = False
        if image is not None:
            try:
                is_stack = image_layout(image.data.shape, rgb=image.rgb).is_stack
            except ImageFormatError:
                is_stack = False
        self._stack_box.setEnabled(is_stack)
        if not self.busy:
            if image is None:
                self._set_status("Open or choose an image layer.")
            else:
                kind = "stack" if is_stack else "image"
                self._set_status(f"Ready to segment the {kind} “{image.name}”.")

    # ------------------------------------------------------------------ model
    def _on_model_choice(self, *args: Any) -> None:
        self._show_checkpoint_row()
        if self._model is not None and self._model_source != self._model_request():
            self._model = None
            self.model_label.setText("Model: not loaded (loads when you run)")

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
        self._model = loaded
        self._model_source = self._model_request()
        self.model_label.setText(model_label_text(self._model))

    # ------------------------------------------------------------------ run
    def run(self, scope: str | None = None) -> None:
        """Segment the chosen image (``scope``: "current slice" or "all slices" of a stack;
        default: the widget's choice). The work runs in a background thread."""
        if self.busy:
            notifications.show_info("Automatic segmentation is already running.")
            return
        image = self.image_picker.current()
        if image is None:
            notifications.show_warning("Open or choose an image layer to segment.")
            return
        try:
            layout = layer_layout(image, "automatic segmentation")
            settings = self.settings()
            settings.check()
        except NapariSamError as exc:
            self._report(exc)
            return
        if self._model_request()[0] == CUSTOM_CHECKPOINT and self._model is None:
            if not self._model_request()[1]:
                self._report(
                    CheckpointError(
                        "Choose a checkpoint file (Browse…) or pick one of the published models."
                    )
                )
                return
        scope = scope or self.scope_combo.currentText()
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, not {scope!r}")
        k: int | None = None
        slices: list[int] | None = None
        if layout.is_stack and scope == CURRENT_SLICE:
            k = current_slice(layer_affine(image), layout.spatial_shape, self.viewer.dims.point)
            if k is None:
                notifications.show_warning(
                    "The viewer shows no slice of this stack; move the slider onto the stack."
                )
                return
            slices = [k]
            settings = AutoSettings(**{**settings.as_dict(), "link_slices": False})
        contrast = tuple(float(c) for c in image.contrast_limits)
        cancel = threading.Event()
        model = self._model if self._model_source == self._model_request() else None
        if model is not None and model_moved(model):
            model = None  # moved to the CPU after running out of memory: load it again
        job = _Job(
            image=image, data=image.data, layout=layout, slice=k, settings=settings, cancel=cancel
        )
        worker = _segment_job(
            self.model_factory,
            self._model_request(),
            model,
            image.data,
            layout.rgb,
            contrast,
            settings,
            slices,
            cancel,
        )
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        relay_worker_warnings(worker, self._on_fallback)
        self._job, self._worker = job, worker
        where = f"slice {k} of “{image.name}”" if k is not None else f"“{image.name}”"
        if layout.is_stack and k is None:
            where = f"all {layout.n_slices} slices of “{image.name}”"
        self._set_status(f"Segmenting {where}…")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setFormat("starting…")
        self.progress_bar.setVisible(True)
        job.pbar = progress(total=0, desc="napari-sam: automatic segmentation")
        worker.start()

    def cancel(self) -> None:
        """Stop the run; the output layer is left as it was."""
        if self._worker is None or self._job is None:
            return
        self._job.cancel.set()
        self._worker.quit()
        self._set_status("Cancelling…")

    def _on_yielded(self, event: Any) -> None:
        if self._closed or self._job is None:
            return
        if event == "loading":
            self.progress_bar.setRange(0, 0)
            self.progress_bar.setFormat("loading the model…")
            self._set_status("Loading the model…")
        elif isinstance(event, _ModelReady):
            self._model = event.model
            self._model_source = event.request
            self.model_label.setText(model_label_text(event.model))
        elif isinstance(event, SegmentProgress):
            total = max(event.total, 1)
            self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(event.done)
            where = (
                f"slice {event.slice} ({event.plane + 1}/{event.n_planes})"
                if event.slice is not None
                else "image"
            )
            self.progress_bar.setFormat(f"{where}: %p%")
            pbar = self._job.pbar
            if pbar is not None:
                if pbar.total != total:
                    pbar.total = total
                pbar.n = event.done
                pbar.refresh()

    def _on_returned(self, result: Any) -> None:
        job = self._job
        if self._closed or job is None or job.cancel.is_set() or result is None:
            return
        if isinstance(result, _Failed):
            self._report(result.error, result.expected)
            return
        self._write(job, result)

    def _on_errored(self, exc: BaseException) -> None:
        log.error("napari-sam automatic segmentation failed", exc_info=exc)
        if not self._closed:
            self._report(exc, expected=False)

    def _on_aborted(self) -> None:
        if not self._closed:
            self._set_status("Cancelled; no layer was changed.")

    def _on_finished(self) -> None:
        job = self._job
        self._worker, self._job = None, None
        if job is not None and job.pbar is not None:
            job.pbar.close()
        if self._closed:
            return
        if job is not None and job.cancel.is_set():
            self._set_status("Cancelled; no layer was changed.")
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress_bar.setVisible(False)

    # ------------------------------------------------------------------ output
    def _new_layer_kwargs(self, image: Image) -> dict:
        return layer_geometry(image)

    def _find_output(self, image: Image, shape: tuple[int, ...]) -> Labels | None:
        last = self.output_layer  # the layer the last run on this image wrote, if any
        if last is not None and self._output_image is image and last.data.shape == shape:
            return last
        name = f"{image.name}{OUTPUT_SUFFIX}"
        for layer in self.viewer.layers:
            if isinstance(layer, Labels) and layer.name == name and layer.data.shape == shape:
                return layer
        return None

    def _write(self, job: _Job, result: SegmentationResult) -> None:
        image = job.image
        if image not in self.viewer.layers:
            notifications.show_warning(
                f"The image “{image.name}” was closed during the run; the result was dropped."
            )
            return
        shape = job.layout.spatial_shape
        if image.data is not job.data or tuple(image.data.shape[: len(shape)]) != shape:
            notifications.show_warning(
                f"The image “{image.name}” changed during the run; the result was dropped."
            )
            return
        layer = self._find_output(image, shape)
        if layer is not None and not self._replaceable(layer):
            edited = layer
            layer = None  # a new layer: the user's work in the old one is not touched
            notifications.show_info(
                f"“{edited.name}” holds objects this widget did not write (your edits, or an "
                "earlier session), so the result goes to a new layer; delete or rename layers "
                "to choose what to keep."
            )
        scores = dict(result.scores)
        k = job.slice
        if k is not None:  # one slice of a stack: keep the other slices, new ids above theirs
            plane = result.labels[k]
            offset = 0
            if layer is not None:
                others = [layer.data[:k], layer.data[k + 1 :]]
                offset = max((int(np.max(o)) for o in others if o.size), default=0)
            if offset:
                plane = np.where(plane > 0, plane + np.uint32(offset), plane).astype(np.uint32)
                scores = {(z, lab + offset): v for (z, lab), v in scores.items()}
            if layer is not None:
                kept = self._valid_scores(layer)  # before the write changes the layer
                self._replace(layer, (k,), plane)
                scores = {**{key: v for key, v in kept.items() if key[0] != k}, **scores}
            else:
                data = np.zeros(shape, np.uint32)
                data[k] = plane
                layer = self._add_output(image, data)
        elif layer is not None:
            self._replace(layer, (), result.labels)
        else:
            layer = self._add_output(image, result.labels)
        self._output, self._output_image = layer, image
        self._scores = scores
        self._scores_digest = (layer, content_hash(layer.data))
        n = result.n_objects
        where = f"slice {k}" if k is not None else "the image"
        if job.layout.is_stack and k is None:
            where = f"{job.layout.n_slices} slices"
            if job.settings.link_slices:
                where += ", linked"
        self._set_status(
            f"{n} object{'s' if n != 1 else ''} in {where} → “{layer.name}” "
            f"({result.n_masks} masks proposed)."
        )

    def _replaceable(self, layer: Labels) -> bool:
        """Whether a run may write into ``layer``: it is empty, or holds exactly what this
        widget's last run left there (not edited since)."""
        last = self._scores_digest
        if last is not None and last[0] is layer and last[1] == content_hash(layer.data):
            return True
        return not np.any(layer.data)

    def _add_output(self, image: Image, data: np.ndarray) -> Labels:
        active = self.viewer.layers.selection.active
        layer = self.viewer.add_labels(
            data, name=f"{image.name}{OUTPUT_SUFFIX}", **self._new_layer_kwargs(image)
        )
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
        return layer

    @staticmethod
    def _replace(layer: Labels, index: tuple, values: np.ndarray) -> None:
        """Set ``layer.data[index] = values`` as one undo step (only changed pixels)."""
        current = np.asarray(layer.data[index] if index else layer.data)
        changed = np.nonzero(current != values)
        if changed[0].size == 0:
            return
        full = tuple(np.full(changed[0].shape, i) for i in index) + changed
        dtype = dtype_for_ids(layer.data.dtype, int(values.max()))
        if dtype != layer.data.dtype:  # never truncate an id (values stay, the type widens)
            layer.data = np.asarray(layer.data).astype(dtype)
        with layer.block_history():
            layer.data_setitem(full, values[changed], refresh=False)
        layer.refresh()

    def _valid_scores(self, layer: Labels) -> dict:
        if self._scores_digest is None or self._scores_digest[0] is not layer:
            return {}
        if self._scores_digest[1] != content_hash(layer.data):
            return {}  # edited since: the scores may describe other masks
        return self._scores

    # ------------------------------------------------------------------ COCO
    def export_coco(self, path: str | Path | None = None) -> Path | None:
        """Save the objects of the output layer as COCO JSON.

        Without ``path``, a file dialog asks for one. SAM's scores are included
        while the layer is unchanged since the run. Returns the written path.
        """
        from napari_sam.workflows.io import CocoWriter

        layer = self.output_layer
        if layer is None:
            image = self.image_picker.current()
            if image is not None:
                try:
                    shape = image_layout(image.data.shape, rgb=image.rgb).spatial_shape
                    layer = self._find_output(image, shape)
                except ImageFormatError:
                    layer = None
        if layer is None:
            notifications.show_warning(
                "There is nothing to export yet: run automatic segmentation first."
            )
            return None
        if path is None:
            chosen, _ = QFileDialog.getSaveFileName(
                self, "Export COCO JSON", f"{layer.name}.json", "COCO JSON (*.json)"
            )
            if not chosen:
                return None
            path = chosen
        source = getattr(getattr(layer, "source", None), "path", None)
        image = self.image_picker.current()
        if image is not None and getattr(image.source, "path", None):
            source = image.source.path
        file_name = Path(source).name if source else layer.name.removesuffix(OUTPUT_SUFFIX)
        try:
            writer = CocoWriter()
            writer.add(
                np.asarray(layer.data),
                file_name,
                stack=layer.data.ndim == 3,
                scores=self._valid_scores(layer),
            )
            written = writer.write(path)
        except NapariSamError as exc:
            self._report(exc)
            return None
        n = len(writer.annotations)
        notifications.show_info(f"Saved {n} object mask{'s' if n != 1 else ''} to {written}.")
        self._set_status(f"COCO JSON saved: {written}")
        return written

    # ------------------------------------------------------------------ teardown
    def close_session(self) -> None:
        """Disconnect from the viewer and stop a run (on close)."""
        if self._closed:
            return
        self.cancel()
        self._closed = True
        for emitter, callback in self._connections:
            try:
                emitter.disconnect(callback)
            except (TypeError, ValueError, RuntimeError):
                pass
        self._connections = []

    def closeEvent(self, event: Any) -> None:
        self.close_session()
        super().closeEvent(event)


def _int_spin(value: int, low: int, high: int, tip: str) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin


def _float_spin(value: float, low: float, high: float, tip: str) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(low, high)
    spin.setDecimals(2)
    spin.setSingleStep(0.01)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin
