"""The logic of interactive segmentation, without napari or Qt.

The widget in :mod:`napari_sam._widgets.interactive` only moves data between
napari layers and these functions:

- :func:`encode_plane` turns one image plane into an embedding (in a worker
  thread), with the model's own image path (:func:`make_predictor`: SAM 1
  models through :class:`SamPredictor`, SAM 2.1 models through
  :class:`Sam2ImagePredictor`, whose embeddings carry the high-resolution maps),
- :func:`predict_objects` predicts one mask per object from an embedding,
- :func:`compose_preview` paints those masks into a preview label plane,
- :func:`plan_commit` decides which pixels of the output labels get which
  new object id.

One click = one cell: :func:`group_clicks` makes every positive point outside
any box its own object (the rule for negative points and for clicks on
labelled objects is documented there), and :func:`predict_objects_batched`
predicts all objects that have the same kind of prompt as one batch of SAM's
prompt encoder and mask decoder (with multimask output the shared-image
decoder, which does not copy the image embedding per object; in cache-sized
pieces on a CPU, :func:`decoder_batch`).
:class:`PredictionCache` keeps masks whose prompts did not change, so adding
a click re-predicts only the new object.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from napari_sam.errors import Cancelled
from napari_sam.predictors.predictor import ImageEmbedding, SamPredictor
from napari_sam.predictors.sam2_predictor import Sam2ImagePredictor
from napari_sam.predictors.upscale import postprocess_masks
from napari_sam.workflows.image import to_sam_rgb
from napari_sam.workflows.labels import dtype_for_ids, plan_new_objects
from napari_sam.workflows.prompts import ObjectPrompt

__all__ = [
    "CPU_DECODER_BYTES",
    "STABILITY_OFFSET",
    "ClickObjects",
    "ObjectMask",
    "PredictionCache",
    "compose_preview",
    "decoder_batch",
    "encode_plane",
    "group_clicks",
    "install_cancel_hooks",
    "is_sam2_model",
    "make_predictor",
    "plan_commit",
    "predict_objects",
    "predict_objects_batched",
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


def is_sam2_model(model: object) -> bool:
    """Whether ``model`` (a network, or a ``LoadedModel``) is a SAM 2.1 model."""
    return getattr(getattr(model, "sam", model), "family", "sam") == "sam2"


def make_predictor(model: object) -> SamPredictor | Sam2ImagePredictor:
    """The image predictor of ``model``: :class:`Sam2ImagePredictor` for SAM 2.1 models,
    :class:`SamPredictor` for SAM 1 models (both have ``set_embedding`` and ``predict``)."""
    if is_sam2_model(model):
        return Sam2ImagePredictor(model)  # type: ignore[arg-type]
    return SamPredictor(model)


def encode_plane(
    model: object,
    plane: np.ndarray,
    contrast_limits: Sequence[float] | None,
    rgb: bool,
    should_cancel: Callable[[], bool] | None = None,
) -> ImageEmbedding:
    """Convert a plane with :func:`~napari_sam.workflows.image.to_sam_rgb` and encode it.

    The model's own predictor (:func:`make_predictor`) encodes it: a SAM 2.1
    embedding also holds the two high-resolution feature maps its decoder needs.

    With ``should_cancel`` (and :func:`install_cancel_hooks` done on the
    model), the encoding stops with :class:`Cancelled` at the
    next encoder block once ``should_cancel()`` returns True.
    """
    image = to_sam_rgb(plane, contrast_limits, rgb=rgb)
    predictor = make_predictor(model)
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
    stability : float or None
        SAM's stability score of the shown mask (IoU of the mask thresholded at
        ``±`` :data:`STABILITY_OFFSET` around the mask threshold), where computed
        (:func:`predict_objects_batched`); None otherwise.
    """

    mask: np.ndarray
    score: float
    candidate: int
    n_candidates: int
    stability: float | None = None


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
    without overwriting would). ``dtype`` is widened when it cannot hold
    ``len(masks)`` ids (e.g. more than 255 clicks in a uint8 preview).
    """
    dtype = dtype_for_ids(dtype, len(masks))
    out = np.zeros(tuple(plane_shape), dtype=dtype)
    for i, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=bool)
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(mask.any(axis=0))
        window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        part = out[window]
        part[mask[window] & (part == 0)] = i + 1
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


# --------------------------------------------------------------------------- one click = one cell
#: Offset around the mask threshold for the stability score (as SAM's automatic generator).
STABILITY_OFFSET = 1.0


@dataclass
class ClickObjects:
    """The objects of a plane in one-click-per-cell mode (:func:`group_clicks`).

    Attributes
    ----------
    objects : list of ObjectPrompt
        Box objects first (in box order, as :func:`~napari_sam.workflows.prompts.group_objects`
        makes them), then one object per used click, in the order of the points.
    point_object : ndarray ``(N,)`` int
        For each given point, the index in ``objects`` of the object it
        prompts, or -1 (an ignored click or an unassigned negative point).
    clicks : ndarray ``(K,)`` int
        The point index of the click behind each click object
        (``objects[n_boxes + k]`` comes from point ``clicks[k]``).
    n_boxes : int
        Number of box objects at the start of ``objects``.
    ignored : ndarray ``(M,)`` int
        Positive points outside any box that lie on a labelled pixel: no object.
    ignored_labels : ndarray ``(M,)``
        The label under each ignored point (to tell the user which object).
    unassigned : ndarray int
        Negative points outside any box with no click object to refine.
    """

    objects: list[ObjectPrompt]
    point_object: np.ndarray
    clicks: np.ndarray
    n_boxes: int
    ignored: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    ignored_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    unassigned: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))


def _pixel_of(points_xy: np.ndarray, plane_shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` of the pixels under SAM ``(x, y)`` points (centres at integers)."""
    h, w = int(plane_shape[0]), int(plane_shape[1])
    rows = np.clip(np.floor(points_xy[:, 1] + 0.5), 0, h - 1).astype(np.intp)
    cols = np.clip(np.floor(points_xy[:, 0] + 0.5), 0, w - 1).astype(np.intp)
    return rows, cols


