"""A batch of segmentation jobs on a Dask cluster.

:func:`run_batch` turns jobs (:func:`napari_sam.workflows.batch.plan_jobs`)
into tasks and follows them to the end:

- a 2D image (or, with ``split_stacks=False``, any file) is one task
  (:func:`~napari_sam.distributed.tasks.file_task`);
- a stack is one task per slice (each slice segmented exactly as the
  whole-stack segmentation does it, into a raw volume in the work folder),
  then, with slice linking, one task per slice computing its overlaps with
  the previous slice, the cheap id assignment on the client
  (:class:`~napari_sam.workflows.linking.SliceLinker`), and one task per slice
  writing its final ids (into the OME-Zarr output, or back to the client
  for a TIFF): :class:`~napari_sam.distributed.stack_job.StackJob`. The
  result equals the single-process result.
- a plane larger than SAM's input is one task per tile and a merge
  (:mod:`~napari_sam.distributed.tiled_job`);
- a time-lapse of stacks ``(T, Z, Y, X)`` is one task (its planes, tiled where
  large, one after the other on one worker).

This module keeps the run's bookkeeping: task submission and progress, the
results dispatched to their job, failures, outcomes and cancelling.

Outputs appear under their final names only when complete (one rename by the
client). Finished outputs (same input and recipe: the
:class:`~napari_sam.workflows.batch.Manifest`), finished slices (markers) and
the finished tiles of a 2D image segmented tile by tile (pieces stored by the
tile tasks: :mod:`~napari_sam.distributed.pieces`) are skipped by a rerun.
A file that fails is reported in the :class:`BatchReport` and the others go
on; a failure of the model itself (missing weights, wrong device) stops the
run. A worker that dies mid-task has its tasks retried on the others by Dask
(up to ``distributed.scheduler.allowed-failures`` times); every task is
deterministic, so the outputs are the same. Ctrl+C (or ``should_cancel``)
cancels every task of the run on the cluster.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_sam.distributed import tasks
from napari_sam.distributed.stack_job import StackJob
from napari_sam.distributed.tiled_job import TiledPlanes
from napari_sam.distributed.work import JobWork, tidy
from napari_sam.distributed.worker import ModelSpec, load_stats, register_model
from napari_sam.errors import (
    Cancelled,
    CheckpointError,
    DeviceError,
    NapariSamError,
    OutputFileError,
    UnknownModelTypeError,
    WeightsDownloadError,
)
from napari_sam.runtime.progress import CancelCheck, Progress, ProgressCallback
from napari_sam.workflows import io
from napari_sam.workflows.batch import FileResult, Manifest, Recipe, SegmentJob
from napari_sam.workflows.batch_tiles import plane_grid
from napari_sam.workflows.embeddings import default_contrast_limits
from napari_sam.workflows.zarr_io import finish_labels_zarr

__all__ = ["BatchReport", "Outcome", "run_batch"]

#: Failures of the model or the device: no file can succeed, so the run stops.
FATAL = (CheckpointError, UnknownModelTypeError, DeviceError, WeightsDownloadError)

CocoPlanes = list[tuple[int | None, tuple[int, int], list[dict]]]


@dataclass
class Outcome:
    """What became of one job.

    Attributes
    ----------
    job : SegmentJob
    status : {"done", "finished before", "failed"}
        ``"finished before"``: a complete output of the same input and recipe
        was there already (skipped).
    n_objects : int
    n_slices : int or None
    reason : str
        Why it failed (one sentence).
    seconds : float
        From its first task's submission to its output's rename.
    coco : list or None
        COCO annotations per plane (:func:`~napari_sam.workflows.batch.coco_planes`).
    resumed_slices : int
        Slices finished by an earlier run and not segmented again.
    resumed_tiles : int
        Tiles of a 2D image finished by an earlier run and not segmented again.
    table : pandas.DataFrame or None
        The output's object table, when asked for (``table=True``).
    n_frames : int or None
        Time points of a time-lapse of stacks (``n_slices`` is then per time point).
    """

    job: SegmentJob
    status: str
    n_objects: int = 0
    n_slices: int | None = None
    reason: str = ""
    seconds: float = 0.0
    coco: CocoPlanes | None = None
    resumed_slices: int = 0
    table: Any = None
    resumed_tiles: int = 0
    n_frames: int | None = None


@dataclass
class BatchReport:
    """Outcomes of all jobs (in job order) and the workers' model loads."""

    outcomes: list[Outcome]
    model_loads: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]


