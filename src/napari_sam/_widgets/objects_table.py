"""The object table of the output labels: napari's ``features`` of the Labels layer, and CSV.

After every commit (and the dock's undo) the interactive dock, and after every
run the automatic dock (:func:`run_table`, in a job off the GUI thread), measure
the objects of the output Labels layer (:func:`~napari_sam.workflows.tables.object_table`:
pixels, calibrated area / volume and centre from the layer's scale and
translate, mean intensity of the image (or of each chosen channel layer) where
it has the labels' shape, SAM's predicted IoU and stability score, how the
object was made) and sets the result as the layer's ``features``, so napari's
features table (Layers > Features table) shows it. Scores and methods are
known only when objects are made, so those of earlier objects are carried over
from the previous features (:func:`~napari_sam.workflows.tables.merge_sam_columns`);
objects painted by hand get NaN / "". :func:`save_table` writes the same table
as CSV.

The table is kept up to date **incrementally**: every change of the layer
that napari records for undo (a commit, a propagation, painting) reports the
pixels it changed (napari's ``paint`` event); the ids found there (old and
new values) are measured again on the planes they touch
(:func:`~napari_sam.workflows.tables.update_object_table`), every other row is
kept. A lazy (dask, zarr) image is read only in the planes and bounding boxes
of those objects. Whenever the layer changed in a way not seen (new data,
napari's own undo or redo, other calibration or intensity images), the whole
layer is measured again, so the table always equals a full measurement.
"""

from __future__ import annotations

import itertools
import os
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam._widgets.jobs import Job
from napari_sam._widgets.notices import Notice
from napari_sam.errors import NapariSamError
from napari_sam.workflows.tables import (
    merge_sam_columns,
    object_table,
    scores_by_label,
    update_object_table,
    write_object_table,
)

__all__ = [
    "refresh_features",
    "run_table",
    "save_table",
    "set_run_table",
    "table_job",
    "touched_by",
    "undo_labels",
    "unit_of",
]


def unit_of(layer: Any) -> str | None:
    """The length unit of a layer's last axis (napari's ``units``), None when uncalibrated."""
    units = getattr(layer, "units", None)
    if not units:
        return None
    name = str(units[-1]).strip()
    if name == "pixel" and all(float(s) == 1.0 for s in layer.scale):
        return None
    return name or None


def _is_array(data: Any) -> bool:
    """Array-like data (numpy, dask, zarr) that can be read by blocks."""
    return hasattr(data, "shape") and hasattr(data, "dtype") and hasattr(data, "__getitem__")


def _intensity(image: Any, shape: tuple[int, ...],
               channels: Any = None) -> tuple[Any, list[str] | None]:
    """The image values of the labels' shape for mean intensities (numpy, or lazy: then
    only the objects' planes are read), and the channel names: with ``channels`` (a
    :class:`~napari_sam._widgets.channel_layers.ChannelLayers` SAM saw), its layers."""
    if channels is not None and channels.layers:
        arrays, layer_names = channels.intensity()
        if all(_is_array(a) and tuple(a.shape) == shape for a in arrays):
            return arrays, layer_names
    if image is None or getattr(image, "multiscale", False) or not _is_array(image.data):
        return None, None
    data = image.data
    if getattr(image, "rgb", False) and tuple(data.shape[:-1]) == shape:
        return [data[..., i] for i in range(3)], ["red", "green", "blue"]
    if tuple(data.shape) == shape:
        return data, None
    return None, None


def _lazy(intensity: Any) -> bool:
    arrays = intensity if isinstance(intensity, list) else [intensity]
    return any(a is not None and not isinstance(a, np.ndarray) for a in arrays)