def group_clicks(
    points_xy: np.ndarray,
    point_labels: np.ndarray,
    boxes: np.ndarray | None = None,
    labels_plane: np.ndarray | None = None,
) -> ClickObjects:
    """Split the prompts of a plane into objects, one per click ("one click = one cell").

    The rule:

    - Boxes and the points inside them are grouped exactly as in
      :func:`~napari_sam.workflows.prompts.group_objects`: each box is one
      object with the points inside it (a point inside several boxes belongs
      to the smallest).
    - Every **positive point outside all boxes** is its own object, unless the
      pixel under it (``labels_plane[round(y), round(x)]``, halves rounded
      up) already belongs to an object: that click is *ignored* (listed in
      :attr:`ClickObjects.ignored` with the label it hit) and makes no object.
    - Every **negative point outside all boxes** refines the *nearest* click
      object: the one whose positive point has the smallest Euclidean
      distance, in pixels of the plane, to the negative point; at equal
      distance, the click that comes first in the points' order. The object
      is then prompted with its positive point followed by its negative
      points in the points' order. With no click object at all, negative
      points are *unassigned* and unused. Ignored clicks are not candidates.

    Parameters
    ----------
    points_xy : ndarray ``(N, 2)``
        SAM ``(x, y)`` of the plane's usable points.
    point_labels : ndarray ``(N,)``
        1 positive, 0 negative.
    boxes : ndarray ``(K, 4)``, optional
        ``x0, y0, x1, y1`` of the plane's usable boxes.
    labels_plane : ndarray ``(H, W)``, optional
        The committed labels of the plane; without it no click is ignored.

    Returns
    -------
    ClickObjects
    """
    points_xy = np.asarray(points_xy, dtype=float).reshape(-1, 2)
    point_labels = np.asarray(point_labels, dtype=int).reshape(-1)
    boxes = np.zeros((0, 4)) if boxes is None else np.asarray(boxes, dtype=float).reshape(-1, 4)
    n = len(points_xy)
    owner = np.full(n, -1)
    if len(boxes) and n:
        x, y = points_xy[:, 0:1], points_xy[:, 1:2]
        inside = (
            (x >= boxes[None, :, 0])
            & (x <= boxes[None, :, 2])
            & (y >= boxes[None, :, 1])
            & (y <= boxes[None, :, 3])
        )
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        owner = np.where(inside.any(axis=1), np.argmin(np.where(inside, area, np.inf), axis=1), -1)
    point_object = np.full(n, -1)
    objects: list[ObjectPrompt] = []
    for b, box in enumerate(boxes):
        sel = owner == b
        obj = ObjectPrompt(box=box.copy())
        if sel.any():
            obj.point_coords = points_xy[sel]
            obj.point_labels = point_labels[sel]
        point_object[sel] = b
        objects.append(obj)

    free = owner == -1
    positives = np.flatnonzero(free & (point_labels == 1))
    negatives = np.flatnonzero(free & (point_labels != 1))
    ignored = np.zeros(0, dtype=int)
    ignored_labels = np.zeros(0, dtype=np.int64)
    if labels_plane is not None and positives.size:
        labels_plane = np.asarray(labels_plane)
        rows, cols = _pixel_of(points_xy[positives], labels_plane.shape)
        under = labels_plane[rows, cols]
        hit = under != 0
        ignored, ignored_labels = positives[hit], under[hit].astype(np.int64)
        positives = positives[~hit]

    unassigned = np.zeros(0, dtype=int)
    refinements: dict[int, list[int]] = {int(p): [] for p in positives}
    if negatives.size and positives.size:
        diff = points_xy[negatives][:, None, :] - points_xy[positives][None, :, :]
        dist = np.hypot(diff[..., 0], diff[..., 1])
        nearest = np.argmin(dist, axis=1)  # first minimum = lower point index (positives sorted)
        for neg, k in zip(negatives, nearest):
            refinements[int(positives[k])].append(int(neg))
    elif negatives.size:
        unassigned = negatives

    for p in positives:
        members = [int(p), *refinements[int(p)]]
        point_object[members] = len(objects)
        objects.append(
            ObjectPrompt(point_coords=points_xy[members], point_labels=point_labels[members])
        )
    return ClickObjects(
        objects=objects,
        point_object=point_object,
        clicks=positives.astype(int),
        n_boxes=len(boxes),
        ignored=ignored.astype(int),
        ignored_labels=ignored_labels,
        unassigned=unassigned.astype(int),
    )


