"""Follow objects through a z-stack or a movie with SAM 2's memory (no napari needed).

The SAM 1 rule (:mod:`napari_sam.workflows.propagation`) prompts each slice
from the previous slice's mask and forgets everything else. SAM 2 remembers:
each slice is segmented from a memory of the object's appearance on the
prompted slices and on the last six slices, plus compact "object pointers"
of up to 16 slices, and says on every slice whether the object is there at
all (its object score). A z-stack is treated as a video: the leading axis of
a ``(Z, Y, X)`` stack or of a ``(T, Y, X)`` movie.

How a run goes
--------------
- Each object (an integer id) gets prompts on one or several slices
  (:class:`TrackPrompt`: clicks, a box, or a mask). Each prompted slice is
  segmented from its prompts alone.
- The walk goes up from each object's first prompted slice to the last slice,
  then down from it to slice 0. The two directions have separate memories (as
  two ``sam2`` inference states would): going down never remembers what was
  seen going up. All objects of a slice are processed together.
- An object stops in a direction where SAM 2's object score says it is
  absent (``absent_slices`` slices in a row; configurable, or off), or where
  its mask is smaller than ``min_area`` pixels; the absent slices are not
  part of it. Prompted slices are always kept.
- **Corrections** (:meth:`MemoryPropagation.correct`): clicks on a slice the
  object was followed through re-segment that slice *with* the memory of
  the slices before it, make it a prompted slice, and follow the object
  again from there onwards in the same direction; the slices between the
  first prompt and the corrected slice are not recomputed.

Memory and data
---------------
Slices are read one at a time (dask and zarr arrays stay lazy) and encoded
once: embeddings come from an
:class:`~napari_sam.workflows.embeddings.StackEmbeddings` (memory LRU and
optional disk cache, shared with interactive clicking when the same store is
passed). The model's memory bank is bounded (seven memories and sixteen
pointers per object and direction, whatever the stack length). A
:class:`MemoryPropagation` session keeps each followed slice's
low-resolution logits (256 × 256 float32 per object) so that a correction
anywhere can rebuild the memory; :func:`propagate_memory` (one run, no
corrections) keeps none.

Results are :class:`MemoryPropagationResult` objects, a
:class:`~napari_sam.workflows.propagation.PropagationResult` whose
``objects[i].masks[z]`` are ``(H, W)`` bool masks, so the label write-back of
SAM 1 propagation (:func:`~napari_sam.workflows.propagation.plan_write`)
works unchanged.

Coordinates of prompts are SAM's: points ``(x, y)`` = (column, row) in pixels
of the slice, boxes ``(x0, y0, x1, y1)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_sam.errors import Cancelled, ImageFormatError, PromptError, PropagationError
from napari_sam.runtime.progress import CancelCheck, ProgressCallback, notify
from napari_sam.workflows.embeddings import DiskCache, EmbeddingStore, StackEmbeddings
from napari_sam.workflows.propagation import (
    PropagationResult,
    Stop,
    TrackedObject,
    plan_write,
)

__all__ = [
    "MemoryPropagation",
    "MemoryPropagationResult",
    "MemoryPropagationSettings",
    "MemoryTrackedObject",
    "TrackPrompt",
    "check_prompts",
    "check_stack",
    "merge_prompts",
    "propagate_memory",
]


# --------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class TrackPrompt:
    """The prompts of one object on one slice.

    Attributes
    ----------
    obj : int
        Object id (>= 1; the label the object gets).
    z : int
        Slice (or time point) index.
    point_coords : ndarray ``(N, 2)`` float, optional
        Clicks as SAM ``(x, y)`` pixels of the slice.
    point_labels : ndarray ``(N,)`` int, optional
        1 = on the object, 0 = background.
    box : ndarray ``(4,)``, optional
        ``x0, y0, x1, y1`` pixels.
    mask : ndarray ``(H, W)`` bool, optional
        The object's mask on the slice (instead of clicks and a box); it is
        kept exactly as given on that slice.
    """

    obj: int
    z: int
    point_coords: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        where = f"object {self.obj} on slice {self.z}"
        try:
            obj, z = int(self.obj), int(self.z)
        except (TypeError, ValueError):
            raise PromptError(
                f"A prompt needs a whole-number object id and slice, got {self.obj!r}, {self.z!r}."
            ) from None
        if obj != self.obj or z != self.z or obj < 1:
            raise PromptError(
                f"Object ids are whole numbers >= 1 and slices whole numbers; got {where}."
            )
        object.__setattr__(self, "obj", obj)
        object.__setattr__(self, "z", z)
        if (self.point_coords is None) != (self.point_labels is None):
            raise PromptError(f"The clicks of {where} need both coordinates and labels.")
        if self.point_coords is not None:
            coords = np.asarray(self.point_coords, dtype=np.float64).reshape(-1, 2)
            labels = np.asarray(self.point_labels).reshape(-1)
            if len(labels) != len(coords):
                raise PromptError(
                    f"{where.capitalize()} has {len(coords)} click(s) but {len(labels)} label(s)."
                )
            if not np.isfinite(coords).all():
                raise PromptError(f"A click of {where} has no valid position (NaN or infinite).")
            if not np.isin(labels, (0, 1)).all():
                raise PromptError(f"Click labels of {where} must be 1 (object) or 0 (background).")
            object.__setattr__(self, "point_coords", coords)
            object.__setattr__(self, "point_labels", labels.astype(np.int64))
        if self.box is not None:
            box = np.asarray(self.box, dtype=np.float64).reshape(-1)
            if box.size != 4 or not np.isfinite(box).all() or box[2] < box[0] or box[3] < box[1]:
                raise PromptError(
                    f"The box of {where} must be four finite numbers x0, y0, x1, y1 with "
                    f"x0 <= x1 and y0 <= y1; got {np.asarray(self.box).tolist()}."
                )
            object.__setattr__(self, "box", box)
        if self.mask is not None:
            mask = np.asarray(self.mask)
            if mask.ndim != 2:
                raise PromptError(f"The mask of {where} must be 2D (H, W); got {mask.shape}.")
            if self.point_coords is not None or self.box is not None:
                raise PromptError(
                    f"{where.capitalize()} has a mask and clicks or a box; give one or the other."
                )
            object.__setattr__(self, "mask", mask.astype(bool))
        if self.point_coords is None and self.box is None and self.mask is None:
            raise PromptError(f"{where.capitalize()} has no click, box or mask.")
        if self.mask is not None and not self.mask.any():
            raise PromptError(f"The mask of {where} is empty.")
        if self.box is None and self.mask is None and not (self.point_labels == 1).any():
            raise PromptError(
                f"{where.capitalize()} has only background clicks; click on the object at least "
                "once (or draw a box around it)."
            )


def merge_prompts(prompts: Iterable[TrackPrompt]) -> dict[tuple[int, int], TrackPrompt]:
    """One prompt per (object, slice): the clicks of several prompts on a slice are joined.

    Raises
    ------
    PromptError
        Two boxes, or two masks, for one object on one slice, or a mask with clicks.
    """
    merged: dict[tuple[int, int], TrackPrompt] = {}
    for p in prompts:
        if not isinstance(p, TrackPrompt):
            raise PromptError(f"Prompts must be TrackPrompt objects, got {type(p).__name__}.")
        key = (p.obj, p.z)
        old = merged.get(key)
        if old is None:
            merged[key] = p
            continue
        where = f"object {p.obj} on slice {p.z}"
        if (old.box is not None and p.box is not None) or (
            old.mask is not None and p.mask is not None
        ):
            raise PromptError(f"{where.capitalize()} has two boxes or two masks; give one.")
        coords = [c for c in (old.point_coords, p.point_coords) if c is not None]
        labels = [c for c in (old.point_labels, p.point_labels) if c is not None]
        merged[key] = TrackPrompt(
            p.obj,
            p.z,
            np.concatenate(coords) if coords else None,
            np.concatenate(labels) if labels else None,
            old.box if old.box is not None else p.box,
            old.mask if old.mask is not None else p.mask,
        )
    return merged


@dataclass(frozen=True)
class MemoryPropagationSettings:
    """How objects are followed, and when they end.

    Attributes
    ----------
    stop_when_absent : bool
        Stop following an object in a direction where SAM 2 says it is
        absent. Off: every slice of the range is visited (absent slices get
        no mask).
    absent_slices : int
        Slices in a row the object must be absent (or smaller than
        ``min_area``) before it stops; 2 or more bridge a slice where it
        briefly disappears.
    min_area : int
        A mask of fewer pixels counts as absent (0: any non-empty mask counts).
    fill_hole_area : int
        Holes of at most this many pixels of SAM 2's 256 × 256 low-resolution
        mask are filled (as the published video predictor does); 0: off.
    resize : {"bilinear", "bicubic"}
        How slices are resized to the model input: "bilinear" (default) is
        what interactive clicking uses, so their cached embeddings are
        reused; "bicubic" is what ``sam2``'s video predictor sees when it
        reads JPEG frames with PIL.
    """

    stop_when_absent: bool = True
    absent_slices: int = 1
    min_area: int = 0
    fill_hole_area: int = 8
    resize: str = "bilinear"

    def __post_init__(self) -> None:
        for name in ("absent_slices", "min_area", "fill_hole_area"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise PropagationError(f"{name} must be a whole number >= 0, got {value!r}.")
        if self.absent_slices < 1:
            raise PropagationError(f"absent_slices must be at least 1, got {self.absent_slices}.")
        if self.resize not in ("bilinear", "bicubic"):
            raise PropagationError(
                f"resize must be 'bilinear' or 'bicubic', not {self.resize!r}."
            )


# --------------------------------------------------------------------------- results
@dataclass
class MemoryTrackedObject(TrackedObject):
    """One object followed with SAM 2 (a :class:`TrackedObject` with more detail).

    Attributes
    ----------
    obj_id : int
        The object's id.
    object_scores : dict of int -> float
        SAM 2's object-presence logit on every slice it looked at (> 0:
        present), absent slices included.
    prompt_slices : list of int
        The slices the object was prompted on (corrections included).
    """

    obj_id: int = 0
    object_scores: dict[int, float] = field(default_factory=dict)
    prompt_slices: list[int] = field(default_factory=list)


@dataclass
class MemoryPropagationResult(PropagationResult):
    """Per-object, per-slice masks of a SAM 2 propagation.

    ``objects`` follow :attr:`object_ids` (ascending); ``z`` is the first
    prompted slice. :attr:`changed` says, per object id, which slices the
    last run or correction recomputed (slices whose old mask was dropped
    included): a caller writing labels clears the object's old voxels on
    those slices first.
    """

    object_ids: list[int] = field(default_factory=list)
    changed: dict[int, list[int]] = field(default_factory=dict)

    def label_volume(self, ids: Sequence[int] | None = None, dtype: Any = np.uint32) -> np.ndarray:
        """A label volume with each object as its id (or ``ids[i]``); earlier objects win ties."""
        return super().label_volume(self.object_ids if ids is None else ids, dtype)

    def summary(self, ids: Sequence[int] | None = None, unit: str = "slice") -> str:
        """One line per object: its id, slices (``unit``s) and why it stopped each way."""
        return super().summary(self.object_ids if ids is None else ids, unit)

    def plan(self, labels: Any, *, overwrite: bool = False) -> list[tuple[int, Any]]:
        """:func:`~napari_sam.workflows.propagation.plan_write` with the object ids as labels."""
        return plan_write(labels, self, self.object_ids, overwrite=overwrite)


@dataclass
class _State:
    """What the session knows about one object."""

    prompts: dict[int, TrackPrompt] = field(default_factory=dict)
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    object_scores: dict[int, float] = field(default_factory=dict)
    stops: dict[int, Stop] = field(default_factory=dict)

    def copy(self) -> _State:
        return _State(
            dict(self.prompts),
            dict(self.masks),
            dict(self.scores),
            dict(self.object_scores),
            dict(self.stops),
        )

    @property
    def first(self) -> int:
        return min(self.prompts)

    def drop(self, slices: Iterable[int]) -> None:
        for z in slices:
            for d in (self.masks, self.scores, self.object_scores):
                d.pop(z, None)


# --------------------------------------------------------------------------- the session
class MemoryPropagation:
    """A SAM 2 propagation session on one stack: prompts, runs and corrections.

    Parameters
    ----------
    model : Sam2 or LoadedModel
        A SAM 2.1 model (``napari_sam.runtime.loader.load("sam2_tiny")``).
    stack : array ``(Z, Y, X)`` (or a ``(T, Y, X)`` movie), or StackEmbeddings
        Grayscale planes, or with ``rgb`` colour planes ``(Z, Y, X, 3|4)``; numpy,
        dask or zarr (read one plane at a time).
        A :class:`~napari_sam.workflows.embeddings.StackEmbeddings` made for
        this model brings its caches (then ``contrast``, ``store``, ``disk``
        and ``model_id`` must not be given).
    model_id : str, optional
        Names the model in cache keys (default: the loaded model's id);
        needed with ``disk``.
    contrast : (low, high), optional
        Contrast limits for SAM's 8-bit input (default: what napari shows, the
        stack's minimum and maximum).
    store : EmbeddingStore, optional
        Memory cache of embeddings (pass the widget's store to share them).
    disk : DiskCache or path, optional
        On-disk cache of embeddings.
    rgb : bool
        The last axis of ``stack`` holds colours (serial H&E sections, a colour
        movie): SAM 2 sees each plane in its colours, scaled by ``contrast``.
    settings : MemoryPropagationSettings, optional
    z_range : (int, int), optional
        First and last slice (inclusive) objects may extend to; default all.
    keep_history : bool
        Keep what corrections need (see the module documentation).
    """

    def __init__(
        self,
        model: Any,
        stack: Any,
        *,
        model_id: str | None = None,
        contrast: Sequence[float] | None = None,
        store: EmbeddingStore | None = None,
        disk: DiskCache | str | None = None,
        rgb: bool = False,
        settings: MemoryPropagationSettings | None = None,
        z_range: Sequence[int] | None = None,
        keep_history: bool = True,
    ) -> None:
        from napari_sam.model.sam2.sam2 import Sam2
        from napari_sam.predictors.sam2_tracker import MemoryTracker
        from napari_sam.workflows.planes import stack_embeddings

        self.settings = settings or MemoryPropagationSettings()
        sam = getattr(model, "sam", model)
        if not isinstance(sam, Sam2):
            raise PropagationError(
                "Memory propagation needs a SAM 2 model (e.g. 'sam2_tiny'); the model given is "
                f"{getattr(model, 'name', type(sam).__name__)}. Use the slice-to-slice method "
                "(napari_sam.propagate) with SAM 1 models."
            )
        self.model = sam
        if isinstance(stack, StackEmbeddings):
            if rgb or any(v is not None for v in (contrast, store, disk, model_id)):
                raise PropagationError(
                    "contrast, model_id, store, disk and rgb belong to the StackEmbeddings "
                    "given as stack; do not pass them again."
                )
            if stack.model is not sam:
                raise PropagationError("The StackEmbeddings given were made for another model.")
            self.embeddings = stack
        else:
            check_stack(stack, rgb)
            if model_id is None:
                model_id = getattr(model, "model_id", None)
            if disk is not None and model_id is None:
                raise PropagationError(
                    "Name the model with model_id=... to use a disk cache, so that embeddings "
                    "of different models are never mixed."
                )
            self.embeddings = stack_embeddings(
                sam,
                stack,
                rgb=rgb,
                model_id=model_id or f"unnamed-sam2-{id(sam):x}",
                contrast=contrast,
                store=store,
                disk=disk,
                resize=self.settings.resize,
            )
        self.n_slices = self.embeddings.n_slices
        self.plane_shape = tuple(int(s) for s in self.embeddings.layout.plane_shape)
        self.z_range = _check_range(self.n_slices, z_range)
        self.tracker = MemoryTracker(
            sam,
            self.n_slices,
            self.embeddings.get,
            fill_hole_area=self.settings.fill_hole_area,
            keep_history=keep_history,
        )
        self._states: dict[int, _State] = {}
        self._changed: dict[int, list[int]] = {}

    # ------------------------------------------------------------------ reading
    @property
    def object_ids(self) -> list[int]:
        """The ids of the objects with prompts, ascending."""
        return sorted(self._states)

    def prompts(self, obj: int | None = None) -> list[TrackPrompt]:
        """The prompts of one object (or all), by slice."""
        ids = self.object_ids if obj is None else [int(obj)]
        return [
            p for o in ids if o in self._states for _, p in sorted(self._states[o].prompts.items())
        ]

    @property
    def result(self) -> MemoryPropagationResult:
        """The objects as they are now (copies of the masks' dicts; the masks are shared)."""
        objects = []
        for o in self.object_ids:
            st = self._states[o]
            objects.append(
                MemoryTrackedObject(
                    masks=dict(st.masks),
                    scores=dict(st.scores),
                    stops=dict(st.stops),
                    obj_id=o,
                    object_scores=dict(st.object_scores),
                    prompt_slices=sorted(st.prompts),
                )
            )
        firsts = [self._states[o].first for o in self.object_ids]
        return MemoryPropagationResult(
            z=min(firsts) if firsts else self.z_range[0],
            shape=(self.n_slices, *self.plane_shape),
            z_range=self.z_range,
            objects=objects,
            object_ids=self.object_ids,
            changed={k: list(v) for k, v in self._changed.items()},
        )

    # ------------------------------------------------------------------ running
    def run(
        self,
        prompts: Iterable[TrackPrompt] = (),
        *,
        objects: Iterable[int] | None = None,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> MemoryPropagationResult:
        """Add ``prompts`` and follow objects from their prompts up and down the stack.

        Objects given new prompts here are (re)computed from scratch, as are
        those listed in ``objects``; with neither, every object is.

        Raises
        ------
        PromptError, PropagationError
            For prompts outside the stack or the range, of the wrong size, or
            an object id in ``objects`` that has no prompt.
        Cancelled
            If ``should_cancel`` returned True; the session is left as it was.
        """
        merged = self._checked(prompts)
        ids = sorted({o for o, _ in merged} | {int(o) for o in (objects or ())})
        if not merged and objects is None:
            ids = self.object_ids
        for o in ids:
            if o not in self._states and not any(k[0] == o for k in merged):
                raise PropagationError(
                    f"Object {o} has no prompt; click on it (or draw a box) on at least one "
                    "slice first."
                )
        if not ids:
            raise PropagationError("There is nothing to propagate: no object has a prompt.")
        with self._transaction(ids):
            self._changed = {}
            for o in ids:
                state = self._states.setdefault(o, _State())
                old = set(state.masks)
                state.prompts.update({z: p for (oo, z), p in merged.items() if oo == o})
                state.drop(list(state.masks))
                state.stops.clear()
                self.tracker.remove_object(o)
                for p in (state.prompts[z] for z in sorted(state.prompts)):
                    self._prompt(p, state)
                self._changed[o] = sorted(old)
            starts = {o: self._states[o].first for o in ids}
            plan = [(1, starts), (-1, starts)]
            self._walks(plan, progress, should_cancel)
            for o in ids:
                self._changed[o] = sorted(set(self._changed[o]) | set(self._states[o].masks))
        return self.result

    def correct(
        self,
        prompts: Iterable[TrackPrompt],
        *,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> MemoryPropagationResult:
        """Correct objects on slices they were followed through, and follow them on from there.

        A prompt on a slice the object already has prompts on, or for a new
        object, is an ordinary prompt: the object is computed again from
        scratch (:meth:`run`). Otherwise the slice is segmented with the
        object's memory and its new clicks, becomes a prompted slice, and the
        object is followed again from the next slice on, in the direction
        the slice was reached (up above the first prompt, down below it);
        nothing else changes. A correction on a slice the object never
        reached (after it stopped) starts it again there.

        Raises
        ------
        PromptError, PropagationError, Cancelled
            As :meth:`run`; a cancelled correction leaves the session as it was.
        """
        merged = self._checked(prompts)
        fresh, corrections = [], []
        for (o, z), p in merged.items():
            known = o in self._states and z not in self._states[o].prompts
            (corrections if known else fresh).append(p)
        result = None
        if fresh:
            result = self.run(fresh, progress=progress, should_cancel=should_cancel)
        if not corrections:
            return result if result is not None else self.result
        ids = sorted({p.obj for p in corrections})
        changed: dict[int, set[int]] = {o: set() for o in ids}
        with self._transaction(ids):
            for p in sorted(corrections, key=lambda q: (q.obj, q.z)):
                state = self._states[p.obj]
                track = self.tracker.track_of(p.obj)
                direction = track.direction_of.get(p.z) or (1 if p.z > state.first else -1)
                later = [
                    z
                    for z in state.masks
                    if (z - p.z) * direction >= 0 and (z == p.z or z not in state.prompts)
                ]
                self.tracker.forget(p.obj, p.z + direction, direction)
                state.drop(later)
                changed[p.obj].update(later)
                state.prompts[p.z] = p
                self._prompt(p, state)
                state.stops.pop(direction, None)
                self._walks([(direction, {p.obj: p.z})], progress, should_cancel)
                changed[p.obj].update(
                    z
                    for z in state.masks
                    if (z - p.z) * direction >= 0 and (z == p.z or z not in state.prompts)
                )
            self._changed = {o: sorted(v) for o, v in changed.items()}
        return self.result

    # ------------------------------------------------------------------ internals
    def _checked(self, prompts: Iterable[TrackPrompt]) -> dict[tuple[int, int], TrackPrompt]:
        return check_prompts(prompts, self.n_slices, self.plane_shape, self.z_range)

    def _prompt(self, p: TrackPrompt, state: _State) -> None:
        """Segment a prompted slice and record it."""
        tr = self.tracker
        if p.mask is not None:
            out = tr.add_mask(p.z, p.obj, p.mask)
            mask = p.mask.copy()
        else:
            points = labels = None
            if p.point_coords is not None:
                points = tr.to_input_frame(p.point_coords, self.plane_shape)
                labels = p.point_labels
            box = None
            if p.box is not None:
                box = tr.to_input_frame(p.box.reshape(2, 2), self.plane_shape).reshape(4)
            out = tr.add_points(p.z, p.obj, points, labels, box=box)
            mask = tr.mask(out, self.plane_shape)
        state.masks[p.z] = mask
        state.scores[p.z] = out.iou
        state.object_scores[p.z] = out.object_score

    def _walks(
        self,
        plan: list[tuple[int, dict[int, int]]],
        progress: ProgressCallback | None,
        should_cancel: CancelCheck | None,
    ) -> None:
        """Follow objects in each (direction, {object: start slice}) of ``plan``."""
        lo, hi = self.z_range
        spans = []
        for direction, starts in plan:
            first = min(starts.values()) if direction > 0 else max(starts.values())
            end = hi if direction > 0 else lo
            spans.append(max(0, (end - first) * direction))
        total, done = sum(spans), 0
        notify(progress, 0, total, "propagating", "slices")
        for (direction, starts), span in zip(plan, spans):
            first = min(starts.values()) if direction > 0 else max(starts.values())
            active = set(starts)
            misses = {o: 0 for o in starts}
            first_miss: dict[int, tuple[int, str]] = {}
            visited = 0
            for step in range(1, span + 1):
                z = first + step * direction
                here = sorted(o for o in active if (z - starts[o]) * direction > 0)
                if not active:
                    break
                visited = step
                if here:
                    if should_cancel is not None and should_cancel():
                        raise Cancelled("Propagation was cancelled; nothing was changed.")
                    outs = self.tracker.track(z, here, direction)
                    for o in here:
                        self._accept(o, z, outs[o], direction, active, misses, first_miss)
                done += 1
                notify(progress, done, total, f"propagating: slice {z}", "slices")
            for o in active:
                self._states[o].stops[direction] = Stop(None, "range_end")
            if visited < span:
                done += span - visited
                notify(progress, done, total, "propagating", "slices")

    def _accept(
        self,
        o: int,
        z: int,
        out: Any,
        direction: int,
        active: set[int],
        misses: dict[int, int],
        first_miss: dict[int, tuple[int, str]],
    ) -> None:
        """Record object ``o`` on slice ``z`` or count it absent (and maybe stop it)."""
        s = self.settings
        state = self._states[o]
        state.object_scores[z] = out.object_score
        if z in state.prompts:  # a prompted slice on the way: kept as it is
            misses[o] = 0
            return
        mask = self.tracker.mask(out, self.plane_shape)
        area = int(np.count_nonzero(mask))
        reason = None
        if not out.present:
            reason = "absent"
        elif area == 0:
            reason = "empty"
        elif area < s.min_area:
            reason = "small"
        if reason is None:
            misses[o] = 0
            first_miss.pop(o, None)
            state.masks[z] = mask
            state.scores[z] = out.iou
            return
        if not s.stop_when_absent:
            return
        misses[o] += 1
        first_miss.setdefault(o, (z, reason))
        if misses[o] >= s.absent_slices:
            where, why = first_miss[o]
            state.stops[direction] = Stop(where, why)
            active.discard(o)

    def _transaction(self, ids: Sequence[int]) -> _Transaction:
        return _Transaction(self, ids)


class _Transaction:
    """Restores the session's objects ``ids`` if the block fails or is cancelled."""

    def __init__(self, session: MemoryPropagation, ids: Sequence[int]) -> None:
        self.session = session
        self.ids = list(ids)

    def __enter__(self) -> None:
        s = self.session
        self.states = {o: s._states[o].copy() for o in self.ids if o in s._states}
        self.tracks = {
            o: s.tracker.objects[o].copy() for o in self.ids if o in s.tracker.objects
        }
        self.changed = dict(s._changed)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is None:
            return False
        s = self.session
        for o in self.ids:
            if o in self.states:
                s._states[o] = self.states[o]
            else:
                s._states.pop(o, None)
            if o in self.tracks:
                s.tracker.objects[o] = self.tracks[o]
            else:
                s.tracker.remove_object(o)
        s._changed = self.changed
        return False


# --------------------------------------------------------------------------- one call
def propagate_memory(
    model: Any,
    stack: Any,
    prompts: Iterable[TrackPrompt],
    *,
    z_range: Sequence[int] | None = None,
    settings: MemoryPropagationSettings | None = None,
    contrast: Sequence[float] | None = None,
    model_id: str | None = None,
    store: EmbeddingStore | None = None,
    disk: DiskCache | str | None = None,
    rgb: bool = False,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> MemoryPropagationResult:
    """Follow objects from their prompts through a stack with SAM 2 (one run, no corrections).

    Without ``store``, embeddings are not kept in memory after use (memory
    stays flat whatever the stack length); pass a store or ``disk`` to reuse
    them. Parameters are those of :class:`MemoryPropagation`.

    Example::

        from napari_sam.runtime.loader import load
        from napari_sam.workflows.memory_propagation import TrackPrompt, propagate_memory

        model = load("sam2_tiny")
        prompts = [TrackPrompt(obj=1, z=8, point_coords=[[120, 80]], point_labels=[1])]
        result = propagate_memory(model, stack, prompts)
        labels = result.label_volume()          # (Z, Y, X) uint32, object 1 as 1
    """
    session = MemoryPropagation(
        model,
        stack,
        model_id=model_id,
        contrast=contrast,
        store=store if store is not None or isinstance(stack, StackEmbeddings) else EmbeddingStore(
            0
        ),
        disk=disk,
        rgb=rgb,
        settings=settings,
        z_range=z_range,
        keep_history=False,
    )
    prompts = list(prompts)
    if not prompts:
        raise PropagationError("There is nothing to propagate: give at least one prompt.")
    return session.run(prompts, progress=progress, should_cancel=should_cancel)


def check_prompts(
    prompts: Iterable[TrackPrompt],
    n_slices: int,
    plane_shape: Sequence[int],
    z_range: Sequence[int] | None = None,
) -> dict[tuple[int, int], TrackPrompt]:
    """The prompts merged by ``(object, slice)`` (:func:`merge_prompts`), checked against a
    stack of ``n_slices`` planes of ``plane_shape`` ``(H, W)`` and the slice range.

    Raises
    ------
    PropagationError
        A prompt on a slice outside the stack or the range, a mask of another
        shape, or a click or box outside the image (one sentence each).
    """
    merged = merge_prompts(prompts)
    lo, hi = _check_range(n_slices, z_range)
    plane_shape = tuple(int(s) for s in plane_shape)
    for (o, z), p in merged.items():
        if not 0 <= z < n_slices:
            raise PropagationError(
                f"The prompt for object {o} is on slice {z}, but the stack has slices "
                f"0 to {n_slices - 1}."
            )
        if not lo <= z <= hi:
            raise PropagationError(
                f"The prompt for object {o} is on slice {z}, outside the slice range "
                f"{lo}-{hi} to propagate in."
            )
        if p.mask is not None and p.mask.shape != plane_shape:
            raise PropagationError(
                f"The mask of object {o} on slice {z} has shape {p.mask.shape}, but the "
                f"slices are {plane_shape}."
            )
        h, w = plane_shape
        xy = p.point_coords if p.point_coords is not None else np.zeros((0, 2))
        if p.box is not None:
            xy = np.concatenate([xy, p.box.reshape(2, 2)])
        outside = (xy[:, 0] < -0.5) | (xy[:, 0] > w - 0.5) | (xy[:, 1] < -0.5) | (
            xy[:, 1] > h - 0.5
        )
        if outside.any():
            x, y = xy[np.flatnonzero(outside)[0]]
            raise PropagationError(
                f"A prompt of object {o} on slice {z} lies outside the image (x={x:g}, "
                f"y={y:g}; the slices are {w} wide and {h} high)."
            )
    return merged


# --------------------------------------------------------------------------- checks
def check_stack(stack: Any, rgb: bool = False) -> None:
    """Raise :class:`PropagationError` (one sentence) unless ``stack`` is a grayscale
    ``(Z, Y, X)`` stack or ``(T, Y, X)`` movie (with ``rgb``: of colour planes,
    ``(Z, Y, X, 3|4)``)."""
    from napari_sam.workflows.image import image_layout, stack_layout

    shape = tuple(int(s) for s in getattr(stack, "shape", ()))
    if rgb:
        try:
            layout = stack_layout(shape, rgb=True, dtype=getattr(stack, "dtype", None))
        except ImageFormatError as exc:
            raise PropagationError(str(exc)) from None
        if not layout.is_stack:
            raise PropagationError(
                f"Propagation follows objects through the slices of a stack or the frames of "
                f"a movie, but this colour image is 2D (shape {shape}); segment it with clicks "
                "instead."
            )
        return
    if len(shape) == 2 or (len(shape) == 3 and shape[-1] in (3, 4) and min(shape[:2]) > 4):
        raise PropagationError(
            f"Propagation follows objects through the slices of a stack (Z, Y, X) or the "
            f"frames of a movie (T, Y, X), but this image is 2D (shape {shape}); segment it "
            "with clicks instead."
        )
    if len(shape) == 4 and shape[-1] in (3, 4) and min(shape[1:3]) > 4:
        raise PropagationError(
            f"This image of shape {shape} looks like a stack of colour planes (Z, Y, X, RGB); "
            "pass rgb=True to follow objects in their colours."
        )
    layout = image_layout(shape, dtype=getattr(stack, "dtype", None))
    if not layout.is_stack:
        raise PropagationError(
            f"Propagation needs a grayscale stack (Z, Y, X) or movie (T, Y, X); got shape {shape}."
        )


def _check_range(n_slices: int, z_range: Sequence[int] | None) -> tuple[int, int]:
    if z_range is None:
        return 0, n_slices - 1
    try:
        lo, hi = (int(v) for v in z_range)
    except (TypeError, ValueError):
        raise PropagationError(
            f"The slice range must be two slice numbers, got {z_range!r}."
        ) from None
    if not 0 <= lo <= hi < n_slices:
        raise PropagationError(
            f"The slice range {lo}-{hi} must lie within the stack's slices 0-{n_slices - 1}."
        )
    return lo, hi
