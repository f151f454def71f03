"""The logic of interactive segmentation, without napari or Qt.

The widget in :mod:`napari_sam._widgets.interactive` only moves data between
napari layers and these functions:

- :func:`encode_plane` turns one image plane into an embedding (in a worker
  thread),
- :func:`predict_objects` predicts one mask per object from an embedding,
- :func:`compose_preview` paints those masks into a preview label plane,
- :func:`plan_commit` decides which pixels of the output labels get which
  new object id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..image import to_sam_rgb
from ..predictor import ImageEmbedding, SamPredictor
from .prompts import ObjectPrompt

__all__ = [
    "ObjectMask",
    "compose_preview",
    "encode_plane",
    "plan_commit",
    "predict_objects",
]


def encode_plane(
    model: object,
    plane: np.ndarray,
    contrast_limits: Sequence[float] | None,
    rgb: bool,
) -> ImageEmbedding:
    """Convert a plane with :func:`~napari_sam.image.to_sam_rgb` and encode it."""
    predictor = SamPredictor(model)
    predictor.set_image(to_sam_rgb(plane, contrast_limits, rgb=rgb))
    return predictor.get_embedding()


@dataclass
class ObjectMask:
    """The mask predicted for one object.

    Attributes
    ----------
    mask : ndarray ``(H, W)`` bool
    score : float
        SAM's predicted IoU of the shown mask.
    candidate : int
        Rank of the shown mask among the candidates (0 = best score).
    n_candidates : int
        1, or 3 with multimask output.
    """

    mask: np.ndarray
    score: float
    candidate: int
    n_candidates: int


def predict_objects(
    predictor: SamPredictor,
    objects: Sequence[ObjectPrompt],
    multimask: bool = True,
    candidate: int = 0,
) -> list[ObjectMask]:
    """Predict each object's mask on the predictor's current embedding.

    With ``multimask``, SAM returns three candidates per object; they are
    ranked by predicted IoU and the one at rank ``candidate`` (modulo 3) is
    kept: rank 0 is the best-scoring mask, and raising ``candidate`` cycles
    through the others.
    """
    results = []
    for obj in objects:
        masks, scores, _ = predictor.predict(
            point_coords=obj.point_coords,
            point_labels=obj.point_labels,
            box=obj.box,
            multimask_output=multimask,
        )
        order = np.argsort(-scores, kind="stable")
        rank = int(candidate) % len(order)
        i = int(order[rank])
        results.append(
            ObjectMask(
                mask=np.asarray(masks[i], dtype=bool),
                score=float(scores[i]),
                candidate=rank,
                n_candidates=len(order),
            )
        )
    return results


def compose_preview(
    masks: Sequence[np.ndarray], plane_shape: Sequence[int], dtype: object = np.uint8
) -> np.ndarray:
    """Label plane with object ``i + 1`` where ``masks[i]`` is set.

    Where masks overlap, the earlier object keeps the pixel (as a commit
    without overwriting would).
    """
    out = np.zeros(tuple(plane_shape), dtype=dtype)
    for i, mask in enumerate(masks):
        out[np.asarray(mask, dtype=bool) & (out == 0)] = i + 1
    return out


def plan_commit(
    labels_plane: np.ndarray,
    preview_plane: np.ndarray,
    next_id: int,
    overwrite: bool = False,
) -> list[tuple[int, tuple[np.ndarray, np.ndarray]]]:
    """Which pixels of a label plane get which new object id.

    Each object of ``preview_plane`` (ids 1, 2, ... in order) gets the next
    free id, starting at ``next_id``. Unless ``overwrite``, pixels that
    already belong to an object in ``labels_plane`` are left alone; an object
    left without pixels is skipped and uses no id.

    Returns
    -------
    list of (new_id, (rows, cols))
    """
    plan = []
    labels_plane = np.asarray(labels_plane)
    preview_plane = np.asarray(preview_plane)
    free = np.ones(labels_plane.shape, dtype=bool) if overwrite else labels_plane == 0
    new_id = int(next_id)
    for obj in np.unique(preview_plane):
        if obj == 0:
            continue
        rows, cols = np.nonzero((preview_plane == obj) & free)
        if rows.size == 0:
            continue
        plan.append((new_id, (rows, cols)))
        new_id += 1
    return plan
