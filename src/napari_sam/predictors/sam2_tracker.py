"""MemoryTracker: SAM 2's video inference (prompts, memory, tracking) with a bounded memory bank.

A *frame* is a plane of a movie or a slice of a z-stack, given by its index
``0 … num_frames - 1``; its image features come from a callable (so they can
be read from an embedding cache, or encoded on demand). Objects are tracked
independently (several at once in one batch when their memories line up) and
in one *direction* at a time (``+1``: increasing index, ``-1``: decreasing):
each direction has its own memory of tracked frames, as if each were a
separate ``sam2`` inference state, while the prompted ("conditioning")
frames are shared.

What the tracker does per frame follows ``sam2``'s ``SAM2VideoPredictor``
with the published SAM 2.1 settings:

- **prompted frame** (:meth:`MemoryTracker.add_points`, :meth:`add_mask`):
  the first prompt of an object on a frame it has not tracked is decoded
  without memory (the "no memory" embedding added to the features); one
  click gives three candidates and the best is kept, a box or several
  clicks one mask (unless unstable). Adding clicks later feeds the frame's
  previous logits as a mask prompt. A prompt on a frame the object was
  tracked through (a correction) is decoded *with* the memory of that
  direction. A mask prompt is taken as the output as it is. Prompted
  frames are remembered as the binarised mask the user saw.
- **tracked frame** (:meth:`MemoryTracker.track`): the features are
  conditioned on the memory bank (every prompted frame, the last
  ``num_maskmem - 1`` tracked frames of this direction, and the object
  pointers of up to 16 frames, pointers of prompted frames only from the
  past), three candidates are decoded and the best kept, and the result is
  encoded as a new memory (its sigmoid).
- Output masks have holes of at most ``fill_hole_area`` low-resolution
  pixels filled (``sam2`` does this only with its CUDA extension; here it
  runs everywhere, with OpenCV; 0 switches it off).

**Bounded memory.** Memories (``mem_dim × h × w`` per frame and object,
stored in bfloat16 as ``sam2`` does) are kept only while a later frame of
the same direction can still use them; older frames keep their object
pointer and, with ``keep_history``, their low-resolution logits, from which
a memory is encoded again if a correction needs it. Nothing here holds image
features: they are asked for when needed.

Coordinates: points and boxes are ``(x, y)`` in the model's input frame
(``0 … image_size``); :meth:`to_input_frame` converts image pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from napari_sam.errors import PromptError, PropagationError
from napari_sam.model.sam2.sam2 import HeadOutput, Sam2
from napari_sam.predictors.predictor import ImageEmbedding
from napari_sam.predictors.sam2_predictor import fill_small_regions

__all__ = ["FrameOutput", "MemoryTracker", "ObjectTrack"]

#: ``features(frame) -> ImageEmbedding`` (raw stride-16 features and the two high-res maps).
FeatureSource = Callable[[int], ImageEmbedding]


@dataclass
class FrameOutput:
    """One object's result on one frame.

    Attributes
    ----------
    low_res : Tensor ``(1, 1, 4h, 4w)`` float32, or None
        Mask logits before hole filling (None once dropped from the history).
    obj_ptr : Tensor ``(1, C)``
        The object pointer.
    object_score : float
        Object-presence logit (> 0: present).
    iou : float
        Predicted IoU of the chosen mask.
    from_prompt : bool
        A prompted frame: its memory encodes the binarised, hole-filled mask.
    maskmem : Tensor ``(1, mem_dim, h, w)`` bfloat16, or None
        Its memory (None until encoded, or once dropped).
    """

    low_res: torch.Tensor | None
    obj_ptr: torch.Tensor
    object_score: float
    iou: float
    from_prompt: bool = False
    maskmem: torch.Tensor | None = None

    @property
    def present(self) -> bool:
        """Whether the object-score head says the object is on this frame."""
        return self.object_score > 0


@dataclass
class ObjectTrack:
    """Everything the tracker keeps about one object."""

    cond: dict[int, FrameOutput] = field(default_factory=dict)
    tracked: dict[int, dict[int, FrameOutput]] = field(default_factory=lambda: {1: {}, -1: {}})
    prompts: dict[int, tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=dict)
    direction_of: dict[int, int] = field(default_factory=dict)

    def copy(self) -> ObjectTrack:
        """A copy that can be changed without changing this one (tensors are shared)."""
        return ObjectTrack(
            dict(self.cond),
            {d: dict(frames) for d, frames in self.tracked.items()},
            dict(self.prompts),
            dict(self.direction_of),
        )


class MemoryTracker:
    """SAM 2 memory tracking of several objects through the frames of a stack or movie.

    Parameters
    ----------
    model : Sam2
    num_frames : int
    features : callable
        ``features(frame)`` -> :class:`~napari_sam.predictors.predictor.ImageEmbedding`
        of that frame (made by :func:`~napari_sam.predictors.sam2_predictor.embed_images_sam2`).
    fill_hole_area : int
        Holes of at most this many low-resolution pixels are filled in the output masks.
    keep_history : bool
        Keep every tracked frame's logits (4h × 4w float32 per object and
        frame) so that a correction anywhere can rebuild the memory; without
        it only the frames a later frame can use are kept.
    corrections_as_conditioning : bool
        A corrected frame joins the prompted frames (attended to from every
        later frame), as ``sam2``'s ``add_all_frames_to_correct_as_cond``.
    """

    def __init__(
        self,
        model: Sam2,
        num_frames: int,
        features: FeatureSource,
        *,
        fill_hole_area: int = 8,
        keep_history: bool = True,
        corrections_as_conditioning: bool = True,
    ) -> None:
        if int(num_frames) < 1:
            raise PropagationError("There are no frames to track objects through.")
        self.model = model
        self.num_frames = int(num_frames)
        self.features = features
        self.fill_hole_area = int(fill_hole_area)
        self.keep_history = bool(keep_history)
        self.corrections_as_conditioning = bool(corrections_as_conditioning)
        self.objects: dict[int, ObjectTrack] = {}
        self.memory_encodings = 0
        self.memory_dtype = torch.bfloat16
        # the features of the last two frames asked for (the current frame and a
        # prompted one), as sam2 keeps the last frame's: bounded, and no frame is
        # fetched twice in a row
        self._recent: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = {}

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return self.model.device

    def _feats(self, frame: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        frame = int(frame)
        cached = self._recent.pop(frame, None)
        if cached is None:
            cached = self._fetch(frame)
        self._recent[frame] = cached
        while len(self._recent) > 2:
            del self._recent[next(iter(self._recent))]
        return cached

    def _fetch(self, frame: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        emb = self.features(frame)
        dev = self.device
        image = emb.features.to(dev, torch.float32)
        high = tuple(h.to(dev, torch.float32) for h in emb.high_res)
        if len(high) != 2:
            raise PropagationError(
                f"The features of frame {frame} lack SAM 2's high-resolution maps; they were "
                "made by another model."
            )
        return image, high  # type: ignore[return-value]

    def to_input_frame(self, xy: np.ndarray, image_hw: Sequence[int]) -> np.ndarray:
        """Image pixels ``(..., 2)`` as (x, y) -> the model's input frame (the image stretched)."""
        h, w = (int(s) for s in image_hw)
        xy = np.asarray(xy, dtype=np.float64)
        return xy / np.array([w, h]) * self.model.image_size

    def filled(self, low_res: torch.Tensor) -> torch.Tensor:
        """``low_res`` with its small holes filled (as output masks and prompted memories are)."""
        if self.fill_hole_area <= 0:
            return low_res
        return fill_small_regions(low_res, 0.0, self.fill_hole_area, hole_value=0.1)

    def track_of(self, obj_id: int) -> ObjectTrack:
        """The :class:`ObjectTrack` of an object (created empty on first use)."""
        return self.objects.setdefault(int(obj_id), ObjectTrack())

    def output(self, obj_id: int, frame: int) -> FrameOutput | None:
        """The object's latest output on a frame (prompted or tracked), or None."""
        track = self.objects.get(int(obj_id))
        if track is None:
            return None
        if frame in track.cond:
            return track.cond[frame]
        d = track.direction_of.get(frame)
        return None if d is None else track.tracked[d].get(frame)

    # ------------------------------------------------------------------ prompts
    @torch.no_grad()
    def add_points(
        self,
        frame: int,
        obj_id: int,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        clear_old_points: bool = True,
    ) -> FrameOutput:
        """Prompt an object on a frame with clicks and/or a box (model input frame).

        Parameters
        ----------
        points : ndarray ``(N, 2)`` as (x, y), optional; labels : ndarray ``(N,)`` of 1/0
        box : ndarray ``(4,)`` as x0, y0, x1, y1, optional
            Given as two corner points before the clicks (as ``sam2`` does).
        clear_old_points : bool
            Replace the frame's earlier clicks (else add to them).

        Returns
        -------
        FrameOutput
            The frame becomes a prompted frame of the object.
        """
        frame = self._check_frame(frame)
        coords, labs = self._prompt_tensors(points, labels, box)
        track = self.track_of(obj_id)
        if box is not None and not clear_old_points:
            raise PromptError("A box must come with clear_old_points=True (boxes come first).")
        old = None if clear_old_points else track.prompts.get(frame)
        if old is not None:
            coords = torch.cat([old[0], coords], dim=1)
            labs = torch.cat([old[1], labs], dim=1)
        initial = frame not in track.direction_of
        image, high = self._feats(frame)
        previous = self.output(obj_id, frame)
        mask_input = None
        if previous is not None and previous.low_res is not None:
            mask_input = torch.clamp(self.filled(previous.low_res), -32.0, 32.0)
        if initial:
            pix = image + self.model.no_mem_embed.view(1, -1, 1, 1)
        else:
            direction = track.direction_of[frame]
            pix = self._conditioned({int(obj_id): track}, [int(obj_id)], frame, direction, image)
        n_points = labs.shape[1]
        out = self.model.heads(
            pix, high, points=(coords, labs), mask_input=mask_input, multimask_output=n_points <= 1
        )
        result = self._frame_output(out, 0, from_prompt=True)
        self._set_prompted(track, frame, result, initial)
        track.prompts[frame] = (coords, labs)
        return result

    @torch.no_grad()
    def add_mask(self, frame: int, obj_id: int, mask: np.ndarray) -> FrameOutput:
        """Prompt an object with its mask ``(H, W)`` bool on a frame (any resolution)."""
        frame = self._check_frame(frame)
        m = np.asarray(mask)
        if m.ndim != 2:
            raise PromptError(f"A mask prompt must be one 2D mask (H, W); got shape {m.shape}.")
        size = self.model.image_size
        tensor = torch.as_tensor(m.astype(bool), device=self.device)[None, None].float()
        if tensor.shape[-2:] != (size, size):
            tensor = F.interpolate(
                tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
            tensor = (tensor >= 0.5).float()
        track = self.track_of(obj_id)
        image, high = self._feats(frame)
        out = self.model.mask_as_output(image, high, tensor)
        result = self._frame_output(out, 0, from_prompt=True)
        self._set_prompted(track, frame, result, frame not in track.direction_of)
        track.prompts[frame] = None
        return result

    def _set_prompted(
        self, track: ObjectTrack, frame: int, result: FrameOutput, initial: bool
    ) -> None:
        if initial or self.corrections_as_conditioning or frame in track.cond:
            track.cond[frame] = result
            for frames in track.tracked.values():
                frames.pop(frame, None)
        else:
            d = track.direction_of[frame]
            track.tracked[d][frame] = result
        track.direction_of.setdefault(frame, 0)

    def _prompt_tensors(
        self, points: np.ndarray | None, labels: np.ndarray | None, box: np.ndarray | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        parts_xy, parts_lab = [], []
        if box is not None:
            b = np.asarray(box, dtype=np.float64).reshape(-1)
            if b.size != 4 or not np.isfinite(b).all():
                raise PromptError(f"A box is four finite numbers x0, y0, x1, y1; got {box!r}.")
            parts_xy.append(b.reshape(2, 2))
            parts_lab.append(np.array([2, 3]))
        if (points is None) != (labels is None):
            raise PromptError("Point coordinates and point labels must be given together.")
        if points is not None:
            p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
            lab = np.asarray(labels).reshape(-1)
            if len(lab) != len(p):
                raise PromptError(f"{len(p)} point(s) but {len(lab)} label(s).")
            if not np.isfinite(p).all():
                raise PromptError("Point coordinates contain NaN or infinite values.")
            if not np.isin(lab, (0, 1)).all():
                raise PromptError("Point labels must be 1 (object) or 0 (background).")
            parts_xy.append(p)
            parts_lab.append(lab)
        if not parts_xy:
            raise PromptError("A prompt needs at least one point or a box.")
        xy = torch.as_tensor(np.concatenate(parts_xy), dtype=torch.float32, device=self.device)
        lab = torch.as_tensor(np.concatenate(parts_lab), dtype=torch.int32, device=self.device)
        return xy[None], lab[None]

    # ------------------------------------------------------------------ memory
    def _ensure_memory(self, frame: int, out: FrameOutput) -> torch.Tensor:
        """The memory of ``out`` on ``frame``, encoding it first if needed."""
        if out.maskmem is None:
            if out.low_res is None:
                raise PropagationError(
                    f"The memory of frame {frame} was dropped; track again from a prompted frame."
                )
            image, _ = self._feats(frame)
            logits = self.filled(out.low_res) if out.from_prompt else out.low_res
            score = torch.tensor([[out.object_score]], device=self.device)
            mem = self.model.encode_memory(
                image, self.model.upscale(logits), score, binarize=out.from_prompt
            )
            out.maskmem = mem.to(self.memory_dtype)
            self.memory_encodings += 1
        return out.maskmem

    def _layout(
        self, track: ObjectTrack, frame: int, direction: int
    ) -> tuple[list[tuple[int, int, FrameOutput]], list[tuple[int, FrameOutput]]]:
        """Which memories (slot, frame, output) and pointers (distance, output) a frame uses."""
        n = self.model.num_maskmem
        mems: list[tuple[int, int, FrameOutput]] = [(0, f, o) for f, o in track.cond.items()]
        history = track.tracked[direction]
        for slot in range(1, n):
            prev = frame - (n - slot) * direction
            out = history.get(prev)
            if out is not None:
                mems.append((slot, prev, out))
        max_ptrs = min(self.num_frames, self.model.max_obj_ptrs)
        ptrs: list[tuple[int, FrameOutput]] = [
            ((frame - f) * direction, o)
            for f, o in track.cond.items()
            if (f - frame) * direction <= 0
        ]
        for dist in range(1, max_ptrs):
            prev = frame - dist * direction
            if prev < 0 or prev >= self.num_frames:
                break
            out = history.get(prev)
            if out is not None:
                ptrs.append((dist, out))
        return mems, ptrs

    def _conditioned(
        self,
        tracks: dict[int, ObjectTrack],
        obj_ids: Sequence[int],
        frame: int,
        direction: int,
        image: torch.Tensor,
    ) -> torch.Tensor:
        """Memory-conditioned features ``(B, C, h, w)`` of ``frame`` (objects of equal layouts)."""
        model = self.model
        layouts = [self._layout(tracks[o], frame, direction) for o in obj_ids]
        mems0, ptrs0 = layouts[0]
        if not mems0:
            raise PropagationError(f"Object {obj_ids[0]} has no prompted frame to track from.")
        mem_pos = model.memory_pos().flatten(2).transpose(1, 2)  # (1, hw, mem_dim)
        tpos = model.maskmem_tpos_enc  # (n, 1, 1, mem_dim)
        n = model.num_maskmem
        memories = torch.stack(
            [
                torch.cat(
                    [
                        self._ensure_memory(f, o).float().flatten(2).transpose(1, 2)[0]
                        for _, f, o in mems
                    ],
                    dim=0,
                )
                for mems, _ in layouts
            ]
        )
        pos = torch.cat([mem_pos[0] + tpos[n - slot - 1].reshape(1, -1) for slot, _, _ in mems0])
        pointers = pointer_pos = None
        if ptrs0:
            pointers = torch.stack(
                [torch.cat([o.obj_ptr for _, o in ptrs], dim=0) for _, ptrs in layouts]
            )
            distances = torch.tensor([d for d, _ in ptrs0], device=self.device)
            pointer_pos = model.pointer_pos(distances, min(self.num_frames, model.max_obj_ptrs))
        return model.condition(image, memories, pos[None], pointers, pointer_pos)

    def _signature(self, obj_id: int, frame: int, direction: int) -> tuple:
        mems, ptrs = self._layout(self.objects[obj_id], frame, direction)
        return (tuple(s for s, _, _ in mems), tuple(d for d, _ in ptrs))

    # ------------------------------------------------------------------ tracking
    @torch.no_grad()
    def track(
        self, frame: int, obj_ids: Iterable[int], direction: int
    ) -> dict[int, FrameOutput]:
        """Track objects onto ``frame`` coming from ``frame - direction``.

        Objects prompted on ``frame`` get their prompted output; the others
        are decoded with their memory (in batches of objects whose memories
        line up) and remembered. Returns each object's output.
        """
        frame = self._check_frame(frame)
        if direction not in (1, -1):
            raise PropagationError(f"direction must be +1 or -1, not {direction!r}.")
        results: dict[int, FrameOutput] = {}
        todo: dict[tuple, list[int]] = {}
        for obj in obj_ids:
            obj = int(obj)
            track = self.objects.get(obj)
            if track is None or not track.cond:
                raise PropagationError(f"Object {obj} has no prompt; give it a click, box or mask.")
            if frame in track.cond:
                results[obj] = track.cond[frame]
                track.direction_of.setdefault(frame, direction)
                continue
            todo.setdefault(self._signature(obj, frame, direction), []).append(obj)
        if todo:
            image, high = self._feats(frame)
            for group in todo.values():
                results.update(self._track_group(frame, group, direction, image, high))
        for obj in results:
            self._prune(self.objects[obj], frame, direction)
        return results

    def _track_group(
        self,
        frame: int,
        obj_ids: list[int],
        direction: int,
        image: torch.Tensor,
        high: tuple[torch.Tensor, torch.Tensor],
    ) -> dict[int, FrameOutput]:
        model = self.model
        pix = self._conditioned(self.objects, obj_ids, frame, direction, image)
        b = len(obj_ids)
        high_b = tuple(h.expand(b, -1, -1, -1) for h in high)
        out = model.heads(pix, high_b, multimask_output=True)
        memory = model.encode_memory(
            image, model.upscale(out.masks), out.object_score, binarize=False
        ).to(self.memory_dtype)
        self.memory_encodings += b
        results = {}
        for i, obj in enumerate(obj_ids):
            result = self._frame_output(out, i, from_prompt=False)
            result.maskmem = memory[i : i + 1].clone() if b > 1 else memory
            track = self.objects[obj]
            track.tracked[direction][frame] = result
            track.direction_of[frame] = direction
            results[obj] = result
        return results

    def _frame_output(self, out: HeadOutput, i: int, from_prompt: bool) -> FrameOutput:
        return FrameOutput(
            low_res=out.masks[i : i + 1].float().clone(),
            obj_ptr=out.obj_ptr[i : i + 1].clone(),
            object_score=float(out.object_score[i, 0]),
            iou=float(out.iou[i, 0]),
            from_prompt=from_prompt,
        )

    def _prune(self, track: ObjectTrack, frame: int, direction: int) -> None:
        """Drop what no later frame of this direction can use (see the module documentation)."""
        history = track.tracked[direction]
        mem_reach = self.model.num_maskmem - 1
        ptr_reach = self.model.max_obj_ptrs - 1
        for f in list(history):
            behind = (frame - f) * direction
            if behind >= mem_reach:
                history[f].maskmem = None
            if behind >= ptr_reach and not self.keep_history:
                del history[f]
                track.direction_of.pop(f, None)

    def forget(self, obj_id: int, frame: int, direction: int) -> list[int]:
        """Forget the object's tracked frames from ``frame`` on in ``direction``; return them."""
        track = self.objects.get(int(obj_id))
        if track is None:
            return []
        history = track.tracked[direction]
        gone = [f for f in history if (f - frame) * direction >= 0]
        for f in gone:
            del history[f]
            if track.direction_of.get(f) == direction:
                del track.direction_of[f]
        return sorted(gone)

    def remove_object(self, obj_id: int) -> None:
        """Forget an object entirely."""
        self.objects.pop(int(obj_id), None)

    # ------------------------------------------------------------------ results
    def mask(self, out: FrameOutput, image_hw: Sequence[int]) -> np.ndarray:
        """The output's mask at the image's size, ``(H, W)`` bool (holes filled)."""
        logits = self.filled(out.low_res)
        h, w = (int(s) for s in image_hw)
        up = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return (up[0, 0] > 0).cpu().numpy()

    def memory_bytes(self) -> int:
        """Bytes held in memories, pointers and logits by the tracker."""
        total = 0
        for track in self.objects.values():
            outs = list(track.cond.values()) + [
                o for frames in track.tracked.values() for o in frames.values()
            ]
            for o in outs:
                for t in (o.low_res, o.obj_ptr, o.maskmem):
                    if t is not None:
                        total += t.numel() * t.element_size()
        return total

    def _check_frame(self, frame: int) -> int:
        frame = int(frame)
        if not 0 <= frame < self.num_frames:
            raise PropagationError(
                f"Frame {frame} does not exist; there are {self.num_frames} frames "
                f"(0 to {self.num_frames - 1})."
            )
        return frame
