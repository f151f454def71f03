"""Unfinished work of one output, kept on disk so that a rerun resumes it.

Each output being made on a cluster has a folder
``<output folder>/.napari-sam/work/<output name>/`` (on the shared file
system the workers see) holding:

- ``recipe.json``: the recipe identity and the input's size and date; a rerun
  with another recipe or a changed input starts that output afresh;
- ``raw.zarr``: a stack's slices, each segmented on its own (ids ``1..n``);
- ``slices/<z>.json``: written (atomically) after slice ``z`` is in ``raw.zarr``:
  a finished slice, skipped by a rerun;
- ``tiles/<k>.npz``: a finished tile of a 2D image segmented tile by tile
  (:mod:`~napari_sam.distributed.pieces`), written atomically by its task; a
  rerun skips the tiles stored there and merges their pieces with the others
  (a stack's tiled slices resume slice by slice, through their markers);
- ``labels.zarr`` / the output's name: the output being built; it is moved
  to its final name in one rename when complete.

Workers write only here, never to the output's final name, so a worker
killed mid-write, a failed file or Ctrl+C never leaves a partial output; the
folder is deleted when its output is complete, or when a whole-file output
failed (nothing in it is worth resuming); a failed stack's finished slices and
a failed tiled image's finished tiles are kept for a rerun, as after Ctrl+C.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

from napari_sam.distributed.pieces import load_piece
from napari_sam.runtime.files import atomic_write
from napari_sam.workflows.batch import WORK_FOLDER, SegmentJob, file_stamp, tidy

__all__ = ["JobWork", "tidy", "write_marker"]


class JobWork:
    """The work folder of one job (see the module docstring)."""

    def __init__(self, job: SegmentJob) -> None:
        self.job = job
        self.root = job.output.parent / WORK_FOLDER / "work" / job.output.name

    @property
    def raw(self) -> Path:
        return self.root / "raw.zarr"

    @property
    def labels(self) -> Path:
        return self.root / "labels.zarr"

    @property
    def file_output(self) -> Path:
        return self.root / self.job.output.name

    def marker(self, z: int) -> Path:
        return self.root / "slices" / f"{int(z)}.json"

    def piece(self, k: int) -> Path:
        """Where the finished tile ``k`` of a tiled 2D image is stored."""
        return self.root / "tiles" / f"{int(k)}.npz"

    def finished_tiles(self, grid: Any, identity: str) -> dict[int, str]:
        """The tiles of ``grid`` (a 2D image's) already stored for this recipe: ``k -> path``.

        Each stored piece is read back whole and checked
        (:func:`~napari_sam.distributed.pieces.load_piece`); one that cannot
        be (torn, corrupt, of another recipe) is deleted, and its tile is
        segmented again.
        """
        out: dict[int, str] = {}
        for k in range(len(grid)):
            path = self.piece(k)
            if not path.is_file():
                continue
            if load_piece(path, k, identity, grid.tile(k).inner.shape) is None:
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            out[k] = str(path)
        return out

    def prepare(self, identity: str) -> bool:
        """Make the folder for this recipe; return True if earlier work for it is kept."""
        record = {"identity": identity, "source_stamp": file_stamp(self.job.source)}
        meta = self.root / "recipe.json"
        try:
            kept = json.loads(meta.read_text()) == record
        except (OSError, ValueError):
            kept = False
        if not kept:
            self.remove()
            (self.root / "slices").mkdir(parents=True, exist_ok=True)
            with atomic_write(meta) as tmp:
                tmp.write_text(json.dumps(record))
        return kept

    def finished_slices(self) -> dict[int, dict[str, Any]]:
        """Markers of the slices already segmented: ``z -> marker``."""
        out: dict[int, dict[str, Any]] = {}
        folder = self.root / "slices"
        if not folder.is_dir():
            return out
        for path in folder.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                marker = json.loads(path.read_text())
                out[int(marker["z"])] = marker
        return out

    def remove(self) -> None:
        """Delete the folder and everything in it."""
        shutil.rmtree(self.root, ignore_errors=True)


def write_marker(path: Path, marker: dict[str, Any]) -> None:
    """Write a slice marker atomically (called by the worker after the slice is stored)."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(marker))
