"""Automatic instance segmentation (AIS): settings, post-processing, modes, caching, progress.

The workflow logic is tested with a stand-in decoder whose maps hold known
objects (the real decoder is tested against micro-sam in test_ais_parity.py);
the encoder is the small random SAM of the other tests.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_sam.errors import Cancelled, ImageFormatError, NoDecoderError, SettingsError
from napari_sam.runtime.loader import LoadedModel
from napari_sam.runtime.weights import models_with_decoder
from napari_sam.workflows import ais as ais_module
from napari_sam.workflows.ais import AISSettings, instances_from_maps, plane_embedding
from napari_sam.workflows.embeddings import DiskCache, EmbeddingStore, StackEmbeddings
from napari_sam.workflows.segment import AutoSettings, resolve_mode, segment, segment_iter

#: Discs (centre row, centre column, radius) as fractions of the image size.
DISCS = ((0.3, 0.3, 0.15), (0.3, 0.58, 0.15), (0.72, 0.6, 0.12))


def disc_maps(h: int, w: int, discs=DISCS) -> np.ndarray:
    """Exact decoder-like maps of discs: foreground, centre distance, boundary distance."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    fg = np.zeros((h, w), np.float32)
    center = np.ones((h, w), np.float32)
    boundary = np.ones((h, w), np.float32)
    for cy, cx, r in discs:
        radius = r * min(h, w)
        d = np.hypot(yy - cy * h, xx - cx * w) / radius
        inside = d <= 1.0
        fg[inside] = 1.0
        center[inside] = np.minimum(center[inside], d[inside])
        boundary[inside] = np.minimum(boundary[inside], d[inside])
    return np.stack([fg, center, boundary])


