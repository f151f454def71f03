"""Automatic segmentation of tiled planes: point grid per tile, de-duplication, stitched maps.

The tile logic (where points go, which masks are dropped as cut, how
duplicates found from two tiles are merged, one global post-processing of
stitched maps) is checked with stand-ins whose right answer is known: an
oracle decoder that returns the bright component under each point as seen in
the tile's window (filtered by SAM's own crop-edge rule), and decoder maps
computed from each tile's window. SAM itself runs through the same code in
the segment() tests.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.segmentation import watershed
from sklearn.metrics import adjusted_rand_score

from napari_sam.errors import SettingsError
from napari_sam.predictors.amg_utils import is_box_near_crop_edge
from napari_sam.runtime.progress import Progress, drive
from napari_sam.workflows.embeddings import EmbeddingStore
from napari_sam.workflows.labels import records_to_labels
from napari_sam.workflows.segment import AutoSettings, segment
from napari_sam.workflows.tiled_automatic import (
    _amg_steps,
    _tile_generator_class,
    paint_windows,
    segment_from_tile_maps,
    stitch_tile_maps,
    tile_point_grid,
)
from napari_sam.workflows.tiled_embeddings import TiledEmbeddings
from napari_sam.workflows.tiling import TileGrid, Tiling
from volume_models import EncoderCalls, fast_sam

TILES = Tiling.on((256, 256), (48, 48))


def disc(shape, cy, cx, r):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


@pytest.fixture(scope="module")
def scene():
    """Discs on tile borders (at 256 and 512), at corners and inside tiles, none touching."""
    shape = (600, 560)
    centres = [(256, 100, 20), (256, 256, 24), (120, 256, 18), (512, 400, 22), (400, 512, 20),
               (60, 60, 15), (400, 140, 26), (560, 520, 14), (150, 420, 25)]  # fmt: skip
    truth = np.zeros(shape, np.int32)
    for i, (cy, cx, r) in enumerate(centres, start=1):
        truth[disc(shape, cy, cx, r)] = i
    return truth


# --------------------------------------------------------------------------- prompts and painting
def test_point_grid_covers_inner_regions_evenly():
    grid = TileGrid((600, 560), (256, 256), (48, 48))
    counts = np.zeros(grid.plane_shape, int)
    for tile in grid:
        pts = tile_point_grid(tile, grid.tile_shape, 8)
        xy = pts + np.array([tile.outer.x0, tile.outer.y0])
        assert tile.inner.contains_xy(xy).all()
        rows, cols = np.rint(xy[:, 1]).astype(int), np.rint(xy[:, 0]).astype(int)
        counts[rows, cols] += 1
    assert counts.max() == 1  # no point prompted twice
    full_tile = tile_point_grid(grid.tile(0), grid.tile_shape, 8)
    assert len(full_tile) == 64
    spacing = np.diff(np.unique(full_tile[:, 0]))
    np.testing.assert_allclose(spacing, 32.0)  # 256 / 8
    edge = grid.tile(len(grid) - 1)  # 88 x 48 pixels: 3 x 2 points at about the same spacing
    assert len(tile_point_grid(edge, grid.tile_shape, 8)) == 3 * 2


def test_paint_windows_is_records_to_labels():
    g = np.random.default_rng(0)
    shape = (90, 120)
    masks = []
    for _ in range(12):
        m = disc(shape, g.uniform(0, 90), g.uniform(0, 120), g.uniform(3, 25))
        masks.append(m)
    masks.append(np.zeros(shape, bool))
    windows = []
    for m in masks:
        rows, cols = np.nonzero(m)
        if rows.size == 0:
            windows.append((np.zeros((0, 0), bool), (0, 0)))
            continue
        y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        windows.append((m[y0:y1, x0:x1], (y0, x0)))
    want, want_ids = records_to_labels(masks, shape, min_area=30, return_ids=True)
    got, got_ids = paint_windows(windows, shape, min_area=30)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_ids, want_ids)
    assert got.dtype == np.uint32


# --------------------------------------------------------------------------- grid generator
def oracle_generator(truth, **kwargs):
    """The tile mask generator with its decoder replaced by the oracle."""
    from napari_sam.predictors.automatic import _MaskStore

    cls = _tile_generator_class()

    class Oracle(cls):
        def _process_batch_safely(self, points, crop_box, orig_size):
            x0, y0, x1, y1 = crop_box
            window = truth[y0:y1, x0:x1]
            comps, _ = ndimage.label(window > 0)
            out = _MaskStore.empty()
            for x, y in points:
                lab = comps[round(y), round(x)]
                if lab == 0:
                    continue
                mask = comps == lab
                rows, cols = np.nonzero(mask)
                box = np.array([cols.min(), rows.min(), cols.max(), rows.max()])
                near = is_box_near_crop_edge(torch.as_tensor(box[None]), list(crop_box),
                                             [0, 0, orig_size[1], orig_size[0]])
                if bool(near[0]):
                    continue  # SAM's rule: a mask cut by the window is dropped
                win = mask[box[1] : box[3] + 1, box[0] : box[2] + 1]
                shifted = box + np.array([x0, y0, x0, y0])
                out.extend(_MaskStore(
                    boxes=shifted[None].astype(np.int64), iou=np.array([0.9], np.float32),
                    stability=np.array([0.95], np.float32), points=np.array([[x + x0, y + y0]]),
                    crop_boxes=np.array([crop_box], np.int64),
                    areas=np.array([int(mask.sum())]), bits=[np.packbits(win)],
                ))
            return out

    return Oracle(fast_sam(), **kwargs)


def test_objects_on_tile_borders_come_out_whole_and_once(scene):
    truth = scene
    embeddings = TiledEmbeddings(fast_sam(), truth.astype(np.uint16), model_id="m", tiling=TILES,
                                 contrast=(0, 1), store=EmbeddingStore(max_mb=0))
    assert len(embeddings.grid) == 9
    generator = oracle_generator(truth, points_per_side=16, box_nms_thresh=0.7,
                                 points_per_batch=64)
    found = drive(_amg_steps(generator, embeddings, None, 16, 1.0, 0))
    assert found.tiles == 9
    assert found.n_masks > truth.max()  # border objects were found from several tiles...
    labels = found.labels
    assert labels.max() == truth.max()  # ...and kept once
    for i in range(1, truth.max() + 1):
        ids = np.unique(labels[truth == i])
        assert len(ids) == 1 and ids[0] > 0, f"object {i} split into {ids}"
        np.testing.assert_array_equal(labels == ids[0], truth == i)
    assert adjusted_rand_score(truth.ravel(), labels.ravel()) == 1.0


# --------------------------------------------------------------------------- stitched maps
def window_maps(truth, tile):
    """Stand-in decoder maps from the tile's window only: foreground, distance to background."""
    fg = truth[tile.outer.slices] > 0
    return np.stack([fg.astype(np.float32), ndimage.distance_transform_edt(fg)])


