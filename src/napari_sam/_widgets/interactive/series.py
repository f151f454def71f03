"""A folder of images in the interactive dock, annotated one after another (no Qt).

:class:`DockSeries` is the dock's side of a
:class:`~napari_sam.workflows.series.ImageSeries`: it shows one image of the
folder at a time as an Image layer with its labels ("<name> SAM labels", read
back from the output folder when they were saved before), and on Next /
Previous (keys Shift+N / Shift+B):

- reads the other image first (an unreadable file: one sentence, nothing
  written, the current image stays);
- keeps the current image's prompts (points with their positive/negative
  label, boxes, the viewer's position) to put them back when the user returns,
  so switching asks nothing and loses nothing;
- saves the current image's labels, if they changed, with the names and the
  object table of ``napari-sam segment``'s folder mode (``<name>_labels.tif``
  and its CSV in ``<folder>/labels``, written atomically);
- replaces the image, labels and prompt layers, and encodes the plane the next
  image will show in a background job (kind ``"prefetch"``, cancellable), with
  the key the dock looks up, so the first click there needs no encoding.

Only layers the series made are removed: a prompt layer the user chose
(another name than "SAM points"/"SAM boxes") stays in the viewer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image

from napari_sam._widgets.interactive.commit import LABELS_SUFFIX
from napari_sam._widgets.interactive.planes_layout import PlaneKey, dock_layout, is_planes
from napari_sam._widgets.interactive.predict import keep_encoded
from napari_sam._widgets.interactive.prompt_layers import (
    BOXES_NAME,
    NEGATIVE,
    POINTS_NAME,
    POSITIVE,
    ensure_label_feature,
)
from napari_sam._widgets.notices import Notice, notice_for
from napari_sam.errors import Cancelled, NapariSamError
from napari_sam.workflows.embeddings import EmbeddingKey
from napari_sam.workflows.prompts import labels_from_feature
from napari_sam.workflows.series import ImageSeries, OpenImage

__all__ = ["NEXT_KEY", "PREVIOUS_KEY", "DockSeries", "SavedPrompts"]

NEXT_KEY = "Shift+N"
PREVIOUS_KEY = "Shift+B"


@dataclass
class SavedPrompts:
    """The prompts of one image as the user left them.

    Attributes
    ----------
    points : ndarray (N, D) float
        Points in the prompt layer's data coordinates (D = the image's axes).
    labels : list of str
        "positive" / "negative", one per point.
    boxes : list of ndarray (4, D)
        Box corners (data coordinates).
    shape_types : list of str
        napari's shape type of each box ("rectangle").
    point : tuple of float
        The viewer's world position (``viewer.dims.point``).
    """

    points: np.ndarray
    labels: list[str]
    boxes: list[np.ndarray]
    shape_types: list[str]
    point: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.points) + len(self.boxes)


def capture_prompts(c: Any) -> SavedPrompts | None:
    """The prompts in controller ``c``'s prompt layers now, with the viewer's position
    (None when there are none)."""
    points, boxes = c.prompts.points.current, c.prompts.boxes.current
    saved = SavedPrompts(
        points=np.asarray(points.data, float).copy() if points is not None
        else np.zeros((0, 2)),
        labels=[], boxes=[], shape_types=[], point=tuple(c.viewer.dims.point),
    )
    if points is not None and len(points.data):
        values = labels_from_feature(
            points.features["label"].to_numpy() if "label" in points.features else None,
            len(points.data))
        saved.labels = [POSITIVE if v == 1 else NEGATIVE for v in values]
    if boxes is not None and len(boxes.data):
        saved.boxes = [np.asarray(b, float).copy() for b in boxes.data]
        saved.shape_types = list(boxes.shape_type)
    return saved if len(saved) else None


@dataclass
class _Prepared:
    """An image read ahead: its layer (not yet in the viewer) and the plane key it shows."""

    opened: OpenImage
    layer: Any
    index: PlaneKey
    key: EmbeddingKey | None = None


def _layer_name(path: Path) -> str:
    return path.name[: -len(path.suffix)] if path.suffix else path.name


class DockSeries:
    """The image series of an interactive controller ``c``.

    Attributes
    ----------
    series : ImageSeries or None
        The folder open now (None before :meth:`open_folder`).
    image_layer, labels_layer : layers or None
        The current image's layers.
    """

    def __init__(self, c: Any) -> None:
        self.c = c
        self.series: ImageSeries | None = None
        self.image_layer: Any = None
        self.labels_layer: Any = None
        self._target: int | None = None  # the image last asked for (Next skips a bad file)
        self._prepared: _Prepared | None = None
        self._prefetching: EmbeddingKey | None = None
        c.connections.connect(c.session.events.model, self._on_model)

    # ------------------------------------------------------------------ what is shown
    @property
    def position(self) -> int | None:
        return None if self.series is None else self.series.position

    def describe(self) -> str:
        """``"Image 2 of 3: name.tif"``, or how to start."""
        s = self.series
        if s is None:
            return "No series: open a folder of images to annotate them one after another."
        if s.position is None:
            return f"{len(s)} images in {s.folder.name}; none open."
        return f"Image {s.position + 1} of {len(s)}: {s.images[s.position].name}"

    def encoding(self, key: EmbeddingKey) -> bool:
        """Whether the plane of ``key`` is being encoded ahead (the dock then waits for it)."""
        return self._prefetching is not None and self._prefetching == key

    # ------------------------------------------------------------------ commands
    def open_folder(self, folder: str | os.PathLike[str], output: Any = None) -> bool:
        """Open a folder of images (labels go to ``output``, default ``<folder>/labels``)
        and show its first image; False (said in one sentence) if it cannot be used."""
        try:
            series = ImageSeries(Path(folder), output)
        except NapariSamError as exc:
            self.c.notify(notice_for(exc))
            return False
        if self.series is not None and self.series.position is not None and not self._leave():
            return False
        self._prepared = None
        self.series, self._target = series, None
        self.c.changed("series")
        if not self.go_to(0):
            self.c.set_status(f"{self.describe()} The first image could not be opened; press "
                              "Next to go on.")
        return True

    def next(self) -> bool:
        """Show the next image (key Shift+N)."""
        return self.step(1)

    def previous(self) -> bool:
        """Show the previous image (key Shift+B)."""
        return self.step(-1)

    def step(self, step: int) -> bool:
        s = self.series
        if s is None:
            self.c.info("Open a folder of images first (“Open folder…” under Image series).")
            return False
        start = self._target if self._target is not None else s.position
        target = (-1 if start is None else start) + step
        if not 0 <= target < len(s):
            if s.position is not None:
                written = self.save()
                saved = (f"its labels were saved to {written[0]}" if written
                         else "its labels have no unsaved change")
                self.c.set_status(f"{self.describe()} is the {'last' if step > 0 else 'first'} "
                                  f"image; {saved}.")
            return False
        return self.go_to(target)

    def go_to(self, position: int) -> bool:
        """Show image ``position`` (keeping the current image's prompts, saving its labels);
        False, said in one sentence, if the image cannot be read or the labels saved."""
        c, s = self.c, self.series
        if s is None:
            return False
        self._target = position
        if position == s.position:
            return True  # already shown (reading it again would drop unsaved labels)
        prepared = self._prepared
        self._prepared = None
        try:
            if prepared is None or prepared.opened.position != position:
                prepared = self._prepare(s.read(position))
        except (NapariSamError, OSError, IndexError) as exc:
            c.notify(notice_for(exc) if isinstance(exc, NapariSamError)
                     else Notice.error(str(exc)))
            return False
        if s.position is not None and not self._leave():
            return False
        self._show(prepared)
        s.position = position
        c.changed("series")
        c.set_status(f"{self.describe()}. {self._restore(s.prompts(position))}")
        self.prefetch()
        return True

    def save(self) -> list[Path]:
        """Save the current image's labels (and object table) if they changed; the files."""
        s = self.series
        written = self._write() or []
        if written:
            self.c.set_status(f"Saved the labels of {s.images[s.position].name} to "
                              f"{written[0]}.")
        return written

    def close(self) -> None:
        self.c.runner.cancel("prefetch")
        self._prepared = None

    # ------------------------------------------------------------------ switching
    def _write(self) -> list[Path] | None:
        """Save the current image's labels if they changed: the files written (empty when
        nothing changed or there is nothing to save), None if saving failed (said)."""
        s, labels = self.series, self.labels_layer
        if s is None or s.position is None or labels is None or labels not in self.c.viewer.layers:
            return []
        try:
            return s.save(s.position, labels.data, features=labels.features)
        except (NapariSamError, OSError) as exc:
            self.c.notify(notice_for(exc) if isinstance(exc, NapariSamError)
                          else Notice.error(f"The labels could not be saved: {exc}"))
            return None

    def _leave(self) -> bool:
        """Keep the current image's prompts and save its labels; False if they could not be
        saved (the user stays on the image)."""
        self.series.set_prompts(self.series.position, capture_prompts(self.c))
        return self._write() is not None

    def _prepare(self, opened: OpenImage) -> _Prepared:
        """The Image layer of ``opened`` (not yet added) and the plane napari will show."""
        image = opened.image
        kwargs: dict[str, Any] = {"scale": image.scale}
        if image.unit:
            kwargs["units"] = (image.unit,) * len(image.scale)
        layer = Image(image.data, rgb=image.rgb, name=_layer_name(opened.path), **kwargs)
        layout = dock_layout(layer)
        lead = tuple(layout.spatial_shape[:-2])
        middle = tuple((n - 1) // 2 for n in lead)
        index: PlaneKey = None if not lead else (middle if is_planes(layout) else middle[0])
        return _Prepared(opened, layer, index)

    def _show(self, prepared: _Prepared) -> None:
        """Replace the current image, labels and prompt layers by those of ``prepared``."""
        c, viewer = self.c, self.c.viewer
        old = [self.image_layer, self.labels_layer]
        for layer in (c.prompts.points.current, c.prompts.boxes.current):
            if layer is not None and layer.name in (POINTS_NAME, BOXES_NAME):
                old.append(layer)  # the series' own: remade with the new image's geometry
        if c.preview.exists():
            old.append(c.preview.layer)  # made again for the new image at its first preview
        for kind in ("points", "boxes"):
            getattr(c.prompts, kind).select(None)
        for layer in old[2:]:
            if layer in viewer.layers:
                viewer.layers.remove(layer)
        opened = prepared.opened
        self.image_layer = viewer.add_layer(prepared.layer)
        self.labels_layer = viewer.add_labels(
            opened.labels, name=f"{prepared.layer.name}{LABELS_SUFFIX}",
            scale=prepared.layer.scale, units=prepared.layer.units,
            features=opened.table,  # the saved table: earlier objects keep their scores
        )
        c.set_image(self.image_layer)
        c.set_output(self.labels_layer)
        for layer in old[:2]:
            if layer is not None and layer in viewer.layers:
                viewer.layers.remove(layer)
        viewer.reset_view()  # frame the new image
        self._go_to_plane(prepared.index)
        c.prompts.activate()  # the first click on the canvas is a prompt

    def _go_to_plane(self, index: PlaneKey) -> None:
        """Show plane ``index`` of the current image (the middle one, as napari opens it)."""
        if index is None:
            return
        lead = index if isinstance(index, tuple) else (index,)
        data_point = np.array([*lead, 0, 0], float)
        world = self.image_layer.data_to_world(data_point)
        dims = self.c.viewer.dims
        offset = dims.ndim - len(world)
        for axis, value in enumerate(world[: len(lead)]):
            dims.set_point(offset + axis, float(value))

    def _restore(self, saved: SavedPrompts | None) -> str:
        """Put ``saved`` back into the (new) prompt layers; what the status line says."""
        c = self.c
        if saved is None:
            return "Place points or boxes."
        c.prompt_layers_changed()
        points, boxes = c.prompts.points.current, c.prompts.boxes.current
        dims = c.viewer.dims
        if len(saved.point) == dims.ndim:
            for axis in range(dims.ndim - 2):
                dims.set_point(axis, saved.point[axis])
        if points is not None and len(saved.points) and points.ndim == saved.points.shape[1]:
            ensure_label_feature(points)
            start = 0
            for end in range(1, len(saved.labels) + 1):  # runs of one label, as clicks add them
                if end == len(saved.labels) or saved.labels[end] != saved.labels[start]:
                    points.feature_defaults = {"label": saved.labels[start]}
                    points.add(saved.points[start:end])
                    start = end
            c.prompts.set_negative(c.prompts.negative)  # new clicks: the user's choice again
        if boxes is not None and saved.boxes and boxes.ndim == saved.boxes[0].shape[1]:
            boxes.add(saved.boxes, shape_type=saved.shape_types)
        c.prompts.activate()  # napari selected the layer last changed
        n = len(saved)
        return f"Its {n} prompt{'s' if n != 1 else ''} are back."

    # ------------------------------------------------------------------ reading ahead
    def prefetch(self) -> None:
        """Read the next image and encode the plane it will show, in a background job."""
        c, s = self.c, self.series
        if s is None or s.position is None or c.closed or c.model is None:
            return
        target = s.next_position()
        if target is None or c.runner.running("prefetch"):
            return
        if self._prepared is None or self._prepared.opened.position != target:
            try:
                self._prepared = self._prepare(s.read(target))
            except (NapariSamError, OSError):
                self._prepared = None  # said when the user gets there
                return
        prepared, model = self._prepared, c.model
        layer = prepared.layer
        layout = dock_layout(layer)
        if c.tiles.tiling.grid(layout.plane_shape) is not None:
            return  # a large plane: its tiles are encoded when a click needs them
        key, plane = c.embeddings.key_and_plane(layer, layout, prepared.index, model.embedding_id)
        prepared.key = key
        if c.embeddings.find(key)[0] is not None:
            return
        self._prefetching = key
        outcome = {"ok": False}

        def done(result: tuple) -> None:
            outcome["ok"] = True
            keep_encoded(c, result)

        def failed(exc: BaseException) -> Notice | None:
            if isinstance(exc, Cancelled):
                return Notice.info("Reading the next image ahead was stopped; it is encoded "
                                   "when you get there.")
            return Notice.warning(f"The next image could not be encoded ahead ({exc}); it is "
                                  "encoded when you get there.")

        def finished() -> None:
            self._prefetching = None
            c.changed("busy")
            if c.closed:
                return
            if c.image is layer:
                c.schedule()  # the user arrived while it ran: predict with it now
            if outcome["ok"]:
                self.prefetch()  # the user may have moved on meanwhile

        job = c.embeddings.encode_job(
            model.sam, key, plane, layout.rgb,
            f"Encoding the next image “{layer.name}” ahead with {model.name}…",
            done, failed, finished,
        )
        job.kind = "prefetch"
        c.runner.start(job)

    def _on_model(self, event: Any = None) -> None:
        if self.series is not None and self.c.model is not None:
            self.prefetch()