class DiscDecoder(nn.Module):
    """Stands in for the instance decoder: the maps of :data:`DISCS` at the image size."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.calls = 0

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def forward(self, features, input_size, original_size):
        assert features.shape == (1, 256, 64, 64)
        self.calls += 1
        return torch.from_numpy(disc_maps(*original_size))[None]


@pytest.fixture
def loaded(small_model):
    model = LoadedModel.wrap(small_model, "small-test")
    model.decoder = DiscDecoder()
    return model


@pytest.fixture
def plane():
    g = np.random.default_rng(0)
    return (g.random((48, 64)) * 1000).astype(np.uint16)


@pytest.fixture
def count_encodings(monkeypatch):
    """How often the image encoder runs (``embed_images`` calls)."""
    import napari_sam.predictors.predictor as predictor

    calls = []
    original = predictor.embed_images

    def counting(model, images, *args, **kwargs):
        calls.append(len(images))
        return original(model, images, *args, **kwargs)

    monkeypatch.setattr(predictor, "embed_images", counting)
    return calls


# --------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    "kwargs",
    [
        {"center_distance_threshold": 1.5},
        {"boundary_distance_threshold": -0.1},
        {"foreground_threshold": float("nan")},
        {"foreground_smoothing": -1.0},
        {"distance_smoothing": "2"},
        {"min_size": 2.5},
        {"min_size": -1},
        {"min_size": True},
    ],
)
def test_settings_out_of_range_say_so_in_one_sentence(kwargs):
    with pytest.raises(SettingsError) as info:
        AISSettings(**kwargs).check()
    assert "\n" not in str(info.value) and str(info.value).endswith(".")


def test_default_settings_are_micro_sams():
    s = AISSettings()
    assert (s.center_distance_threshold, s.boundary_distance_threshold) == (0.5, 0.5)
    assert (s.foreground_threshold, s.foreground_smoothing, s.distance_smoothing) == (0.5, 1.0, 1.6)
    assert s.min_size == 0
    s.check()


# --------------------------------------------------------------------------- post-processing
def test_touching_discs_become_separate_objects_numbered_by_seed_order():
    maps = disc_maps(120, 160)
    labels, n = instances_from_maps(*maps)
    assert labels.dtype == np.uint32 and labels.shape == (120, 160)
    assert n == 3
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    # each disc's centre carries its own id; ids follow the seeds row by row
    centres = [labels[int(cy * 120), int(cx * 160)] for cy, cx, _ in DISCS]
    assert centres == [1, 2, 3]
    assert (labels > 0).sum() == pytest.approx((maps[0] > 0.5).sum(), rel=0.05)


def test_small_objects_are_removed_and_ids_stay_dense():
    maps = disc_maps(120, 160, discs=((0.3, 0.3, 0.15), (0.8, 0.2, 0.04), (0.7, 0.7, 0.15)))
    labels, n = instances_from_maps(*maps, AISSettings(min_size=100))
    assert n == 3
    assert set(np.unique(labels)) == {0, 1, 2}
    assert labels[int(0.8 * 120), int(0.2 * 160)] == 0


def test_no_seed_means_no_object():
    maps = disc_maps(40, 40)
    maps[1:] = 1.0  # far from every centre and boundary
    labels, n = instances_from_maps(*maps)
    assert n == 0 and labels.dtype == np.uint32 and not labels.any()


def test_maps_of_different_shapes_are_refused():
    with pytest.raises(ImageFormatError, match="one shape"):
        instances_from_maps(np.zeros((4, 4)), np.zeros((4, 5)), np.zeros((4, 4)))


def test_3d_maps_are_segmented_as_a_volume():
    maps = np.stack([disc_maps(60, 60)] * 4, axis=1)  # (3, Z, Y, X)
    labels, n = instances_from_maps(*maps)
    assert labels.shape == (4, 60, 60) and n == 3


# --------------------------------------------------------------------------- modes
def test_auto_mode_is_ais_with_a_decoder_and_the_grid_without(loaded, small_model):
    assert resolve_mode("auto", loaded) == "ais"
    assert resolve_mode("auto", small_model) == "amg"
    assert resolve_mode("AIS", small_model, decoder=DiscDecoder()) == "ais"
    assert resolve_mode("amg", loaded) == "amg"
    with pytest.raises(SettingsError, match="auto, ais, amg"):
        resolve_mode("watershed", loaded)


def test_ais_without_decoder_names_the_models_that_have_one(small_model, plane):
    bare = LoadedModel.wrap(small_model, "vit_b", name="vit_b")
    with pytest.raises(NoDecoderError) as info:
        segment_iter(bare, plane, mode="ais")  # raised at the call, before any work
    message = str(info.value)
    assert "\n" not in message and message.count(". ") == 0
    assert "vit_b has no instance decoder" in message
    for name in models_with_decoder():
        assert name in message
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------------- segmenting
def test_2d_ais_result(loaded, plane):
    result = segment(loaded, plane, mode="auto")
    assert result.mode == "ais" and result.slices is None
    assert result.labels.dtype == np.uint32 and result.labels.shape == plane.shape
    assert result.n_objects == 3 and result.n_masks == 3
    assert result.scores == {}
    assert loaded.decoder.calls == 1


def test_rgb_image(loaded, plane):
    rgb = np.stack([plane, plane // 2, plane // 3], axis=-1)
    result = segment(loaded, rgb, rgb=True, mode="ais")
    assert result.labels.shape == plane.shape and result.n_objects == 3


def test_a_stack_of_rgb_planes_is_decoded_plane_by_plane_with_its_colours(loaded, plane):
    rgb = np.stack([np.stack([plane, plane // 2, plane // 3], axis=-1),
                    np.stack([plane[::-1], plane, plane // 4], axis=-1)])  # (2, 48, 64, 3)
    seen = []
    forward = loaded.decoder.forward

    def recording(features, *args):
        seen.append(features.detach().clone())
        return forward(features, *args)

    loaded.decoder.forward = recording
    result = segment(loaded, rgb, rgb=True, contrast_limits=(0, 1000), mode="ais",
                     settings=AutoSettings(link_slices=False))
    assert result.mode == "ais" and result.slices == [0, 1]
    assert [sorted(np.unique(s[s > 0]).tolist()) for s in result.labels] == [[1, 2, 3],
                                                                               [4, 5, 6]]
    in_stack, seen[:] = list(seen), []
    for z in range(2):  # the decoder saw exactly each colour plane's features
        segment(loaded, rgb[z], rgb=True, contrast_limits=(0, 1000), mode="ais")
    assert len(in_stack) == len(seen) == 2
    assert all(torch.equal(a, b) for a, b in zip(in_stack, seen))
    assert not torch.equal(in_stack[0], in_stack[1])


def test_stack_slices_get_their_own_ids_or_are_linked(loaded, plane):
    stack = np.stack([plane, plane[::-1], plane[:, ::-1]])
    separate = segment(loaded, stack, mode="ais", settings=AutoSettings(link_slices=False))
    assert separate.slices == [0, 1, 2]
    assert [sorted(np.unique(s[s > 0]).tolist()) for s in separate.labels] == [
        [1, 2, 3], [4, 5, 6], [7, 8, 9]
    ]
    linked = segment(loaded, stack, mode="ais", settings=AutoSettings(link_slices=True))
    assert all(sorted(np.unique(s[s > 0]).tolist()) == [1, 2, 3] for s in linked.labels)
    assert np.array_equal(linked.labels[0], linked.labels[2])
    some = segment(loaded, stack, mode="ais", slices=[2])
    assert some.slices == [2] and not some.labels[:2].any() and some.n_objects == 3


def test_progress_has_three_stages_per_plane(loaded, plane):
    events = []
    stack = np.stack([plane, plane])
    segment(loaded, stack, mode="ais", progress=events.append,
            settings=AutoSettings(link_slices=True))
    stages = [e.stage for e in events]
    assert stages == [
        "slice 0: encoding", "slice 0: decoding", "slice 0: watershed",
        "slice 1: encoding", "slice 1: decoding", "slice 1: watershed",
        "linking slices",
    ]
    assert [e.done for e in events] == [0, 1, 2, 3, 4, 5, 6]
    assert {e.total for e in events} == {6}
    assert [e.slice for e in events[:6]] == [0, 0, 0, 1, 1, 1]


def test_cancel_stops_between_stages(loaded, plane):
    events = []

    def cancel_after_two() -> bool:
        return len(events) >= 2

    with pytest.raises(Cancelled):
        segment(loaded, np.stack([plane, plane]), mode="ais", progress=events.append,
                should_cancel=cancel_after_two)
    assert loaded.decoder.calls == 0  # stopped before the first decoder pass


# --------------------------------------------------------------------------- one encoder pass
def test_embedding_store_and_disk_serve_ais(loaded, plane, count_encodings, tmp_path):
    store = EmbeddingStore()
    disk = DiskCache(tmp_path / "emb")
    first = segment(loaded, plane, mode="ais", store=store, disk=disk)
    assert count_encodings == [1] and len(store) == 1 and len(disk) == 1
    again = segment(loaded, plane, mode="ais", store=store, disk=disk)
    assert count_encodings == [1]  # from memory
    from_disk = segment(loaded, plane, mode="ais", store=EmbeddingStore(), disk=disk)
    assert count_encodings == [1] and disk.reads == 1
    assert np.array_equal(first.labels, again.labels)
    assert np.array_equal(first.labels, from_disk.labels)


def test_stack_embeddings_precomputed_elsewhere_are_reused(loaded, plane, count_encodings):
    """Embeddings made by the stack store (interactive work, ``napari-sam embed``) serve AIS."""
    stack = np.stack([plane, plane[::-1]])
    store = EmbeddingStore()
    contrast = (float(stack.min()), float(stack.max()))
    embeddings = StackEmbeddings(loaded.sam, stack, model_id=loaded.model_id, store=store,
                                 contrast=contrast)
    embeddings.precompute()
    assert count_encodings == [1, 1]
    segment(loaded, stack, mode="ais", store=store, contrast_limits=contrast)
    assert count_encodings == [1, 1]


def test_without_model_id_nothing_is_cached(small_model, plane, count_encodings):
    store = EmbeddingStore()
    segment(small_model, plane, mode="ais", decoder=DiscDecoder(), store=store)
    assert len(store) == 0 and count_encodings == [1]


def test_plane_embedding_equals_the_grid_generators(small_model, plane):
    """The encoder pass AIS uses gives the same embedding as SamPredictor.set_image."""
    from napari_sam.predictors.predictor import SamPredictor
    from napari_sam.workflows.image import to_sam_rgb

    emb = plane_embedding(small_model, plane, (0.0, 1000.0))
    predictor = SamPredictor(small_model)
    predictor.set_image(to_sam_rgb(plane, (0.0, 1000.0)))
    assert torch.allclose(emb.features, predictor.get_embedding().features, atol=1e-5)
    assert emb.original_size == plane.shape


def test_stages_are_named_for_users():
    assert ais_module.STAGES == ("encoding", "decoding", "watershed")


def test_describe_mentions_the_decoder(loaded):
    assert loaded.has_decoder
    assert loaded.describe().endswith(", AIS decoder")


def test_top_level_names(loaded, plane):
    import napari_sam

    for name in ("AISSettings", "AutoSettings", "segment_instances", "instance_maps",
                 "instances_from_maps", "InstanceDecoder", "load", "segment"):
        assert name in dir(napari_sam) and getattr(napari_sam, name) is not None
    result = napari_sam.segment_instances(loaded, plane, ais_settings=napari_sam.AISSettings())
    assert result.mode == "ais" and result.n_objects == 3


def test_planes_of_a_channel_image_use_ais(loaded, plane):
    """``segment_planes`` (channel choices, nD images) passes the mode through."""
    from napari_sam.workflows.planes import ImagePlanes
    from napari_sam.workflows.segment_planes import segment_planes

    image = np.stack([plane, plane[::-1]])  # (C, Y, X): two channels
    planes = ImagePlanes(image, channel_axis=0, channels=[0, 1])
    result = segment_planes(loaded, planes, mode="ais")
    assert result.mode == "ais" and result.n_objects == 3
    grid = segment_planes(loaded, planes, mode="amg",
                          settings=AutoSettings(points_per_side=2, min_area=0))
    assert grid.mode == "amg"
    assert loaded.decoder.calls == 1


def test_tiled_ais_stitches_decoder_maps_and_finds_border_objects_whole(loaded, monkeypatch):
    """AIS on a tiled plane: each tile's maps over its outer window, inner regions stitched,
    one watershed over the whole plane; an object cut by a tile border is one object, and
    the labels equal those of the untiled maps."""
    from napari_sam.workflows.tiled_embeddings import TiledEmbeddings
    from napari_sam.workflows.tiling import Tiling

    h, w = 96, 128
    # discs across the vertical and horizontal tile borders (tiles of 64x64 with a 16 halo)
    discs = ((0.3, 0.5, 0.2), (0.68, 0.25, 0.16), (0.7, 0.74, 0.14))
    truth = disc_maps(h, w, discs)
    plane = (np.random.default_rng(1).random((h, w)) * 1000).astype(np.uint16)
    tiled = TiledEmbeddings(
        loaded.sam, plane, model_id="small-test",
        tiling=Tiling(mode="on", tile_shape=(64, 64), halo=(16, 16)),
    )  # fmt: skip
    assert tiled.is_tiled and len(tiled.grid) == 4
    shown = {}
    get = tiled.get

    def get_and_note(z, tile, should_cancel=None):
        shown["window"] = tile.outer
        return get(z, tile, should_cancel)

    monkeypatch.setattr(tiled, "get", get_and_note)

    class WindowDecoder(DiscDecoder):
        def forward(self, features, input_size, original_size):
            self.calls += 1
            window = shown["window"]
            assert tuple(original_size) == window.shape
            return torch.from_numpy(truth[(slice(None), *window.slices)].copy())[None]

    loaded.decoder = WindowDecoder()
    events = []
    result = segment(loaded, plane, mode="ais", tiling=tiled, progress=events.append)
    expected, _ = instances_from_maps(*truth)
    assert result.mode == "ais" and result.n_objects == 3
    np.testing.assert_array_equal(result.labels, expected)
    assert loaded.decoder.calls == 4 and tiled.encoded == 4
    assert [e.stage for e in events][-1] == "watershed"

    # a stack: each slice tiled, ids offset by slice
    stack = np.stack([plane, plane])
    tiled3 = TiledEmbeddings(loaded.sam, stack, model_id="small-test",
                             tiling=Tiling(mode="on", tile_shape=(64, 64), halo=(16, 16)))
    get = tiled3.get
    monkeypatch.setattr(tiled3, "get", get_and_note)
    result = segment(loaded, stack, mode="ais", tiling=tiled3,
                     settings=AutoSettings(link_slices=False))
    assert result.labels.shape == (2, h, w) and result.n_objects == 6
