"""The end of a propagation in the interactive dock: checks, ONE undo step, the summary.

:func:`write_propagation` is what a
:class:`~napari_sam._widgets.interactive.stack.StackController` runs when its
propagation job has finished: it checks that the image and the output layer
are still those the run started from (:class:`PropagationRun`), writes the
result into the output labels as one undo step (never over another object
unless the user asked), clears the propagated preview, and keeps the summary
(why each object stopped, and where) on the controller. :func:`parse_ids`
reads the "Object ids" the user typed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

import numpy as np

from napari_sam._widgets.interactive.commit import ensure_labels
from napari_sam._widgets.interactive.report import propagation_summary
from napari_sam._widgets.layers import write_objects
from napari_sam._widgets.objects_table import refresh_features
from napari_sam.errors import NapariSamError
from napari_sam.workflows import propagation as logic
from napari_sam.workflows.propagation import PropagationResult

__all__ = ["PropagationRun", "parse_ids", "write_propagation"]


def parse_ids(raw: str, present: list[int], k: Any) -> list[int]:
    """The object ids typed by the user (all of ``present`` if none); ValueError with a
    sentence for words that are not ids, or ids not on slice ``k``."""
    words = raw.replace(",", " ").split()
    if not words:
        return present
    try:
        ids = [int(w) for w in words]
    except ValueError:
        raise ValueError(
            f"Object ids must be whole numbers separated by commas, not “{raw}”."
        ) from None
    absent = [i for i in ids if i not in present]
    if absent:
        many = len(absent) > 1
        raise ValueError(
            f"Object{'s' if many else ''} {', '.join(map(str, absent))} "
            f"{'are' if many else 'is'} not on slice {k}; go to a slice where "
            "it is, or leave the ids empty for all objects of this slice."
        )
    return list(dict.fromkeys(ids))


@dataclass
class PropagationRun:
    """What a running propagation was started from (checked again when it ends)."""

    image: Any
    data: Any  # the image data the propagation was computed from
    labels: Any  # the output Labels layer, or None to create one at the end
    ids: list[int] | None  # ids of committed objects; None for the preview's (new ids)
    k: int
    from_preview: bool
    settings: Any  # PropagationSettings, or MemoryPropagationSettings
    memory: bool = False
    line: Any = None  # the PlaneLine followed (a stack, or one axis of a (T, Z, ...) image)


def write_propagation(stack: Any, run: PropagationRun | None, result: PropagationResult) -> None:
    """Write a finished propagation of ``stack`` (a StackController) into the output labels
    as one undo step, or say in one sentence why nothing was written."""
    owner = stack.owner
    stack.last_result = result
    if run is None or owner.closed:
        return
    if run.image not in owner.viewer.layers or run.image.data is not run.data:
        owner.error(
            f"The image “{run.image.name}” was closed or changed during the propagation; "
            "nothing was written."
        )
        return
    labels = run.labels
    if labels is not None and labels not in owner.viewer.layers:
        owner.error(
            f"The labels layer “{labels.name}” was removed during the propagation; "
            "nothing was written."
        )
        return
    if labels is None:
        if run.image is not owner.image:
            owner.error("The image changed during the propagation; nothing was written.")
            return
        labels = ensure_labels(owner.viewer, owner.image, owner.layout, None,
                               owner.images.labels_name(owner.image))
        owner.output.select(labels)
        owner.changed("output")
        if run.memory:
            stack.memory.adopt(labels)
    line = run.line
    full = tuple(line.shape) if line is not None else result.shape
    if labels.data.shape != full or (line is not None and line.view(labels.data).shape
                                     != result.shape):
        owner.error(
            f"The labels layer “{labels.name}” has shape {labels.data.shape}, but the "
            f"propagation covers {full}; nothing was written."
        )
        return
    view = line.view(labels.data) if line is not None else labels.data
    overwrite = owner.overwrite
    if run.memory:
        result = stack.memory.changed_part(result)
        run = replace(run, ids=list(result.object_ids))
        plan = stack.memory.plan(view, result, overwrite)
    else:
        next_id = int(np.max(labels.data)) + 1 if labels.data.size else 1
        plan = logic.plan_write(view, result, run.ids, next_id=next_id, overwrite=overwrite)
    note = write_objects(labels, line.lift(plan) if line is not None else plan)
    if note:
        owner.info(note)
    try:  # the object table: the propagated objects measured again, new ones "propagated"
        refresh_features(labels, owner.image, {int(oid): {} for oid, _ in plan if oid},
                         "propagated",
                         owner.channels if owner.channels.active_for(owner.image) else None)
    except NapariSamError as exc:  # the objects are written; only the table is missing
        owner.warn(f"The object table could not be updated: {exc}")
    if run.from_preview:
        if plan:
            labels.selected_label = max(int(np.max(labels.data)), *(oid for oid, _ in plan)) + 1
        if owner.preview.slice == (line.key() if line is not None else run.k):
            owner.clear_slice()
    view = line.view(labels.data) if line is not None else labels.data  # after the write
    _report(stack, result, run, plan, SimpleNamespace(data=view), overwrite)


def _report(stack: Any, result: PropagationResult, run: PropagationRun, plan: list,
            labels: Any, overwrite: bool) -> None:
    """``plan`` and ``labels.data`` along the line (``(k, rows, cols)``, ``(N, H, W)``)."""
    ids = list(run.ids) if run.ids is not None else _new_ids(result, plan)
    writes = [(oid, index) for oid, index in plan if oid != 0]
    if writes:
        zs = np.concatenate([index[0] for _, index in writes])
        shown = list(dict.fromkeys(oid for oid, _ in writes))
        lo, hi = int(zs.min()), int(zs.max())
        span = run.line.describe(lo, hi) if run.line is not None else f"slices {lo}–{hi}"
        head = (
            f"Propagated object{'s' if len(shown) > 1 else ''} "
            f"{', '.join(map(str, shown))} over {span} "
            "(Ctrl+Z undoes it)."
        )
    else:
        head = "Propagation wrote nothing new."
    axis = run.line.sentence_axis() if run.line is not None else None
    body = propagation_summary(result, ids, labels, run.settings, overwrite, axis)
    stack.summary = f"{head}\n{body}"
    stack.owner.changed("summary")
    stack.owner.set_status(head)
    stack.owner.info(stack.summary)  # the whole summary, in one notification


def _new_ids(result: PropagationResult, plan: list) -> list[int | None]:
    """The new id of each propagated preview object, None for one left without voxels.

    :func:`~napari_sam.workflows.propagation.plan_write` numbers the objects that
    own voxels in order; an entry belongs to the next object whose mask holds its
    first voxel.
    """
    ids: list[int | None] = []
    pointer = 0
    for obj in result.objects:
        oid = None
        if pointer < len(plan):
            candidate, (zs, rows, cols) = plan[pointer]
            mask = obj.masks.get(int(zs[0]))
            if mask is not None and mask[rows[0], cols[0]]:
                oid, pointer = int(candidate), pointer + 1
        ids.append(oid)
    return ids
