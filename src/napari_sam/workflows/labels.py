"""Masks → instance label images.

:func:`records_to_labels` paints the records of
:class:`~napari_sam.SamAutomaticMaskGenerator` (or plain binary masks) into a
``uint32`` label image for napari's Labels layer, the TIFF writer and the CLI.

:func:`plan_new_objects` decides where new objects go in an existing label
image (fresh ids, never over other objects unless asked), and
:func:`dtype_for_ids` / :func:`apply_plan` write them without ever truncating
an id: a label image whose integer type is too small is promoted first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from napari_sam.errors import ImageFormatError, MaskRecordError

__all__ = [
    "apply_plan",
    "decode_segmentation",
    "dtype_for_ids",
    "id_array",
    "plan_new_objects",
    "records_to_labels",
]

#: One object to write: its id and the index (a tuple of index arrays) of its pixels.
PlanEntry = tuple[int, tuple[np.ndarray, ...]]

_UNSIGNED = (np.uint8, np.uint16, np.uint32, np.uint64)
_SIGNED = (np.int8, np.int16, np.int32, np.int64)


def decode_segmentation(segmentation: Any) -> np.ndarray:
    """Binary ``(H, W)`` mask of a record's ``segmentation``.

    Accepts a boolean (or 0/1) array, an uncompressed RLE
    (``{"size": [h, w], "counts": [int, ...]}``) or a COCO compressed RLE
    (``counts`` as ``str`` or ``bytes``).
    """
    if isinstance(segmentation, Mapping):
        if "size" not in segmentation or "counts" not in segmentation:
            raise MaskRecordError(
                "An RLE segmentation needs 'size' and 'counts' keys; got keys "
                f"{sorted(segmentation)}."
            )
        counts = segmentation["counts"]
        if isinstance(counts, (str, bytes)):
            from pycocotools import mask as mask_utils

            rle = {
                "size": [int(s) for s in segmentation["size"]],
                "counts": counts.encode("utf-8") if isinstance(counts, str) else counts,
            }
            return mask_utils.decode(rle).astype(bool)
        from napari_sam.predictors.amg_utils import rle_to_mask

        try:
            return rle_to_mask(segmentation)
        except ValueError as err:
            raise MaskRecordError(str(err)) from None
    mask = np.asarray(segmentation)
    if mask.ndim != 2:
        raise MaskRecordError(f"A mask must be a 2D (H, W) array; got shape {mask.shape}.")
    return mask if mask.dtype == bool else mask != 0


def records_to_labels(
    records: Iterable[Mapping[str, Any] | np.ndarray],
    shape: tuple[int, int] | None = None,
    *,
    min_area: int = 0,
    return_ids: bool = False,
    dtype: Any = np.uint32,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Paint masks into an instance label image.

    Larger objects are painted first, so smaller objects lying on top of them
    stay visible. Objects are numbered ``1..N`` from the largest to the
    smallest; an object that ends up completely covered by smaller ones gets no
    label, and the numbers stay consecutive. Background is 0.

    Parameters
    ----------
    records : iterable of dict or ndarray
        Mask records with a ``segmentation`` (boolean array, uncompressed or
        COCO RLE; see :func:`decode_segmentation`), or plain 2D boolean masks.
        Areas are counted from the masks.
    shape : (H, W), optional
        Shape of the label image; by default that of the first mask (required
        when there are no records).
    min_area : int
        Skip masks with fewer pixels than this.
    return_ids : bool
        Also return, for each record, its label (0 if skipped or covered).
    dtype : numpy integer dtype
        Of the label image (``uint32``).

    Returns
    -------
    labels : ndarray ``(H, W)``
    ids : ndarray ``(N,)`` int64, only with ``return_ids``
    """
    records = list(records)
    masks: list[np.ndarray] = []
    areas: list[int] = []
    for i, rec in enumerate(records):
        if isinstance(rec, Mapping):
            if "segmentation" not in rec:
                raise MaskRecordError(f"Record {i} has no 'segmentation'.")
            mask = decode_segmentation(rec["segmentation"])
        else:
            mask = decode_segmentation(rec)
        if shape is None:
            shape = mask.shape
        if mask.shape != tuple(shape):
            raise MaskRecordError(
                f"Mask {i} has shape {mask.shape}, but the label image is {tuple(shape)}."
            )
        masks.append(mask)
        areas.append(int(np.count_nonzero(mask)))
    if shape is None:
        raise MaskRecordError("No masks were given; pass the label image shape explicitly.")
    if min_area < 0:
        raise MaskRecordError(f"min_area must be >= 0, got {min_area}.")

    # Provisional ids 1..n in painting order (largest first; ties keep record order).
    order = [i for i in sorted(range(len(masks)), key=lambda i: -areas[i])
             if areas[i] >= max(min_area, 1)]
    provisional = np.zeros((int(shape[0]), int(shape[1])), dtype=np.int32)
    for rank, i in enumerate(order, start=1):
        mask = masks[i]
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        provisional[window][mask[window]] = rank

    # Renumber the visible objects 1..K, keeping their order.
    visible = np.zeros(len(order) + 1, dtype=bool)
    visible[np.unique(provisional)] = True
    visible[0] = False
    new_id = np.zeros(len(order) + 1, dtype=np.int64)
    new_id[visible] = np.arange(1, int(visible.sum()) + 1)
    if np.iinfo(dtype).max < int(visible.sum()):
        raise MaskRecordError(f"{int(visible.sum())} objects do not fit in {np.dtype(dtype)}.")
    labels = new_id[provisional].astype(dtype)
    if not return_ids:
        return labels
    ids = np.zeros(len(records), dtype=np.int64)
    for rank, i in enumerate(order, start=1):
        ids[i] = new_id[rank]
    return labels, ids


