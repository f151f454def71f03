"""nD images and channels (workflows.planes, workflows.channels, EmbeddingKey index/channels).

Real data: the nuclei sample (60 × 256 × 256 uint16) made into a (T, Z, Y, X)
time-lapse and a (C, Z, Y, X) two-channel stack. Propagation along an axis is
compared with :func:`propagate` on the same planes cut out as a plain stack
(fast stand-in encoder; the rule itself is tested in test_propagation.py).
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from bio_samples import sample
from napari_sam.errors import ImageFormatError
from napari_sam.predictors.predictor import SamPredictor
from napari_sam.workflows.channels import channels_to_rgb, check_channels
from napari_sam.workflows.embeddings import (
    DiskCache,
    EmbeddingKey,
    EmbeddingStore,
    StackEmbeddings,
    _key_json,
)
from napari_sam.workflows.image import to_sam_rgb
from napari_sam.workflows.planes import (
    AxisEmbeddings,
    ImagePlanes,
    displayed_layer_axes,
    plan_write_along,
    plane_geometry,
    plane_prompts,
    propagate_along,
)
from napari_sam.workflows.prompts import affine_from_scale_translate, slice_prompts
from napari_sam.workflows.propagation import PropagationSettings, propagate
from volume_models import fast_sam


@pytest.fixture(scope="module")
def nuclei():
    return np.asarray(sample("nuclei.tif"))


@pytest.fixture(scope="module")
def tzyx(nuclei):
    """(T=3, Z=20, Y, X): three time points, each a 20-slice block of the sample."""
    return nuclei[:60].reshape(3, 20, 256, 256)


# --------------------------------------------------------------------------- embedding keys
def test_format_1_keys_are_unchanged():
    """Digests and JSON of 2D/stack keys are those written before tuple indices existed,
    so existing disk-cache files are found and pass their key check."""
    old = {
        ("abc", 3, "vit_b", (0.0, 4095.0)): (
            "033ee8dfe8d89ec9ec3d95d69c692043",
            '{"contrast": [0.0, 4095.0], "data_hash": "abc", "model_id": "vit_b", "slice": 3}',
        ),
        ("abc", None, "vit_t@bfloat16", None): (
            "e6be886f525d1d97c29cfdd60275eafa",
            '{"contrast": null, "data_hash": "abc", "model_id": "vit_t@bfloat16", "slice": null}',
        ),
    }
    for args, (digest, text) in old.items():
        key = EmbeddingKey(*args)
        assert key.digest() == digest and _key_json(key) == text
    assert EmbeddingKey("abc", (3,), "vit_b", (0, 4095)) == EmbeddingKey(*next(iter(old)))
    assert EmbeddingKey("abc", (), "m", None).slice is None
    four_d = EmbeddingKey("abc", (1, 3), "vit_b", (0, 1, 2, 3), channels=(1, 2))
    assert four_d.index == (1, 3) and four_d.digest() not in {d for d, _ in old.values()}
    assert EmbeddingKey("abc", (1, 3), "vit_b", (0, 1, 2, 3)) != four_d
    with pytest.raises(ValueError, match="one \\(low, high\\) pair per channel"):
        EmbeddingKey("abc", 1, "m", (0, 1), channels=(0, 1))


def test_tuple_and_channel_keys_round_trip_through_the_disk_cache(tmp_path, nuclei):
    import torch

    from napari_sam.predictors.predictor import ImageEmbedding

    cache = DiskCache(tmp_path)
    key = EmbeddingKey("h", (2, 5), "vit_t", (10, 20, 30, 40), channels=(1, 0))
    emb = ImageEmbedding(torch.randn(1, 256, 64, 64), (256, 256), (1024, 1024))
    cache.put(key, emb)
    back = cache.get(key)
    assert back is not None and back.original_size == (256, 256)
    other = EmbeddingKey("h", (2, 5), "vit_t", (10, 20, 30, 40), channels=(0, 1))
    assert cache.get(other) is None and cache.corrupted == 0


# --------------------------------------------------------------------------- geometry
def test_geometry_of_common_layouts():
    g = plane_geometry((4, 6, 32, 48))
    assert g.shape == (4, 6, 32, 48) and g.leading_shape == (4, 6) and g.plane_shape == (32, 48)
    assert g.initial_index() == (1, 2) and g.n_planes == 24
    c = plane_geometry((2, 6, 32, 48), channel_axis=0)
    assert c.shape == (6, 32, 48) and c.n_channels == 2 and c.layer_ndim == 4
    assert c.data_slicer((3,), 1) == (1, 3, slice(None), slice(None))
    mid = plane_geometry((6, 32, 3, 48), channel_axis=2)
    assert mid.shape == (6, 32, 48) and mid.layer_axis(1) == 1 and mid.layer_axis(2) == 3
    rgb = plane_geometry((5, 32, 48, 3), rgb=True)
    assert rgb.shape == (5, 32, 48) and rgb.layer_ndim == 3
    assert plane_geometry((32, 48)).leading_shape == ()
    assert displayed_layer_axes((3, 4), world_ndim=5, layer_ndim=4) == (2, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": (2, 5, 64, 64, 3)}, "no obvious plane.*channel_axis=4"),
        ({"shape": (2, 5, 64, 64), "displayed": (1, 2, 3)}, "shows 3 axes at once.*2D view"),
        ({"shape": (2, 5, 64, 64), "displayed": (1, 3)}, "shows axes \\(1, 3\\).*last two axes"),
        ({"shape": (2, 64, 64), "channel_axis": 3}, "channel axis 3 does not exist"),
        ({"shape": (3, 64), "channel_axis": 0}, "no 2D plane"),
        ({"shape": (2, 64, 64, 5), "rgb": True}, "3 or 4 colour values"),
        ({"shape": (2, 64, 0)}, "empty"),
        ({"shape": (2, 64, 64), "dtype": "complex64"}, "not a real number type"),
    ],
)
def test_bad_geometry_is_one_sentence(kwargs, message):
    with pytest.raises(ImageFormatError, match=message) as info:
        plane_geometry(**kwargs)
    assert str(info.value).count(". ") == 0  # one sentence


def test_bad_channel_choices_are_one_sentence(nuclei):
    stack = nuclei[:4, :64, :64]
    with pytest.raises(ImageFormatError, match=r"Channel 4 does not exist.*0 to 3"):
        ImagePlanes(stack, channel_axis=0, channels=[1, 4])
    with pytest.raises(ImageFormatError, match="Choose 1 to 3 channels"):
        check_channels([0, 1, 2, 3], 4)
    with pytest.raises(ImageFormatError, match="4 channels; choose 1 to 3"):
        ImagePlanes(stack, channel_axis=0)
    with pytest.raises(ImageFormatError, match=r"Channel 1 has shape \(64, 32\).*same shape"):
        ImagePlanes([stack[0], stack[1, :, :32]])
    with pytest.raises(ImageFormatError, match="no channel axis"):
        ImagePlanes(stack, channels=[0])
    with pytest.raises(ImageFormatError, match=r"one pair of contrast limits.*2 channels, 1 pair"):
        ImagePlanes(stack, channel_axis=0, channels=[0, 1], contrast=[(0, 10)])


def test_viewer_position_to_full_index_with_scale_and_translate():
    g = plane_geometry((3, 20, 64, 64))
    matrix = affine_from_scale_translate((5.0, 2.0, 0.5, 0.5), (10.0, 0.0, 0.0, 0.0))
    assert g.index_at(matrix, (20.0, 14.0, 3.0, 3.0)) == (2, 7)
    assert g.index_at(matrix, (30.0, 14.0, 3.0, 3.0)) is None  # t = 4: outside
    # a viewer with an extra leading world axis (another layer is 5D)
    assert g.index_at(matrix, (0.0, 15.0, 2.2, 3.0, 3.0)) == (1, 1)
    # a C axis as a plain layer axis is ignored
    gc = plane_geometry((2, 20, 64, 64), channel_axis=0)
    assert gc.index_at(np.eye(5), (1.0, 7.0, 3.0, 3.0)) == (7,)


# --------------------------------------------------------------------------- reading planes
def test_lazy_arrays_are_read_one_plane_at_a_time(tzyx):
    read = []

    def load(block, block_info=None):
        loc = block_info[None]["array-location"]
        read.append((loc[0][0], loc[1][0]))
        return block

    lazy = da.from_array(tzyx, chunks=(1, 1, 256, 256)).map_blocks(load, dtype=tzyx.dtype)
    planes = ImagePlanes(lazy, contrast=(0, 60000))
    raw = planes.raw_plane((2, 7))
    np.testing.assert_array_equal(raw, tzyx[2, 7])
    assert read == [(2, 7)]
    np.testing.assert_array_equal(planes.sam_image((2, 7)), to_sam_rgb(tzyx[2, 7], (0, 60000)))


def test_channels_map_to_rgb_slots_with_their_own_contrast(nuclei):
    a, b = nuclei[30], nuclei[31]
    limits = [(float(a.min()), float(np.percentile(a, 99))), (100.0, 20000.0)]
    rgb = channels_to_rgb([a, b], limits)
    np.testing.assert_array_equal(rgb[..., 0], to_sam_rgb(a, limits[0])[..., 0])
    np.testing.assert_array_equal(rgb[..., 1], to_sam_rgb(b, limits[1])[..., 0])
    assert not rgb[..., 2].any()
    np.testing.assert_array_equal(channels_to_rgb([b], [limits[1]]), to_sam_rgb(b, limits[1]))
    three = channels_to_rgb([a, b, a], [limits[0], limits[1], (0, 1)])
    np.testing.assert_array_equal(three[..., 2], to_sam_rgb(a, (0, 1))[..., 0])


def test_channel_axis_and_channel_layers_give_the_same_input_and_key(nuclei):
    czyx = np.stack([nuclei[:10], nuclei[10:20], nuclei[20:30]])  # (C=3, Z=10, Y, X)
    limits = [(0.0, 30000.0), (500.0, 9000.0)]
    one = ImagePlanes(czyx, channel_axis=0, channels=[2, 1], contrast=limits)
    split = ImagePlanes([czyx[0], czyx[1], czyx[2]], channels=[2, 1], contrast=limits)
    assert one.shape == split.shape == (10, 256, 256)
    np.testing.assert_array_equal(one.sam_image(4), split.sam_image((4,)))
    expected = channels_to_rgb([czyx[2, 4], czyx[1, 4]], limits)
    np.testing.assert_array_equal(one.sam_image(4), expected)
    k1, k2 = one.key(4, "vit_t"), split.key(4, "vit_t")
    assert k1 == k2 and k1.contrast == (0, 30000, 500, 9000)
    # the key holds SAM's slots; which channels fill them is in the hash of their pixels
    assert k1.channels == (0, 1)
    assert k1 == ImagePlanes([czyx[2], czyx[1]], contrast=limits).key(4, "vit_t")
    swapped = ImagePlanes(czyx, channel_axis=0, channels=[1, 2], contrast=limits[::-1])
    assert swapped.key(4, "vit_t") != k1
    # default contrast: napari's default for each channel layer
    auto = ImagePlanes(czyx, channel_axis=0, channels=[1])
    assert auto.contrasts == ((float(czyx[1].min()), float(czyx[1].max())),)


def test_stack_keys_are_those_of_stack_embeddings(nuclei):
    stack = nuclei[:5]
    model = fast_sam(0)
    planes = ImagePlanes(stack)
    store = EmbeddingStore()
    key, emb = planes.embedding(model, 3, model_id="m", store=store)
    old = StackEmbeddings(model, stack, model_id="m", store=store)
    assert old.key(3) == key
    assert old.get(3) is emb  # found in the store, not encoded again
    assert old.encoded == 0


# --------------------------------------------------------------------------- prompts
def test_plane_prompts_on_a_4d_image_match_slice_prompts_on_its_stack():
    g = plane_geometry((3, 20, 64, 64))
    scale4 = (1.0, 2.0, 0.5, 0.5)
    matrix4 = affine_from_scale_translate(scale4)
    pts = np.array(
        [[1, 7, 10, 12], [1, 7, 30, 80], [1, 8, 10, 10], [0, 7, 5, 5], [1, 7.2, 40, 41]], float
    )  # data coordinates of a 4D points layer with the image's scale
    points_matrix = matrix4
    got = plane_prompts(
        g, (1, 7), matrix4, (1.0, 14.0, 0.0, 0.0), pts, points_matrix, np.array([1, 1, 1, 1, 0])
    )
    stack = slice_prompts(
        (20, 64, 64),
        affine_from_scale_translate(scale4[1:]),
        7,
        (14.0, 0.0, 0.0),
        pts[[0, 1, 2, 4], 1:],
        affine_from_scale_translate(scale4[1:]),
        np.array([1, 1, 1, 0]),
    )
    np.testing.assert_array_equal(got.points_xy, stack.points_xy)
    np.testing.assert_array_equal(got.point_labels, [1, 0])
    np.testing.assert_array_equal(got.point_index, [0, 4])  # (1, 7, 30, 80) is outside
    assert got.n_outside == 1
    # a 2D points layer lies on whatever plane is shown
    flat = plane_prompts(
        g, (2, 3), matrix4, (2.0, 6.0, 0.0, 0.0), np.array([[5.0, 6.0]]),
        affine_from_scale_translate((0.5, 0.5)),
    )  # fmt: skip
    np.testing.assert_array_equal(flat.points_xy, [[6.0, 5.0]])
    boxes = plane_prompts(
        g, (1, 7), matrix4, (1.0, 14.0, 0.0, 0.0),
        shapes=[np.array([[1, 7, 2, 3], [1, 7, 2, 20], [1, 7, 12, 20], [1, 7, 12, 3]], float),
                np.array([[0, 7, 2, 3], [0, 7, 2, 20], [0, 7, 12, 20], [0, 7, 12, 3]], float),
                None],
        shapes_matrix=matrix4,
    )  # fmt: skip
    np.testing.assert_array_equal(boxes.boxes, [[3, 2, 20, 12]])
    np.testing.assert_array_equal(boxes.box_index, [0])


# --------------------------------------------------------------------------- along an axis
def _seed(label_plane: np.ndarray, n: int = 2) -> np.ndarray:
    ids = [i for i in np.unique(label_plane) if i][:n]
    return np.stack([label_plane == i for i in ids])


@pytest.mark.parametrize("axis", [1, 0])
def test_propagation_along_an_axis_equals_propagation_of_that_stack(tzyx, axis):
    truth = np.asarray(sample("nuclei_label.tif"))[:60].reshape(3, 20, 256, 256)
    index = (1, 7)
    model = fast_sam(0)
    settings = PropagationSettings(min_score=0.0, min_overlap=0.0, min_area=1)
    seeds = _seed(truth[index])
    store = EmbeddingStore()
    planes = ImagePlanes(tzyx, contrast=(0, 40000))
    result = propagate_along(
        model, planes, seeds, index, axis, model_id="fast", store=store, settings=settings
    )
    line = tzyx[:, 7] if axis == 0 else tzyx[1]
    reference = propagate(
        SamPredictor(model), line, seeds, index[axis], contrast=(0, 40000), settings=settings
    )
    assert result.shape == reference.shape == (line.shape[0], 256, 256)
    for a, b in zip(result.objects, reference.objects):
        assert a.slices == b.slices and len(a.slices) > 1
        for k in a.slices:
            np.testing.assert_array_equal(a.masks[k], b.masks[k])
    # embeddings are keyed by the full index: the interactive tools find them
    k = next(k for k in result.objects[0].slices if k != index[axis])
    visited = list(index)
    visited[axis] = k
    assert planes.key(tuple(visited), "fast") in store
    other = AxisEmbeddings(model, planes, index, axis, model_id="fast", store=store)
    assert k not in other.missing()

    labels = planes.new_labels()
    labels[0, 0, :4, :4] = 99  # an object elsewhere is never touched
    plan = plan_write_along(labels, result, planes.geometry, index, axis, next_id=5)
    for oid, idx in plan:
        labels[idx] = oid
    expected = result.label_volume(ids=[5, 6])
    got = labels[:, 7] if axis == 0 else labels[1]
    mask = expected > 0
    np.testing.assert_array_equal(got[mask], expected[mask])
    assert (labels[0, 0, :4, :4] == 99).all()
    untouched = np.ones(labels.shape, bool)
    untouched[(slice(None), 7) if axis == 0 else (1,)] = False
    assert set(np.unique(labels[untouched])) <= {0, 99}


def test_propagation_with_channels_uses_the_channel_image(nuclei):
    czyx = np.stack([nuclei[20:32], nuclei[32:44]])
    truth = np.asarray(sample("nuclei_label.tif"))[20:32]
    assert truth[6].any()
    planes = ImagePlanes(czyx, channel_axis=0, channels=[0, 1], contrast=[(0, 40000)] * 2)
    model = fast_sam(0)
    settings = PropagationSettings(min_score=0.0, min_overlap=0.0, min_area=1)
    result = propagate_along(
        model, planes, _seed(truth[6], 1), (6,), 0, model_id="fast", settings=settings
    )
    emb = AxisEmbeddings(model, planes, (6,), 0, model_id="fast")
    direct = SamPredictor(model)
    direct.set_image(channels_to_rgb([czyx[0, 7], czyx[1, 7]], [(0, 40000)] * 2))
    assert np.allclose(emb.get(7).features, direct.features)
    assert 7 in result.objects[0].masks