def _prompt_signature(obj: ObjectPrompt) -> tuple[int, bool]:
    """Objects with the same signature can share one decoder call."""
    n = 0 if obj.point_coords is None else len(obj.point_coords)
    return n, obj.box is not None


class PredictionCache:
    """Masks already predicted, by embedding and prompts, so unchanged objects are not redone.

    Entries are keyed by the caller's embedding key (e.g. an
    :class:`~napari_sam.workflows.embeddings.EmbeddingKey`), the exact prompt
    values, ``multimask`` and ``candidate``; least recently used first out
    beyond ``max_mb`` megabytes of masks. Not thread-safe: use it from one
    thread (the one that predicts).
    """

    def __init__(self, max_mb: float = 256.0) -> None:
        self._max = int(max_mb * 1024 * 1024)
        self._entries: OrderedDict[Hashable, ObjectMask] = OrderedDict()
        self._nbytes = 0
        self.hits = 0
        self.misses = 0

    @staticmethod
    def entry_key(
        embedding_key: Hashable, obj: ObjectPrompt, multimask: bool, candidate: int
    ) -> Hashable:
        def raw(a: Any) -> bytes | None:
            return None if a is None else np.ascontiguousarray(a, dtype=np.float64).tobytes()

        return (
            embedding_key,
            raw(obj.point_coords),
            raw(obj.point_labels),
            raw(obj.box),
            bool(multimask),
            int(candidate),
        )

    def get(self, key: Hashable) -> ObjectMask | None:
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return found

    def put(self, key: Hashable, value: ObjectMask) -> None:
        size = int(value.mask.nbytes)
        old = self._entries.pop(key, None)
        if old is not None:
            self._nbytes -= int(old.mask.nbytes)
        if size > self._max:
            return
        while self._entries and self._nbytes + size > self._max:
            _, dropped = self._entries.popitem(last=False)
            self._nbytes -= int(dropped.mask.nbytes)
        self._entries[key] = value
        self._nbytes += size

    def clear(self) -> None:
        self._entries.clear()
        self._nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)


#: Pixels of full-resolution logits upsampled at once (bounds the memory of a big batch).
_UPSAMPLE_PIXELS = 2**25


#: On a CPU, the mask decoder's per-object image tokens (one embedding's size each) of one
#: call are kept within this many bytes: larger batches fall out of the CPU caches and cost
#: MORE per object (vit_t, 2-vCPU EPYC: 41 ms per object at batch 1-2, 50 at 4, 67 at 50).
CPU_DECODER_BYTES = 8 * 2**20


