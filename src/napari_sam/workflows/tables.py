"""Object tables: one row of measurements per object of a label image.

:func:`object_table` measures every object of a label array with
scikit-image's :func:`~skimage.measure.regionprops_table` and returns a pandas
DataFrame that napari shows as a Labels layer's ``features`` (its ``index``
column holds the object's label, which is how napari matches rows to labels).
:func:`write_object_table` saves it as CSV (with ``label`` as the first
column) beside the label TIFF, atomically; :func:`read_object_table` reads it
back.

Columns, in order (those that do not apply are left out):

=====================  =====================================================
``index``              the object's label (id); ``label`` in the CSV
``t``                  time point (images with a T axis: one row per object
                       and time point)
``z_first, z_last``    first and last slice holding the object (stacks)
``n_pixels``           pixels (2D) or voxels (3D) of the object
``area`` / ``volume``  calibrated: pixels × pixel size (``scale``), in
                       ``unit``² / ``unit``³
``centroid_z, _y, _x`` calibrated centre: data coordinates × ``scale`` +
                       ``translate`` (napari's world coordinates)
``mean_intensity``     mean image value inside the object, per channel
                       (``mean_intensity_<channel name>``) when given
``predicted_iou``      SAM's predicted IoU of the object's mask, where known
``stability_score``    SAM's stability score, where known
``method``             how the object was made (``"interactive"``,
                       ``"one-click"``, ``"automatic"``, ``"propagated"``...)
``unit``               the length unit of the calibrated columns
                       (``"pixel"`` when the image is not calibrated)
=====================  =====================================================

No napari or torch here; pandas and scikit-image are imported when used.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.errors import ImageFormatError, OutputFileError
from napari_sam.runtime.files import atomic_write

__all__ = [
    "SAM_COLUMNS",
    "default_axes",
    "merge_sam_columns",
    "object_table",
    "read_object_table",
    "scores_by_label",
    "table_path_for",
    "write_object_table",
]

#: Columns that come from SAM (or the user) rather than from the pixels.
SAM_COLUMNS = ("predicted_iou", "stability_score", "method")

_AXES = re.compile(r"^t?z?yx$")


def default_axes(ndim: int) -> str:
    """The axes a label array of ``ndim`` dimensions is taken to have: yx, zyx, tzyx."""
    names = {2: "yx", 3: "zyx", 4: "tzyx"}
    if ndim not in names:
        raise ImageFormatError(
            f"Object tables are made for 2D, 3D and 4D (T, Z, Y, X) label images; this one "
            f"has {ndim} axes: name its axes (e.g. axes='tzyx')."
        )
    return names[ndim]


def scores_by_label(
    scores: Mapping[Any, Mapping[str, float]] | None,
) -> dict[int, dict[str, float]]:
    """SAM's scores per label, from scores keyed by label or by ``(plane, label)``.

    :class:`~napari_sam.workflows.segment.SegmentationResult` keys its scores
    by ``(slice, label)``; an object on several slices gets the mean of its
    slices' scores (NaN values ignored).
    """
    if not scores:
        return {}
    sums: dict[int, dict[str, list[float]]] = {}
    for key, values in scores.items():
        label = int(key[-1]) if isinstance(key, tuple) else int(key)
        entry = sums.setdefault(label, {})
        for name, value in values.items():
            if value is not None and np.isfinite(float(value)):
                entry.setdefault(name, []).append(float(value))
    return {
        label: {name: float(np.mean(v)) for name, v in entry.items() if v}
        for label, entry in sums.items()
    }


def _intensity_channels(
    intensity: Any, shape: tuple[int, ...], names: Sequence[str] | None
) -> tuple[list[Any], list[str]]:
    if intensity is None:
        return [], []
    if isinstance(intensity, (list, tuple)):
        channels = list(intensity)
    else:
        channels = [intensity]
    for i, ch in enumerate(channels):
        if tuple(int(s) for s in np.shape(ch)) != shape:
            raise ImageFormatError(
                f"Intensity channel {i} has shape {tuple(np.shape(ch))}, but the labels have "
                f"shape {shape}; give one image of the labels' shape per channel."
            )
    if names is None:
        names = [""] if len(channels) == 1 else [f"ch{i}" for i in range(len(channels))]
    names = [str(n) for n in names]
    if len(names) != len(channels):
        raise ImageFormatError(
            f"{len(names)} channel names were given for {len(channels)} intensity channels."
        )
    return channels, names


def _measure(
    labels: np.ndarray,
    spacing: tuple[float, ...],
    channels: list[np.ndarray],
) -> dict[str, np.ndarray]:
    from skimage.measure import regionprops_table

    props = ["label", "bbox", "area", "centroid"]
    kwargs: dict[str, Any] = {"spacing": spacing}
    if channels:
        props.append("intensity_mean")
        kwargs["intensity_image"] = np.stack([np.asarray(c) for c in channels], axis=-1)
    return regionprops_table(labels, properties=props, **kwargs)


def object_table(
    labels: Any,
    *,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    unit: str | None = None,
    axes: str | None = None,
    intensity: Any = None,
    channel_names: Sequence[str] | None = None,
    scores: Mapping[Any, Mapping[str, float]] | None = None,
    method: str | Mapping[int, str] | None = None,
) -> Any:
    """Measure every object of a label image: a DataFrame for napari's ``features`` and CSV.

    Parameters
    ----------
    labels : array ``(Y, X)``, ``(Z, Y, X)``, ``(T, Y, X)`` or ``(T, Z, Y, X)`` of ints
        Object ids, 0 = background.
    scale, translate : sequence of float, optional
        The labels layer's pixel size and offset per axis (napari's ``scale``
        and ``translate``); default 1 and 0. The T entries are not used in
        areas or volumes.
    unit : str, optional
        Length unit of ``scale`` (e.g. ``"micrometer"``); ``"pixel"`` if omitted.
    axes : str, optional
        Names of the label axes, ``"yx"``, ``"zyx"``, ``"tyx"`` or ``"tzyx"``;
        default by dimension (:func:`default_axes`: a 3D array is a Z stack).
    intensity : array, or sequence of arrays, optional
        Image values of the labels' shape, one array per channel, for the mean
        intensities.
    channel_names : sequence of str, optional
        Column suffixes of the channels (default ``ch0``, ``ch1``, ...; none for one channel).
    scores : mapping, optional
        SAM's ``predicted_iou``/``stability_score`` by label or by
        ``(plane, label)`` (averaged per label, :func:`scores_by_label`).
    method : str or mapping label -> str, optional
        How the objects were made.

    Returns
    -------
    pandas.DataFrame
        One row per object (per object and time point with a T axis), sorted
        by (time and) label; the columns of the module documentation.
    """
    import pandas as pd

    arr = np.asarray(labels)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ImageFormatError(
            f"A label image holds integer object ids; this one has data type {arr.dtype}."
        )
    if arr.size and int(arr.min()) < 0:
        raise ImageFormatError("A label image holds object ids >= 0; this one has negative values.")
    axes = (axes or default_axes(arr.ndim)).lower()
    if not _AXES.match(axes) or len(axes) != arr.ndim:
        raise ImageFormatError(
            f"The axes {axes!r} do not describe labels of shape {arr.shape}; use 'yx', 'zyx', "
            "'tyx' or 'tzyx' (one letter per axis)."
        )
    scale = (1.0,) * arr.ndim if scale is None else tuple(float(s) for s in scale)
    translate = (0.0,) * arr.ndim if translate is None else tuple(float(t) for t in translate)
    if len(scale) != arr.ndim or len(translate) != arr.ndim:
        raise ImageFormatError(
            f"Give one scale and one translate value per label axis ({arr.ndim}); got "
            f"{len(scale)} and {len(translate)}."
        )
    if not all(np.isfinite(s) and s > 0 for s in scale):
        raise ImageFormatError(f"The pixel sizes must be positive numbers, got {scale}.")
    channels, names = _intensity_channels(intensity, arr.shape, channel_names)
    has_t = axes.startswith("t")
    space = axes[1:] if has_t else axes
    s_space, t_space = scale[-len(space) :], translate[-len(space) :]
    if arr.dtype.itemsize > 4 or arr.dtype.kind == "i":
        arr = arr.astype(np.int64)

    frames = range(arr.shape[0]) if has_t else [None]
    parts = []
    for t in frames:
        frame = arr[t] if t is not None else arr
        frame_channels = [np.asarray(c[t]) if t is not None else c for c in channels]
        m = _measure(frame, s_space, frame_channels)
        n = len(m["label"])
        cols: dict[str, Any] = {"index": m["label"].astype(np.int64)}
        if t is not None:
            cols["t"] = np.full(n, t, dtype=np.int64)
        nd = len(space)
        if "z" in space:
            cols["z_first"] = m["bbox-0"].astype(np.int64)
            cols["z_last"] = m[f"bbox-{nd}"].astype(np.int64) - 1
        pixel_volume = float(np.prod(s_space))
        cols["n_pixels"] = np.rint(m["area"] / pixel_volume).astype(np.int64)
        cols["volume" if nd == 3 else "area"] = m["area"].astype(float)
        for j, name in enumerate(space):
            cols[f"centroid_{name}"] = m[f"centroid-{j}"] + t_space[j]
        for j, name in enumerate(names):
            col = "mean_intensity" if not name else f"mean_intensity_{name}"
            cols[col] = m[f"intensity_mean-{j}"]  # channels are stacked last
        parts.append(pd.DataFrame(cols))
    if parts:
        table = pd.concat(parts, ignore_index=True)
    else:  # a T axis of length 0 cannot happen (empty images are refused upstream)
        table = pd.DataFrame({"index": np.zeros(0, np.int64)})

    by_label = scores_by_label(scores)
    table["predicted_iou"] = [
        by_label.get(int(i), {}).get("predicted_iou", np.nan) for i in table["index"]
    ]
    table["stability_score"] = [
        by_label.get(int(i), {}).get("stability_score", np.nan) for i in table["index"]
    ]
    if isinstance(method, Mapping):
        table["method"] = [str(method.get(int(i), "")) for i in table["index"]]
    else:
        table["method"] = "" if method is None else str(method)
    table["unit"] = unit or "pixel"
    return table.reset_index(drop=True)


def table_path_for(labels_path: str | os.PathLike[str]) -> Path:
    """The CSV beside a label file: ``cells_labels.tif`` -> ``cells_labels.csv``."""
    path = Path(labels_path)
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".zarr", ".npy"):
        if name.lower().endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".csv")
    return path.with_name(name + ".csv")


def write_object_table(path: str | os.PathLike[str], table: Any) -> Path:
    """Write a table from :func:`object_table` as CSV (``index`` -> ``label``), atomically.

    Raises
    ------
    OutputFileError
        If the file cannot be written.
    """
    path = Path(path).expanduser()
    out = table.rename(columns={"index": "label"})
    try:
        with atomic_write(path) as tmp:
            out.to_csv(tmp, index=False)
    except OutputFileError:
        raise
    except OSError as exc:
        raise OutputFileError(f"{path} cannot be written ({exc.strerror or exc}).") from exc
    return path


def read_object_table(path: str | os.PathLike[str]) -> Any:
    """Read a CSV written by :func:`write_object_table` back as a features table."""
    import pandas as pd

    table = pd.read_csv(path, keep_default_na=True)
    if "method" in table:
        table["method"] = table["method"].fillna("").astype(str)
    return table.rename(columns={"label": "index"})


def merge_sam_columns(table: Any, features: Any) -> Any:
    """``table`` with :data:`SAM_COLUMNS` taken from ``features`` (matched by ``index``).

    ``features`` is a napari Labels layer's features table (or an older
    object table): the pixel measurements are always recomputed, but SAM's
    scores and the method are only known from when the objects were made.
    Objects ``features`` does not know keep NaN / ``""``.
    """
    import pandas as pd

    if features is None:
        return table
    features = pd.DataFrame(features)
    if "index" not in features or features.empty:
        return table
    known = features.drop_duplicates("index").set_index("index")
    out = table.copy()
    ids = out["index"].astype(np.int64)
    for col in SAM_COLUMNS:
        if col not in known:
            continue
        values = ids.map(known[col])
        if col == "method":
            out[col] = values.where(values.notna(), out[col]).fillna("").astype(str)
        else:
            out[col] = values.where(values.notna(), out[col]).astype(float)
    return out
