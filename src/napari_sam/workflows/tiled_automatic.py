"""Automatic segmentation of tiled planes: point grid per tile, and stitched decoder maps.

Grid generator (SAM's automatic mask generator) on a tiled plane
-----------------------------------------------------------------
:func:`tiled_amg_plane` runs the automatic mask generator of
:class:`~napari_sam.predictors.automatic.SamAutomaticMaskGenerator` on each tile
(same decoder, thresholds and stability score), with these rules:

1. **Prompts**: a regular grid over the tile's *inner* region, spaced as
   ``points_per_side`` points over a full tile (edge tiles, which are
   smaller, get proportionally fewer points), so the whole plane is prompted
   with one even density and no point is prompted twice.
2. **Cut masks**: a mask within 20 pixels of an edge of the tile's outer
   window that is not the image border is dropped, as SAM drops masks cut by
   a crop: an object cut by one tile's window is seen whole from the
   neighbouring tile, whose halo covers it (if its radius is at most the halo).
3. Masks covering more than ``max_area_fraction`` of their tile's outer
   window (SAM's "whole view" masks) are dropped.
4. **De-duplication**: box non-maximum suppression within each tile (by
   predicted IoU), then over all tiles together: of two masks whose boxes
   overlap more than ``box_nms_thresh``, the one whose box centre lies in the
   inner region of the tile that found it wins (that tile saw the object
   with most context), then the higher predicted IoU.
5. Small holes and islands are removed as without tiling, and masks are
   painted larger first; masks are kept as their bounding-box windows, so no
   full-plane mask per object ever exists.

Decoder maps (AIS) on a tiled plane
-----------------------------------
:func:`stitch_tile_maps` asks a *producer* for each tile's output maps over
its outer window (e.g. foreground and distance maps of an instance decoder)
and writes each tile's **inner** region into full-size maps, so every pixel
comes from the one tile that saw it with a halo of context; the caller then
post-processes the stitched maps **once** for the whole plane
(:func:`segment_from_tile_maps`), so objects on tile borders are single
objects.

No napari here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_sam.errors import Cancelled, SettingsError
from napari_sam.runtime.progress import CancelCheck, Progress, ProgressCallback, drive
from napari_sam.workflows.tiled_embeddings import TiledEmbeddings
from napari_sam.workflows.tiling import Tile, TileGrid

__all__ = [
    "TileMasks",
    "TiledMasks",
    "amg_tile_steps",
    "merge_tile_masks",
    "paint_windows",
    "segment_from_tile_maps",
    "stitch_tile_maps",
    "stitch_tile_maps_iter",
    "tile_generator",
    "tile_point_grid",
    "tiled_amg_plane",
]

#: A mask whose box lies this close to a cut edge of its tile's window is dropped (SAM's rule).
EDGE_TOLERANCE = 20.0


# --------------------------------------------------------------------------- prompts
def tile_point_grid(tile: Tile, tile_shape: Sequence[int], points_per_side: int) -> np.ndarray:
    """Point prompts ``(N, 2)`` ``(x, y)`` for one tile, in its outer window's coordinates.

    A regular grid of cell centres over the tile's inner region, with
    ``points_per_side`` points per full tile side (at least one per axis).
    """
    ih, iw = tile.inner.shape
    ny = max(1, round(points_per_side * ih / int(tile_shape[0])))
    nx = max(1, round(points_per_side * iw / int(tile_shape[1])))
    ys = tile.inner.y0 - tile.outer.y0 + (np.arange(ny) + 0.5) / ny * ih - 0.5
    xs = tile.inner.x0 - tile.outer.x0 + (np.arange(nx) + 0.5) / nx * iw - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


# --------------------------------------------------------------------------- result
@dataclass
class TiledMasks:
    """What :func:`tiled_amg_plane` found on one plane.

    Attributes
    ----------
    labels : ndarray ``(H, W)`` uint32
        Objects ``1..N`` (larger objects numbered first).
    predicted_iou, stability_score : ndarray ``(N,)`` float32
        SAM's scores of object ``i + 1``.
    n_masks : int
        Masks SAM proposed (after per-tile filters, before de-duplication and area filters).
    tiles : int
        Tiles processed.
    """

    labels: np.ndarray
    predicted_iou: np.ndarray
    stability_score: np.ndarray
    n_masks: int
    tiles: int


def paint_windows(
    windows: Sequence[tuple[np.ndarray, tuple[int, int]]],
    plane_shape: Sequence[int],
    min_area: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint masks given as ``(window, (y0, x0))`` into a ``uint32`` label plane.

    The rule of :func:`~napari_sam.workflows.labels.records_to_labels`:
    larger masks first (ties keep the given order), masks smaller than
    ``min_area`` (or empty) skipped, objects numbered ``1..K`` from the
    largest, an object covered completely by smaller ones gets no id.

    Returns
    -------
    labels : ndarray ``(H, W)`` uint32
    ids : ndarray ``(N,)`` int64, each mask's id (0 if skipped or covered)
    """
    areas = np.array([int(np.count_nonzero(w)) for w, _ in windows], dtype=np.int64)
    order = [i for i in sorted(range(len(windows)), key=lambda i: -areas[i])
             if areas[i] >= max(int(min_area), 1)]
    labels = np.zeros(tuple(int(s) for s in plane_shape), dtype=np.uint32)
    for rank, i in enumerate(order, start=1):
        window, (y0, x0) = windows[i]
        region = labels[y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]]
        region[window] = rank
    visible = np.zeros(len(order) + 1, dtype=bool)
    step = max(1, (1 << 22) // max(1, labels.shape[1]))
    for r in range(0, labels.shape[0], step):  # row blocks: no second full plane
        visible[np.unique(labels[r : r + step])] = True
    visible[0] = False
    lut = np.zeros(len(order) + 1, dtype=np.uint32)
    lut[visible] = np.arange(1, int(visible.sum()) + 1, dtype=np.uint32)
    for r in range(0, labels.shape[0], step):
        labels[r : r + step] = lut[labels[r : r + step]]
    ids = np.zeros(len(windows), dtype=np.int64)
    for rank, i in enumerate(order, start=1):
        ids[i] = int(lut[rank])
    return labels, ids


# --------------------------------------------------------------------------- grid generator
@functools.cache
def _tile_generator_class() -> type:
    """A SamAutomaticMaskGenerator that decodes prompts on a given tile embedding."""
    from napari_sam.predictors.automatic import SamAutomaticMaskGenerator, _MaskStore, _nms

    class TileMaskGenerator(SamAutomaticMaskGenerator):
        def tile_steps(
            self, embedding: Any, tile: Tile, points: np.ndarray, plane_shape: tuple[int, int]
        ) -> Generator[int, None, Any]:
            """Decode ``points`` on ``tile``; yields after each batch, returns kept masks."""
            self.predictor.set_embedding(embedding)
            self._decoder_state = None
            o = tile.outer
            crop_box = [o.x0, o.y0, o.x1, o.y1]
            kept = _MaskStore.empty()
            try:
                for start in range(0, len(points), self.points_per_batch):
                    batch = points[start : start + self.points_per_batch]
                    kept.extend(self._process_batch_safely(batch, crop_box, plane_shape))
                    yield len(batch)
            finally:
                self._release_crop()
            if len(kept):
                kept = kept.take(_nms(kept.boxes, kept.iou, self.box_nms_thresh))
            return kept

        def merge(self, data: Any, inner_bonus: np.ndarray, plane_shape: tuple[int, int]) -> Any:
            if len(data) > 1:
                data = data.take(_nms(data.boxes, data.iou + inner_bonus, self.box_nms_thresh))
            if self.min_mask_region_area > 0 and len(data):
                data = self._remove_small_regions(data, plane_shape)
            return data

        @staticmethod
        def empty() -> Any:
            return _MaskStore.empty()

    return TileMaskGenerator


def tiled_amg_plane(
    embeddings: TiledEmbeddings,
    z: int | None,
    generator_kwargs: dict[str, Any],
    *,
    max_area_fraction: float = 1.0,
    min_area: int = 0,
) -> Generator[Progress, None, TiledMasks]:
    """Automatic masks of plane ``z`` of a tiled image (the rules in the module docstring).

    Parameters
    ----------
    embeddings : TiledEmbeddings
        The tiles (cached ones are reused, missing ones encoded here).
    z : int or None
        The plane (None for a 2D image).
    generator_kwargs : dict
        Arguments of :class:`~napari_sam.predictors.automatic.SamAutomaticMaskGenerator`
        (``points_per_side`` is per tile; ``crop_n_layers`` must be 0).
    max_area_fraction : float
        Masks covering more of their tile's outer window are dropped.
    min_area : int
        Objects smaller than this are not painted.

    Returns
    -------
    generator
        Yields :class:`~napari_sam.runtime.progress.Progress` (unit ``"steps"``:
        one per tile encoding and per decoder batch); returns :class:`TiledMasks`.
    """
    generator = tile_generator(embeddings.model, generator_kwargs)
    points_per_side = int(generator_kwargs.get("points_per_side") or 32)
    return _amg_steps(generator, embeddings, z, points_per_side, max_area_fraction, min_area)


@dataclass
class TileMasks:
    """What the grid generator kept on one tile (:func:`amg_tile_steps`): small enough to
    send between processes (masks are bit-packed bounding-box windows).

    Attributes
    ----------
    masks : _MaskStore
        Masks after the per-tile NMS and the area filter, in plane coordinates.
    inner : ndarray ``(N,)`` float32
        1 where a mask's box centre lies in the tile's inner region (the merge prefers it).
    n_masks : int
        Masks kept by the per-tile NMS, before the area filter.
    """

    masks: Any
    inner: np.ndarray
    n_masks: int


def tile_generator(sam: Any, generator_kwargs: dict[str, Any]) -> Any:
    """The generator that decodes a tile's prompts (checks ``crop_n_layers`` is 0)."""
    kwargs = dict(generator_kwargs)
    if int(kwargs.get("crop_n_layers", 0) or 0) > 0:
        raise SettingsError(
            "Crop layers cannot be combined with tiling (tiles already show SAM the image at "
            "full resolution); set crop layers to 0 or turn tiling off."
        )
    return _tile_generator_class()(sam, **kwargs)


def tile_batches(generator: Any, grid: TileGrid, tile: Tile, points_per_side: int) -> int:
    """Decoder batches :func:`amg_tile_steps` runs on ``tile``."""
    n = len(tile_point_grid(tile, grid.tile_shape, points_per_side))
    return math.ceil(n / generator.points_per_batch)


def amg_tile_steps(
    generator: Any,
    embedding: Any,
    grid: TileGrid,
    tile: Tile,
    points_per_side: int,
    max_area_fraction: float,
) -> Generator[int, None, TileMasks]:
    """Prompt one tile (rules 1-4 of the module docstring, up to the merge).

    Yields after each decoder batch; returns the tile's :class:`TileMasks`.
    """
    pts = tile_point_grid(tile, grid.tile_shape, points_per_side)
    steps = generator.tile_steps(embedding, tile, pts, grid.plane_shape)
    try:
        while True:
            yield next(steps)
    except StopIteration as stop:
        kept = stop.value
    finally:
        steps.close()
    n_masks = len(kept)
    if len(kept):
        small = kept.areas <= max_area_fraction * tile.outer.area
        kept = kept.take(np.flatnonzero(small))
    inside = np.zeros(0, np.float32)
    if len(kept):
        cx = (kept.boxes[:, 0] + kept.boxes[:, 2]) / 2.0
        cy = (kept.boxes[:, 1] + kept.boxes[:, 3]) / 2.0
        i = tile.inner
        inside = ((cx >= i.x0) & (cx < i.x1) & (cy >= i.y0) & (cy < i.y1)).astype(np.float32)
    return TileMasks(kept, inside, n_masks)


def merge_tile_masks(
    generator: Any, parts: Sequence[TileMasks], plane_shape: Sequence[int], min_area: int
) -> TiledMasks:
    """The plane's objects from its tiles' masks, in tile order (rules 4-5)."""
    data = generator.empty()
    bonus_parts: list[np.ndarray] = []
    for part in parts:
        if len(part.masks):
            bonus_parts.append(part.inner)
            data.extend(part.masks)
    shape = (int(plane_shape[0]), int(plane_shape[1]))
    bonus = np.concatenate(bonus_parts) if bonus_parts else np.zeros(0, np.float32)
    data = generator.merge(data, bonus, shape)
    windows = [data.window(i) for i in range(len(data))]
    labels, ids = paint_windows(windows, shape, min_area=min_area)
    n = int(ids.max()) if ids.size else 0
    iou = np.zeros(n, np.float32)
    stab = np.zeros(n, np.float32)
    for i, lab in enumerate(ids):
        if lab > 0:
            iou[lab - 1] = data.iou[i]
            stab[lab - 1] = data.stability[i]
    return TiledMasks(labels, iou, stab, sum(p.n_masks for p in parts), len(parts))


def _amg_steps(
    generator: Any,
    embeddings: TiledEmbeddings,
    z: int | None,
    points_per_side: int,
    max_area_fraction: float,
    min_area: int,
) -> Generator[Progress, None, TiledMasks]:
    grid = embeddings.grid
    tiles = grid.tiles
    total = len(tiles) + sum(tile_batches(generator, grid, t, points_per_side) for t in tiles) + 1
    done = 0
    yield Progress(done, total, "starting", "steps")
    parts: list[TileMasks] = []
    for k, tile in enumerate(tiles):
        where = f"tile {k + 1} of {len(tiles)}"
        embedding = embeddings.get(z, tile)
        done += 1
        yield Progress(done, total, f"{where}: encoding", "steps")
        steps = amg_tile_steps(generator, embedding, grid, tile, points_per_side, max_area_fraction)
        try:
            while True:
                next(steps)
                done += 1
                yield Progress(min(done, total - 1), total, f"{where}: decoding prompts", "steps")
        except StopIteration as stop:
            parts.append(stop.value)
        finally:
            steps.close()
    found = merge_tile_masks(generator, parts, grid.plane_shape, min_area)
    yield Progress(total, total, "post-processing", "steps")
    return found


# --------------------------------------------------------------------------- decoder maps
#: ``produce(tile) -> (C, h, w)`` maps over the tile's outer window.
TileMapProducer = Callable[[Tile], np.ndarray]


def stitch_tile_maps_iter(
    grid: TileGrid,
    produce: TileMapProducer,
    *,
    out: np.ndarray | None = None,
    dtype: Any = np.float32,
) -> Generator[Progress, None, np.ndarray]:
    """:func:`stitch_tile_maps` as a generator of Progress events (unit ``"tiles"``)."""
    total = len(grid)
    yield Progress(0, total, "decoding tiles", "tiles")
    for tile in grid:
        maps = np.asarray(produce(tile))
        if maps.ndim == 2:
            maps = maps[None]
        if maps.ndim != 3 or maps.shape[-2:] != tile.outer.shape:
            raise ValueError(
                f"The maps of tile {tile.index} have shape {maps.shape}; expected "
                f"(channels, {tile.outer.shape[0]}, {tile.outer.shape[1]}) for its outer window."
            )
        if out is None:
            out = np.zeros((maps.shape[0], *grid.plane_shape), dtype=dtype)
        local = tile.inner_local
        out[(slice(None), *tile.inner.slices)] = maps[(slice(None), *local.slices)]
        yield Progress(tile.index + 1, total, "decoding tiles", "tiles")
    if out is None:  # an empty grid cannot happen (a plane has at least one tile)
        out = np.zeros((0, *grid.plane_shape), dtype=dtype)
    return out


def stitch_tile_maps(
    grid: TileGrid,
    produce: TileMapProducer,
    *,
    out: np.ndarray | None = None,
    dtype: Any = np.float32,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> np.ndarray:
    """Full-size maps ``(C, H, W)`` from each tile's maps over its outer window.

    Parameters
    ----------
    grid : TileGrid
    produce : callable ``(tile) -> ndarray (C, h, w)`` (or ``(h, w)``)
        The maps of one tile over its outer window (``tile.outer.shape``);
        e.g. an instance decoder's foreground, centre- and boundary-distance
        maps from the tile's embedding.
    out : ndarray ``(C, H, W)``, optional
        Where to write (e.g. a memory-mapped or zarr array for huge planes).
    dtype : numpy dtype
        Of a new ``out``.
    progress, should_cancel : callable, optional
        The progress contract (polled before each tile).

    Returns
    -------
    ndarray ``(C, H, W)``
        Every pixel from the tile whose inner region holds it.
    """
    return drive(
        stitch_tile_maps_iter(grid, produce, out=out, dtype=dtype),
        progress,
        should_cancel,
        cancelled="Decoding the tiles was cancelled.",
    )


def segment_from_tile_maps(
    grid: TileGrid,
    produce: TileMapProducer,
    postprocess: Callable[[np.ndarray], np.ndarray],
    *,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> np.ndarray:
    """Stitch the tiles' maps (:func:`stitch_tile_maps`), then post-process them once.

    ``postprocess(maps)`` gets the full-size ``(C, H, W)`` maps and returns
    the ``(H, W)`` label plane (e.g. one seeded watershed over the whole
    plane), so objects on tile borders come out whole.
    """
    maps = stitch_tile_maps(grid, produce, progress=progress, should_cancel=should_cancel)
    if should_cancel is not None and should_cancel():
        raise Cancelled("Automatic segmentation was cancelled.")
    return postprocess(maps)
