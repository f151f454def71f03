"""SAM 2 memory propagation in the interactive dock: prompts, corrections, write-back, export.

:class:`MemoryStack` belongs to the dock's
:class:`~napari_sam._widgets.interactive.stack.StackController` and is used when the
propagation method is "SAM 2 memory" (a SAM 2.1 model). It keeps ONE
:class:`~napari_sam.workflows.memory_propagation.MemoryPropagation` session per
image, model, contrast, slice range, settings and output layer, so that the
prompts of every object stay known between runs:

- the preview's objects on the current slice become click/box prompts
  (:class:`~napari_sam.workflows.memory_propagation.TrackPrompt`, SAM ``(x, y)``
  pixels). An object whose positive click lies on an object this session follows
  (on that slice of the output labels) is a **correction** of that object; so is
  the only preview object when "Object ids" names one followed object (to take up
  an object again where it was lost). Every other preview object is a new object
  with the next free id. Corrections keep the object's earlier prompted slices
  (:meth:`MemoryPropagation.correct`);
- committed objects of the current slice (all, or those named in "Object ids")
  become mask prompts: with a preview, those SAM 2 does not follow yet (so that
  "click, commit, click, propagate" follows both objects); without a preview, all
  of them (a mask prompt on a followed object's slice corrects it).

The result is written as ONE undo step: on the slices a run recomputed, an
object's old voxels that its new mask no longer covers are cleared, then its
masks are written where the labels are 0 or already that object (other objects
are never overwritten unless the user ticked "Overwrite existing objects").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_sam._widgets.interactive.replay import replay_options
from napari_sam._widgets.interactive.stack_write import parse_ids
from napari_sam.errors import NapariSamError, PromptError
from napari_sam.runtime.loader import is_sam2
from napari_sam.workflows.interactive import is_sam2_model
from napari_sam.workflows.memory_propagation import (
    MemoryPropagation,
    MemoryPropagationResult,
    MemoryPropagationSettings,
    TrackPrompt,
    merge_prompts,
)
from napari_sam.workflows.prompt_table import write_prompt_table
from napari_sam.workflows.prompts import group_objects
from napari_sam.workflows.propagation import plan_write

__all__ = ["MEMORY", "METHODS", "SLICES", "MemoryStack", "wants_sam2"]

#: The propagation methods of the dock, and their names there.
MEMORY = "memory"
SLICES = "slices"
METHODS = {MEMORY: "SAM 2 memory", SLICES: "slice-to-slice (SAM 1)"}


def wants_sam2(owner: Any) -> bool:
    """Whether the dock's model (loaded, or else chosen) is a SAM 2.1 model."""
    if owner.model is not None:
        return is_sam2_model(owner.model.sam)
    return is_sam2(str(getattr(owner.session.request, "choice", "")))


