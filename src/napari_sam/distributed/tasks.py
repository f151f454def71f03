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

from napari_sam.distributed.pieces import read_piece, save_piece
from napari_sam.distributed.work import write_marker
from napari_sam.distributed.worker import ModelSpec, worker_model
from napari_sam.workflows import batch, batch_tiles, coco, io
from napari_sam.workflows.linking import Pair, overlap_pairs, plane_areas
from napari_sam.workflows.tables import image_object_table
from napari_sam.workflows.zarr_io import LabelsZarr

__all__ = [
    "file_task",
    "overlap_task",
    "relabel_task",
    "slice_task",
    "table_task",
    "tile_task",
    "tiled_file_task",
    "tiled_slice_task",
]


#: The ``method`` column of the object tables of automatic segmentation (as without a cluster).
TABLE_METHOD = "automatic"


def file_task(
    spec: ModelSpec,
    job: batch.SegmentJob,
    recipe: batch.Recipe,
    output: str,
    coco: bool,
    table: bool = False,
) -> batch.FileResult:
    """Segment a whole file into ``output`` (in the work folder); with ``table``, return its
    object table too (the labels themselves stay on the worker)."""
    model = worker_model(spec)  # the LoadedModel: its AIS decoder and weights' identity
    return batch.segment_file(
        model, job, recipe, output=Path(output), coco=coco,
        table_method=TABLE_METHOD if table else None,
    )  # fmt: skip


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
    return _store_slice(result, z, raw, marker)


def _store_slice(result: batch.SliceResult, z: int, raw: str, marker: str) -> dict[str, Any]:
    """Write slice ``z``'s labels into the raw volume, then its marker; return the marker."""
    LabelsZarr.open(raw).write(z, result.labels)
    record = {
        "z": int(z),
        "n": result.n,
        "scores": {str(k): v for k, v in result.scores.items()},
    }
    write_marker(Path(marker), record)
    return record


def tile_task(
    spec: ModelSpec,
    job: batch.SegmentJob,
    recipe: batch.Recipe,
    contrast: Sequence[float],
    z: int | None,
    index: int,
    store: str | None = None,
) -> batch_tiles.TilePiece:
    """Encode tile ``index`` of plane ``z`` (None: a 2D image) and find its objects.

    Returns the tile's small result (bit-packed masks, or the decoder's maps over
    the tile's inner region); Dask hands it to the plane's merge task. With
    ``store`` (a path in the work folder) the piece is also written there,
    atomically, for a rerun to skip the tile.
    """
    model = worker_model(spec)
    image = io.read_image(job.source, lazy=True)
    piece = batch_tiles.segment_tile(model, image, z, index, recipe, contrast)
    if store is not None:
        save_piece(store, piece, recipe.identity())
    return piece


def _pieces(
    pieces: Sequence[batch_tiles.TilePiece | str], recipe: batch.Recipe
) -> list[batch_tiles.TilePiece]:
    """The pieces in tile order: those given, and those stored by an earlier run (paths)."""
    identity = recipe.identity()
    return [p if not isinstance(p, str) else read_piece(p, k, identity)
            for k, p in enumerate(pieces)]  # fmt: skip


def tiled_file_task(
    spec: ModelSpec,
    job: batch.SegmentJob,
    recipe: batch.Recipe,
    grid: Any,
    pieces: Sequence[batch_tiles.TilePiece | str],
    output: str,
    coco: bool,
    table: bool = False,
) -> batch.FileResult:
    """Merge the tiles of a 2D image and write its labels into ``output`` (work folder).

    ``pieces``: in tile order, each a piece or the path of a piece stored by an
    earlier run (:func:`tile_task` with ``store``).
    """
    model = worker_model(spec)
    image = io.read_image(job.source, lazy=True)
    result, mode = batch_tiles.merge_tiles(model, grid, _pieces(pieces, recipe), recipe)
    io.write_labels(Path(output), result.labels, scale=image.scale, unit=image.unit)
    scores = {(None, k): v for k, v in result.scores.items()}
    coco_data = batch.coco_planes(result.labels, scores, stack=False) if coco else None
    ids = np.unique(result.labels)
    objects = None
    if table:
        objects = image_object_table(
            result.labels, job.name, batch.open_input(job.source, recipe), scores, TABLE_METHOD
        )
    return batch.FileResult(
        n_objects=int(np.count_nonzero(ids)), n_slices=None, coco=coco_data, mode=mode,
        table=objects,
    )  # fmt: skip


def table_task(
    job: batch.SegmentJob,
    recipe: batch.Recipe,
    output: str,
    scores: Mapping[tuple[int, int], Mapping[str, float]],
) -> Any:
    """The object table of a finished output (a stack assembled from its slices).

    ``scores``: SAM's scores keyed by ``(slice, final id)``, in slice order.
    """
    labels = np.asarray(io.read_image(Path(output)).data)
    image = batch.open_input(job.source, recipe)
    return image_object_table(labels, job.name, image, dict(scores), TABLE_METHOD)


def tiled_slice_task(
    spec: ModelSpec,
    recipe: batch.Recipe,
    grid: Any,
    pieces: Sequence[batch_tiles.TilePiece],
    z: int,
    raw: str,
    marker: str,
) -> dict[str, Any]:
    """Merge the tiles of slice ``z`` into the raw volume, then write its marker (as
    :func:`slice_task` does for an untiled slice)."""
    model = worker_model(spec)
    result, _ = batch_tiles.merge_tiles(model, grid, pieces, recipe)
    return _store_slice(result, z, raw, marker)


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
        anns = coco.plane_annotations(out, final_scores)
    if target is not None:
        LabelsZarr.open(target).write(z, out)
        return None, anns, ids
    return out, anns, ids
