"""Automatic segmentation of every plane of an :class:`~napari_sam.workflows.planes.ImagePlanes`.

:func:`segment_planes` runs :func:`~napari_sam.workflows.segment.segment` on
each plane exactly as SAM sees it through an
:class:`~napari_sam.workflows.planes.ImagePlanes` (its contrast limits and its
1–3 channels mapped to red, green and blue), for images with any number of
leading axes. Object ids are numbered on through the planes (1, 2, ... in the
first plane, then on). With ``settings.link_slices``, objects that continue
from one plane to the next along the *last* leading axis get one id
(:func:`~napari_sam.workflows.segment.link_slices`): through the slices of a
stack, as for a grayscale stack, and through the slices of each time point of
a ``(T, Z, Y, X)`` time-lapse of stacks (never from one time point to the
next: objects of different time points keep different ids).

Planes are read one at a time (lazy arrays are never read whole).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from napari_sam.errors import ImageFormatError, SettingsError
from napari_sam.runtime.progress import CancelCheck, Progress, ProgressCallback
from napari_sam.workflows.planes import ImagePlanes
from napari_sam.workflows.segment import (
    AutoSettings,
    SegmentationResult,
    link_slices,
    segment,
)
from napari_sam.workflows.spill import labels_into

__all__ = ["segment_planes"]


def segment_planes(
    model: Any,
    planes: ImagePlanes,
    *,
    settings: AutoSettings | None = None,
    indices: Sequence[Sequence[int] | int] | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    mode: str = "auto",
    ais_settings: Any = None,
    tiling: Any = "auto",
    out: np.ndarray | None = None,
) -> SegmentationResult:
    """Label every object of (some) planes of an image, as SAM sees them through ``planes``.

    Parameters
    ----------
    model : Sam
    planes : ImagePlanes
        The image, its contrast limits and channel choice.
    settings : AutoSettings, optional
    indices : sequence of leading indices, optional
        The planes to segment (default all, in C order).
    progress, should_cancel : callable, optional
        As for :func:`~napari_sam.workflows.segment.segment`; ``done`` and
        ``total`` count SAM's steps over all planes.
    mode, ais_settings, tiling : optional
        As for :func:`~napari_sam.workflows.segment.segment` (``model`` may be a
        ``LoadedModel`` with an instance decoder; large planes are tiled).
    out : ndarray, optional
        A zero-filled ``uint32`` array of the image's label shape to write the
        labels into (e.g. a memory-mapped file, so that the labels of a long
        time-lapse are never all in memory); default a new array in memory.
        Linking reads and writes it one line of planes at a time.

    Returns
    -------
    SegmentationResult
        ``labels`` of the image's label shape (uint32; unsegmented planes 0);
        ``slices`` the segmented positions along the one leading axis of a
        stack (None otherwise); ``scores`` keyed by ``(position, label)`` where
        the position is ``None`` (2D), an int (stack) or the full index.

    Raises
    ------
    SettingsError
        For a plane outside the image.
    ValueError
        If ``out`` is not a ``uint32`` array of the label shape.
    Cancelled
        If ``should_cancel`` returned True.
    """
    settings = settings or AutoSettings()
    settings.check()
    g = planes.geometry
    try:
        todo = (
            list(g.indices()) if indices is None else [g.check_index(i) for i in indices]
        )
    except ImageFormatError as exc:  # a plane outside the image
        raise SettingsError(str(exc)) from exc
    if not todo:
        raise SettingsError("No plane to segment was given.")
    per_plane = replace(settings, link_slices=False)
    labels = labels_into(out, g.shape)
    scores: dict[tuple[Any, int], dict[str, float]] = {}
    next_id = 1
    n_masks = 0
    n = len(todo)
    for i, index in enumerate(todo):
        where: Any = None if not index else (index[0] if len(index) == 1 else index)

        def report(event: Progress, i: int = i, where: Any = where) -> None:
            if progress is None or event.total is None:
                return
            stage = event.stage if where is None else f"plane {where}: {event.stage}"
            progress(Progress(i * event.total + event.done, n * event.total, stage, "steps"))

        result = segment(
            model,
            planes.sam_image(index),
            rgb=True,
            contrast_limits=(0.0, 255.0),
            settings=per_plane,
            progress=report,
            should_cancel=should_cancel,
            mode=mode,
            ais_settings=ais_settings,
            tiling=tiling,
        )
        plane = result.labels
        count = int(plane.max()) if plane.size else 0
        if count:
            plane = plane.copy()
            plane[plane > 0] += np.uint32(next_id - 1)
        for (_, lab), values in result.scores.items():
            scores[(where, int(lab) + next_id - 1)] = dict(values)
        next_id += count
        n_masks += result.n_masks
        labels[g.labels_slicer(index)] = plane
    slices = [int(index[0]) for index in todo] if g.n_leading == 1 else None
    if settings.link_slices and g.n_leading:
        scores = _link_lines(labels, scores, todo, planes, settings.link_iou)
    return SegmentationResult(
        labels=labels, slices=slices, scores=scores, n_masks=n_masks, mode=result.mode
    )


def _link_lines(
    labels: np.ndarray,
    scores: dict[tuple[Any, int], dict[str, float]],
    todo: list[tuple[int, ...]],
    planes: ImagePlanes,
    iou: float,
) -> dict[tuple[Any, int], dict[str, float]]:
    """Link the segmented planes of ``labels`` (in place) along the last leading axis.

    Each line of planes along that axis (one per index of the other leading
    axes: the slices of one time point) is linked on its own by
    :func:`~napari_sam.workflows.segment.link_slices`; its ids are then offset
    past the previous lines' so that every object keeps its own id. Returns
    the scores under the new ids (keys as :func:`segment_planes` gives them).
    """
    g = planes.geometry
    lines: dict[tuple[int, ...], list[int]] = {}
    for index in todo:
        lines.setdefault(index[:-1], []).append(index[-1])
    by_line: dict[tuple[int, ...], list[tuple[Any, int, int]]] = {}
    for (where, lab), _ in scores.items():
        index = tuple(where) if isinstance(where, tuple) else (int(where),)
        by_line.setdefault(index[:-1], []).append((where, index[-1], lab))
    linked: dict[tuple[Any, int], dict[str, float]] = {}
    offset = 0
    for outer, zs in lines.items():
        view = g.line_slicer((*outer, zs[0]), g.n_leading - 1)
        line = labels[view]  # a view: linked in place, plane by plane
        line, mapping = link_slices(line, iou, slices=sorted(zs), out=line)
        if offset:
            for plane in line:
                plane[plane > 0] += np.uint32(offset)
        for where, z, lab in by_line.get(outer, []):
            linked[(where, mapping[(z, lab)] + offset)] = scores[(where, lab)]
        offset = max(offset, int(line.max()) if line.size else 0)
    return linked
