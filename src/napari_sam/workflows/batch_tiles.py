"""A tiled plane segmented tile by tile in separate processes, then merged: batch pieces.

:func:`~napari_sam.workflows.segment.segment` segments a large plane tile by
tile in one process (:mod:`~napari_sam.workflows.tiled_automatic`). A cluster
(:mod:`napari_sam.distributed`) splits the same work into one task per tile
and a final merge, with the same functions, so the labels are the same:

- :func:`plane_grid`: the tiles of a job's planes under a recipe (None when
  its planes are not tiled, or not into several tiles);
- :func:`segment_tile`: one tile of one plane -> a :class:`TilePiece` (the grid
  generator's kept masks, bit-packed; or the instance decoder's three maps over
  the tile's inner region), small enough to send between processes;
- :func:`merge_tiles`: the pieces of one plane, in tile order -> the plane's
  labels and scores (the grid generator's de-duplication across tiles and
  painting; or the stitched maps and one watershed over the whole plane).

Both sides build the tile embeddings as ``segment()`` does (the recipe's
tiling, the plane's contrast limits), and every step is deterministic.

No napari, no dask here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_sam.errors import SettingsError
from napari_sam.workflows import io
from napari_sam.workflows.batch import Recipe, SliceResult
from napari_sam.workflows.tiled_automatic import TileMasks
from napari_sam.workflows.tiled_embeddings import TiledEmbeddings
from napari_sam.workflows.tiling import TileGrid, Tiling

__all__ = ["TilePiece", "merge_tiles", "plane_grid", "segment_tile", "tile_embeddings"]


@dataclass
class TilePiece:
    """What one tile of a plane contributes (:func:`segment_tile`).

    Attributes
    ----------
    mode : {"amg", "ais"}
    index : int
        The tile's index in the grid.
    masks : TileMasks or None
        Grid generator: the masks kept on the tile.
    maps : ndarray ``(3, h, w)`` float32 or None
        AIS: foreground, centre- and boundary-distance maps over the tile's inner region.
    """

    mode: str
    index: int
    masks: TileMasks | None = None
    maps: np.ndarray | None = None


def plane_grid(plane_shape: Sequence[int], recipe: Recipe) -> TileGrid | None:
    """The tiles of a plane of ``plane_shape`` ``(H, W)`` under ``recipe``, or None.

    None when the recipe does not tile such planes, tiles them into one tile,
    or asks for tiles that do not fit (the segmentation itself then reports it).
    """
    try:
        grid = Tiling.coerce(recipe.kwargs().get("tiling", "auto")).grid(plane_shape)
    except SettingsError:
        return None
    return grid if grid is not None and len(grid) > 1 else None


def tile_embeddings(
    model: Any, image: io.TiffImage, recipe: Recipe, contrast: Sequence[float]
) -> TiledEmbeddings:
    """The tile embeddings of ``image`` as ``segment()`` makes them (memory only, no cache)."""
    from napari_sam.workflows.embeddings import EmbeddingStore

    sam = getattr(model, "sam", model)
    return TiledEmbeddings(
        sam, image.data, model_id=getattr(model, "model_id", None) or "automatic",
        tiling=recipe.kwargs().get("tiling", "auto"), rgb=image.rgb,
        contrast=(float(contrast[0]), float(contrast[1])), store=EmbeddingStore(max_mb=0),
    )  # fmt: skip


def _mode(model: Any, recipe: Recipe) -> str:
    from napari_sam.workflows.segment import refuse_sam2, resolve_mode

    refuse_sam2(model)
    return resolve_mode(recipe.kwargs().get("mode", "auto"), model)


def _ais_settings(recipe: Recipe) -> Any:
    from napari_sam.workflows.ais import AISSettings

    value = recipe.kwargs().get("ais_settings")
    settings = AISSettings(**value) if isinstance(value, dict) else (value or AISSettings())
    settings.check()
    return settings


def segment_tile(
    model: Any,
    image: io.TiffImage,
    z: int | None,
    index: int,
    recipe: Recipe,
    contrast: Sequence[float],
) -> TilePiece:
    """Encode tile ``index`` of plane ``z`` (None for a 2D image) and find its objects.

    ``contrast``: the image's contrast limits (the recipe's, or the default
    of the whole image, computed once), as ``segment()`` uses them.

    Raises
    ------
    SettingsError, NoDecoderError
        As ``segment()`` would (e.g. crop layers with tiling, AIS without a decoder).
    """
    from napari_sam.workflows.tiled_automatic import amg_tile_steps, tile_generator

    recipe.settings.check()
    mode = _mode(model, recipe)
    embeddings = tile_embeddings(model, image, recipe, contrast)
    tile = embeddings.grid.tile(int(index))
    if mode == "ais":
        from napari_sam.workflows.ais import decoder_of, instance_maps

        _ais_settings(recipe)
        maps = instance_maps(decoder_of(model, None), embeddings.get(z, tile))
        inner = np.ascontiguousarray(maps[(slice(None), *tile.inner_local.slices)])
        return TilePiece("ais", int(index), maps=inner.astype(np.float32, copy=False))
    settings = recipe.settings
    kwargs = settings.generator_kwargs()
    generator = tile_generator(embeddings.model, kwargs)
    steps = amg_tile_steps(
        generator, embeddings.get(z, tile), embeddings.grid, tile,
        int(kwargs.get("points_per_side") or 32), settings.max_area_fraction,
    )  # fmt: skip
    try:
        while True:
            next(steps)
    except StopIteration as stop:
        masks = stop.value
    finally:
        steps.close()
    return TilePiece("amg", int(index), masks=masks)


def merge_tiles(
    model: Any, grid: TileGrid, pieces: Sequence[TilePiece], recipe: Recipe
) -> tuple[SliceResult, str]:
    """The labels of one plane from all its tiles' pieces (any order).

    Returns
    -------
    SliceResult
        Ids ``1..n`` as ``segment()`` numbers the plane's objects, SAM's scores
        (grid generator; none for AIS).
    mode : {"amg", "ais"}
    """
    ordered = sorted(pieces, key=lambda p: p.index)
    if [p.index for p in ordered] != list(range(len(grid))):
        raise SettingsError(
            f"The plane's tiles came back incomplete ({len(ordered)} of {len(grid)}); "
            "segment it again."
        )
    modes = {p.mode for p in ordered}
    if len(modes) != 1:
        raise SettingsError("The plane's tiles were segmented in different modes.")
    mode = modes.pop()
    if mode == "ais":
        from napari_sam.workflows.ais import instances_from_maps

        maps = np.zeros((3, *grid.plane_shape), dtype=np.float32)
        for piece, tile in zip(ordered, grid):
            maps[(slice(None), *tile.inner.slices)] = piece.maps
        plane, _ = instances_from_maps(maps[0], maps[1], maps[2], _ais_settings(recipe))
        del maps
        labels = np.asarray(plane, dtype=np.uint32)
        return SliceResult(labels, {}, int(labels.max()) if labels.size else 0), mode
    from napari_sam.workflows.tiled_automatic import merge_tile_masks, tile_generator

    settings = recipe.settings
    generator = tile_generator(getattr(model, "sam", model), settings.generator_kwargs())
    found = merge_tile_masks(
        generator, [p.masks for p in ordered], grid.plane_shape, settings.min_area
    )
    scores = {
        k + 1: {
            "predicted_iou": float(found.predicted_iou[k]),
            "stability_score": float(found.stability_score[k]),
        }
        for k in range(len(found.predicted_iou))
    }
    labels = np.asarray(found.labels, dtype=np.uint32)
    return SliceResult(labels, scores, len(found.predicted_iou)), mode
