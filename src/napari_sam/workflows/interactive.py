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

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from napari_sam.errors import Cancelled
from napari_sam.predictors.predictor import ImageEmbedding, SamPredictor
from napari_sam.workflows.image import to_sam_rgb
from napari_sam.workflows.labels import plan_new_objects
from napari_sam.workflows.prompts import ObjectPrompt

__all__ = [
    "ObjectMask",
    "compose_preview",
    "encode_plane",
    "install_cancel_hooks",
    "plan_commit",
    "predict_objects",
]


# --------------------------------------------------------------------------- cancelling
#: Per thread, the function that says whether that thread's encoding should stop.
_CANCEL_CHECKS: dict[int, Callable[[], bool]] = {}
_CANCEL_LOCK = threading.Lock()


def _cancel_hook(module: object, inputs: object) -> None:
    check = _CANCEL_CHECKS.get(threading.get_ident())
    if check is not None and check():
        raise Cancelled(
            "Encoding cancelled; change the prompts or the slice to encode it again."
        )


def install_cancel_hooks(model: Any) -> None:
    """Let :func:`encode_plane` stop a running encoding between encoder blocks.

    Adds a forward pre-hook to the image encoder and to each block of its
    block lists, once per model. Call it on the main thread before the model is
    used by workers (hooks must not be added while another thread runs the
    model). A hook does nothing unless the thread running it is inside
    :func:`encode_plane` with a ``should_cancel`` that returns True. A model
    whose encoder was compiled (``Sam.compile_encoder``) gets no hooks (they
    would be traced into the compiled graph); its encoding is cancelled only
    before it starts, or its result dropped after.
    """
    encoder = getattr(model, "image_encoder", None)
    if encoder is None or getattr(encoder, "_napari_sam_cancel_hooks", False):
        return
    if getattr(model, "encoder_compiled", False):
        return
    encoder.register_forward_pre_hook(_cancel_hook)
    for module in encoder.modules():
        if isinstance(module, nn.ModuleList):
            for block in module:
                block.register_forward_pre_hook(_cancel_hook)
    encoder._napari_sam_cancel_hooks = True


def encode_plane(
    model: object,
    plane: np.ndarray,
    contrast_limits: Sequence[float] | None,
    rgb: bool,
    should_cancel: Callable[[], bool] | None = None,
) -> ImageEmbedding:
    """Convert a plane with :func:`~napari_sam.workflows.image.to_sam_rgb` and encode it.

    With ``should_cancel`` (and :func:`install_cancel_hooks` done on the
    model), the encoding stops with :class:`Cancelled` at the
    next encoder block once ``should_cancel()`` returns True.
    """
    image = to_sam_rgb(plane, contrast_limits, rgb=rgb)
    predictor = SamPredictor(model)
    if should_cancel is None:
        predictor.set_image(image)
        return predictor.get_embedding()
    tid = threading.get_ident()
    with _CANCEL_LOCK:
        _CANCEL_CHECKS[tid] = should_cancel
    try:
        if should_cancel():
            raise Cancelled(
                "Encoding cancelled; change the prompts or the slice to encode it again."
            )
        predictor.set_image(image)
        if should_cancel():  # cancelled at the very end (or with a compiled encoder)
            raise Cancelled(
                "Encoding cancelled; change the prompts or the slice to encode it again."
            )
    finally:
        with _CANCEL_LOCK:
            _CANCEL_CHECKS.pop(tid, None)
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
    left without pixels is skipped and uses no id
    (:func:`napari_sam.workflows.labels.plan_new_objects`).

    Returns
    -------
    list of (new_id, (rows, cols))
    """
    return plan_new_objects(labels_plane, preview_plane, next_id, overwrite)  # type: ignore[return-value]
