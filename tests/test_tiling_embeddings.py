"""Tile embeddings: on demand, cached per (plane, tile), precomputed, cancelled, lazy, parity.

Plumbing tests use ``fast_sam`` (the small decoder with a pooling encoder, see
volume_models.py); fidelity tests use the small real ViT (``small_pair``) and
micro-sam's own tiled embedding code on identical weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.errors import Cancelled
from napari_sam.predictors.predictor import SamPredictor
from napari_sam.runtime.files import content_hash
from napari_sam.workflows.embeddings import DiskCache, EmbeddingKey, EmbeddingStore
from napari_sam.workflows.image import to_sam_rgb
from napari_sam.workflows.interactive import install_cancel_hooks, predict_objects
from napari_sam.workflows.prompts import ObjectPrompt
from napari_sam.workflows.samples import make_nuclei_2d
from napari_sam.workflows.tiled_embeddings import TiledEmbeddings
from napari_sam.workflows.tiled_prompts import TiledPromptPredictor
from napari_sam.workflows.tiling import Tiling
from volume_models import EncoderCalls, fast_sam

TILES = Tiling.on((512, 512), (64, 64))


@pytest.fixture(scope="module")
def plane():
    return make_nuclei_2d(shape=(1200, 1000), n=40, seed=5)


@pytest.fixture
def sam():
    return fast_sam()


def click(x, y):
    return ObjectPrompt(point_coords=np.array([[float(x), float(y)]]), point_labels=np.array([1]))


# --------------------------------------------------------------------------- one tile == untiled
def test_a_plane_that_fits_one_tile_gives_exactly_the_untiled_result(small_model):
    plane = make_nuclei_2d(shape=(300, 260), n=12, seed=2)
    limits = (float(plane.min()), float(plane.max()))
    tiled = TiledEmbeddings(small_model, plane, model_id="m", tiling="auto", contrast=limits)
    assert not tiled.is_tiled and len(tiled.grid) == 1
    tile = tiled.grid.tile(0)
    # the key is the untiled key (same hash of the same pixels): caches are shared
    assert tiled.key(None, tile) == EmbeddingKey(content_hash(plane), None, "m", limits)
    ref = SamPredictor(small_model)
    ref.set_image(to_sam_rgb(plane, limits))
    emb = tiled.get(None, tile)
    assert torch.equal(emb.features, ref.features)
    objects = [click(130, 70), ObjectPrompt(box=np.array([20.0, 30.0, 120.0, 160.0]))]
    want = predict_objects(ref, objects)
    got = TiledPromptPredictor(small_model, tiled).predict(None, objects)
    for w, g in zip(want, got):
        assert g.window.shape == plane.shape and g.grown == 0
        # the shared-image decoder of the tiled path: SAM's result up to rounding
        assert np.count_nonzero(g.full(plane.shape) != w.mask) <= w.mask.size // 10_000
        assert g.score == pytest.approx(w.score, abs=1e-5)
    # "on" with a tile exactly the plane's size: one tile as well
    assert len(Tiling.on((300, 260), (0, 0)).grid(plane.shape)) == 1


# --------------------------------------------------------------------------- on demand
def test_a_click_encodes_only_the_tile_it_needs(sam, plane):
    tiled = TiledEmbeddings(sam, plane, model_id="m", tiling=TILES)
    assert len(tiled.grid) == 6
    predictor = TiledPromptPredictor(sam, tiled)
    calls = EncoderCalls(sam)
    obj = click(500, 300)  # tile 0, near the border with tile 1
    assert predictor.windows_to_encode(None, [obj]) == [tiled.grid.tile(0).outer]
    tiled.get(None, tiled.grid.tile(0))
    assert calls.planes == 1
    assert predictor.windows_to_encode(None, [obj]) == []
    tiled.get(None, tiled.grid.tile(0))  # cached
    assert calls.planes == 1
    tiled.get(None, tiled.grid.tile(5))
    assert calls.planes == 2 and tiled.encoded == 2
    assert len(tiled.missing()) == 4


def test_tiles_are_kept_per_plane_and_tile_in_store_and_disk(sam, tmp_path):
    stack = np.stack([make_nuclei_2d(shape=(700, 600), n=20, seed=s) for s in range(3)])
    disk = DiskCache(tmp_path / "cache")
    tiled = TiledEmbeddings(sam, stack, model_id="m", tiling=TILES, disk=disk)
    assert tiled.slices == [0, 1, 2] and len(tiled.grid) == 4
    calls = EncoderCalls(sam)
    assert tiled.precompute(slices=[1]) == 4
    assert calls.planes == 4 and len(disk) == 4
    assert tiled.missing() == [(z, t) for z in (0, 2) for t in tiled.grid]
    # a new session with the same disk cache encodes only what is missing
    again = TiledEmbeddings(sam, stack, model_id="m", tiling=TILES, disk=disk)
    calls.reset()
    assert again.precompute() == 8
    assert calls.planes == 8 and len(disk) == 12 and again.missing() == []
    calls.reset()
    assert again.precompute() == 0 and calls.planes == 0
    emb = again.get(2, again.grid.tile(3))
    assert calls.planes == 0 and emb.original_size == again.grid.tile(3).outer.shape
    # keys: slice, model and contrast are in the key; pixels are hashed with their halo
    k = again.key(2, again.grid.tile(3))
    assert k.slice == 2 and k.model_id == "m" and k.contrast == again.contrast
    assert k.data_hash == content_hash(stack[2][again.grid.tile(3).outer.slices])
    minmax = TiledEmbeddings(sam, stack, model_id="m", tiling=Tiling.on(
        (512, 512), (64, 64), normalization="minmax"))
    km = minmax.key(2, minmax.grid.tile(3))
    assert km.data_hash == f"{k.data_hash}/minmax" and km.contrast is None


def test_store_budget_is_respected(sam, plane):
    store = EmbeddingStore(max_mb=9)  # two 4 MiB tiles
    tiled = TiledEmbeddings(sam, plane, model_id="m", tiling=TILES, store=store)
    assert tiled.precompute() == 6
    assert len(store) == 2 and store.nbytes <= store.max_bytes


def test_cancel_during_precompute_keeps_finished_tiles_and_nothing_half(sam, plane, tmp_path):
    disk = DiskCache(tmp_path / "cache")
    tiled = TiledEmbeddings(sam, plane, model_id="m", tiling=TILES, disk=disk, batch_size=1)
    events = []

    def progress(event):
        events.append(event)

    def should_cancel():
        return len(events) > 3  # the start event and three tiles

    with pytest.raises(Cancelled, match="after 3 of 6 tiles"):
        tiled.precompute(progress=progress, should_cancel=should_cancel)
    assert len(disk) == 3
    assert not [p for p in disk.root.iterdir() if p.name.startswith(".")]  # no partial files
    assert all(disk.verify(tiled.key(None, t)) for z, t in [(None, tiled.grid.tile(i))
                                                            for i in range(3)])
    assert [t.index for _, t in tiled.missing()] == [3, 4, 5]
    calls = EncoderCalls(sam)
    assert tiled.precompute() == 3 and calls.planes == 3


def test_cancel_while_encoding_a_tile_stores_nothing(sam, plane):
    install_cancel_hooks(sam)
    tiled = TiledEmbeddings(sam, plane, model_id="m", tiling=TILES)
    with pytest.raises(Cancelled):
        tiled.get(None, tiled.grid.tile(2), should_cancel=lambda: True)
    assert len(tiled.store) == 0 and tiled.encoded == 0


# --------------------------------------------------------------------------- lazy images
class RecordingArray:
    """An array-like that records every index it is read with (a stand-in for zarr)."""

    def __init__(self, array):
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.ndim = array.ndim
        self.reads = []

    def __getitem__(self, index):
        self.reads.append(index)
        return self.array[index]


def test_lazy_images_are_read_tile_by_tile(sam):
    stack = np.stack([make_nuclei_2d(shape=(900, 700), n=10, seed=s) for s in range(2)])
    lazy = RecordingArray(stack)
    limits = (float(stack.min()), float(stack.max()))
    tiled = TiledEmbeddings(sam, lazy, model_id="m", tiling=TILES, contrast=limits)
    predictor = TiledPromptPredictor(sam, tiled, max_grow=0)  # random masks would grow
    predictor.predict(1, [click(520, 100)])
    assert lazy.reads, "nothing was read"
    for z, ys, xs in lazy.reads:
        assert z == 1
        assert (ys.stop - ys.start) * (xs.stop - xs.start) <= 640 * 640  # one outer window
    # dask works the same way
    import dask.array as da

    tiled_dask = TiledEmbeddings(sam, da.from_array(stack, chunks=(1, 256, 256)), model_id="m",
                                 tiling=TILES, contrast=limits)
    a = tiled_dask.get(0, tiled_dask.grid.tile(3))
    b = TiledEmbeddings(sam, stack, model_id="m", tiling=TILES, contrast=limits).get(
        0, tiled.grid.tile(3))
    assert torch.equal(a.features, b.features)


# --------------------------------------------------------------------------- micro-sam parity
@pytest.mark.slow
def test_tile_embeddings_equal_micro_sams(small_pair):
    """Per-tile embeddings equal micro-sam's tiled precompute (``"minmax"`` normalization).

    A realistic 2048 x 1536 uint16 plane of nuclei, 512-pixel tiles with a
    64-pixel halo (12 tiles, border tiles smaller), the small ViT with one set
    of random weights in both implementations.
    """
    import micro_sam.util as mu
    from segment_anything import SamPredictor as RefPredictor

    ref, ours, _ = small_pair
    plane = make_nuclei_2d(shape=(2048, 1536), n=300, seed=3)
    rp = RefPredictor(ref)
    rp.model_type, rp.model_name = "vit_b", "random"  # micro-sam writes these into its signature
    embs = mu.precompute_image_embeddings(rp, plane, tile_shape=(512, 512), halo=(64, 64))
    features = embs["features"]
    tiled = TiledEmbeddings(ours, plane, model_id="random", tiling=Tiling.on(
        (512, 512), (64, 64), normalization="minmax"))
    assert len(tiled.grid) == len(features) == 12
    means = []
    for tile in tiled.grid:
        r = features[str(tile.index)]
        want = np.asarray(r[:])
        got = tiled.get(None, tile)
        assert tuple(r.attrs["original_size"]) == got.original_size == tile.outer.shape
        assert tuple(r.attrs["input_size"]) == got.input_size
        assert np.abs(want).mean() > 0.1
        np.testing.assert_allclose(got.features.numpy(), want, atol=1e-4, rtol=0)
        means.append(want.mean(axis=(0, 2, 3)))
    # the tiles' embeddings differ (the comparison is not of one repeated answer)
    assert np.ptp(np.stack(means), axis=0).max() > 1e-3


# --------------------------------------------------------------------------- nD and channels
def test_images_with_more_axes_and_channels_are_tiled_plane_by_plane(sam):
    from napari_sam.workflows.planes import ImagePlanes

    g = np.random.default_rng(4)
    movie = g.integers(0, 4000, (2, 3, 700, 600)).astype(np.uint16)  # (T, Z, Y, X)
    tiled = TiledEmbeddings(sam, movie, model_id="m", tiling=TILES)
    assert tiled.shape == movie.shape and len(tiled.slices) == 6 and tiled.slices[4] == (1, 1)
    tile = tiled.grid.tile(3)
    key = tiled.key((1, 2), tile)
    assert key.slice == (1, 2) and key.data_hash == content_hash(movie[1, 2][tile.outer.slices])
    # a channel axis with two channels chosen: each tile shows SAM exactly its crop of the plane
    cells = g.integers(0, 3000, (700, 3, 600)).astype(np.uint16)  # (Y, C, X)
    planes = ImagePlanes(cells, channel_axis=1, channels=[2, 0],
                         contrast=[(0, 2500), (100, 3000)])
    tiled = TiledEmbeddings(sam, planes, model_id="m", tiling=TILES)
    whole = planes.sam_image(None)
    for t in tiled.grid:
        np.testing.assert_array_equal(tiled.sam_input(None, t), whole[t.outer.slices])
    assert tiled.key(None, tile).channels == (0, 1)  # SAM's slots: the hash says which
    layers = ImagePlanes([cells[:, 2], cells[:, 0]], contrast=[(0, 2500), (100, 3000)])
    assert TiledEmbeddings(sam, layers, model_id="m", tiling=TILES).key(None, tile) == \
        tiled.key(None, tile)
    assert tiled.key(None, tile).contrast == (0.0, 2500.0, 100.0, 3000.0)
    with pytest.raises(Exception, match="brings its own channels"):
        TiledEmbeddings(sam, planes, model_id="m", rgb=True)
