"""The tasks of one stack in a batch run on a Dask cluster, phase by phase.

A stack is segmented slice by slice, exactly as the whole-stack segmentation
does it:

1. **slices**: one task per slice (:func:`~napari_sam.distributed.tasks.slice_task`,
   or a tiled slice's tiles and merge, :mod:`~napari_sam.distributed.tiled_job`)
   writes its raw labels into the raw volume in the work folder and a marker
   with its object count and SAM's scores; slices marked by an earlier run are
   not segmented again;
2. **overlaps** (with slice linking): one task per slice measures its objects'
   overlaps with the previous slice; the client assigns the final ids
   (:class:`~napari_sam.workflows.linking.SliceLinker`); without linking, each
   slice's ids are offset above the previous slices'
   (:func:`~napari_sam.workflows.linking.offset_luts`);
3. **relabel**: one task per slice writes its final ids (into the OME-Zarr
   output, or back to the client for a TIFF);
4. the output is written (and, when asked for, one more task makes its object
   table from the written labels).

:class:`StackJob` holds that state and submits through the run's bookkeeping
(``runner``: ``_submit``, ``_expect``, ``_count``, ``_done``, ``finishing``,
``tiles``, ``recipe``, ``coco``, ``table``; :mod:`~napari_sam.distributed.run`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_sam.distributed import tasks
from napari_sam.distributed.work import JobWork
from napari_sam.workflows import io
from napari_sam.workflows.batch import SegmentJob
from napari_sam.workflows.linking import SliceLinker, offset_luts
from napari_sam.workflows.zarr_io import LabelsZarr, finish_labels_zarr

__all__ = ["StackJob"]


@dataclass
class StackJob:
    """One stack's run: its shape and calibration, and what each phase has returned."""

    runner: Any
    index: int
    job: SegmentJob
    work: JobWork
    shape: tuple[int, int, int]
    scale: tuple[float, ...]
    unit: str | None
    contrast: tuple[float, float]
    grid: Any = None  # TileGrid of its slices, when they are tiled
    markers: dict[int, dict[str, Any]] = field(default_factory=dict)
    overlaps: dict[int, tuple[list[int], list]] = field(default_factory=dict)
    luts: dict[int, dict[int, int]] = field(default_factory=dict)
    relabelled: dict[int, tuple[list[dict] | None, list[int]]] = field(default_factory=dict)
    labels: np.ndarray | None = None
    resumed: int = 0

    @property
    def n(self) -> int:
        return self.shape[0]

    def start(self, kept: bool) -> None:
        """Submit the slices not finished before (``kept``: the work folder of an earlier
        run of the same recipe was kept)."""
        r, work = self.runner, self.work
        phases = 3 if r.recipe.settings.link_slices else 2
        r._expect(self.index, phases * self.n + (1 if r.table else 0))
        if kept and work.raw.is_dir():
            self.markers = {z: m for z, m in work.finished_slices().items() if 0 <= z < self.n}
        else:
            LabelsZarr.create(work.raw, self.shape)
        self.resumed = len(self.markers)
        r._count(self.index, self.resumed)
        if self.grid is not None:  # each slice: one task per tile, then its merge
            r._expect(self.index, len(self.grid) * (self.n - self.resumed))
        for z in range(self.n):
            if z in self.markers:
                continue
            if self.grid is not None:
                r.tiles.start_slice(self.index, z, self.grid, self.contrast)
            else:
                r._submit(
                    self.index, "slice", z, tasks.slice_task,
                    r.spec, self.job, r.recipe, self.contrast, z, str(work.raw),
                    str(work.marker(z)),
                )  # fmt: skip
        if len(self.markers) == self.n:
            self._after_slices()

    def on_result(self, kind: str, z: int, result: Any) -> bool:
        """A task of this stack finished; True when the stack's output is complete and the
        stack can be forgotten (its table, if any, is then a task of its own)."""
        if kind == "slice":
            self.markers[z] = result
            if len(self.markers) == self.n:
                self._after_slices()
        elif kind == "overlap":
            self.overlaps[z] = result
            if len(self.overlaps) == self.n:
                self._after_overlaps()
        elif kind == "relabel":
            plane, anns, ids = result
            if plane is not None and self.labels is not None:
                self.labels[z] = plane
            self.relabelled[z] = (anns, ids)
            if len(self.relabelled) == self.n:
                self._finish()
                return True
        return False

    # ----------------------------------------------------------------- phases
    def _after_slices(self) -> None:
        r = self.runner
        if r.recipe.settings.link_slices:
            for z in range(self.n):
                r._submit(
                    self.index, "overlap", z, tasks.overlap_task,
                    str(self.work.raw), z - 1 if z else None, z, r.recipe.settings.link_iou,
                )  # fmt: skip
            return
        counts = [int(self.markers[z]["n"]) for z in range(self.n)]
        for z, offset in enumerate(offset_luts(counts)):
            self.luts[z] = {k: k + offset for k in range(1, counts[z] + 1)}
        self._relabel()

    def _after_overlaps(self) -> None:
        linker = SliceLinker()
        for z in range(self.n):
            ids, pairs = self.overlaps[z]
            self.luts[z] = linker.add(ids, pairs)
        self._relabel()

    def _relabel(self) -> None:
        r = self.runner
        if self.job.is_zarr:
            LabelsZarr.create(self.work.labels, self.shape, scale=self.scale, unit=self.unit)
            target: str | None = str(self.work.labels)
        else:
            self.labels = np.zeros(self.shape, dtype=np.uint32)
            target = None
        for z in range(self.n):
            scores = self.markers[z]["scores"] if r.coco else None
            r._submit(
                self.index, "relabel", z, tasks.relabel_task,
                str(self.work.raw), z, self.luts[z], target, scores,
            )  # fmt: skip

    def _finish(self) -> None:
        r, job = self.runner, self.job
        if job.is_zarr:
            finish_labels_zarr(self.work.labels, job.output)
        else:
            io.write_labels_tiff(job.output, self.labels, scale=self.scale, unit=self.unit)
        ids: set[int] = set()
        for _, present in self.relabelled.values():
            ids.update(present)
        coco = None
        if r.coco:
            coco = [(z, self.shape[1:], self.relabelled[z][0] or []) for z in range(self.n)]
        if not r.table:
            r._done(self.index, len(ids), self.n, coco, self.resumed)
            return
        # the object table of the whole volume: one more task, reading the output
        scores: dict[tuple[int, int], Any] = {}
        for z in range(self.n):
            for raw, values in self.markers[z]["scores"].items():
                final = self.luts[z].get(int(raw))
                if final:
                    scores[(z, int(final))] = values
        r.finishing[self.index] = (len(ids), self.n, coco, self.resumed)
        r._submit(
            self.index, "table", 0, tasks.table_task, job, r.recipe, str(job.output), scores
        )
