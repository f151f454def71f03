"""Prompts on tiled planes: routing, masks pasted at full resolution, border objects whole.

Whether an object crossing a tile border comes out whole depends on the
routing and window logic, not on SAM's weights (random weights segment
nothing meaningful). Those tests therefore use an *oracle* window predictor:
it sees only the pixels of the window it is given and returns the bright
connected component under the object's point (or the largest one in its box),
so an object cut by a window comes back cut, exactly as SAM would cut it.
SAM itself is checked separately: a tiled prediction equals SAM run directly
on the tile's pixels, pasted at the tile's place.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_sam.errors import PropagationError
from napari_sam.predictors.predictor import SamPredictor
from napari_sam.workflows.embeddings import DiskCache
from napari_sam.workflows.interactive import ObjectMask, compose_preview, predict_objects
from napari_sam.workflows.prompts import ObjectPrompt
from napari_sam.workflows.propagation import PropagationSettings, propagate_masks
from napari_sam.workflows.tiled_embeddings import TiledEmbeddings
from napari_sam.workflows.tiled_prompts import (
    TiledMask,
    TiledPromptPredictor,
    TiledSlicePredictor,
    compose_tiled_preview,
    cut_sides,
    propagate_tiled,
    route_object,
)
from napari_sam.workflows.tiling import TileGrid, Tiling, Window, tile_to_sam_rgb
from volume_models import EncoderCalls, fast_sam

SRC = Path(__file__).resolve().parents[1] / "src"
TESTS = Path(__file__).resolve().parent
TILES = Tiling.on((512, 512), (64, 64))
GRID = TileGrid((1200, 1000), (512, 512), (64, 64))


def click(x, y, label=1):
    xy = np.array([[float(x), float(y)]])
    return ObjectPrompt(point_coords=xy, point_labels=np.array([label]))


# --------------------------------------------------------------------------- routing
def test_a_click_goes_to_the_tile_it_falls_in():
    assert route_object(GRID, click(510, 300)).tile.index == 0
    assert route_object(GRID, click(515, 300)).tile.index == 1
    assert route_object(GRID, click(515, 520)).tile.index == 3
    r = route_object(GRID, click(515, 520))
    assert r.window == GRID.tile(3).outer


def test_points_go_to_the_tile_holding_most_of_them():
    two_in_tile_1 = ObjectPrompt(
        point_coords=np.array([[500.0, 100.0], [530.0, 110.0], [540.0, 90.0]]),
        point_labels=np.array([1, 1, 0]),
    )
    assert route_object(GRID, two_in_tile_1).tile.index == 1
    # tie (one point each): the tile whose centre is nearest to the positive points' centroid
    tie = ObjectPrompt(point_coords=np.array([[505.0, 100.0], [530.0, 100.0]]),
                       point_labels=np.array([1, 1]))
    assert route_object(GRID, tie).tile.index == 1


def test_boxes_go_to_a_tile_holding_them_or_to_a_window_of_their_own():
    inside_two = ObjectPrompt(box=np.array([480.0, 100.0, 560.0, 200.0]))
    assert route_object(GRID, inside_two).tile.index == 1  # overlaps tile 1's inner more
    spanning = ObjectPrompt(box=np.array([100.0, 100.0, 900.0, 300.0]))
    route = route_object(GRID, spanning)
    assert route.tile is None and route.window.contains_box(spanning.box)
    assert route.window.y0 % 32 == 0 and route.window.x0 % 32 == 0
    far_points = ObjectPrompt(point_coords=np.array([[100.0, 100.0], [900.0, 1100.0]]),
                              point_labels=np.array([1, 1]))
    route = route_object(GRID, far_points)
    assert route.tile is None and route.window.contains_xy(far_points.point_coords).all()


def test_cut_sides_ignore_the_image_border():
    mask = np.zeros((10, 10), bool)
    mask[0, 3] = mask[5, 9] = True
    assert cut_sides(mask, Window(0, 0, 10, 10), (100, 100)) == {"right"}
    assert cut_sides(mask, Window(20, 90, 30, 100), (100, 100)) == {"top"}


# --------------------------------------------------------------------------- SAM on tiles
def test_tiled_masks_are_sams_masks_on_the_tile_pasted_in_place():
    sam = fast_sam()
    g = np.random.default_rng(0)
    plane = g.integers(0, 4000, (1200, 1000)).astype(np.uint16)
    limits = (0.0, 4000.0)
    tiled = TiledEmbeddings(sam, plane, model_id="m", tiling=TILES, contrast=limits)
    objects = [click(515, 520), ObjectPrompt(box=np.array([600.0, 40.0, 700.0, 120.0])),
               click(980, 1150)]
    got = TiledPromptPredictor(sam, tiled, max_grow=0).predict(None, objects, candidate=1)
    for obj, res in zip(objects, got):
        tile = route_object(tiled.grid, obj).tile
        assert res.tile == tile.index and res.window == tile.outer
        direct = SamPredictor(sam)
        direct.set_image(tile_to_sam_rgb(plane[tile.outer.slices], limits))
        shift = np.array([tile.outer.x0, tile.outer.y0], float)
        local = ObjectPrompt(
            point_coords=None if obj.point_coords is None else obj.point_coords - shift,
            point_labels=obj.point_labels,
            box=None if obj.box is None else obj.box - np.tile(shift, 2),
        )
        (want,) = predict_objects(direct, [local], candidate=1)
        full = np.zeros(plane.shape, bool)
        full[tile.outer.slices] = want.mask
        # the tiled path decodes with the shared-image decoder: equal up to rounding
        assert np.count_nonzero(res.full(plane.shape) != full) <= full.size // 10_000
        assert want.mask.any() and res.candidate == 1
        assert res.score == pytest.approx(want.score, abs=1e-5)
    preview = compose_tiled_preview(got, plane.shape)
    np.testing.assert_array_equal(
        preview, compose_preview([r.full(plane.shape) for r in got], plane.shape)
    )


# --------------------------------------------------------------------------- border objects
class OraclePredictor(TiledPromptPredictor):
    """Segments the bright component under the first positive point, seeing only the window."""

    def __init__(self, image, embeddings, **kw):
        super().__init__(fast_sam(), embeddings, **kw)
        self.image = image
        self.windows: list[Window] = []

    def predict_window(self, z, window, objects, multimask, candidate, should_cancel=None):
        self.windows.append(window)
        pixels = self.image[window.slices] if z is None else self.image[z][window.slices]
        components, _ = ndimage.label(pixels > 0)
        out = []
        for obj in objects:
            if obj.point_coords is not None:
                x, y = np.rint(obj.point_coords[obj.point_labels == 1][0]).astype(int)
                lab = components[y, x]
            else:
                x0, y0, x1, y1 = np.rint(obj.box).astype(int)
                inside = components[y0 : y1 + 1, x0 : x1 + 1]
                ids, counts = np.unique(inside[inside > 0], return_counts=True)
                lab = ids[np.argmax(counts)]
            out.append(ObjectMask(components == lab, 1.0, 0, 1))
        return out


def disc(shape, cy, cx, r):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


@pytest.fixture(scope="module")
def border_objects():
    """Objects placed across tile borders of GRID (at x=512, y=512 and y=1024), apart."""
    shape = GRID.plane_shape
    objects = {
        "small disc on a vertical border": disc(shape, 200, 512, 40),  # radius < halo
        "small disc on a corner": disc(shape, 512, 512, 50),
        "large disc over a corner": disc(shape, 1000, 400, 150),  # radius > halo
        "long bar over two borders": np.zeros(shape, bool),
    }
    objects["long bar over two borders"][100:1150, 800:830] = True
    image = np.zeros(shape, np.uint16)
    for i, mask in enumerate(objects.values()):
        image[mask] = 1000 + i
    return image, objects


@pytest.mark.parametrize("name", [
    "small disc on a vertical border", "small disc on a corner", "large disc over a corner",
    "long bar over two borders",
])  # fmt: skip
def test_objects_across_tile_borders_are_not_split(border_objects, name):
    image, objects = border_objects
    truth = objects[name]
    tiled = TiledEmbeddings(fast_sam(), image, model_id="m", tiling=TILES, contrast=(0, 1))
    rows, cols = np.nonzero(truth)
    pick = len(rows) // 3  # a pixel of the object, not its centre
    point = click(cols[pick], rows[pick])
    oracle = OraclePredictor(image, tiled)
    (res,) = oracle.predict(None, [point])
    np.testing.assert_array_equal(res.full(image.shape), truth)
    tiles_touched = {t.index for t in GRID.tiles_overlapping(Window(
        int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1))}
    assert len(tiles_touched) >= 2  # it does cross a border
    if name.startswith("small"):
        assert res.grown == 0 and res.tile is not None  # the halo shows it whole
    else:
        assert res.grown >= 1 and res.tile is None  # a window centred on it
        # without growing, the same object is cut at the window edge: the test is decisive
        (cut,) = OraclePredictor(image, tiled, max_grow=0).predict(None, [point])
        assert cut.area < truth.sum() and cut_sides(cut.mask, cut.window, image.shape)
    # a box around the object gives it whole as well
    box = ObjectPrompt(box=np.array([cols.min(), rows.min(), cols.max(), rows.max()], float))
    (res_box,) = OraclePredictor(image, tiled).predict(None, [box])
    np.testing.assert_array_equal(res_box.full(image.shape), truth)


def test_propagation_through_a_tiled_stack_follows_a_border_object():
    """A tube drifting across tile borders is followed whole through every slice."""
    shape = (7, *GRID.plane_shape)
    truth = np.zeros(shape, bool)
    for z in range(shape[0]):
        truth[z] = disc(GRID.plane_shape, 480 + 12 * z, 470 + 15 * z, 90)  # radius > halo
    image = truth.astype(np.uint16) * 1000
    tiled = TiledEmbeddings(fast_sam(), image, model_id="m", tiling=TILES, contrast=(0, 1))
    slice_predictor = TiledSlicePredictor(fast_sam(), tiled)
    slice_predictor.tiled = OraclePredictor(image, tiled)
    result = propagate_masks(slice_predictor, truth[3], 3, shape[0])
    (obj,) = result.objects
    assert obj.slices == list(range(shape[0]))
    for z in range(shape[0]):
        np.testing.assert_array_equal(obj.masks[z], truth[z])


def test_propagate_tiled_runs_sam_on_the_tiles_it_needs():
    sam = fast_sam()
    g = np.random.default_rng(1)
    stack = g.integers(0, 3000, (4, 1200, 1000)).astype(np.uint16)
    seed = disc(stack.shape[1:], 300, 300, 30)
    calls = EncoderCalls(sam)
    settings = PropagationSettings(min_score=0.0, min_overlap=0.0, min_area=0)
    result = propagate_tiled(sam, stack, seed, 1, model_id="m", tiling=TILES, settings=settings)
    assert result.shape == stack.shape
    assert calls.planes >= 1
    assert calls.planes < 3 * 6  # not every tile of every slice
    with pytest.raises(PropagationError, match="not available on tiled stacks"):
        propagate_tiled(sam, stack, seed, 1, tiling=TILES,
                        settings=PropagationSettings(use_mask=True))
    with pytest.raises(PropagationError, match="planes of shape"):
        propagate_tiled(sam, stack, seed[:100], 1, tiling=TILES)


def test_tiled_mask_helpers():
    m = TiledMask(mask=np.eye(4, dtype=bool), window=Window(10, 20, 14, 24), score=0.5)
    assert m.area == 4 and m.bbox() == Window(10, 20, 14, 24)
    assert m.full((30, 30))[12, 22] and m.full((30, 30)).sum() == 4
    assert TiledMask(np.zeros((3, 3), bool), Window(0, 0, 3, 3), 0.0).bbox() is None


# --------------------------------------------------------------------------- memory
MEMORY_SCRIPT = r"""
import gc, resource, sys
import numpy as np
from volume_models import EncoderCalls, fast_sam
from napari_sam.workflows.embeddings import EmbeddingStore
from napari_sam.workflows.prompts import ObjectPrompt
from napari_sam.workflows.tiled_embeddings import TiledEmbeddings
from napari_sam.workflows.tiled_prompts import TiledPromptPredictor, compose_tiled_preview

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