def _label_under(plane: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Labels of ``plane`` under SAM ``(x, y)`` points (pixel centres at integers)."""
    h, w = plane.shape
    rows = np.clip(np.floor(xy[:, 1] + 0.5), 0, h - 1).astype(np.intp)
    cols = np.clip(np.floor(xy[:, 0] + 0.5), 0, w - 1).astype(np.intp)
    return plane[rows, cols]


class MemoryStack:
    """The dock's SAM 2 memory session and what it writes.

    Attributes
    ----------
    settings : MemoryPropagationSettings
    session : MemoryPropagation or None
        The prompts and results of the objects followed so far (None before the
        first run, or after the image, model, range, settings or output changed).
    """

    def __init__(self, owner: Any) -> None:
        self.owner = owner  # the InteractiveController
        self.settings = MemoryPropagationSettings()
        self.session: MemoryPropagation | None = None
        self._key: tuple | None = None
        self._line: Any = None  # the session's line (axis, first plane's key), if any

    # ------------------------------------------------------------------ the session
    def _key_for(self, embeddings: Any, z_range: tuple[int, int], labels: Any,
                 line: Any = None) -> tuple:
        owner = self.owner
        planes = getattr(embeddings, "planes", None)  # channels or (T, Z, ...): their contrast
        where = None if line is None else (line.axis, line.key(0))
        return (id(owner.image), id(owner.image.data), embeddings.contrast,
                planes.contrast if planes is not None else None, where,
                id(owner.model.sam), owner.model.model_id, tuple(z_range),
                id(labels) if labels is not None else None, self.settings)

    def session_for(self, embeddings: Any, z_range: tuple[int, int],
                    labels: Any, line: Any = None) -> MemoryPropagation:
        """The session for the current image, model, range, output and line (the axis
        followed and the other axes' positions; a new session if any of them, or the
        settings, changed)."""
        key = self._key_for(embeddings, z_range, labels, line)
        if self.session is None or key != self._key:
            self.session = MemoryPropagation(self.owner.model.sam, embeddings,
                                             settings=self.settings, z_range=z_range)
            self._key = key
            self._line = None if line is None else (line.axis, line.key(0))
        return self.session

    def adopt(self, labels: Any) -> None:
        """The session's objects were written into ``labels`` (a layer made at the end of
        the first run): corrections may follow there."""
        if self._key is not None:
            self._key = (*self._key[:-2], id(labels), self._key[-1])

    def forget(self) -> None:
        self.session, self._key = None, None

    # ------------------------------------------------------------------ prompts
    def preview_prompts(self, session: MemoryPropagation, k: int, plane: np.ndarray,
                        next_id: int, ids_text: str, key: Any = None) -> list[TrackPrompt]:
        """The preview's objects on slice ``k`` as prompts (see the module documentation).

        ``plane`` is the output labels' slice ``k`` (zeros without labels); ``key`` names
        that plane in the preview (default ``k``; a full index (t, z) on a (T, Z, Y, X)
        image).
        Raises PromptError with a sentence for prompts SAM 2 cannot take.
        """
        owner = self.owner
        sp = owner.slice_prompts
        objects = group_objects(sp.points_xy, sp.point_labels, sp.boxes) if sp is not None else []
        followed = set(session.object_ids)
        named = self.named(ids_text)
        prompts: list[TrackPrompt] = []
        if len(objects) != len(owner.preview.objects):  # cannot tell the prompts apart
            for seed in owner.preview.seeds(k if key is None else key):
                prompts.append(TrackPrompt(next_id, k, mask=seed))
                next_id += 1
            return prompts
        for obj in objects:
            oid = None
            if obj.point_coords is not None:
                positive = obj.point_coords[np.asarray(obj.point_labels) == 1]
                hits = [int(v) for v in _label_under(plane, positive) if int(v) in followed]
                oid = hits[0] if hits else None
            if oid is None and len(objects) == 1 and len(named) == 1 and named[0] in followed:
                oid = named[0]
            if oid is None:
                oid, next_id = next_id, next_id + 1
            prompts.append(TrackPrompt(oid, k, obj.point_coords, obj.point_labels, obj.box))
        merged = merge_prompts(prompts)
        out = []
        for (oid, z), prompt in merged.items():
            old = [p for p in session.prompts(oid) if p.z == z] if oid in followed else []
            if old:  # more clicks on a slice prompted before: together with the earlier ones
                try:
                    prompt = merge_prompts([old[0], prompt])[(oid, z)]
                except PromptError:
                    pass  # a mask or a box there before: the new prompts replace it
            out.append(prompt)
        return out

    def prompts_for(self, session: MemoryPropagation, line: Any, plane: np.ndarray,
                    from_preview: bool, ids_text: str, labels: Any) -> list[TrackPrompt]:
        """The prompts of a run from the plane shown (``line.k`` along ``line``; ``plane``
        its output labels): the preview's objects (new ones, or corrections of followed
        ones) and the committed objects of the plane, all or those named in ``ids_text``,
        that SAM 2 does not follow yet (without a preview, followed ones too: a mask prompt
        corrects them). ValueError or PromptError with a sentence for bad ids or prompts."""
        k = line.k
        prompts = []
        if from_preview:
            top = int(labels.data.max()) if labels is not None and labels.data.size else 0
            next_id = max([top, *session.object_ids]) + 1
            prompts = self.preview_prompts(session, k, plane, next_id, ids_text, key=line.key())
        present = [int(i) for i in np.unique(plane) if i != 0]
        taken = {p.obj for p in prompts}
        if from_preview:
            present = [i for i in present if i not in session.object_ids]
            named = [i for i in self.named(ids_text) if i in present]
            ids = named or ([] if self.named(ids_text) else present)
        else:
            ids = parse_ids(ids_text, present, line.key())
        return prompts + self.mask_prompts(plane, [i for i in ids if i not in taken], k)

    @staticmethod
    def named(ids_text: str) -> list[int]:
        """The whole numbers in the "Object ids" text (others are ignored here)."""
        return [int(w) for w in ids_text.replace(",", " ").split() if w.isdigit()]

    @staticmethod
    def mask_prompts(plane: np.ndarray, ids: list[int], k: int) -> list[TrackPrompt]:
        """Committed objects ``ids`` of slice ``k`` as mask prompts."""
        return [TrackPrompt(int(i), k, mask=plane == i) for i in ids]

    # ------------------------------------------------------------------ writing
    @staticmethod
    def changed_part(result: MemoryPropagationResult) -> MemoryPropagationResult:
        """The objects the last run or correction recomputed (the others stay as written)."""
        keep = [i for i, oid in enumerate(result.object_ids) if oid in result.changed]
        return MemoryPropagationResult(
            z=result.z, shape=result.shape, z_range=result.z_range,
            objects=[result.objects[i] for i in keep],
            object_ids=[result.object_ids[i] for i in keep],
            changed=dict(result.changed),
        )

    @staticmethod
    def plan(labels: Any, part: MemoryPropagationResult, overwrite: bool) -> list[tuple[int, Any]]:
        """``(id, (z, rows, cols))`` writes of ``part`` into ``labels`` (a (Z, Y, X) array):
        first 0 where a recomputed slice no longer holds an object's old voxels, then its
        masks (:func:`~napari_sam.workflows.propagation.plan_write`)."""
        clears = []
        for oid, obj in zip(part.object_ids, part.objects):
            zs, rows, cols = [], [], []
            for z in part.changed.get(oid, []):
                stale = np.asarray(labels[z]) == oid
                mask = obj.masks.get(z)
                if mask is not None:
                    stale &= ~mask
                r, c = np.nonzero(stale)
                zs.append(np.full(r.shape, z, dtype=np.intp))
                rows.append(r)
                cols.append(c)
            if zs and sum(len(r) for r in rows):
                clears.append((0, (np.concatenate(zs), np.concatenate(rows),
                                   np.concatenate(cols))))
        return clears + plan_write(labels, part, part.object_ids, overwrite=overwrite)

    # ------------------------------------------------------------------ export
    def export(self, path: str | Path) -> tuple[Path | None, str]:
        """Write the session's click prompts as a prompt table (``z,y,x,label,object``).

        Returns the file written (None if nothing could be) and the sentence for the user.
        Prompts with a box or a mask cannot be rows of the table; they are left out and named.
        """
        session = self.session
        if session is None or not session.object_ids:
            return None, ("There are no SAM 2 prompts to export yet: propagate with "
                          "“SAM 2 memory” first.")
        prompts = session.prompts()
        clicks = [p for p in prompts if p.box is None and p.mask is None]
        left = [p for p in prompts if p.box is not None or p.mask is not None]
        note = ""
        if left:
            where = ", ".join(f"object {p.obj} on slice {p.z}" for p in left)
            note = (f" Left out ({where}): a box or a committed object cannot be written as "
                    "clicks.")
        if not clicks:
            return None, ("No prompt of the propagated objects is a click, so there is nothing "
                          "to export." + note)
        try:
            written = write_prompt_table(path, clicks)
        except NapariSamError as exc:
            return None, str(exc)
        n = sum(len(p.point_labels) for p in clicks)
        objects = len({p.obj for p in clicks})
        command = replay_options(self.owner, self._line if self.session is not None else None)
        replay = (
            f"; replay them with `napari-sam propagate {command[0]} --prompts "
            f"{written.name} -o labels.tif{command[1]}`." if command is not None else
            ". (SAM saw channel layers that no files hold: to replay them on the command "
            "line, save the channels as one (C, Z, Y, X) TIFF and give --channels, or one "
            "TIFF each and give --with.)"
        )
        return written, (
            f"Saved {n} click{'s' if n != 1 else ''} of {objects} object"
            f"{'s' if objects != 1 else ''} to {written}{replay}" + note
        )
