"""Stacks in interactive segmentation: precomputing embeddings and propagating objects.

:class:`StackController` belongs to an
:class:`~napari_sam._widgets.interactive.controller.InteractiveController`. It
encodes every slice of the stack (kept in memory and, if asked, on disk;
resumable), and follows the preview's objects — or committed objects of the
current slice — up and down the stack
(:func:`napari_sam.workflows.propagation.propagate`) in a job, writing the
result into the output labels at the end as ONE undo step, unless the image or
the output layer changed meanwhile
(:mod:`~napari_sam._widgets.interactive.stack_write`). The summary of the last
run (why each object stopped, and where) stays in :attr:`StackController.summary`.

An image with more leading axes, e.g. ``(T, Z, Y, X)``, is followed along one
chosen axis (:meth:`StackController.set_axis`: z by default, the axis right
before the plane; t to follow objects in time) through the plane the viewer
shows, the other axes staying where the viewer is
(:mod:`~napari_sam._widgets.interactive.stack_line`); the labels keep the
image's full shape. Channel layers chosen for SAM apply to propagation too.

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
from napari_sam._widgets.interactive.stack_line import (
    PlaneLine,
    axis_choices,
    current_line,
    default_axis,
    follows,
    line_embeddings,
    precompute_job,
)
from napari_sam._widgets.interactive.stack_write import (
    PropagationRun,
    parse_ids,
    write_propagation,
)
from napari_sam._widgets.jobs import Job
from napari_sam._widgets.model_session import LOAD_FAILED
from napari_sam._widgets.notices import Notice
from napari_sam.errors import (
    Cancelled,
    EmbeddingCacheError,
    ImageFormatError,
    PromptError,
    PropagationError,
)
from napari_sam.workflows import propagation as logic
from napari_sam.workflows.embeddings import StackEmbeddings
from napari_sam.workflows.memory_propagation import MemoryPropagationResult
from napari_sam.workflows.propagation import PropagationResult, PropagationSettings

__all__ = ["MEMORY", "METHODS", "SLICES", "StackController", "parse_ids"]

class StackController:
    """Precompute and propagate on the interactive controller's stack, or along one axis of
    an image with more leading axes (T, Z, Y, X).

    Attributes
    ----------
    method : str
        :data:`MEMORY` ("SAM 2 memory", used with SAM 2.1 models) or :data:`SLICES`.
    settings : PropagationSettings
        Prompts and stopping thresholds of slice-to-slice propagation.
    memory : MemoryStack
        The SAM 2 memory session, its settings (``memory.settings``) and export.
    axis : int or None
        The leading axis objects follow (:meth:`axis_in_use`; None: the default).
    z_range : (int, int)
        First and last position along that axis objects may extend to.
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
        self.axis: int | None = None
        self.z_range = (0, 0)
        self.ids_text = ""
        self.summary = ""
        self.last_result: PropagationResult | None = None
        self.pending: str | None = None  # started once the model has loaded
        self._run: PropagationRun | None = None
        self._shape: tuple | None = None  # the label shape the axis choice belongs to

    @property
    def running(self) -> bool:
        return self.owner.runner.running("precompute") or self.owner.runner.running("propagate")

    def follow_layout(self) -> None:
        """The image changed: the default axis (for a new shape), the range its whole length."""
        layout = self.owner.layout
        shape = tuple(layout.spatial_shape) if follows(layout) else None
        if shape != self._shape:
            self._shape, self.axis = shape, None
        n = self.length()
        if self.z_range[1] != n - 1 or self.z_range[0] > n - 1:
            self.z_range = (0, n - 1)
            self.owner.changed("stack")

    def axis_choices(self) -> list[tuple[int, str]]:
        """The leading axes objects can follow, with their names (empty: none)."""
        return axis_choices(self.owner)

    def axis_in_use(self) -> int | None:
        """The chosen axis, else the default (Z); None when the image has several leading
        axes besides and none was chosen."""
        layout = self.owner.layout
        if not follows(layout):
            return None
        return self.axis if self.axis is not None else default_axis(layout)

    def length(self) -> int:
        """Positions along the axis in use (1 without one)."""
        axis = self.axis_in_use()
        return 1 if axis is None else int(self.owner.layout.spatial_shape[axis])

    def set_axis(self, axis: int) -> None:
        """Follow objects along leading ``axis`` (e.g. 0 for T of a (T, Z, Y, X) image)."""
        choices = dict(self.axis_choices())
        if int(axis) not in choices:
            raise ValueError(f"axis must be one of {sorted(choices)}, not {axis!r}.")
        self.axis = int(axis)
        self.z_range = (0, self.length() - 1)
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
    def _ready(self, what: str) -> PlaneLine | None:
        """The line a long job works on, if it can start now (starting the model load if
        needed); None after saying why not."""
        owner = self.owner
        if owner.no_image():
            return None
        if not follows(owner.layout):
            owner.info(f"{what.capitalize()} works on 3D stacks (Z, Y, X) and images with "
                       "more axes (T, Z, Y, X).")
            return None
        if self.axis_in_use() is None:
            names = ", ".join(name for _, name in self.axis_choices())
            owner.error(f"This image has several axes besides Y and X ({names}); choose the "
                        "one to follow objects along in “Propagate along” first.")
            return None
        line = current_line(owner, self.axis_in_use())
        if line is None:
            owner.info("The current position is outside the image.")
            return None
        if self.running:
            owner.info("Precomputing or propagation is already running; wait or press Cancel.")
            return None
        if owner.model is None:
            if owner.session.failed_key == owner.session.request.key():
                owner.set_status(LOAD_FAILED)
                return None
            self.pending = what
            owner.load_model()
            return None
        return line

    def model_ready(self) -> None:
        """The model was loaded: start what was waiting for it."""
        pending, self.pending = self.pending, None
        if pending == "precompute":
            self.precompute()
        elif pending == "propagate":
            self.propagate()

    def _embeddings(self, line: PlaneLine) -> StackEmbeddings | None:
        owner = self.owner
        disk, problem = owner.embeddings.disk()
        if problem is not None:
            owner.notify(problem)
            owner.changed("disk")
        try:
            return line_embeddings(owner, line, disk)
        except ImageFormatError as exc:
            owner.error(str(exc))
            return None

    def _job(self, kind: str, text: str, run: Any, done: Any) -> Job:
        return Job(kind, text, run, done=done, failed=self._failed, finished=self._finished,
                   unit="slices")

    # ------------------------------------------------------------------ precompute
    def precompute(self) -> None:
        """Encode every slice of the stack (every plane along the axis in use through the
        plane shown) that is not cached yet, in a job."""
        line = self._ready("precompute")
        embeddings = self._embeddings(line) if line is not None else None
        if embeddings is None:
            return
        job = precompute_job(self.owner, line, embeddings, self._job)
        self.owner.set_status(job.text)
        self.owner.runner.start(job)
        self.owner.changed("busy")

    # ------------------------------------------------------------------ propagate
    def propagate(self) -> None:
        """Propagate the preview's objects, or committed ones, through the stack (along the
        axis in use, the other axes where the viewer is), with the method in use
        (:meth:`method_in_use`; the key Shift+F does this)."""
        owner = self.owner
        owner.flush()
        line = self._ready("propagate")
        if line is None:
            return
        if owner.computing():
            owner.info("The preview is still being computed; try again in a moment.")
            return
        labels = owner.output.current
        problem = shape_mismatch(labels, owner.layout) if labels is not None else None
        if problem is not None:
            owner.notify(problem)
            return
        (lo, hi), k = self.z_range, line.k
        if not lo <= k <= hi:
            owner.error(line.outside_range(lo, hi))
            return
        embeddings = self._embeddings(line)
        if embeddings is None:
            return
        plane = (np.asarray(line.view(labels.data)[k]) if labels is not None
                 else np.zeros(owner.layout.plane_shape, np.uint32))
        from_preview = bool(owner.preview.objects) and owner.preview.slice == line.key()
        if not from_preview and labels is None:
            owner.info("Nothing to propagate: place prompts for a preview, or commit an object "
                       "on this slice first.")
            return
        try:
            if self.method_in_use() == MEMORY:
                job = self._memory_job(line, embeddings, labels, plane, from_preview)
            else:
                job = self._slices_job(line, embeddings, labels, plane, from_preview)
        except (ValueError, PromptError, PropagationError) as exc:
            owner.error(str(exc))
            return
        if job is None:
            owner.info(f"Nothing to propagate: there is no object on {line.outside()}.")
            return
        self.summary = ""
        owner.changed("summary")
        owner.set_status(job.text)
        owner.runner.start(job)
        owner.changed("busy")

    def _slices_job(self, line: PlaneLine, embeddings: Any, labels: Any, plane: np.ndarray,
                    from_preview: bool) -> Job | None:
        """Slice-to-slice propagation (SAM 1's rule) of the preview's objects, or of the
        committed objects of the plane shown, as a job (None: no object)."""
        owner, (lo, hi), k = self.owner, self.z_range, line.k
        ids: list[int] | None = None
        if from_preview:
            seeds = owner.preview.seeds(line.key())
        else:
            present = [int(i) for i in np.unique(plane) if i != 0]
            ids = parse_ids(self.ids_text, present, line.key())
            seeds = [plane == i for i in ids]
        if not seeds:
            return None
        settings = self.settings
        self._run = PropagationRun(owner.image, owner.image.data, labels, ids, k, from_preview,
                                   settings, line=line)
        model, stack = owner.model.sam, np.stack(seeds)

        def run(progress: Any, should_cancel: Any) -> PropagationResult:
            return logic.propagate(model, embeddings, stack, k, z_range=(lo, hi),
                                   settings=settings, progress=progress,
                                   should_cancel=should_cancel)

        n = len(seeds)
        return self._job("propagate", f"Propagating {n} object{'s' if n > 1 else ''} from "
                         f"{line.outside()} ({line.describe(lo, hi)})…", run, self._write)

    def _memory_job(self, line: PlaneLine, embeddings: Any, labels: Any, plane: np.ndarray,
                    from_preview: bool) -> Job | None:
        """Follow the preview's objects (new ones, or corrections of followed ones), or the
        committed objects of the plane shown, with SAM 2's memory, as a job (None: no
        object)."""
        owner, (lo, hi), k = self.owner, self.z_range, line.k
        session = self.memory.session_for(embeddings, (lo, hi), labels, line)
        prompts = self.memory.prompts_for(session, line, plane, from_preview, self.ids_text,
                                          labels)
        if not prompts:
            return None
        self._run = PropagationRun(owner.image, owner.image.data, labels, None, k, from_preview,
                                   self.memory.settings, memory=True, line=line)

        def run(progress: Any, should_cancel: Any) -> MemoryPropagationResult:
            return session.correct(prompts, progress=progress, should_cancel=should_cancel)

        n = len({p.obj for p in prompts})
        return self._job("propagate", f"Propagating {n} object{'s' if n > 1 else ''} from "
                         f"{line.outside()} with SAM 2 memory ({line.describe(lo, hi)})…",
                         run, self._write)

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