def touched_by(item: Any, ndim: int) -> tuple[set[int], set[tuple[int, ...]]] | None:
    """The ids (old and new values) and planes (leading indices) one napari history item
    (a list of atoms: ``(indices, before, after)`` or a masked paint) changed; None for an
    atom of an unknown kind."""
    ids: set[int] = set()
    planes: set[tuple[int, ...]] = set()
    lead = ndim - 2
    for atom in item:
        if isinstance(atom, tuple) and len(atom) == 3 and not hasattr(atom, "slice_key"):
            indices, before, after = atom
            ids.update(int(v) for v in np.unique(np.asarray(before)))
            ids.update(int(v) for v in np.unique(np.asarray(after)))
            if lead and len(indices) == ndim and np.size(indices[0]):
                stacked = np.stack([np.asarray(i).ravel() for i in indices[:lead]], axis=1)
                planes.update(tuple(int(v) for v in row) for row in np.unique(stacked, axis=0))
            elif not lead:
                planes.add(())
        elif hasattr(atom, "slice_key") and hasattr(atom, "old_values"):
            ids.update(int(v) for v in np.unique(np.asarray(atom.old_values)))
            ids.add(int(atom.new_value))
            ranges = [range(*sl.indices(10**12)) for sl in tuple(atom.slice_key)[:lead]]
            planes.update(tuple(int(v) for v in p) for p in itertools.product(*ranges))
        else:
            return None
    ids.discard(0)
    return ids, planes


class _Tracker:
    """The changes of one Labels layer since its table was last measured."""

    def __init__(self, layer: Any, signature: tuple) -> None:
        self.data = layer.data
        self.signature = signature
        history = getattr(layer, "_undo_history", None)
        self.maxlen = getattr(history, "maxlen", None)  # napari keeps this many undo steps
        self.history = list(history or [])
        self.ids: set[int] = set()
        self.planes: set[tuple[int, ...]] = set()
        self.lost = not hasattr(layer, "_undo_history")
        layer.events.paint.connect(self.on_paint)

    def on_paint(self, event: Any) -> None:
        self.history.append(event.value)
        if self.maxlen is not None and len(self.history) > self.maxlen:
            del self.history[:-self.maxlen]  # as napari's history drops its oldest steps
        self.add(event.value)

    def add(self, item: Any) -> None:
        touched = touched_by(item, np.ndim(self.data))
        if touched is None:
            self.lost = True
        else:
            self.ids |= touched[0]
            self.planes |= touched[1]

    def current(self, layer: Any, signature: tuple) -> bool:
        """Every change since the last measurement was seen (same data, calibration and
        intensity images; napari's undo history is what was seen, in order)."""
        history = list(getattr(layer, "_undo_history", None) or [])
        return (not self.lost and layer.data is self.data and signature == self.signature
                and len(history) == len(self.history)
                and all(a is b for a, b in zip(history, self.history)))

    def disconnect(self, layer: Any) -> None:
        layer.events.paint.disconnect(self.on_paint)


_trackers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def undo_labels(labels: Any, image: Any = None, channels: Any = None) -> None:
    """Undo the last change of ``labels`` (napari's undo) and bring its object table up to
    date, measuring again only the objects that change touched."""
    history = getattr(labels, "_undo_history", None)
    item = history[-1] if history else None
    tracker = _trackers.get(labels)
    labels.undo()
    if tracker is None or item is None:
        return
    if tracker.history and tracker.history[-1] is item:
        tracker.history.pop()
        tracker.add(item)
    else:
        tracker.lost = True
    try:
        refresh_features(labels, image, channels=channels)
    except NapariSamError:
        pass  # the table stays as it was; the next commit says what is wrong


def refresh_features(
    labels: Any,
    image: Any = None,
    scores: Mapping[int, Mapping[str, float]] | None = None,
    method: str | None = None,
    channels: Any = None,
) -> Any:
    """Measure every object of ``labels`` (a napari Labels layer) and set its ``features``.

    Parameters
    ----------
    labels : napari Labels layer, 2D, 3D (Z, Y, X) or 4D (T, Z, Y, X)
    image : napari Image layer, optional
        For the mean intensity (when its data, numpy or lazy, has the labels' shape,
        or is RGB of that shape).
    scores : mapping id -> {"predicted_iou": ..., "stability_score": ...}, optional
        SAM's scores of the objects just made.
    method : str, optional
        How the objects in ``scores`` were made ("interactive", "one-click", ...).
    channels : ChannelLayers, optional
        The channel layers SAM saw: one mean intensity column per channel, named after
        its layer.

    Returns
    -------
    pandas.DataFrame or None
        The table set as features (None for labels of another dimension: nothing changes).
    """
    data = labels.data
    if np.ndim(data) not in (2, 3, 4):
        return None
    shape = tuple(data.shape)
    intensity, names = _intensity(image, shape, channels)
    scores = dict(scores or {})
    kwargs = _table_kwargs(labels, intensity, names, scores,
                           {int(i): method for i in scores} if method else None)
    arrays = intensity if isinstance(intensity, list) else [intensity]
    signature = (kwargs["scale"], kwargs["translate"], kwargs["unit"],
                 tuple(id(a) for a in arrays), tuple(names or ()))
    tracker = _trackers.get(labels)
    features = labels.features
    if tracker is not None and tracker.current(labels, signature) and "n_pixels" in features:
        table = update_object_table(features, data, tracker.ids, tracker.planes, **kwargs)
    else:
        table = _measure_all(data, intensity, kwargs)
    table = merge_sam_columns(table, features)
    if tracker is not None:
        tracker.disconnect(labels)
    _trackers[labels] = _Tracker(labels, signature)
    labels.features = table
    return table


