"""3D stacks in interactive segmentation: precomputing embeddings and propagating objects.

:class:`StackController` belongs to an
:class:`~napari_sam._widgets.interactive.controller.InteractiveController`. It
encodes every slice of the stack (kept in memory and, if asked, on disk;
resumable), and follows the preview's objects — or committed objects of the
current slice — up and down the stack
(:func:`napari_sam.workflows.propagation.propagate`) in a job, writing the
result into the output labels at the end as ONE undo step, unless the image or
the output layer changed meanwhile. The summary of the last run (why each
object stopped, and where) stays in :attr:`StackController.summary`.

Two propagation methods (:attr:`StackController.method`): "slice-to-slice
(SAM 1)" above, and "SAM 2 memory" with a SAM 2.1 model
(:mod:`napari_sam._widgets.interactive.memory`: all objects both ways with
SAM 2's memory, corrections on other slices, prompts exportable as a CSV
prompt table). A SAM 1 model always uses slice-to-slice; a SAM 2.1 model may
use either (slice-to-slice then decodes with SAM 2's image predictor).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from napari_sam._widgets.interactive.commit import shape_mismatch
from napari_sam._widgets.interactive.memory import MEMORY, METHODS, SLICES, MemoryStack, wants_sam2
from napari_sam._widgets.interactive.stack_write import (
    PropagationRun,
    parse_ids,
    write_propagation,
)
from napari_sam._widgets.jobs import Job
from napari_sam._widgets.notices import Notice
from napari_sam.errors import Cancelled, EmbeddingCacheError, PromptError, PropagationError
from napari_sam.workflows import propagation as logic
from napari_sam.workflows.embeddings import StackEmbeddings
from napari_sam.workflows.memory_propagation import MemoryPropagationResult
from napari_sam.workflows.propagation import PropagationResult, PropagationSettings

__all__ = ["MEMORY", "METHODS", "SLICES", "StackController", "parse_ids"]

#: An embedding's size in memory (float32, 256 x 64 x 64), to say how many slices fit.
_EMBEDDING_BYTES = 4 * 256 * 64 * 64


class StackController:
    """Precompute and propagate on the interactive controller's stack.

    Attributes
    ----------
    method : str
        :data:`MEMORY` ("SAM 2 memory", used with SAM 2.1 models) or :data:`SLICES`.
    settings : PropagationSettings
        Prompts and stopping thresholds of slice-to-slice propagation.
    memory : MemoryStack
        The SAM 2 memory session, its settings (``memory.settings``) and export.
    z_range : (int, int)
        First and last slice objects may extend to.
    ids_text : str
        Committed object ids to propagate (empty: all of the current slice).
    summary : str
        What the last propagation did (kept until the next run).
    last_result : PropagationResult or None
    """

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.settings = PropagationSettings()
        self.method = MEMORY
        self.memory = MemoryStack(owner)
        self.z_range = (0, 0)
        self.ids_text = ""
        self.summary = ""
        self.last_result: PropagationResult | None = None
        self.pending: str | None = None  # started once the model has loaded
        self._run: PropagationRun | None = None

    @property
    def running(self) -> bool:
        return self.owner.runner.running("precompute") or self.owner.runner.running("propagate")

    def follow_layout(self) -> None:
        """The image changed: the slice range is the whole stack."""
        layout = self.owner.layout
        n = layout.n_slices if layout is not None and layout.is_stack else 1
        if self.z_range[1] != n - 1 or self.z_range[0] > n - 1:
            self.z_range = (0, n - 1)
            self.owner.changed("stack")

    def set_settings(self, **changes: Any) -> None:
        """Change propagation settings (raises PropagationError for bad values)."""
        self.settings = replace(self.settings, **changes)

    def set_memory_settings(self, **changes: Any) -> None:
        """Change SAM 2 memory settings (raises PropagationError for bad values)."""
        self.memory.settings = replace(self.memory.settings, **changes)

    def set_method(self, method: str) -> None:
        """Propagate with :data:`MEMORY` ("SAM 2 memory") or :data:`SLICES`."""
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}.")
        self.method = method
        self.owner.changed("stack")

    def method_in_use(self) -> str:
        """The method Propagate uses now: the chosen one with a SAM 2.1 model, else
        slice-to-slice."""
        return self.method if wants_sam2(self.owner) else SLICES

    # ------------------------------------------------------------------ readiness
    def _ready(self, what: str) -> bool:
        """Whether a long job can start now (starting the model load if needed)."""
        owner = self.owner
        if owner.no_image():
            return False
        if not owner.layout.is_stack:
            owner.info(f"{what.capitalize()} works on 3D stacks (Z, Y, X).")
            return False
        if self.running:
            owner.info("Precomputing or propagation is already running; wait or press Cancel.")
            return False
        if owner.model is None:
            if owner.session.failed_key == owner.session.request.key():
                owner.set_status("The model could not be loaded; press “Load model” to retry.")
                return False
            self.pending = what
            owner.load_model()
            return False
        return True

    def model_ready(self) -> None:
        """The model was loaded: start what was waiting for it."""
        pending, self.pending = self.pending, None
        if pending == "precompute":
            self.precompute()
        elif pending == "propagate":
            self.propagate()

    def _embeddings(self) -> StackEmbeddings:
        owner = self.owner
        disk, problem = owner.embeddings.disk()
        if problem is not None:
            owner.notify(problem)
            owner.changed("disk")
        return StackEmbeddings(
            owner.model.sam,
            owner.image.data,
            model_id=owner.model.model_id,
            contrast=tuple(float(c) for c in owner.image.contrast_limits),
            store=owner.embeddings.store,
            disk=disk,
        )

    def _job(self, kind: str, text: str, run: Any, done: Any) -> Job:
        return Job(kind, text, run, done=done, failed=self._failed, finished=self._finished,
                   unit="slices")

    # ------------------------------------------------------------------ precompute
    def precompute(self) -> None:
        """Encode every slice of the stack that is not cached yet, in a job."""
        if not self._ready("precompute"):
            return
        owner = self.owner
        embeddings = self._embeddings()
        if embeddings.disk is None:
            fits = owner.embeddings.store.max_bytes // _EMBEDDING_BYTES
            if embeddings.n_slices > fits:
                owner.warn(
                    f"Only about {fits} of the {embeddings.n_slices} slices fit in the memory "
                    "cache; tick “Keep embeddings on disk” to keep them all."
                )
        n = embeddings.n_slices

        def done(encoded: int) -> None:
            owner.set_status(
                f"Embeddings of all {n} slices are ready ({encoded} encoded now, "
                f"{n - encoded} were cached)."
            )

        text = f"Encoding the slices of “{owner.image.name}”…"
        owner.set_status(text)
        owner.runner.start(self._job(
            "precompute", text,
            lambda progress, cancel: embeddings.precompute(progress=progress, should_cancel=cancel),
            done,
        ))
        owner.changed("busy")

    # ------------------------------------------------------------------ propagate
    def propagate(self) -> None:
        """Propagate the preview's objects, or committed ones, through the stack, with the
        method in use (:meth:`method_in_use`; the key Shift+F does this)."""
        owner = self.owner
        owner.flush()
        if not self._ready("propagate"):
            return
        if owner.computing():
            owner.info("The preview is still being computed; try again in a moment.")
            return
        k = owner.current_slice()
        if k is None:
            owner.info("The current position is outside the stack.")
            return
        labels = owner.output.current
        problem = shape_mismatch(labels, owner.layout) if labels is not None else None
        if problem is not None:
            owner.notify(problem)
            return
        lo, hi = self.z_range
        if not lo <= k <= hi:
            owner.error(
                f"The slice range {lo}–{hi} does not include the current slice {k}; widen it."
            )
            return
        if self.method_in_use() == MEMORY:
            self._propagate_memory(k, labels)
            return
        from_preview = bool(owner.preview.objects) and owner.preview.slice == k
        ids: list[int] | None = None
        if from_preview:
            seeds = owner.preview.seeds(k)
        else:
            if labels is None:
                owner.info(
                    "Nothing to propagate: place prompts for a preview, or commit an object "
                    "on this slice first."
                )
                return
            plane = np.asarray(labels.data[k])
            present = [int(i) for i in np.unique(plane) if i != 0]
            try:
                ids = parse_ids(self.ids_text, present, k)
            except ValueError as exc:
                owner.error(str(exc))
                return
            seeds = [plane == i for i in ids]
        if not seeds:
            owner.info(f"Nothing to propagate: there is no object on slice {k}.")
            return
        settings = self.settings
        self._run = PropagationRun(owner.image, owner.image.data, labels, ids, k, from_preview,
                                   settings)
        model, embeddings, stack = owner.model.sam, self._embeddings(), np.stack(seeds)

        def run(progress: Any, should_cancel: Any) -> PropagationResult:
            return logic.propagate(model, embeddings, stack, k, z_range=(lo, hi),
                                   settings=settings, progress=progress,
                                   should_cancel=should_cancel)

        n = len(seeds)
        text = f"Propagating {n} object{'s' if n > 1 else ''} from slice {k} (slices {lo}–{hi})…"
        self.summary = ""
        owner.changed("summary")
        owner.set_status(text)
        owner.runner.start(self._job("propagate", text, run, self._write))
        owner.changed("busy")

    def _propagate_memory(self, k: int, labels: Any) -> None:
        """Follow the preview's objects (new ones, or corrections of followed ones), or the
        committed objects of slice ``k``, with SAM 2's memory, in a job."""
        owner = self.owner
        lo, hi = self.z_range
        shape = owner.layout.plane_shape
        plane = np.asarray(labels.data[k]) if labels is not None else np.zeros(shape, np.uint32)
        embeddings = self._embeddings()
        try:
            session = self.memory.session_for(embeddings, (lo, hi), labels)
        except PropagationError as exc:
            owner.error(str(exc))
            return
        from_preview = bool(owner.preview.objects) and owner.preview.slice == k
        if not from_preview and labels is None:
            owner.info(
                "Nothing to propagate: place prompts for a preview, or commit an object on "
                "this slice first."
            )
            return
        try:
            prompts = []
            if from_preview:
                top = int(labels.data.max()) if labels is not None and labels.data.size else 0
                next_id = max([top, *session.object_ids]) + 1
                prompts = self.memory.preview_prompts(session, k, plane, next_id, self.ids_text)
            # committed objects of the slice (all, or those named) that SAM 2 does not follow
            # yet; without a preview, followed ones too (a mask prompt corrects them)
            present = [int(i) for i in np.unique(plane) if i != 0]
            taken = {p.obj for p in prompts}
            if from_preview:
                present = [i for i in present if i not in session.object_ids]
                named = [i for i in self.memory.named(self.ids_text) if i in present]
                ids = named or ([] if self.memory.named(self.ids_text) else present)
            else:
                ids = parse_ids(self.ids_text, present, k)
            prompts += self.memory.mask_prompts(plane, [i for i in ids if i not in taken], k)
        except (ValueError, PromptError) as exc:
            owner.error(str(exc))
            return
        if not prompts:
            owner.info(f"Nothing to propagate: there is no object on slice {k}.")
            return
        settings = self.memory.settings
        self._run = PropagationRun(owner.image, owner.image.data, labels, None, k, from_preview,
                                   settings, memory=True)

        def run(progress: Any, should_cancel: Any) -> MemoryPropagationResult:
            return session.correct(prompts, progress=progress, should_cancel=should_cancel)

        n = len({p.obj for p in prompts})
        text = (f"Propagating {n} object{'s' if n > 1 else ''} from slice {k} with SAM 2 "
                f"memory (slices {lo}–{hi})…")
        self.summary = ""
        owner.changed("summary")
        owner.set_status(text)
        owner.runner.start(self._job("propagate", text, run, self._write))
        owner.changed("busy")

    def export_prompts(self, path: str) -> bool:
        """Save the clicks of the objects followed with SAM 2 memory as a CSV prompt table
        (``z,y,x,label,object``, as ``napari-sam propagate --prompts`` reads); True if a
        file was written."""
        if self.running:
            self.owner.info("Propagation is running; export the prompts when it has finished.")
            return False
        written, sentence = self.memory.export(path)
        (self.owner.info if written is not None else self.owner.error)(sentence)
        return written is not None

    def cancel(self) -> None:
        """Stop precomputing or propagation (slices already encoded are kept)."""
        if self.running:
            self.owner.runner.cancel("precompute")
            self.owner.runner.cancel("propagate")
            self.owner.set_status("Cancelling…")

    # ------------------------------------------------------------------ results
    def _failed(self, exc: BaseException) -> Notice | None:
        self.owner.set_status(str(exc))
        if isinstance(exc, EmbeddingCacheError) and not isinstance(exc, Cancelled):
            self.owner.changed("disk")
            return self.owner.embeddings.disk_failed(exc)
        return None

    def _finished(self) -> None:
        self._run = None
        self.owner.changed("busy")

    def _write(self, result: PropagationResult) -> None:
        """Write a finished propagation into the output labels as one undo step."""
        write_propagation(self, self._run, result)