class _Runner:
    def __init__(
        self,
        client: Any,
        spec: ModelSpec,
        recipe: Recipe,
        *,
        coco: bool,
        table: bool,
        split_stacks: bool,
        force: bool,
        progress: ProgressCallback | None,
        should_cancel: CancelCheck | None,
        on_outcome: Callable[[Outcome], Any] | None,
    ) -> None:
        from distributed import as_completed

        self.client = client
        self.spec = spec
        self.recipe = recipe
        #: Each job's recipe identity (its own channel files with --with), set by ``start``.
        self.identities: dict[int, str] = {}
        self.coco = coco
        self.table = table
        self.tables: dict[int, Any] = {}
        self.finishing: dict[int, tuple] = {}  # stacks written, waiting for their table
        self.split_stacks = split_stacks
        self.force = force
        self.progress = progress
        self.should_cancel = should_cancel
        self.on_outcome = on_outcome
        self.token = uuid.uuid4().hex[:8]
        self.ac = as_completed()
        self.pending: dict[str, tuple[Any, int, str, int]] = {}
        self.outcomes: dict[int, Outcome] = {}
        self.stacks: dict[int, StackJob] = {}
        self.tiles = TiledPlanes(self)
        self.t0: dict[int, float] = {}
        self.jobs: list[SegmentJob] = []
        self.total = 0
        self.done = 0
        self.remaining: dict[int, int] = {}  # tasks a job still has to run

    # ----------------------------------------------------------------- bookkeeping
    def _notify(self, stage: str) -> None:
        if self.progress is not None:
            self.progress(Progress(self.done, self.total, stage, "tasks"))

    def _expect(self, index: int, n: int) -> None:
        self.total += n
        self.remaining[index] = self.remaining.get(index, 0) + n

    def _count(self, index: int, n: int = 1) -> None:
        self.done += n
        self.remaining[index] = self.remaining.get(index, 0) - n

    def _submit(
        self, index: int, kind: str, z: Any, fn: Callable, *args: Any, priority: int = 0
    ) -> None:
        where = "-".join(str(v) for v in z) if isinstance(z, tuple) else str(z)
        key = f"napari-sam-{kind}-{self.token}-{index}-{where}"
        future = self.client.submit(fn, *args, key=key, pure=False, priority=priority)
        self.pending[key] = (future, index, kind, z)
        self.ac.add(future)

    def _finish(self, outcome: Outcome, index: int) -> None:
        self.outcomes[index] = outcome
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    def _fail(self, index: int, reason: str) -> None:
        if index in self.outcomes:
            return
        for key, (future, i, _, _) in list(self.pending.items()):
            if i == index:
                future.cancel()
                del self.pending[key]
        left = self.remaining.get(index, 0)
        if left > 0:
            self._count(index, left)
        stack = self.stacks.pop(index, None)
        tiled = self.tiles.drop(index)
        self.finishing.pop(index, None)
        self.tables.pop(index, None)
        if stack is None and not tiled:  # a whole-file job: nothing worth resuming (a stack's
            JobWork(self.jobs[index]).remove()  # slices, a tiled image's tiles are kept)
        self._finish(Outcome(self.jobs[index], "failed", reason=reason), index)

    # ----------------------------------------------------------------- start
    def start(self, index: int, job: SegmentJob) -> None:
        self.t0[index] = time.perf_counter()
        recipe = self.recipe.for_input(job.source)  # its own channel files (--with)
        identity = self.identities[index] = recipe.identity()
        manifest = Manifest(job.output.parent)
        if not self.force and manifest.finished(job, identity, coco=self.coco):
            coco = manifest.coco(job) if self.coco else None
            n = manifest.n_objects(job) or 0
            self._finish(Outcome(job, "finished before", n, coco=coco), index)
            return
        try:
            # a file that may hold a stack is opened here (lazily: its metadata) to plan its
            # tasks; PNG / JPEG / BMP images are always 2D and read by their task alone
            image = None
            split = self.split_stacks and self.recipe.channels is None
            if split:
                image = self._open(job)
            work = JobWork(job)
            if self.force:
                work.remove()
            kept = work.prepare(identity)
            stack = image is not None and not image.rgb and image.data.ndim == 3
            # a time-lapse of stacks or a stack of RGB planes (or a time-lapse of them): one
            # task, the whole file
            frames = image is not None and image.data.ndim >= 4
            grid = None if image is None else plane_grid(image.spatial_shape[-2:], self.recipe)
            if frames:
                grid = None
            if stack and image.data.shape[0] > 1:
                st = StackJob(
                    self, index, job, work, tuple(int(v) for v in image.data.shape),
                    image.scale, image.unit, self._contrast(image), grid,
                )  # fmt: skip
                self.stacks[index] = st
                st.start(kept)
            elif grid is not None:
                self.tiles.start_file(index, grid, self._contrast(image), work)
            else:
                self._expect(index, 1)
                self._submit(
                    index, "file", 0, tasks.file_task,
                    self.spec, job, recipe, str(work.file_output), self.coco, self.table,
                )  # fmt: skip
        except NapariSamError as exc:
            self._fail(index, str(exc))

    def _open(self, job: SegmentJob) -> io.TiffImage | None:
        """The input, lazily (its metadata), where its tasks depend on its shape.

        PNG / JPEG / BMP images are always 2D: read here only when their size
        asks for tiles (their task reads them otherwise)."""
        if job.source.suffix.lower() in io.PILLOW_SUFFIXES:
            from PIL import Image

            try:
                with Image.open(job.source) as im:
                    width, height = im.size
            except (OSError, ValueError):
                return None  # the file task reports it
            if plane_grid((height, width), self.recipe) is None:
                return None
        return io.read_image(job.source, lazy=True, frames=True)

    def _contrast(self, image: io.TiffImage) -> tuple[float, float]:
        contrast = self.recipe.contrast or default_contrast_limits(image.data)
        return (float(contrast[0]), float(contrast[1]))

    def _done(
        self, index: int, n_objects: int, n_slices: int | None, coco: CocoPlanes | None,
        resumed: int = 0, n_frames: int | None = None,
    ) -> None:
        job = self.jobs[index]
        Manifest(job.output.parent).record(job, self.identities[index], coco, n_objects)
        JobWork(job).remove()
        seconds = time.perf_counter() - self.t0[index]
        self._finish(
            Outcome(job, "done", n_objects, n_slices, seconds=seconds, coco=coco,
                    resumed_slices=resumed, table=self.tables.pop(index, None),
                    resumed_tiles=self.tiles.resumed.pop(index, 0), n_frames=n_frames),
            index,
        )  # fmt: skip

    # ----------------------------------------------------------------- events
    def handle(self, future: Any) -> None:
        entry = self.pending.pop(future.key, None)
        if entry is None:  # cancelled with its job
            return
        _, index, kind, z = entry
        if future.status != "finished":
            if future.status == "cancelled":
                return
            self._count(index)
            try:
                exc = future.exception()
            except Exception as lost:  # a future whose data was lost with its worker
                exc = lost
            self._task_failed(index, exc)
            return
        result = future if kind == "tile" else future.result()  # tiles go to their merge
        self._count(index)
        try:
            self._dispatch(index, kind, z, result)
        except NapariSamError as exc:
            self._fail(index, str(exc))

    def _task_failed(self, index: int, exc: BaseException) -> None:
        from distributed.scheduler import KilledWorker

        if isinstance(exc, FATAL):
            raise exc
        if isinstance(exc, KilledWorker):
            reason = (
                f"{self.jobs[index].name}: the workers segmenting it stopped several times "
                "(out of memory, or killed); see the workers' logs."
            )
        elif isinstance(exc, NapariSamError):
            reason = str(exc)
        else:
            reason = f"{self.jobs[index].name}: unexpected error ({type(exc).__name__}: {exc})."
        self._fail(index, reason)

    def _dispatch(self, index: int, kind: str, z: int, result: Any) -> None:
        if kind in ("file", "tiledfile"):
            self._finish_file(index, result)
            return
        if kind == "tile":
            self.tiles.tile_done(index, z[0], z[1], result)
            return
        if kind == "table":
            self.tables[index] = result
            self._done(index, *self.finishing.pop(index))
            return
        st = self.stacks.get(index)
        if st is not None and st.on_result(kind, z, result):
            self.stacks.pop(index, None)

    def _finish_file(self, index: int, result: FileResult) -> None:
        job = self.jobs[index]
        work = JobWork(job)
        if job.is_zarr:
            finish_labels_zarr(work.file_output, job.output)
        else:
            try:
                os.replace(work.file_output, job.output)
            except OSError as exc:
                raise OutputFileError(
                    f"{job.output} cannot be written ({exc.strerror or exc})."
                ) from exc
        if result.table is not None:
            self.tables[index] = result.table
        self._done(index, result.n_objects, result.n_slices, result.coco,
                   n_frames=result.n_frames)

    # ----------------------------------------------------------------- run
    def run(self, jobs: Sequence[SegmentJob]) -> dict[int, Outcome]:
        self.jobs = list(jobs)
        try:
            for index, job in enumerate(self.jobs):
                self.start(index, job)
            self._notify("segmenting")
            for future in self.ac:
                if self.should_cancel is not None and self.should_cancel():
                    raise Cancelled("The batch segmentation was cancelled.")
                self.handle(future)
                self._notify("segmenting")
        except BaseException:
            self.cancel()
            raise
        return self.outcomes

    def cancel(self) -> None:
        """Cancel every task of the run; drop the work of unfinished whole-file jobs (only
        a stack's finished slices and a tiled image's finished tiles are worth keeping for
        the next run)."""
        futures = [f for f, *_ in self.pending.values()]
        unfinished = {i for _, i, kind, _ in self.pending.values() if kind == "file"}
        self.pending.clear()
        if futures:
            with contextlib.suppress(Exception):
                self.client.cancel(futures, force=True)
        for index in unfinished:
            JobWork(self.jobs[index]).remove()