def _table_kwargs(labels: Any, intensity: Any, names: Any, scores: dict, method: Any) -> dict:
    """The keywords of :func:`~napari_sam.workflows.tables.object_table` for a Labels layer:
    its scale, translate and unit, the intensity images and SAM's columns."""
    return dict(
        scale=tuple(labels.scale),
        translate=tuple(labels.translate),
        unit=unit_of(labels),
        intensity=intensity,
        channel_names=names,
        scores=scores,
        method=method,
    )


def _measure_all(data: Any, intensity: Any, kwargs: dict) -> Any:
    """The object table of every object of ``data`` (a lazy intensity image is read only in
    the planes holding objects)."""
    values = np.asarray(data)
    if not _lazy(intensity):
        return object_table(values, **kwargs)
    lead = values.ndim - 2
    planes = ({tuple(int(v) for v in p) for p in np.argwhere(values.any(axis=(-2, -1)))}
              if lead else {()})  # fmt: skip
    return update_object_table(None, values, np.unique(values), planes, **kwargs)


def run_table(labels: Any, image: Any, scores: Mapping[Any, Mapping[str, float]],
              method: str = "automatic", channels: Any = None) -> Any:
    """The object table of ``labels`` after a run that wrote all of its objects (the
    automatic dock): every object gets ``method``, and SAM's scores where ``scores`` (keyed
    by label or ``(slice, label)``, :func:`~napari_sam.workflows.tables.scores_by_label`)
    has them. Only reads the layers, so it may run off the GUI thread; set the result with
    :func:`set_run_table`.

    Raises
    ------
    NapariSamError
        For labels that are not integers, or an intensity image that does not fit.
    """
    data = labels.data
    shape = tuple(np.shape(data))
    intensity, names = _intensity(image, shape, channels)
    by_label = scores_by_label(scores)
    ids = [int(i) for i in np.unique(np.asarray(data)) if i]
    kwargs = _table_kwargs(labels, intensity, names, {i: by_label.get(i, {}) for i in ids},
                           {i: method for i in ids})
    return _measure_all(data, intensity, kwargs)


def set_run_table(labels: Any, table: Any) -> None:
    """Make ``table`` (:func:`run_table`) the features of ``labels``; earlier features are
    dropped (a run may reuse ids), and the next commit into the layer measures it whole."""
    tracker = _trackers.pop(labels, None)
    if tracker is not None:
        tracker.disconnect(labels)
    labels.features = table


def table_job(labels: Any, image: Any, scores: Mapping[Any, Mapping[str, float]],
              method: str = "automatic", finished: Any = None, channels: Any = None) -> Job:
    """A job measuring :func:`run_table` in the worker and setting it on ``labels``
    (:func:`set_run_table`); a failure is one warning (the labels are written anyway).
    With ``channels`` (the channel layers SAM saw), one mean intensity column per channel."""

    def failed(exc: BaseException) -> Notice | None:
        return Notice.warning(f"The object table of “{labels.name}” could not be made: {exc}")

    return Job("table", f"Measuring the objects of “{labels.name}”…",
               lambda progress, should_cancel: run_table(labels, image, scores, method,
                                                         channels),
               done=lambda table: set_run_table(labels, table), failed=failed,
               finished=finished)


def save_table(labels: Any, path: str | os.PathLike[str], image: Any = None) -> Path:
    """Measure ``labels`` again (keeping known scores) and write the table as CSV to ``path``.

    Raises
    ------
    OutputFileError
        If the file cannot be written.
    ImageFormatError
        For labels that are not 2D, 3D or 4D.
    """
    table = refresh_features(labels, image)
    if table is None:
        table = object_table(np.asarray(labels.data))  # raises the one-sentence error
    return write_object_table(path, table)