def global_watershed(maps):
    fg, dist = maps[0] > 0.5, maps[1]
    markers, _ = ndimage.label(dist > 6)
    return watershed(-dist, markers, mask=fg)


def test_stitched_maps_take_each_pixel_from_its_tile():
    g = np.random.default_rng(0)
    image = g.normal(size=(2, 500, 330)).astype(np.float32)
    grid = TileGrid((500, 330), (128, 100), (20, 30))
    got = stitch_tile_maps(grid, lambda t: image[(slice(None), *t.outer.slices)])
    np.testing.assert_array_equal(got, image)
    events = []
    stitch_tile_maps(grid, lambda t: image[0][t.outer.slices], progress=events.append)
    assert events[-1] == Progress(len(grid), len(grid), "decoding tiles", "tiles")
    with pytest.raises(ValueError, match="outer window"):
        stitch_tile_maps(grid, lambda t: image[:, :10, :10])


def test_one_global_post_processing_keeps_border_objects_whole(scene):
    """Stitched maps + one watershed: every object is one label (per-tile labelling splits)."""
    truth = scene
    grid = TileGrid(truth.shape, (256, 256), (48, 48))
    labels = segment_from_tile_maps(grid, lambda t: window_maps(truth, t), global_watershed)
    assert adjusted_rand_score(truth.ravel(), labels.ravel()) == 1.0
    assert split_objects(truth, labels) == []
    # the same maps post-processed tile by tile split the border objects: the test is decisive
    per_tile = np.zeros(truth.shape, np.int64)
    for t in grid:
        local = global_watershed(window_maps(truth, t))[t.inner_local.slices]
        per_tile[t.inner.slices] = np.where(local > 0, local + 1000 * t.index, 0)
    assert len(split_objects(truth, per_tile)) >= 5


def split_objects(truth, labels):
    """The true objects covered by more than one label."""
    return [i for i in range(1, truth.max() + 1) if len(np.unique(labels[truth == i])) > 1]


# --------------------------------------------------------------------------- segment() with SAM
def test_segment_runs_sam_tile_by_tile(scene):
    """SAM (random weights) through segment(): each tile encoded once, progress, stacks, reuse.

    Random weights give sprawling masks that touch the tiles' edges and are
    dropped, so the labels may be empty here; what objects come out of the
    tile logic is checked with the oracle above.
    """
    sam = fast_sam()
    image = (scene[:400, :300] > 0).astype(np.uint16) * 1000 + 100
    relaxed = AutoSettings(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                           min_area=0, max_area_fraction=1.0)
    calls = EncoderCalls(sam)
    events = []
    result = segment(sam, image, settings=relaxed, tiling=TILES, progress=events.append)
    assert calls.planes == 4  # every tile once
    assert result.labels.shape == image.shape and result.labels.dtype == np.uint32
    assert result.n_masks >= result.n_objects
    assert set(result.scores) == {(None, i) for i in np.unique(result.labels) if i}
    done = [e.done for e in events]
    assert done == sorted(done) and events[-1].done == events[-1].total
    assert any("tile 4 of 4" in e.stage for e in events)
    # a tiled stack, linked
    stack = np.stack([image, image])
    linking = AutoSettings(**{**relaxed.as_dict(), "link_slices": True})
    linked = segment(sam, stack, settings=linking, tiling=TILES)
    assert linked.slices == [0, 1] and linked.labels.shape == stack.shape
    # the tiles of an interactive session are reused
    session = TiledEmbeddings(sam, image, model_id="m", tiling=TILES)
    session.precompute()
    calls.reset()
    again = segment(sam, image, settings=relaxed, tiling=session)
    assert calls.planes == 0
    np.testing.assert_array_equal(again.labels, result.labels)


def test_segment_of_a_plane_that_fits_one_tile_is_untiled():
    sam = fast_sam()
    plane = np.random.default_rng(0).integers(0, 1000, (200, 180)).astype(np.uint16)
    relaxed = AutoSettings(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                           min_area=0, max_area_fraction=1.0)
    a = segment(sam, plane, settings=relaxed, tiling=Tiling.on((200, 180), (0, 0)))
    b = segment(sam, plane, settings=relaxed, tiling="off")
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.n_objects >= 1


def test_crop_layers_and_tiling_do_not_mix():
    plane = np.zeros((600, 560), np.uint16)
    with pytest.raises(SettingsError, match="Crop layers cannot be combined with tiling"):
        segment(fast_sam(), plane, settings=AutoSettings(crop_n_layers=1), tiling=TILES)