sam = fast_sam()
warm = np.random.default_rng(1).integers(0, 4000, (2100, 2100), dtype=np.uint16)
TiledPromptPredictor(sam, TiledEmbeddings(sam, warm, model_id="w")).predict(
    None, [ObjectPrompt(point_coords=np.array([[700.0, 700.0]]), point_labels=np.array([1]))])
plane = np.random.default_rng(0).integers(100, 4000, (8192, 8192), dtype=np.uint16)
gc.collect()
base = peak_mb()
store = EmbeddingStore(max_mb=40)
tiled = TiledEmbeddings(sam, plane, model_id="m", tiling="auto", store=store)
calls = EncoderCalls(sam)
objects = [ObjectPrompt(point_coords=np.array([[770.0, 4000.0]]), point_labels=np.array([1])),
           ObjectPrompt(box=np.array([5000.0, 5000.0, 5100.0, 5080.0]))]
masks = TiledPromptPredictor(sam, tiled).predict(None, objects)
preview = compose_tiled_preview(masks, plane.shape)
print(peak_mb() - base, calls.planes, len(tiled.grid), store.nbytes, store.max_bytes,
      max(m.window.area for m in masks))
"""


def test_an_8192_plane_segments_with_bounded_memory():
    """A click on an 8192 x 8192 uint16 plane: tiles only, no full-plane float copy.

    Random weights make SAM's masks sprawl, so the windows grow to their
    largest (4096 pixels a side): the worst case. One float32 copy of the
    plane alone would take 256 MiB more than the peak allowed here.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600, check=True).stdout.split()
    growth_mb, encoded, n_tiles, nbytes, max_bytes, largest = (float(v) for v in out)
    assert n_tiles == 121  # 768-pixel tiles: tiling turned on by itself
    assert encoded <= 6  # two objects, each at most one tile and two grown windows
    assert nbytes <= max_bytes
    assert largest <= 4096 * 4096
    assert growth_mb < 256, f"peak memory grew by {growth_mb:.0f} MiB"