def run_batch(
    client: Any,
    jobs: Sequence[SegmentJob],
    spec: ModelSpec,
    recipe: Recipe,
    *,
    coco: bool = False,
    table: bool = False,
    split_stacks: bool = True,
    force: bool = False,
    torch_threads: int | None = None,
    new_folders: Sequence[Path] = (),
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    on_outcome: Callable[[Outcome], Any] | None = None,
) -> BatchReport:
    """Segment ``jobs`` on the cluster of ``client``.

    Parameters
    ----------
    client : distributed.Client
    jobs : sequence of SegmentJob
    spec : ModelSpec
        The model every worker loads once (:class:`~napari_sam.distributed.worker.ModelPlugin`).
    recipe : Recipe
        Settings, contrast and options of the segmentation.
    coco : bool
        Return each output's COCO annotations (in :attr:`Outcome.coco`).
    table : bool
        Return each output's object table (in :attr:`Outcome.table`), made by a
        worker: with the labels of a file task, or read from a finished stack.
    split_stacks : bool
        One task per slice of a stack (default), or one per file (for modes
        that must see the whole stack).
    force : bool
        Segment again even where a finished output of the same recipe exists.
    torch_threads : int, optional
        Torch threads per worker (a local cluster splits the cores).
    new_folders : sequence of Path
        Output folders this run creates: removed again at the end if empty.
    progress : callable, optional
        Called with :class:`~napari_sam.runtime.progress.Progress` (tasks done of all).
    should_cancel : callable, optional
        Polled after each finished task; True cancels the run (:class:`Cancelled`).
    on_outcome : callable, optional
        Called with each :class:`Outcome` as soon as it is known.

    Returns
    -------
    BatchReport

    Raises
    ------
    CheckpointError, UnknownModelTypeError, DeviceError, WeightsDownloadError
        When the model cannot be loaded on a worker (the run stops).
    Cancelled, KeyboardInterrupt
        The run's tasks are cancelled on the cluster; finished outputs and
        finished slices are kept for the next run.
    """
    plugin = register_model(client, spec, torch_threads)
    runner = _Runner(
        client,
        spec,
        recipe,
        coco=coco,
        table=table,
        split_stacks=split_stacks,
        force=force,
        progress=progress,
        should_cancel=should_cancel,
        on_outcome=on_outcome,
    )
    try:
        outcomes = runner.run(jobs)
    finally:
        created = {Path(p) for p in new_folders}
        for folder in {job.output.parent for job in jobs}:
            tidy(folder, folder in created)
    loads: dict[str, dict[str, Any]] = {}
    with contextlib.suppress(Exception):
        loads = client.run(load_stats, name=plugin.name)
    return BatchReport([outcomes[i] for i in range(len(jobs))], loads)