def decoder_batch(features: Any, n_objects: int) -> int:
    """Objects per mask-decoder call for ``n_objects`` on the embedding ``features``
    (``(1, C, h, w)``): all of them on a GPU; on a CPU as many as fit
    :data:`CPU_DECODER_BYTES` (2 for SAM's float32 256 x 64 x 64 embedding), at least 1.
    The same budget is the fastest for the model's decoder and for the shared-image
    decoder (vit_t, 50 clicks: 1.28 s at 2 per call, 1.58 s at 4, 1.82 s at 8)."""
    if features.device.type != "cpu":
        return max(1, n_objects)
    per_object = features[0].numel() * features.element_size()
    return max(1, min(n_objects, CPU_DECODER_BYTES // max(1, per_object)))


def _picks(scores: np.ndarray, candidate: int) -> np.ndarray:
    """Per prompt, the index of the candidate at rank ``candidate`` (by predicted IoU, ties
    in SAM's order) of ``scores`` ``(B, candidates)``."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return order[:, int(candidate) % scores.shape[1]]


def _decode(
    predictor: SamPredictor, sparse: Any, dense: Any, multimask: bool, candidate: int
) -> tuple[np.ndarray, np.ndarray, Any]:
    """SAM's mask decoder for prompts of one kind (``sparse`` ``(B, n, C)``, ``dense`` the
    no-mask embedding): the predicted IoUs ``(B, candidates)`` as float32 numpy, the index
    of the candidate at rank ``candidate`` of each prompt ``(B,)`` (:func:`_picks`), and
    that candidate's low-resolution logits ``(B, h, w)``.

    With multimask output and SAM's decoder structure this is
    :class:`~napari_sam.model.sam.shared_decoder.SharedImageDecoder` (the image
    embedding is not copied per prompt, its image side is computed once per
    embedding: :meth:`SamPredictor.shared_decoder`, and only the chosen candidates
    are upscaled), once it has given the model's own decoder's result on the first
    prompts a model sees (else that model keeps its own decoder); otherwise the
    model's decoder. Either runs in batches of :func:`decoder_batch` prompts on a
    CPU, each batch's chosen logits taken before the next (its per-prompt image
    tokens are not kept).
    """
    import torch

    model = predictor.model
    features = predictor.features
    n = int(sparse.shape[0])
    step = decoder_batch(features, n)
    fast = predictor.shared_decoder(sparse, dense) if multimask else None
    image_pe = model.prompt_encoder.get_dense_pe() if fast is None else None
    scores, picked, chosen = [], [], []
    for start in range(0, n, step):
        part = slice(start, start + step)
        if fast is not None:
            iou, low_res_for = fast.decode(sparse[part])
            iou = iou.float().cpu().numpy()
            picks = torch.as_tensor(_picks(iou, candidate), dtype=torch.long)
            chosen.append(low_res_for(torch.arange(len(picks)) * iou.shape[1] + picks))
        else:
            low_res, iou = model.mask_decoder(
                image_embeddings=features,
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse[part],
                dense_prompt_embeddings=dense[part],
                multimask_output=multimask,
            )
            iou = iou.detach().float().cpu().numpy()
            picks = torch.as_tensor(_picks(iou, candidate), dtype=torch.long)
            chosen.append(low_res[torch.arange(len(picks)), picks])
        scores.append(iou)
        picked.append(picks.numpy())
    return np.concatenate(scores), np.concatenate(picked), torch.cat(chosen)


def predict_objects_batched(
    predictor: SamPredictor,
    objects: Sequence[ObjectPrompt],
    multimask: bool = True,
    candidate: int = 0,
    *,
    cache: PredictionCache | None = None,
    cache_key: Hashable | None = None,
) -> list[ObjectMask]:
    """Predict each object's mask on the predictor's current embedding, in batches.

    Same result as :func:`predict_objects` (the same candidate rule: with
    ``multimask`` the mask at rank ``candidate`` of SAM's three by predicted
    IoU), but objects with the same kind of prompt, i.e. the same number of
    points and a box or none, go through SAM's prompt encoder and mask
    decoder together: all single-click objects of a plane at once on a GPU;
    on a CPU in small batches (:func:`decoder_batch`), since there a batch
    that outgrows the caches costs more per object than one object alone.
    Only the chosen candidate of each object is upsampled to the image size.
    Each mask also gets its stability score. With multimask output the masks
    are SAM's decoder's up to floating-point rounding (:func:`_decode`).

    With ``cache`` and ``cache_key`` (naming the embedding, e.g. its
    :class:`~napari_sam.workflows.embeddings.EmbeddingKey`), objects whose
    prompts were predicted before on that embedding are taken from the cache
    and only the others are predicted.

    Returns
    -------
    list of ObjectMask
        In the order of ``objects``.
    """
    import torch

    results: list[ObjectMask | None] = [None] * len(objects)
    keys: list[Hashable | None] = [None] * len(objects)
    todo: dict[tuple[int, bool], list[int]] = {}
    for i, obj in enumerate(objects):
        if obj.point_coords is None and obj.box is None:
            raise ValueError(f"Object {i} has neither points nor a box.")
        if cache is not None and cache_key is not None:
            keys[i] = PredictionCache.entry_key(cache_key, obj, multimask, candidate)
            found = cache.get(keys[i])
            if found is not None:
                results[i] = found
                continue
        todo.setdefault(_prompt_signature(obj), []).append(i)
    if not todo:
        return results  # type: ignore[return-value]
    if isinstance(predictor, Sam2ImagePredictor):
        for members in todo.values():
            for i in members:
                results[i] = _predict_sam2(predictor, objects[i], multimask, candidate)
                if cache is not None and keys[i] is not None:
                    cache.put(keys[i], results[i])
        return results  # type: ignore[return-value]

    predictor._require_image()
    model = predictor.model
    device = predictor.device
    size = predictor.original_size
    for (n_points, has_box), members in todo.items():
        coords_t = labels_t = box_t = None
        if n_points:
            coords = np.stack([np.asarray(objects[i].point_coords, float) for i in members])
            labels = np.stack([np.asarray(objects[i].point_labels, int) for i in members])
            coords = predictor.transform.apply_coords(coords, size)
            coords_t = torch.as_tensor(coords, dtype=torch.float, device=device)
            labels_t = torch.as_tensor(labels, dtype=torch.int, device=device)
        if has_box:
            boxes = np.stack([np.asarray(objects[i].box, float).reshape(4) for i in members])
            boxes = predictor.transform.apply_boxes(boxes, size)
            box_t = torch.as_tensor(boxes, dtype=torch.float, device=device)
        points = (coords_t, labels_t) if coords_t is not None else None
        with torch.no_grad():
            sparse, dense = model.prompt_encoder(points=points, boxes=box_t, masks=None)
            scores, picks, chosen = _decode(predictor, sparse, dense, multimask, candidate)
            chosen = chosen[:, None]
        n_cand = scores.shape[1]
        ranks = np.full(len(members), int(candidate) % n_cand)
        step = max(1, _UPSAMPLE_PIXELS // max(1, int(size[0]) * int(size[1])))
        for start in range(0, len(members), step):
            part = slice(start, start + step)
            with torch.no_grad():
                logits = postprocess_masks(
                    model, chosen[part], predictor.input_size, size, predictor.upscale_buffers
                )[:, 0]
                masks = (logits > model.mask_threshold).cpu().numpy()
                stab = _stability(logits, model.mask_threshold)
            for j, i in enumerate(members[part], start=start):
                result = ObjectMask(
                    mask=masks[j - start],
                    score=float(scores[j, picks[j]]),
                    candidate=int(ranks[j]),
                    n_candidates=n_cand,
                    stability=float(stab[j - start]),
                )
                results[i] = result
                if cache is not None and keys[i] is not None:
                    cache.put(keys[i], result)
    return results  # type: ignore[return-value]


def _predict_sam2(
    predictor: Sam2ImagePredictor, obj: ObjectPrompt, multimask: bool, candidate: int
) -> ObjectMask:
    """One object on a SAM 2.1 predictor, with the candidate rule and stability score of
    :func:`predict_objects_batched` (SAM 2's decoder is light: one call per object)."""
    import torch

    logits, scores, _ = predictor.predict(
        point_coords=obj.point_coords,
        point_labels=obj.point_labels,
        box=obj.box,
        multimask_output=multimask,
        return_logits=True,
    )
    order = np.argsort(-scores, kind="stable")
    rank = int(candidate) % len(order)
    i = int(order[rank])
    chosen = torch.from_numpy(np.ascontiguousarray(logits[i : i + 1], dtype=np.float32))
    threshold = predictor.mask_threshold
    return ObjectMask(
        mask=np.asarray(logits[i] > threshold, dtype=bool),
        score=float(scores[i]),
        candidate=rank,
        n_candidates=len(order),
        stability=float(_stability(chosen, threshold)[0]),
    )


def _stability(logits: Any, threshold: float) -> np.ndarray:
    from napari_sam.predictors.amg_utils import stability_score

    return stability_score(logits.float(), threshold, STABILITY_OFFSET).cpu().numpy()