# --------------------------------------------------------------------------- a session
def test_a_session_on_a_3000_by_2500_plane(tmp_path):
    """What the widgets do, without napari: click by a border, commit, automatic run."""
    from napari_sam.workflows.interactive import plan_commit
    from napari_sam.workflows.labels import apply_plan
    from napari_sam.workflows.segment import AutoSettings, segment

    sam = fast_sam()
    plane = np.random.default_rng(2).integers(100, 3000, (3000, 2500)).astype(np.uint16)
    tiles = TiledEmbeddings(sam, plane, model_id="m", disk=tmp_path / "cache")
    assert tiles.is_tiled and len(tiles.grid) == 4 * 4  # tiled by itself (> 2048 pixels)
    predictor = TiledPromptPredictor(sam, tiles, max_grow=0)
    obj = click(767, 1540)  # one pixel left of the border between tiles 8 and 9
    assert predictor.windows_to_encode(None, [obj]) == [tiles.grid.tile(8).outer]
    masks = predictor.predict(None, [obj])
    preview = compose_tiled_preview(masks, plane.shape)
    assert set(np.unique(preview)) == {0, 1}  # one object
    labels = np.zeros(plane.shape, np.uint32)
    labels = apply_plan(labels, plan_commit(labels, preview, next_id=1))
    assert set(np.unique(labels)) == {0, 1}
    assert tiles.encoded == 1 and len(DiskCache(tmp_path / "cache")) == 1
    relaxed = AutoSettings(points_per_side=1, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    calls = EncoderCalls(sam)
    result = segment(sam, plane, settings=relaxed, tiling=tiles)
    assert calls.planes == 15  # the clicked tile is cached
    assert result.labels.shape == plane.shape
