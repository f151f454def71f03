"""COCO JSON from instance label images.

:func:`labels_to_coco` / :class:`CocoWriter` turn label images into a COCO
dataset: one COCO image per 2D image or per slice of a stack (``(Y, X)`` or
``(Z, Y, X)`` integer labels, 0 = background), one annotation per object with
its mask as pycocotools compressed RLE, its bounding box ``[x, y, width,
height]`` and area in pixels, and SAM's scores where given.
:func:`plane_annotations` makes the annotations of one plane;
:func:`write_coco` writes a dataset atomically. No napari or torch here;
``pycocotools`` is imported when used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.errors import ImageFormatError, OutputFileError
from napari_sam.runtime.files import atomic_write

__all__ = ["CocoWriter", "label_planes", "labels_to_coco", "plane_annotations", "write_coco"]


def _rle_encode(mask_f: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(mask_f)
    counts = rle["counts"]
    return {
        "size": [int(s) for s in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def plane_annotations(
    plane: np.ndarray, scores: Mapping[int, Mapping[str, float]] | None = None
) -> list[dict]:
    """One COCO annotation (without ids) per object id in a ``(H, W)`` label plane, in id order.

    ``scores`` maps an object id to extra fields (``predicted_iou``, ...).
    """
    h, w = plane.shape
    flat = plane.ravel()
    where = np.flatnonzero(flat)
    if where.size == 0:
        return []
    ids = flat[where]
    order = np.argsort(ids, kind="stable")
    where, ids = where[order], ids[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], ids.size]
    buf = np.zeros((h, w), dtype=np.uint8, order="F")
    out = []
    for s, e in zip(starts, ends):
        idx = where[s:e]
        rows, cols = np.divmod(idx, w)
        buf[rows, cols] = 1
        rle = _rle_encode(buf)
        buf[rows, cols] = 0
        r0, r1, c0, c1 = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
        label = int(ids[s])
        ann: dict[str, Any] = {
            "category_id": 1,
            "segmentation": rle,
            "area": int(e - s),
            "bbox": [float(c0), float(r0), float(c1 - c0 + 1), float(r1 - r0 + 1)],
            "iscrowd": 0,
            "label": label,
        }
        if scores is not None and label in scores:
            ann.update({k: float(v) for k, v in scores[label].items()})
        out.append(ann)
    return out


def label_planes(labels: np.ndarray, stack: bool = True) -> Iterator[tuple[Any, np.ndarray]]:
    """The 2D planes of a label image, each with its name in COCO and in SAM's scores:
    ``None`` (a 2D image, or ``stack=False``), the slice ``z`` of a stack, or
    ``(t, z)`` of a ``(T, Z, Y, X)`` time-lapse of stacks."""
    if labels.ndim == 4:
        for t, z in np.ndindex(*labels.shape[:2]):
            yield (t, z), labels[t, z]
    elif stack:
        for z in range(labels.shape[0]):
            yield z, labels[z]
    else:
        yield None, labels


@dataclass
class CocoWriter:
    """Collects label images into one COCO dataset.

    Each 2D image, and each slice of a 3D stack or of a ``(T, Z, Y, X)``
    time-lapse of stacks, is a COCO ``image`` (``file_name``, ``height``,
    ``width``, ``slice`` for a stack, and ``frame`` for a time-lapse); each object
    of it an ``annotation`` of category 1 (``"object"``) with a pycocotools
    compressed RLE ``segmentation``, ``area``, ``bbox`` ``[x, y, w, h]``,
    ``iscrowd`` 0, ``label`` (its id in the label image, the same in every slice
    when objects are linked through a stack) and, where known, SAM's
    ``predicted_iou`` and ``stability_score``.
    """

    category: str = "object"
    images: list[dict] = field(default_factory=list)
    annotations: list[dict] = field(default_factory=list)

    def add(
        self,
        labels: np.ndarray,
        file_name: str,
        *,
        stack: bool | None = None,
        scores: Mapping[tuple[int | None, int], Mapping[str, float]] | None = None,
    ) -> None:
        """Add a label image: ``(Y, X)``, or ``(Z, Y, X)`` / ``(T, Z, Y, X)`` with one
        COCO image per plane.

        ``scores`` maps ``(plane, label)`` to extra annotation fields, the plane
        named as :func:`label_planes` names it.
        """
        arr = np.asarray(labels)
        if stack is None:
            stack = arr.ndim >= 3
        if arr.ndim != (2 if not stack else 3 if arr.ndim <= 3 else 4) or not np.issubdtype(
            arr.dtype, np.integer
        ):
            raise ImageFormatError(
                f"COCO export needs a 2D, 3D or 4D (T, Z, Y, X) integer label image; got "
                f"{arr.dtype} of shape {arr.shape}."
            )
        for z, plane in label_planes(arr, stack):
            plane_scores = None
            if scores:
                plane_scores = {lab: v for (zz, lab), v in scores.items() if zz == z}
            anns = plane_annotations(np.asarray(plane), plane_scores)
            self.add_plane(file_name, z, plane.shape, anns)

    def add_plane(
        self, file_name: str, z: Any, shape: Sequence[int], annotations: Sequence[dict]
    ) -> None:
        """Add one COCO image with its annotations (as :func:`plane_annotations` makes
        them; ids are given here): a 2D image (``z`` None), slice ``z`` of a stack,
        or slice ``z[1]`` of time point ``z[0]`` of a time-lapse of stacks (the
        image then says ``"frame"`` and ``"slice"``)."""
        image_id = len(self.images) + 1
        image: dict[str, Any] = {
            "id": image_id,
            "file_name": file_name,
            "height": int(shape[0]),
            "width": int(shape[1]),
        }
        if isinstance(z, (tuple, list)):
            image["frame"], image["slice"] = int(z[0]), int(z[1])
        elif z is not None:
            image["slice"] = int(z)
        self.images.append(image)
        for ann in annotations:
            ann = dict(ann)
            ann["id"] = len(self.annotations) + 1
            ann["image_id"] = image_id
            self.annotations.append(ann)

    def to_dict(self) -> dict:
        return {
            "info": {"description": "Instance segmentation by napari-sam (Segment Anything)"},
            "images": self.images,
            "annotations": self.annotations,
            "categories": [{"id": 1, "name": self.category, "supercategory": self.category}],
        }

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the dataset as JSON (atomically); see :func:`write_coco`."""
        return write_coco(path, self.to_dict())


def labels_to_coco(
    labels: np.ndarray,
    file_name: str = "image",
    *,
    stack: bool | None = None,
    scores: Mapping[tuple[int | None, int], Mapping[str, float]] | None = None,
) -> dict:
    """A COCO dataset dict of one label image (see :class:`CocoWriter`)."""
    writer = CocoWriter()
    writer.add(labels, file_name, stack=stack, scores=scores)
    return writer.to_dict()


def write_coco(path: str | os.PathLike[str], coco: Mapping[str, Any]) -> Path:
    """Write a COCO dict as JSON, atomically.

    Raises
    ------
    OutputFileError
        If the file cannot be written.
    """
    path = Path(path).expanduser()
    text = json.dumps(coco, separators=(",", ":")).encode("utf-8")
    try:
        with atomic_write(path) as tmp:
            tmp.write_bytes(text)
    except OutputFileError:
        raise
    except OSError as exc:
        raise OutputFileError(f"{path} cannot be written ({exc.strerror or exc}).") from exc
    return path
