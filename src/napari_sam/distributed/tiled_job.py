"""The tasks of planes segmented tile by tile, in a batch run on a Dask cluster.

A plane too large for one SAM input (:func:`~napari_sam.workflows.batch_tiles.plane_grid`)
is one task per tile (:func:`~napari_sam.distributed.tasks.tile_task`), then one
merge: :func:`~napari_sam.distributed.tasks.tiled_file_task` writes a 2D
image's output, :func:`~napari_sam.distributed.tasks.tiled_slice_task` a stack
slice into the stack's raw volume. A 2D image's tile tasks store their pieces
in the work folder (:mod:`~napari_sam.distributed.pieces`): a rerun merges the
stored pieces with the missing tiles only. A merge runs before the tiles still
waiting (priority 1), so a plane's pieces leave the workers' memory and a
stack's slice is marked finished as early as possible.

:class:`TiledPlanes` keeps the planes of a run whose tiles are not all done;
it submits through the run's bookkeeping (``runner``: ``_submit``,
``_expect``, ``_count``, ``jobs``, ``identity``, ``spec``, ``recipe``,
``coco``, ``table``; :mod:`~napari_sam.distributed.run`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from napari_sam.distributed import tasks
from napari_sam.distributed.work import JobWork

__all__ = ["TiledPlane", "TiledPlanes"]


@dataclass
class TiledPlane:
    """A plane segmented tile by tile: the finished tiles' futures, kept for its merge, and
    (a 2D image) the paths of the tiles an earlier run stored."""

    index: int
    z: int | None
    grid: Any
    contrast: tuple[float, float]
    futures: dict[int, Any] = field(default_factory=dict)
    stored: dict[int, str] = field(default_factory=dict)


class TiledPlanes:
    """The tiled planes of one batch run, by ``(job index, slice or None)``."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.planes: dict[tuple[int, int | None], TiledPlane] = {}
        #: Tiles of each tiled 2D image found stored by an earlier run.
        self.resumed: dict[int, int] = {}

    def start_file(self, index: int, grid: Any, contrast: tuple[float, float],
                   work: JobWork) -> None:
        """A 2D image of several tiles: one task per tile not stored by an earlier run (each
        storing its piece in the work folder), then a merge writing the output."""
        r = self.runner
        plane = TiledPlane(index, None, grid, contrast)
        plane.stored = work.finished_tiles(grid, r.identities[index])
        self.planes[(index, None)] = plane
        r._expect(index, len(grid) + 1)
        r._count(index, len(plane.stored))
        self.resumed[index] = len(plane.stored)
        self._submit_tiles(plane)
        if len(plane.stored) == len(grid):
            self.tile_done(index, None, None, None)

    def start_slice(self, index: int, z: int, grid: Any, contrast: tuple[float, float]) -> None:
        """Slice ``z`` of a stack: one task per tile, then its merge into the raw volume."""
        plane = TiledPlane(index, z, grid, contrast)
        self.planes[(index, z)] = plane
        self._submit_tiles(plane)

    def _submit_tiles(self, plane: TiledPlane) -> None:
        r = self.runner
        job = r.jobs[plane.index]
        work = JobWork(job)
        for k in range(len(plane.grid)):
            if k in plane.stored:
                continue
            store = str(work.piece(k)) if plane.z is None else None
            r._submit(
                plane.index, "tile", (plane.z, k), tasks.tile_task,
                r.spec, job, r.recipe, plane.contrast, plane.z, k, store,
            )  # fmt: skip

    def tile_done(self, index: int, z: int | None, k: int | None, future: Any) -> None:
        """Tile ``k`` of plane ``(index, z)`` finished (``future`` holds its piece); the
        merge is submitted when the plane has all its tiles."""
        plane = self.planes.get((index, z))
        if plane is None:
            return
        if k is not None:
            plane.futures[k] = future
        if len(plane.futures) + len(plane.stored) < len(plane.grid):
            return
        del self.planes[(index, z)]
        pieces = [plane.futures[i] if i in plane.futures else plane.stored[i]
                  for i in range(len(plane.grid))]  # fmt: skip
        r = self.runner
        job = r.jobs[index]
        work = JobWork(job)
        if z is None:
            r._submit(
                index, "tiledfile", 0, tasks.tiled_file_task,
                r.spec, job, r.recipe, plane.grid, pieces, str(work.file_output), r.coco,
                r.table, priority=1,
            )  # fmt: skip
        else:
            r._submit(
                index, "slice", z, tasks.tiled_slice_task,
                r.spec, r.recipe, plane.grid, pieces, z, str(work.raw), str(work.marker(z)),
                priority=1,
            )  # fmt: skip

    def drop(self, index: int) -> bool:
        """Forget job ``index``'s planes; True if it was a tiled 2D image (whose stored tiles
        are worth keeping for a rerun)."""
        for key in [key for key in self.planes if key[0] == index]:
            del self.planes[key]
        return self.resumed.pop(index, None) is not None