# --------------------------------------------------------------------------- writing objects
def id_array(labels: Any) -> np.ndarray:
    """``labels`` as a numpy array of integer object ids (a boolean mask becomes 0/1 ``uint8``).

    Raises
    ------
    ImageFormatError
        If the values are not integers (one sentence).
    """
    arr = np.asarray(labels)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ImageFormatError(
            f"A label image holds integer object ids; this one has data type {arr.dtype}."
        )
    return arr


def dtype_for_ids(dtype: Any, max_id: int) -> np.dtype:
    """The integer type a label image needs to hold ids up to ``max_id``.

    ``dtype`` itself if it can hold ``max_id``; otherwise the smallest wider
    type of the same signedness (unsigned for bool), so that no id is ever
    truncated. Raises :class:`MaskRecordError` beyond 64 bits.
    """
    dt = np.dtype(dtype)
    max_id = int(max_id)
    if max_id < 0:
        raise MaskRecordError(f"Object ids must not be negative, got {max_id}.")
    if dt.kind in "ui" and max_id <= np.iinfo(dt).max:
        return dt
    family = _SIGNED if dt.kind == "i" else _UNSIGNED
    size = dt.itemsize if dt.kind in "ui" else 1
    for candidate in family:
        c = np.dtype(candidate)
        if c.itemsize >= size and max_id <= np.iinfo(c).max:
            return c
    raise MaskRecordError(f"Object id {max_id} does not fit in a 64-bit label image.")


def plan_new_objects(
    labels_plane: np.ndarray,
    objects_plane: np.ndarray,
    next_id: int,
    overwrite: bool = False,
) -> list[PlanEntry]:
    """Which pixels of a label plane get which new object id.

    Each object of ``objects_plane`` (ids 1, 2, ... in order; 0 is nothing)
    gets the next free id, starting at ``next_id``. Unless ``overwrite``,
    pixels that already belong to an object in ``labels_plane`` are left alone;
    an object left without pixels is skipped and uses no id.

    Returns
    -------
    list of (new_id, index)
        ``index`` is a tuple of index arrays into ``labels_plane``.
    """
    labels_plane = np.asarray(labels_plane)
    objects_plane = np.asarray(objects_plane)
    if labels_plane.shape != objects_plane.shape:
        raise MaskRecordError(
            f"The masks have shape {objects_plane.shape}, but the labels {labels_plane.shape}."
        )
    free = np.ones(labels_plane.shape, dtype=bool) if overwrite else labels_plane == 0
    plan: list[PlanEntry] = []
    new_id = int(next_id)
    for obj in np.unique(objects_plane):
        if obj == 0:
            continue
        index = np.nonzero((objects_plane == obj) & free)
        if index[0].size == 0:
            continue
        plan.append((new_id, index))
        new_id += 1
    return plan


def apply_plan(labels: np.ndarray, plan: Iterable[PlanEntry]) -> np.ndarray:
    """Write a plan into a copy of ``labels``, promoted with :func:`dtype_for_ids`.

    The reference implementation of what the napari widgets do to a Labels
    layer (there, in place and as one undo step).
    """
    plan = list(plan)
    labels = np.asarray(labels)
    max_id = max((int(oid) for oid, _ in plan), default=0)
    out = labels.astype(dtype_for_ids(labels.dtype, max_id), copy=True)
    for oid, index in plan:
        out[index] = oid
    return out
