"""What a Dask worker runs: one file, one slice, the overlaps of two slices, one relabelled slice.

Every function here is a pure function of its arguments and the files it
reads: run twice (a worker killed and the task retried elsewhere), it writes
the same bytes. Each writes only into the job's work folder
(:mod:`~napari_sam.distributed.work`), atomically where a file is whole, and
returns a small summary to the client; no task holds more than two planes of
a stack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.distributed.work import write_marker
from napari_sam.distributed.worker import ModelSpec, worker_model
from napari_sam.workflows import batch, io
from napari_sam.workflows.linking import Pair, overlap_pairs, plane_areas
from napari_sam.workflows.zarr_io import LabelsZarr

__all__ = ["file_task", "overlap_task", "relabel_task", "slice_task"]


def file_task(
    spec: ModelSpec, job: batch.SegmentJob, recipe: batch.Recipe, output: str, coco: bool
) -> batch.FileResult:
    """Segment a whole file into ``output`` (in the work folder)."""
    model = worker_model(spec)  # the LoadedModel: its AIS decoder and weights' identity
    return batch.segment_file(model, job, recipe, output=Path(output), coco=coco)


def slice_task(
    spec: ModelSpec,
    job: batch.SegmentJob,
    recipe: batch.Recipe,
    contrast: Sequence[float],
    z: int,
    raw: str,
    marker: str,
) -> dict[str, Any]:
    """Segment slice ``z`` into the raw volume, then write its marker; return the marker."""
    model = worker_model(spec)
    image = io.read_image(job.source, lazy=True)
    result = batch.segment_slice(model, image, z, recipe, contrast)
    LabelsZarr.open(raw).write(z, result.labels)
    record = {
        "z": int(z),
        "n": result.n,
        "scores": {str(k): v for k, v in result.scores.items()},
    }
    write_marker(Path(marker), record)
    return record


def overlap_task(
    raw: str, z_prev: int | None, z: int, iou_threshold: float
) -> tuple[list[int], list[Pair]]:
    """The object ids of slice ``z`` and its overlaps with slice ``z_prev`` (raw ids)."""
    volume = LabelsZarr.open(raw)
    cur = volume.read(z)
    areas = plane_areas(cur)
    if z_prev is None:
        return sorted(areas), []
    prev = volume.read(z_prev)
    return sorted(areas), overlap_pairs(prev, cur, iou_threshold, None, areas)


def relabel_task(
    raw: str,
    z: int,
    lut: Mapping[int, int],
    target: str | None,
    scores: Mapping[str, Mapping[str, float]] | None,
) -> tuple[np.ndarray | None, list[dict] | None, list[int]]:
    """Give slice ``z`` its final ids (``lut``: raw id -> final id).

    With ``target`` (a label zarr) the slice is written there and no pixels are
    returned; otherwise the relabelled plane is returned (the client writes a
    TIFF). With ``scores`` (raw id -> SAM's scores) the slice's COCO
    annotations are returned too. The last item lists the final ids present.
    """
    plane = LabelsZarr.open(raw).read(z)
    table = np.zeros(int(plane.max()) + 1, dtype=np.uint32)
    for raw_id, final in lut.items():
        if int(raw_id) < table.size:
            table[int(raw_id)] = final
    out = table[plane]
    ids = [int(i) for i in np.unique(out) if i]
    anns = None
    if scores is not None:
        final_scores = {int(lut[int(k)]): dict(v) for k, v in scores.items() if int(k) in lut}
        anns = io.plane_annotations(out, final_scores)
    if target is not None:
        LabelsZarr.open(target).write(z, out)
        return None, anns, ids
    return out, anns, ids
