"""Tile geometry, when tiling turns on, bad tile settings, and how a tile becomes SAM input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_sam.errors import SettingsError
from napari_sam.workflows.image import to_sam_rgb
from napari_sam.workflows.samples import make_nuclei_2d
from napari_sam.workflows.tiling import (
    AUTO_TILING_THRESHOLD,
    DEFAULT_HALO,
    DEFAULT_TILE_SHAPE,
    TileGrid,
    Tiling,
    Window,
    minmax_to_uint8,
    tile_to_sam_rgb,
)


# --------------------------------------------------------------------------- geometry
@pytest.mark.parametrize(
    "shape, tile, halo",
    [((2048, 1536), (512, 512), (64, 64)), ((1000, 700), (384, 256), (32, 100)),
     ((4096, 4096), DEFAULT_TILE_SHAPE, DEFAULT_HALO), ((300, 2500), (768, 768), (128, 0))],
)  # fmt: skip
def test_grid_equals_micro_sams_blocking(shape, tile, halo):
    """Same tiles, same ids, same inner/outer blocks as micro-sam (bioimage_cpp Blocking)."""
    from bioimage_cpp.utils import Blocking

    grid = TileGrid(shape, tile, halo)
    blocking = Blocking([0, 0], list(shape), list(tile))
    assert len(grid) == blocking.number_of_blocks
    for t in grid:
        ref = blocking.get_block_with_halo(t.index, list(halo))
        assert (t.outer.y0, t.outer.x0) == tuple(ref.outer_block.begin)
        assert (t.outer.y1, t.outer.x1) == tuple(ref.outer_block.end)
        assert (t.inner.y0, t.inner.x0) == tuple(ref.inner_block.begin)
        assert (t.inner.y1, t.inner.x1) == tuple(ref.inner_block.end)
        local = t.inner_local
        assert (local.y0, local.x0) == tuple(ref.inner_block_local.begin)
        assert (local.y1, local.x1) == tuple(ref.inner_block_local.end)


def test_inner_tiles_partition_the_plane_and_outer_windows_add_the_halo():
    grid = TileGrid((1000, 700), (384, 256), (32, 100))
    cover = np.zeros(grid.plane_shape, int)
    for t in grid:
        cover[t.inner.slices] += 1
        o, i = t.outer, t.inner
        assert o.y0 == max(0, i.y0 - 32) and o.y1 == min(1000, i.y1 + 32)
        assert o.x0 == max(0, i.x0 - 100) and o.x1 == min(700, i.x1 + 100)
    assert (cover == 1).all()
    assert grid.tile_at(383.4, 255.4).index == 0
    assert grid.tile_at(383.6, 255.6).index == grid.n_cols + 1
    assert grid.tile_at(-5, 10_000).index == grid.n_cols - 1  # clamped into the plane
    assert [t.index for t in grid.tiles_overlapping(Window(380, 250, 390, 260))] == [0, 1, 3, 4]


def test_default_tile_is_seen_at_full_resolution():
    th, tw = DEFAULT_TILE_SHAPE
    hy, hx = DEFAULT_HALO
    assert (th + 2 * hy, tw + 2 * hx) == (1024, 1024)
    grid = Tiling().grid((4096, 4096))
    assert grid is not None and grid.max_outer_shape == (1024, 1024)


# --------------------------------------------------------------------------- when it turns on
def test_auto_tiles_only_planes_above_the_threshold():
    auto = Tiling()
    assert auto.grid((AUTO_TILING_THRESHOLD, AUTO_TILING_THRESHOLD)) is None
    assert auto.grid((AUTO_TILING_THRESHOLD + 1, 100)) is not None
    assert len(auto.grid((3000, 2500))) == 4 * 4
    # a low threshold, but the plane fits in one tile: not tiled
    assert Tiling(threshold=100).grid((700, 700)) is None
    assert Tiling(threshold=100).grid((800, 700)) is not None
    assert Tiling.off().grid((10_000, 10_000)) is None
    assert Tiling.coerce(None).mode == Tiling.coerce(False).mode == "off"
    assert Tiling.coerce("auto") == Tiling()
    assert Tiling.coerce(True).mode == "on"


def test_settings_round_trip_as_json():
    import json

    tiling = Tiling.on((512, 640), (32, 64), normalization="minmax")
    assert Tiling.coerce(json.loads(json.dumps(tiling.as_dict()))) == tiling
    with pytest.raises(SettingsError, match="Unknown tiling setting: tile"):
        Tiling.coerce({"tile": 512})


def test_on_tiles_any_plane_larger_than_a_tile():
    on = Tiling.on((256, 256), (32, 32))
    assert len(on.grid((300, 200))) == 2  # taller than a tile: two tiles
    assert len(on.grid((256, 256))) == 1  # exactly one tile: allowed
    assert "tiling on" in on.describe() and "256x256" in on.describe()


def _one_sentence(message: str) -> None:
    assert message.endswith(".") and "\n" not in message
    assert message.count(". ") == 0, message


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"tile_shape": (0, 512)}, "tile shape must be at least 64"),
        ({"tile_shape": (-512, 512)}, "tile shape must be at least 64"),
        ({"tile_shape": (512, 512), "halo": (-1, 0)}, "halo must be zero or more"),
        ({"tile_shape": (512, 512), "halo": (256, 64)}, "less than half the tile"),
        ({"tile_shape": (512, 300), "halo": (64, 150)}, "less than half the tile"),
        ({"tile_shape": (512.5, 512)}, "two whole numbers"),
        ({"tile_shape": (512, 512, 3)}, "two whole numbers"),
        ({"mode": "sometimes"}, "'auto', 'on' or 'off'"),
        ({"normalization": "zscore"}, "'contrast' or 'minmax'"),
        ({"threshold": 0}, "threshold must be a positive"),
    ],
)
def test_bad_tile_settings_are_one_sentence(kwargs, words):
    with pytest.raises(SettingsError) as err:
        Tiling(**kwargs)
    assert words in str(err.value)
    _one_sentence(str(err.value))


def test_tile_larger_than_the_image_is_one_sentence():
    with pytest.raises(SettingsError) as err:
        Tiling.on((1024, 1024), (128, 128)).grid((800, 600))
    assert "larger than the image (800 x 600)" in str(err.value)
    _one_sentence(str(err.value))


# --------------------------------------------------------------------------- tile -> SAM input
@pytest.mark.parametrize(
    "kind", ["uint16", "float", "uint8-rgb", "rgba", "two-channels", "constant", "tall"]
)
def test_minmax_matches_micro_sam(kind):
    """The micro-sam compatible normalization is micro-sam's ``_to_image``, bit for bit."""
    from micro_sam.util import _to_image

    g = np.random.default_rng(3)
    if kind == "uint16":
        tile, rgb = make_nuclei_2d(shape=(96, 80), n=4), False
    elif kind == "float":
        tile, rgb = g.normal(3.0, 2.0, (50, 70)).astype(np.float32), False
    elif kind == "uint8-rgb":
        tile, rgb = g.integers(10, 200, (40, 30, 3)).astype(np.uint8), True
    elif kind == "rgba":
        tile, rgb = g.integers(0, 4000, (40, 30, 4)).astype(np.uint16), True
    elif kind == "two-channels":
        tile, rgb = g.integers(0, 4000, (40, 30, 2)).astype(np.uint16), True
    elif kind == "tall":  # converted in several strips of rows
        tile, rgb = g.normal(100.0, 30.0, (700, 90)).astype(np.float32), False
    else:
        tile, rgb = np.full((20, 20), 7, np.uint16), False
    with warnings.catch_warnings():  # micro-sam warns that it drops the alpha channel
        warnings.simplefilter("ignore", UserWarning)
        ref = _to_image(tile)
    ours = minmax_to_uint8(tile, rgb=rgb)
    assert ours.dtype == np.uint8 and ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)
    if kind != "constant":
        assert ours.max() == 254 or ours.max() == 255  # the range is used (truncation)


def test_contrast_tiles_are_crops_of_the_whole_plane_conversion():
    """With the image's contrast limits, a tile is exactly the crop of the untiled input."""
    plane = make_nuclei_2d(shape=(700, 260), n=12)
    limits = (float(plane.min()), float(plane.max()))
    whole = to_sam_rgb(plane, limits)
    for t in TileGrid(plane.shape, (512, 128), (16, 16)):  # tall tiles: several strips
        tile = tile_to_sam_rgb(plane[t.outer.slices], limits)
        np.testing.assert_array_equal(tile, whole[t.outer.slices])
