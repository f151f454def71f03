"""Committing the preview: which pixels of the output Labels layer get which new id.

:func:`commit_preview` turns the preview of one slice into new objects of the
output layer, as ONE undo step, never over another object's pixels unless the
user asked (``overwrite``); it says what it did, or why it did nothing.
:func:`ensure_labels` makes the output layer "<image> SAM labels" when none is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_sam._widgets.interactive.planes_layout import PlaneKey, plane_write_index, where
from napari_sam._widgets.layers import add_layer_quietly, layer_geometry, write_objects
from napari_sam._widgets.notices import Notice, notice_for
from napari_sam._widgets.objects_table import refresh_features, save_table
from napari_sam.errors import NapariSamError
from napari_sam.workflows.image import ImageLayout
from napari_sam.workflows.interactive import plan_commit

__all__ = [
    "LABELS_SUFFIX",
    "CommitResult",
    "commit_current",
    "commit_preview",
    "ensure_labels",
    "save_output_table",
    "shape_mismatch",
]

LABELS_SUFFIX = " SAM labels"


def ensure_labels(viewer: Any, image: Any, layout: ImageLayout, chosen: Any,
                  name: str | None = None) -> Any:
    """The chosen output layer, or a new uint32 ``name`` (default "<image> SAM labels") with
    the image's geometry."""
    if chosen is not None:
        return chosen
    return add_layer_quietly(
        viewer,
        lambda: viewer.add_labels(
            np.zeros(layout.spatial_shape, np.uint32),
            name=name or f"{image.name}{LABELS_SUFFIX}",
            **layer_geometry(image),
        ),
    )


def shape_mismatch(labels: Any, layout: ImageLayout) -> Notice | None:
    """An error if the output layer does not have the image's shape."""
    if labels.data.shape == layout.spatial_shape:
        return None
    return Notice.error(
        f"The labels layer “{labels.name}” has shape {labels.data.shape}, but the "
        f"image is {layout.spatial_shape}; choose another output layer."
    )


@dataclass
class CommitResult:
    """What a commit did: the new ids (empty if nothing was written), notices and status."""

    ids: list[int] = field(default_factory=list)
    sources: list[int] = field(default_factory=list)  # the preview id behind each new id
    notices: list[Notice] = field(default_factory=list)
    status: str | None = None


def commit_preview(
    labels: Any, preview_plane: np.ndarray, k: PlaneKey, overwrite: bool
) -> CommitResult:
    """Write the preview's objects of slice ``k`` (None: a 2D image) as new ids."""
    result = CommitResult()
    if not preview_plane.any():
        result.notices.append(Notice.info(
            "Nothing to commit: SAM found no object at these prompts; move the points, add "
            "some, or draw a box."
        ))
        return result
    labels_plane = np.asarray(labels.data[k] if k is not None else labels.data)
    next_id = int(np.max(labels.data)) + 1 if labels.data.size else 1
    plan = plan_commit(labels_plane, preview_plane, next_id, overwrite)
    if not plan:
        result.notices.append(Notice.info(
            "Nothing new to commit: the preview lies on existing objects (tick “Overwrite "
            "existing objects” to replace them)."
        ))
        return result
    note = write_objects(
        labels, [(new_id, plane_write_index(k, rows, cols)) for new_id, (rows, cols) in plan]
    )
    if note:
        result.notices.append(Notice.info(note))
    labels.selected_label = plan[-1][0] + 1
    result.ids = [int(p[0]) for p in plan]
    result.sources = [int(preview_plane[rows[0], cols[0]]) for _, (rows, cols) in plan]
    ids = ", ".join(map(str, result.ids))
    result.status = f"Committed object{'s' if len(plan) > 1 else ''} {ids} on {where(k)}."
    return result


def commit_current(c: Any) -> None:
    """The Commit command of an interactive controller ``c``: the preview of its slice
    into the output labels (made if needed), or one sentence saying why not."""
    if c.no_image():
        return
    c.flush()
    if c.computing():
        c.info("The preview is still being computed; try again in a moment.")
        return
    if not c.preview.objects or not c.preview.exists():
        c.info("Nothing to commit: place points or boxes first.")
        return
    labels = ensure_labels(c.viewer, c.image, c.layout, c.output.current,
                           c.images.labels_name(c.image))
    if labels is not c.output.current:
        c.output.select(labels)
        c.changed("output")
    problem = shape_mismatch(labels, c.layout)
    if problem is not None:
        c.notify(problem)
        return
    k = c.preview.slice
    result = commit_preview(labels, c.preview.plane(k), k, c.overwrite)
    for notice in result.notices:
        c.notify(notice)
    if result.ids:
        _measure(c, labels, result)
        c.clear_slice()
        c.set_status(result.status)


def _measure(c: Any, labels: Any, result: CommitResult) -> None:
    """Refresh the output layer's object table with the new objects' scores and method."""
    objects = c.preview.objects
    scores = {}
    for new_id, source in zip(result.ids, result.sources):
        if 0 < source <= len(objects):
            obj = objects[source - 1]
            scores[new_id] = {"predicted_iou": obj.score, "stability_score": obj.stability}
    method = "one-click" if getattr(c, "one_click", False) else "interactive"
    try:
        refresh_features(labels, c.image, scores, method,
                         c.channels if c.channels.active_for(c.image) else None)
    except NapariSamError as exc:  # the objects are written; only the table is missing
        c.notify(Notice.warning(f"The object table could not be updated: {exc}"))


def save_output_table(c: Any, path: str) -> Any:
    """The "Save table…" command of an interactive controller ``c``: the output labels'
    object table (one row per object) as CSV at ``path``; the path written, or None (said
    in one sentence)."""
    labels = c.output.current
    if labels is None:
        c.info("There is no object table yet: commit objects first.")
        return None
    try:
        written = save_table(labels, path, c.image)
    except NapariSamError as exc:
        c.notify(notice_for(exc))
        return None
    n = len(labels.features)
    c.set_status(f"Saved the table of {n} object{'s' if n != 1 else ''} of "
                 f"“{labels.name}” to {written}.")
    return written
