"""The object table of the output labels: napari's ``features`` of the Labels layer, and CSV.

After every commit the interactive dock measures every object of its output
Labels layer (:func:`~napari_sam.workflows.tables.object_table`: pixels,
calibrated area / volume and centre from the layer's scale and translate,
mean intensity of the image where it has the labels' shape, SAM's predicted
IoU and stability score, how the object was made) and sets the result as the
layer's ``features``, so napari's features table (Layers > Features table)
shows it. Scores and methods are known only when objects are made, so those
of earlier objects are carried over from the previous features
(:func:`~napari_sam.workflows.tables.merge_sam_columns`); objects painted by
hand get NaN / "". :func:`save_table` writes the same table as CSV.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.workflows.tables import merge_sam_columns, object_table, write_object_table

__all__ = ["refresh_features", "save_table", "unit_of"]


def unit_of(layer: Any) -> str | None:
    """The length unit of a layer's last axis (napari's ``units``), None when uncalibrated."""
    units = getattr(layer, "units", None)
    if not units:
        return None
    name = str(units[-1]).strip()
    if name == "pixel" and all(float(s) == 1.0 for s in layer.scale):
        return None
    return name or None


def _intensity(image: Any, shape: tuple[int, ...]) -> tuple[Any, list[str] | None]:
    """The image values of the labels' shape for mean intensities (in-memory images only:
    a lazy image is not read whole for a table), and the channel names."""
    if image is None or not isinstance(image.data, np.ndarray):
        return None, None
    data = image.data
    if getattr(image, "rgb", False) and data.shape[:-1] == shape:
        return [data[..., i] for i in range(3)], ["red", "green", "blue"]
    if data.shape == shape:
        return data, None
    return None, None


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
        For the mean intensity (when its data is a numpy array of the labels' shape,
        or RGB of that shape).
    scores : mapping id -> {"predicted_iou": ..., "stability_score": ...}, optional
        SAM's scores of the objects just made.
    method : str, optional
        How the objects in ``scores`` were made ("interactive", "one-click", ...).
    channels : ChannelLayers, optional
        The channel layers SAM saw: one mean intensity column per channel, named after
        its layer (in-memory layers only).

    Returns
    -------
    pandas.DataFrame or None
        The table set as features (None for labels of another dimension: nothing changes).
    """
    data = np.asarray(labels.data)
    if data.ndim not in (2, 3, 4):
        return None
    intensity, names = _intensity(image, data.shape)
    if channels is not None and channels.layers:
        arrays, layer_names = channels.intensity()
        if all(isinstance(a, np.ndarray) and a.shape == data.shape for a in arrays):
            intensity, names = arrays, layer_names
    scores = dict(scores or {})
    table = object_table(
        data,
        scale=tuple(labels.scale),
        translate=tuple(labels.translate),
        unit=unit_of(labels),
        intensity=intensity,
        channel_names=names,
        scores=scores,
        method={int(i): method for i in scores} if method else None,
    )
    table = merge_sam_columns(table, labels.features)
    labels.features = table
    return table


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
