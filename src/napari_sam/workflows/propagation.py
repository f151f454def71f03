"""Propagate objects through a 3D stack with SAM, slice by slice.

The rule
--------
An object is given as a mask on one slice ``z`` of a stack (its *seed*: a
committed object or a preview). The walk goes up (``z+1, z+2, …``) and then
down (``z-1, z-2, …``). On each slice, every object still being followed is
prompted from the mask accepted for it on the previous slice of the walk:

- **box**: the bounding box of the previous mask, widened on each side by
  ``box_margin`` (10 %) of its width and height and clipped to the image;
- **point**: one positive point at the previous mask's most interior pixel
  (largest Euclidean distance to a non-mask pixel or the image edge; the
  first such pixel in row-major order);
- **mask** (off by default): the previous slice's low-resolution logits as
  SAM's ``mask_input`` (not on the first step, where the seed is a binary mask).

SAM predicts one mask per object (``multimask_output=False``: box and point
together are not ambiguous); all objects of a slice are predicted in one
batch (:meth:`~napari_sam.predictors.predictor.SamPredictor.predict_torch`). The new mask
is accepted unless :func:`stop_reason` says the object has ended there: the
mask is empty or smaller than ``min_area`` pixels, SAM's predicted IoU is
below ``min_score``, or its IoU with the previous slice's mask is below
``min_overlap``. An object that stops is followed no further in that direction
(the rejected slice is not part of it); the others go on. The walk also stops at
the ends of the allowed slice range.

Why these prompts: a box is SAM's most reliable single prompt for a whole
object, and a box from the neighbouring slice, widened a little, resembles the
jittered boxes SAM was trained with (noise of about 10 % of the box side), so
the object may grow or shift between slices. The interior point tells SAM which
object in the box is meant when a neighbour reaches into it, and lies well
inside the object (a centroid may fall outside a bent object). Mask logits
from another slice are not what SAM's mask input was trained on (its own
previous prediction for the same image), so they are an option, not the default.

:func:`propagate` runs this with a SAM model on a stack; :func:`propagate_masks`
is the same walk with any slice predictor (for tests and other models);
:func:`plan_write` says which voxels of a label volume get which id, never
taking another object's voxels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam.errors import Cancelled, PropagationError
from napari_sam.runtime.progress import CancelCheck, ProgressCallback, notify
from napari_sam.workflows.embeddings import (
    DiskCache,
    EmbeddingStore,
    StackEmbeddings,
)

if TYPE_CHECKING:
    from napari_sam.predictors.predictor import SamPredictor

__all__ = [
    "STOP_REASONS",
    "MaskPrompt",
    "PropagationResult",
    "PropagationSettings",
    "Sam2SlicePredictor",
    "SamSlicePredictor",
    "Stop",
    "TrackedObject",
    "interior_point",
    "mask_box",
    "mask_iou",
    "plan_write",
    "prompt_from_mask",
    "propagate",
    "propagate_masks",
    "stop_reason",
]

#: Why an object stopped, by code.
STOP_REASONS = {
    "empty": "SAM found nothing",
    "small": "the mask is smaller than the minimum area",
    "low_score": "SAM's predicted IoU is below the minimum score",
    "low_overlap": "the mask overlaps the previous plane's too little",
    "range_end": "the end of the allowed range",
    "absent": "SAM 2's object score says the object is absent",
}


@dataclass(frozen=True)
class PropagationSettings:
    """How objects are prompted from slice to slice, and when they end.

    Attributes
    ----------
    use_box, use_point, use_mask : bool
        Which prompts are derived from the previous slice's mask (see the
        module documentation). At least one of box and point is needed.
    box_margin : float
        The box is widened on each side by this fraction of its width/height.
    min_area : int
        A mask of fewer pixels ends the object.
    min_score : float
        A mask whose predicted IoU (SAM's own quality estimate) is lower ends the object.
    min_overlap : float
        A mask whose IoU with the previous slice's mask is lower ends the object.
    """

    # The help of each field is written once, here: the widget's tooltips are made
    # from it (napari_sam.runtime.settings.field_help).
    use_box: bool = field(default=True, metadata={
        "label": "Box prompt",
        "help": "Prompt each slice with the previous slice's mask's bounding box, widened."})
    use_point: bool = field(default=True, metadata={
        "label": "Point prompt",
        "help": "Prompt each slice with one point deep inside the previous slice's mask."})
    use_mask: bool = field(default=False, metadata={
        "label": "Mask prompt",
        "help": "Also give SAM the previous slice's mask logits (off by default)."})
    box_margin: float = field(default=0.1, metadata={
        "label": "Box margin", "min": 0.0, "max": 1.0,
        "help": "Widen the box on each side by this fraction of its width and height."})
    min_area: int = field(default=10, metadata={
        "label": "Min. area (pixels)", "min": 0, "max": 10**8,
        "help": "Stop where the mask has fewer pixels."})
    min_score: float = field(default=0.5, metadata={
        "label": "Min. predicted IoU", "min": 0.0, "max": 1.0,
        "help": "Stop where SAM's predicted IoU of the mask (its own quality estimate) is lower."})
    min_overlap: float = field(default=0.3, metadata={
        "label": "Min. overlap with previous slice", "min": 0.0, "max": 1.0,
        "help": "Stop where the mask's IoU with the previous slice's mask is lower."})

    def __post_init__(self) -> None:
        if not (self.use_box or self.use_point):
            raise PropagationError(
                "Propagation needs a box or a point prompt (use_box or use_point)."
            )
        for name in ("box_margin", "min_score", "min_overlap"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise PropagationError(f"{name} must be a finite number, got {value!r}.")
        if self.box_margin < 0:
            raise PropagationError(f"box_margin must be >= 0, got {self.box_margin}.")
        if not 0 <= self.min_overlap <= 1:
            raise PropagationError(f"min_overlap must lie in [0, 1], got {self.min_overlap}.")
        if int(self.min_area) != self.min_area or self.min_area < 0:
            raise PropagationError(f"min_area must be a whole number >= 0, got {self.min_area}.")


# --------------------------------------------------------------------------- prompts from a mask
def mask_box(mask: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Bounding box ``(x0, y0, x1, y1)`` of a non-empty mask, widened by ``margin``.

    ``x0``/``x1`` are the first/last columns holding mask pixels and ``y0``/``y1``
    the first/last rows (as in SAM's automatic mask generator); each side moves
    out by ``margin`` × (width or height in pixels), clipped to the image.
    """
    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise PropagationError("An empty mask has no bounding box.")
    r0, r1, c0, c1 = float(rows[0]), float(rows[-1]), float(cols[0]), float(cols[-1])
    mx, my = margin * (c1 - c0 + 1), margin * (r1 - r0 + 1)
    h, w = mask.shape
    return np.array(
        [max(0.0, c0 - mx), max(0.0, r0 - my), min(w - 1.0, c1 + mx), min(h - 1.0, r1 + my)]
    )


def interior_point(mask: np.ndarray) -> np.ndarray:
    """``(x, y)`` of the mask pixel farthest from the background and the image edge.

    Euclidean distance transform of the mask padded with one background pixel;
    among equally distant pixels the first in row-major order.
    """
    import cv2

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise PropagationError("An empty mask has no interior point.")
    padded = np.pad(mask.astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([float(c), float(r)])


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks (0 if both are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    union = int(np.count_nonzero(a | b))
    return 0.0 if union == 0 else int(np.count_nonzero(a & b)) / union


@dataclass(frozen=True)
class MaskPrompt:
    """The prompts for one object on the next slice (SAM coordinates: x, y)."""

    box: np.ndarray | None = None
    point: np.ndarray | None = None
    logits: np.ndarray | None = None


def prompt_from_mask(
    mask: np.ndarray, settings: PropagationSettings, logits: np.ndarray | None = None
) -> MaskPrompt:
    """The prompts the rule of this module derives from a previous mask."""
    return MaskPrompt(
        box=mask_box(mask, settings.box_margin) if settings.use_box else None,
        point=interior_point(mask) if settings.use_point else None,
        logits=logits if settings.use_mask else None,
    )


def stop_reason(
    previous: np.ndarray, mask: np.ndarray, score: float, settings: PropagationSettings
) -> str | None:
    """Why ``mask`` (with predicted IoU ``score``) ends the object, or None to accept it.

    Checked in this order: ``"empty"``, ``"small"`` (fewer than ``min_area``
    pixels), ``"low_score"`` (``score < min_score``), ``"low_overlap"`` (IoU
    with ``previous`` below ``min_overlap``). See :data:`STOP_REASONS`.
    """
    area = int(np.count_nonzero(mask))
    if area == 0:
        return "empty"
    if area < settings.min_area:
        return "small"
    if not score >= settings.min_score:  # NaN fails too
        return "low_score"
    if mask_iou(previous, mask) < settings.min_overlap:
        return "low_overlap"
    return None


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Stop:
    """Where and why the walk of one object ended in one direction.

    ``slice`` is the slice whose mask was rejected, or None when the walk
    reached the end of the allowed range (``reason == "range_end"``).
    ``area``, ``score`` and ``overlap`` describe the rejected mask (pixels,
    SAM's predicted IoU, IoU with the previous slice's mask), when there was one.
    """

    slice: int | None
    reason: str
    area: int | None = None
    score: float | None = None
    overlap: float | None = None

    def describe(self, unit: str = "slice") -> str:
        """Why, and where (``unit``: what a position is called, e.g. "time point")."""
        where = "" if self.slice is None else f" at {unit} {self.slice}"
        return f"{STOP_REASONS.get(self.reason, self.reason)}{where}"


@dataclass
class TrackedObject:
    """One object through the stack.

    Attributes
    ----------
    masks : dict of int -> ndarray ``(H, W)`` bool
        Accepted mask per slice, the seed slice included.
    scores : dict of int -> float
        SAM's predicted IoU per propagated slice (the seed has none).
    stops : dict of int -> Stop
        Why the walk ended going up (``+1``) and down (``-1``).
    """

    masks: dict[int, np.ndarray]
    scores: dict[int, float] = field(default_factory=dict)
    stops: dict[int, Stop] = field(default_factory=dict)

    @property
    def slices(self) -> list[int]:
        return sorted(self.masks)

    @property
    def extent(self) -> tuple[int, int]:
        """First and last slice of the object."""
        return min(self.masks), max(self.masks)


@dataclass
class PropagationResult:
    """Per-object, per-slice masks from :func:`propagate`."""

    z: int
    shape: tuple[int, int, int]
    z_range: tuple[int, int]
    objects: list[TrackedObject]

    def label_volume(self, ids: Sequence[int] | None = None, dtype: Any = np.uint32) -> np.ndarray:
        """A label volume of :attr:`shape` with object ``i`` as ``ids[i]`` (default ``i + 1``).

        Where objects overlap, the earlier one keeps the voxel.
        """
        volume = np.zeros(self.shape, dtype=dtype)
        if ids is None:
            ids = list(range(1, len(self.objects) + 1))
        for oid, (zs, rows, cols) in plan_write(volume, self, ids):
            volume[zs, rows, cols] = oid
        return volume

    def summary(self, ids: Sequence[int] | None = None, unit: str = "slice") -> str:
        """One line per object: its id, slices and why it stopped each way (``unit``: what
        the positions are called, e.g. "time point" along the time axis)."""
        lines = []
        for i, obj in enumerate(self.objects):
            oid = ids[i] if ids is not None else i + 1
            lo, hi = obj.extent
            up, down = obj.stops.get(1), obj.stops.get(-1)
            ends = "; ".join(
                f"{name}: {stop.describe(unit)}"
                for name, stop in (("up", up), ("down", down))
                if stop
            )
            lines.append(f"object {oid}: {unit}s {lo}–{hi} ({ends})")
        return "\n".join(lines)


# --------------------------------------------------------------------------- the walk
#: ``predict(z, prompts) -> (masks (B, H, W) bool, scores (B,), logits (B, 1, h, w) or None)``.
SlicePredict = Callable[[int, list[MaskPrompt]], tuple[np.ndarray, np.ndarray, Any]]


def _check_seeds(masks: Any, plane_shape: tuple[int, int] | None, z: int) -> np.ndarray:
    seeds = np.asarray(masks)
    if seeds.ndim == 2:
        seeds = seeds[None]
    if seeds.ndim != 3 or seeds.shape[0] == 0:
        raise PropagationError(
            f"Give the objects as masks of shape (N, H, W) (or one (H, W) mask); got {seeds.shape}."
        )
    seeds = seeds.astype(bool, copy=False)
    if plane_shape is not None and seeds.shape[1:] != tuple(plane_shape):
        raise PropagationError(
            f"The masks have planes of shape {seeds.shape[1:]}, but the stack's planes are "
            f"{tuple(plane_shape)}."
        )
    empty = [i for i in range(seeds.shape[0]) if not seeds[i].any()]
    if empty:
        raise PropagationError(
            f"Object{'s' if len(empty) > 1 else ''} {', '.join(str(i) for i in empty)} "
            f"{'have' if len(empty) > 1 else 'has'} no pixels on slice {z}; nothing to propagate."
        )
    return seeds


def _check_range(z: int, n_slices: int, z_range: Sequence[int] | None) -> tuple[int, int]:
    if not 0 <= z < n_slices:
        raise PropagationError(f"Slice {z} does not exist; the stack has {n_slices} slices.")
    if z_range is None:
        return 0, n_slices - 1
    lo, hi = (int(v) for v in z_range)
    if not 0 <= lo <= hi < n_slices:
        raise PropagationError(
            f"The slice range {lo}–{hi} must lie within the stack's slices 0–{n_slices - 1}."
        )
    if not lo <= z <= hi:
        raise PropagationError(f"The slice range {lo}–{hi} must include the object's slice {z}.")
    return lo, hi


def propagate_masks(
    predict: SlicePredict,
    masks: Any,
    z: int,
    n_slices: int,
    *,
    z_range: Sequence[int] | None = None,
    settings: PropagationSettings | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> PropagationResult:
    """Walk the rule of this module with any slice predictor.

    Parameters
    ----------
    predict : callable
        ``predict(z, prompts)`` returns, for the :class:`MaskPrompt` of each
        object on slice ``z``, masks ``(B, H, W)`` bool, scores ``(B,)`` and
        low-resolution logits ``(B, 1, h, w)`` (or None).
    masks : array ``(N, H, W)`` or ``(H, W)`` bool
        The objects on slice ``z``.
    z, n_slices : int
        Seed slice and number of slices.
    z_range : (int, int), optional
        First and last slice (inclusive) the objects may extend to; default all.
    settings : PropagationSettings, optional
    progress : callable, optional
        called with a :class:`~napari_sam.runtime.progress.Progress` in slices visited
        (``total`` = slices in the range other than ``z``; slices skipped after all
        objects stopped count as done).
    should_cancel : callable, optional
        Checked before each slice.

    Raises
    ------
    Cancelled
        If ``should_cancel`` returned True.
    PropagationError
        For empty seeds or slices outside the stack.
    """
    settings = settings or PropagationSettings()
    z = int(z)
    lo, hi = _check_range(z, int(n_slices), z_range)
    seeds = _check_seeds(masks, None, z)
    objects = [TrackedObject(masks={z: seeds[i].copy()}) for i in range(seeds.shape[0])]
    total = hi - lo
    done = 0
    notify(progress, 0, total, "propagating", "slices")
    for direction in (1, -1):
        end = hi if direction > 0 else lo
        previous: dict[int, tuple[np.ndarray, Any]] = {
            i: (seeds[i], None) for i in range(len(objects))
        }
        active = list(range(len(objects)))
        zc = z + direction
        while active and (zc - end) * direction <= 0:
            if should_cancel is not None and should_cancel():
                raise Cancelled("Propagation was cancelled; nothing was changed.")
            prompts = [prompt_from_mask(previous[i][0], settings, previous[i][1]) for i in active]
            pred_masks, scores, logits = predict(zc, prompts)
            still = []
            for j, i in enumerate(active):
                mask = np.asarray(pred_masks[j], dtype=bool)
                score = float(scores[j])
                reason = stop_reason(previous[i][0], mask, score, settings)
                if reason is not None:
                    overlap = mask_iou(previous[i][0], mask)
                    objects[i].stops[direction] = Stop(
                        zc, reason, int(np.count_nonzero(mask)), score, overlap
                    )
                    continue
                objects[i].masks[zc] = mask
                objects[i].scores[zc] = score
                previous[i] = (mask, None if logits is None else logits[j])
                still.append(i)
            active = still
            done += 1
            notify(progress, done, total, f"propagating: slice {zc}", "slices")
            zc += direction
        for i in active:
            objects[i].stops[direction] = Stop(None, "range_end")
        skipped = (end - zc) * direction + 1
        if skipped > 0:
            done += skipped
            notify(progress, done, total, "propagating", "slices")
    shape = (int(n_slices), int(seeds.shape[1]), int(seeds.shape[2]))
    return PropagationResult(z=z, shape=shape, z_range=(lo, hi), objects=objects)


class SamSlicePredictor:
    """The slice predictor of :func:`propagate_masks` for SAM on a stack's embeddings.

    All objects of a slice go through SAM's prompt encoder and mask decoder
    in one batch (:meth:`SamPredictor.predict_torch`), with one mask per object.
    """

    def __init__(self, predictor: SamPredictor, embeddings: StackEmbeddings) -> None:
        self.predictor = predictor
        self.embeddings = embeddings

    def __call__(self, z: int, prompts: list[MaskPrompt]) -> tuple[np.ndarray, np.ndarray, Any]:
        from napari_sam.runtime.memory import run_batches

        p = self.predictor
        p.set_embedding(self.embeddings.get(z))
        if not prompts:
            h, w = p.original_size
            low = p.model.prompt_encoder.mask_input_size
            return (np.zeros((0, h, w), bool), np.zeros(0, np.float32),
                    np.zeros((0, 1, *low), np.float32))

        def to_cpu() -> None:
            p.model.to("cpu")
            p.features = p.features.to("cpu")

        # All objects in one batch; if the GPU runs out of memory, fewer at a time.
        parts = run_batches(
            prompts,
            lambda chunk: [self._decode(chunk)],
            len(prompts),
            what="objects",
            per_item=False,
            to_cpu=to_cpu,
            device=lambda: p.device,
        )
        masks, iou, low_res = (np.concatenate(arrays) for arrays in zip(*parts))
        return masks, iou, low_res

    def _decode(self, prompts: Sequence[MaskPrompt]) -> tuple[np.ndarray, np.ndarray, Any]:
        import torch

        p = self.predictor
        size = p.original_size
        dev = p.device
        boxes = coords = labels = mask_input = None
        if all(pr.box is not None for pr in prompts):
            boxes = p.transform.apply_boxes(np.stack([pr.box for pr in prompts]), size)
            boxes = torch.as_tensor(boxes, dtype=torch.float, device=dev)
        if all(pr.point is not None for pr in prompts):
            pts = p.transform.apply_coords(np.stack([pr.point for pr in prompts])[:, None], size)
            coords = torch.as_tensor(pts, dtype=torch.float, device=dev)
            labels = torch.ones((len(prompts), 1), dtype=torch.int, device=dev)
        if all(pr.logits is not None for pr in prompts):
            logits = np.stack([np.asarray(pr.logits, dtype=np.float32) for pr in prompts])
            mask_input = torch.as_tensor(logits, device=dev)
        with torch.no_grad():
            masks, iou, low_res = p.predict_torch(
                coords, labels, boxes=boxes, mask_input=mask_input, multimask_output=False
            )
        return (
            masks[:, 0].cpu().numpy(),
            iou[:, 0].float().cpu().numpy(),
            low_res.float().cpu().numpy(),
        )


def propagate(
    model: Any,
    stack: Any,
    masks: Any,
    z: int,
    *,
    z_range: Sequence[int] | None = None,
    settings: PropagationSettings | None = None,
    contrast: Sequence[float] | None = None,
    model_id: str | None = None,
    store: EmbeddingStore | None = None,
    disk: DiskCache | str | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> PropagationResult:
    """Propagate objects from slice ``z`` up and down a stack with SAM (no napari needed).

    Parameters
    ----------
    model : Sam or SamPredictor
        The model (a given predictor is used, and its current image replaced).
    stack : array ``(Z, H, W)`` or StackEmbeddings
        The grayscale stack, or its embeddings (which carry model id, contrast
        limits and caches; then ``contrast``, ``model_id``, ``store`` and
        ``disk`` must not be given).
    masks : array ``(N, H, W)`` or ``(H, W)`` bool
        The objects on slice ``z``.
    z : int
        The slice the masks belong to.
    z_range : (int, int), optional
        First and last slice (inclusive) the objects may extend to.
    settings : PropagationSettings, optional
        Prompts and stopping thresholds (defaults documented there).
    contrast : (low, high), optional
        Contrast limits for SAM's 8-bit input; default the stack's minimum and
        maximum (what napari shows).
    model_id : str, optional
        Names the model in cache keys; needed with ``disk``.
    store : EmbeddingStore, optional
        Memory cache of embeddings (pass the same store to reuse encodings).
    disk : DiskCache or path, optional
        On-disk cache of embeddings.
    progress, should_cancel : callable, optional
        See :func:`propagate_masks`.

    Returns
    -------
    PropagationResult
        ``result.objects[i].masks[z]`` is object ``i``'s mask on slice ``z``;
        ``result.label_volume()`` composes them.
    """
    from napari_sam.predictors.predictor import SamPredictor
    from napari_sam.predictors.sam2_predictor import Sam2ImagePredictor

    if isinstance(model, (SamPredictor, Sam2ImagePredictor)):
        predictor = model
    elif getattr(model, "family", "sam") == "sam2":  # the same rule with a SAM 2.1 model
        predictor = Sam2ImagePredictor(model)
    else:
        predictor = SamPredictor(model)
    slices = Sam2SlicePredictor if isinstance(predictor, Sam2ImagePredictor) else SamSlicePredictor
    if isinstance(stack, StackEmbeddings):
        if any(v is not None for v in (contrast, model_id, store, disk)):
            raise PropagationError(
                "contrast, model_id, store and disk belong to the StackEmbeddings given as "
                "stack; do not pass them again."
            )
        embeddings = stack
    else:
        if disk is not None and model_id is None:
            raise PropagationError(
                "Name the model with model_id=... to use a disk cache, so that embeddings "
                "of different models are never mixed."
            )
        embeddings = StackEmbeddings(
            predictor.model,
            stack,
            model_id=model_id or f"unnamed-model-{id(predictor.model):x}",
            contrast=contrast,
            store=store,
            disk=disk,
        )
    _check_seeds(masks, embeddings.layout.plane_shape, int(z))
    return propagate_masks(
        slices(predictor, embeddings),
        masks,
        z,
        embeddings.n_slices,
        z_range=z_range,
        settings=settings,
        progress=progress,
        should_cancel=should_cancel,
    )


class Sam2SlicePredictor:
    """The slice predictor of :func:`propagate_masks` for a SAM 2.1 model: the rule of this
    module (box, point and previous logits from the previous slice's mask), decoded by
    :class:`~napari_sam.predictors.sam2_predictor.Sam2ImagePredictor` (without SAM 2's
    memory; :mod:`napari_sam.workflows.memory_propagation` follows objects with it).

    SAM 2 stretches each slice to its square input, so prompts are scaled by
    ``image_size / width`` and ``image_size / height``; the previous slice's
    low-resolution logits are the mask prompt as they are.
    """

    def __init__(self, predictor: Any, embeddings: StackEmbeddings) -> None:
        self.predictor = predictor
        self.embeddings = embeddings

    def __call__(self, z: int, prompts: list[MaskPrompt]) -> tuple[np.ndarray, np.ndarray, Any]:
        import torch

        p = self.predictor
        embedding = self.embeddings.get(z)
        p.set_embedding(embedding)
        h, w = (int(s) for s in embedding.original_size)
        size = int(p.model.image_size)
        if not prompts:
            low = size // 4
            return (np.zeros((0, h, w), bool), np.zeros(0, np.float32),
                    np.zeros((0, 1, low, low), np.float32))
        scale = np.array([size / w, size / h])
        dev = p.device
        boxes = coords = labels = mask_input = None
        if all(pr.box is not None for pr in prompts):
            corners = np.stack([pr.box for pr in prompts]).reshape(-1, 2, 2) * scale
            boxes = torch.as_tensor(corners.reshape(-1, 4), dtype=torch.float, device=dev)
        if all(pr.point is not None for pr in prompts):
            pts = np.stack([pr.point for pr in prompts])[:, None] * scale
            coords = torch.as_tensor(pts, dtype=torch.float, device=dev)
            labels = torch.ones((len(prompts), 1), dtype=torch.int, device=dev)
        if all(pr.logits is not None for pr in prompts):
            logits = np.stack([np.asarray(pr.logits, dtype=np.float32) for pr in prompts])
            mask_input = torch.as_tensor(logits, device=dev)
        with torch.no_grad():
            masks, iou, low_res = p.predict_torch(
                coords, labels, boxes=boxes, mask_input=mask_input, multimask_output=False
            )
        return (
            masks[:, 0].cpu().numpy(),
            iou[:, 0].float().cpu().numpy(),
            low_res.float().cpu().numpy(),
        )


# --------------------------------------------------------------------------- writing labels
def plan_write(
    labels: Any,
    result: PropagationResult,
    ids: Sequence[int] | None = None,
    *,
    next_id: int = 1,
    overwrite: bool = False,
) -> list[tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Which voxels of a label volume get which object id.

    Object ``i`` is written as ``ids[i]`` (e.g. the id of a committed object
    that was propagated) or, without ``ids``, as ``next_id``, ``next_id + 1``,
    … in order, skipping objects left without voxels (they use no id). On every
    slice of an object, its mask is written where ``labels`` is 0 or already
    holds that id (unless ``overwrite``), and where no earlier object of the
    result was written; voxels that already hold the id are not listed. Voxels
    of the id outside the new masks are left as they are.

    Returns
    -------
    list of (id, (z, rows, cols))
    """
    plan = []
    claimed: dict[int, np.ndarray] = {}
    new_id = int(next_id)
    for i, obj in enumerate(result.objects):
        oid = int(ids[i]) if ids is not None else new_id
        zs, rows, cols = [], [], []
        owns = False
        for z in obj.slices:
            mask = obj.masks[z]
            plane = np.asarray(labels[z])
            write = mask.copy() if overwrite else mask & ((plane == 0) | (plane == oid))
            if z in claimed:
                write &= ~claimed[z]
                claimed[z] |= write
            else:
                claimed[z] = write.copy()
            owns = owns or bool(write.any())
            r, c = np.nonzero(write & (plane != oid))
            zs.append(np.full(r.shape, z, dtype=np.intp))
            rows.append(r)
            cols.append(c)
        if ids is None and not owns:
            continue
        if ids is None:
            new_id += 1
        z_all = np.concatenate(zs) if zs else np.zeros(0, np.intp)
        if z_all.size:
            plan.append((oid, (z_all, np.concatenate(rows), np.concatenate(cols))))
    return plan
