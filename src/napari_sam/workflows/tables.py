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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.errors import ImageFormatError, OutputFileError
from napari_sam.runtime.files import atomic_write
from napari_sam.workflows.labels import id_array

__all__ = [
    "SAM_COLUMNS",
    "default_axes",
    "image_object_table",
    "merge_sam_columns",
    "object_table",
    "read_object_table",
    "scores_by_label",
    "table_path_for",
    "update_object_table",
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


@dataclass
class _Geometry:
    """Checked inputs of a table: the labels, their axes, calibration and channels."""

    arr: np.ndarray
    channels: list[Any]
    names: list[str]
    has_t: bool
    space: str
    s_space: tuple[float, ...]
    t_space: tuple[float, ...]


def _prepare(labels: Any, scale: Any, translate: Any, axes: str | None, intensity: Any,
             channel_names: Sequence[str] | None) -> _Geometry:
    """Check a table's inputs (one sentence each for what is wrong)."""
    arr = id_array(labels)
    if arr.size and arr.dtype.kind == "i" and int(arr.min()) < 0:
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
    return _Geometry(arr, channels, names, has_t, space, s_space, t_space)


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

    g = _prepare(labels, scale, translate, axes, intensity, channel_names)
    arr, channels, names = g.arr, g.channels, g.names
    has_t, space, s_space, t_space = g.has_t, g.space, g.s_space, g.t_space
    if arr.dtype.itemsize > 4 or arr.dtype.kind == "i":
        arr = arr.astype(np.int64)

    frames = range(arr.shape[0]) if has_t else [None]
    parts = []
    for t in frames:
        frame = arr[t] if t is not None else arr
        frame_channels = [np.asarray(c[t]) if t is not None else c for c in channels]
        parts.append(_rows(frame, t, space, s_space, t_space, frame_channels, names))
    if parts:
        table = pd.concat(parts, ignore_index=True)
    else:  # a T axis of length 0 cannot happen (empty images are refused upstream)
        table = pd.DataFrame({"index": np.zeros(0, np.int64)})
    return _sam_columns(table, scores, method, unit)


def _rows(
    frame: np.ndarray,
    t: int | None,
    space: str,
    s_space: tuple[float, ...],
    t_space: tuple[float, ...],
    channels: list[Any],
    names: list[str],
    offset: Sequence[int] | None = None,
) -> Any:
    """The rows of the objects of one frame (``(Z, Y, X)`` or ``(Y, X)`` labels, or a block
    of it starting at ``offset`` in the frame), as a DataFrame."""
    import pandas as pd

    m = _measure(frame, s_space, channels)
    n = len(m["label"])
    offset = (0,) * len(space) if offset is None else tuple(int(o) for o in offset)
    cols: dict[str, Any] = {"index": m["label"].astype(np.int64)}
    if t is not None:
        cols["t"] = np.full(n, t, dtype=np.int64)
    nd = len(space)
    if "z" in space:
        cols["z_first"] = m["bbox-0"].astype(np.int64) + offset[0]
        cols["z_last"] = m[f"bbox-{nd}"].astype(np.int64) - 1 + offset[0]
    pixel_volume = float(np.prod(s_space))
    cols["n_pixels"] = np.rint(m["area"] / pixel_volume).astype(np.int64)
    cols["volume" if nd == 3 else "area"] = m["area"].astype(float)
    for j, name in enumerate(space):
        shift = t_space[j] + offset[j] * s_space[j] if offset[j] else t_space[j]
        cols[f"centroid_{name}"] = m[f"centroid-{j}"] + shift
    for j, name in enumerate(names):
        col = "mean_intensity" if not name else f"mean_intensity_{name}"
        cols[col] = m[f"intensity_mean-{j}"]  # channels are stacked last
    return pd.DataFrame(cols)


def _sam_columns(table: Any, scores: Any, method: Any, unit: str | None) -> Any:
    """``table`` with SAM's scores, the method and the unit columns set."""
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


def update_object_table(
    table: Any,
    labels: Any,
    ids: Any,
    planes: Any,
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
    """:func:`object_table` of ``labels`` after a change, measuring only what it touched.

    ``table`` is the object table of the labels before the change (None: no
    rows yet, then ``planes`` must hold every plane of the objects ``ids``);
    the change wrote or erased pixels of objects ``ids`` (their old and new
    ids) only on ``planes`` (full leading indices: ``()`` for a 2D image,
    ``(z,)``, ``(t,)`` or ``(t, z)``). Only the rows of ``ids`` (at the time
    points touched) are measured again, on the slices from their old first
    slice (``z_first``/``z_last``) or the touched planes to their old last,
    cropped to the objects' bounding box; intensity images (numpy, dask,
    zarr) are read only there. Every other row is kept. The result equals
    :func:`object_table` of the whole labels (up to floating-point rounding
    of the centroids).

    Other parameters as for :func:`object_table`; ``scores`` and ``method``
    apply to rows measured again (the caller carries known ones over with
    :func:`merge_sam_columns`).
    """
    import pandas as pd

    g = _prepare(labels, scale, translate, axes, intensity, channel_names)
    ids = sorted({int(i) for i in np.asarray(list(ids), dtype=np.int64).ravel() if i != 0})
    n_lead = g.arr.ndim - 2
    planes = {tuple(int(i) for i in p) for p in planes}
    if any(len(p) != n_lead for p in planes):
        raise ImageFormatError(
            f"Planes of labels of shape {g.arr.shape} are named by {n_lead} positions."
        )
    old = table
    frames = sorted({p[0] for p in planes}) if g.has_t else [None]
    z_axis = "z" in g.space
    parts, drop = [], None
    for t in frames:
        frame = g.arr[t] if t is not None else g.arr
        rows = None
        if old is not None and len(old):
            rows = old["index"].isin(ids) & ((old["t"] == t) if t is not None else True)
            drop = rows if drop is None else (drop | rows)
        if not ids:
            continue
        offset = [0] * len(g.space)
        if z_axis:
            zs = [p[-1] for p in planes if t is None or p[0] == t]
            if rows is not None and rows.any():
                zs += [int(old.loc[rows, "z_first"].min()), int(old.loc[rows, "z_last"].max())]
            if not zs:
                continue
            lo, hi = min(zs), max(zs)
            block = frame[lo:hi + 1]
            offset[0] = lo
        else:
            block = frame
        keep = np.isin(block, ids)
        if not keep.any():
            continue
        crop = []
        for axis in (-2, -1):
            other = tuple(a for a in range(keep.ndim) if a != keep.ndim + axis)
            hits = np.flatnonzero(keep.any(axis=other))
            crop.append(slice(int(hits[0]), int(hits[-1]) + 1))
            offset[axis] = int(hits[0])
        window = (Ellipsis, *crop)
        sub = np.where(keep, block, 0)[window]
        if sub.dtype.itemsize > 4 or sub.dtype.kind == "i":
            sub = sub.astype(np.int64)
        region = (slice(lo, hi + 1), *crop) if z_axis else tuple(crop)
        chans = [np.asarray((c[t] if t is not None else c)[region]) for c in g.channels]
        parts.append(_rows(sub, t, g.space, g.s_space, g.t_space, chans, g.names, offset))
    new = _sam_columns(pd.concat(parts, ignore_index=True), scores, method, unit) if parts else None
    kept = old[~drop.to_numpy()] if old is not None and drop is not None else old
    pieces = [p for p in (kept, new) if p is not None and len(p)]
    if not pieces:  # no object left: the columns without rows
        tiny = (1,) * g.arr.ndim
        return object_table(np.zeros(tiny, np.uint8), axes=axes or default_axes(g.arr.ndim),
                            unit=unit, channel_names=g.names if g.channels else None,
                            intensity=[np.zeros(tiny) for _ in g.channels] or None)
    out = pd.concat(pieces, ignore_index=True) if len(pieces) > 1 else pieces[0].copy()
    keys = ["t", "index"] if g.has_t else ["index"]
    return out.sort_values(keys, kind="stable").reset_index(drop=True)


def image_object_table(
    labels: Any, name: str, image: Any, scores: Any = None, method: str | None = None
) -> Any:
    """The object table of the labels of one input file, with an ``image`` column first.

    ``image`` is the input as read for segmentation (a
    :class:`~napari_sam.workflows.io.TiffImage`): its pixel size and unit give
    the sizes, its pixels the mean intensities (one column per channel of a
    channels-first image, named after its file for channels saved one per file,
    or per colour of an RGB one); ``scores`` as for
    :func:`object_table`. ``napari-sam segment --table`` writes these, one
    after the other, into one CSV (in one process or on a cluster).
    """
    if image.channel_axis is not None:
        intensity: Any = [image.data[c] for c in range(image.data.shape[0])]
        names: Any = list(getattr(image, "channel_names", None) or
                          [f"ch{c}" for c in range(image.data.shape[0])])
    elif image.rgb:
        intensity = [image.data[..., c] for c in range(3)]
        names = ["red", "green", "blue"]
    else:
        intensity, names = image.data, None
    table = object_table(
        labels,
        scale=image.scale,
        unit=image.unit,
        intensity=intensity,
        channel_names=names,
        scores=scores,
        method=method,
    )
    table.insert(0, "image", name)
    return table


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
