"""to_sam_rgb and image_layout: microscopy planes -> SAM's RGB uint8."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_sam.errors import ImageFormatError
from napari_sam.workflows.image import get_plane, image_layout, robust_limits, to_sam_rgb


def test_uint16_with_contrast_limits_is_linear_and_clipped():
    plane = np.array([[0, 100, 200], [300, 1100, 60000]], dtype=np.uint16)
    out = to_sam_rgb(plane, contrast_limits=(100, 1100))
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    expected = np.array([[0, 0, 26], [51, 255, 255]], dtype=np.uint8)  # 25.5 -> 26, 51
    np.testing.assert_array_equal(out[..., 0], expected)
    # grayscale -> three equal channels
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_float_with_nan_and_inf():
    plane = np.array([[np.nan, 0.0, 0.5], [1.0, np.inf, -np.inf]], dtype=np.float32)
    out = to_sam_rgb(plane, contrast_limits=(0.0, 1.0))[..., 0]
    np.testing.assert_array_equal(out, [[0, 0, 128], [255, 255, 0]])
    # automatic limits ignore the non-finite values
    auto = to_sam_rgb(plane)[..., 0]
    assert auto[0, 0] == 0 and auto[1, 1] == 255 and auto[1, 0] == 255


def test_default_limits_are_robust_min_max():
    g = np.random.default_rng(0)
    plane = g.normal(1000, 50, (200, 200)).astype(np.float64)
    plane[0, 0] = 1e9  # a hot pixel does not set the scale
    lo, hi = robust_limits(plane)
    assert 800 < lo < 900 and 1100 < hi < 1200
    out = to_sam_rgb(plane)[..., 0]
    assert out[0, 0] == 255
    assert 100 < np.median(out) < 155


def test_rgb_and_rgba():
    g = np.random.default_rng(1)
    rgb = g.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_sam_rgb(rgb, (0, 255), rgb=True), rgb)
    rgba = np.concatenate([rgb, np.full((5, 7, 1), 17, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_sam_rgb(rgba, (0, 255), rgb=True), rgb)
    # contrast limits apply to all channels alike
    half = to_sam_rgb(rgb, (0, 127.5), rgb=True)
    np.testing.assert_array_equal(half, np.clip(np.rint(rgb * 2.0), 0, 255).astype(np.uint8))
    rgb16 = rgb.astype(np.uint16) * 256
    np.testing.assert_array_equal(to_sam_rgb(rgb16, (0, 255 * 256), rgb=True), rgb)


def test_constant_image_and_equal_limits():
    const = np.full((4, 4), 500, np.uint16)
    np.testing.assert_array_equal(to_sam_rgb(const), 0)
    np.testing.assert_array_equal(to_sam_rgb(const, (500, 500)), 0)
    np.testing.assert_array_equal(to_sam_rgb(const, (499, 499)), 255)
    np.testing.assert_array_equal(to_sam_rgb(np.full((3, 3), np.nan)), 0)


def test_bool_and_int_planes():
    mask = np.eye(3, dtype=bool)
    np.testing.assert_array_equal(to_sam_rgb(mask, (0, 1))[..., 0], np.eye(3) * 255)
    signed = np.array([[-10, 0, 10]], dtype=np.int16)
    np.testing.assert_array_equal(to_sam_rgb(signed, (-10, 10))[..., 0], [[0, 128, 255]])


@pytest.mark.parametrize(
    "shape, rgb, kind",
    [
        ((10, 12), False, "2D"),
        ((10, 12, 3), True, "2D RGB"),
        ((10, 12, 4), True, "2D RGB"),
        ((5, 10, 12), False, "3D"),
        ((5, 10, 3), False, "3D"),
    ],
)
def test_supported_layouts(shape, rgb, kind):
    layout = image_layout(shape, rgb=rgb, dtype=np.uint16)
    assert layout.kind == kind
    assert layout.plane_shape == (10, 12) or kind == "3D"


@pytest.mark.parametrize(
    "shape, rgb, dtype, words",
    [
        ((2, 3, 10, 12), False, np.uint8, "4 axes"),
        ((5, 10, 12, 3), True, np.uint8, "RGB stacks"),
        ((10, 12, 2), True, np.uint8, "3 or 4 colour channels"),
        ((10, 12), False, np.complex64, "not a real number"),
        ((0, 12), False, np.uint8, "empty"),
    ],
)
def test_unsupported_layouts_say_why(shape, rgb, dtype, words):
    with pytest.raises(ImageFormatError, match=words):
        image_layout(shape, rgb=rgb, dtype=dtype)


def test_to_sam_rgb_rejects_stacks_and_bad_limits():
    with pytest.raises(ImageFormatError, match="one 2D plane"):
        to_sam_rgb(np.zeros((2, 4, 4)))
    with pytest.raises(ImageFormatError, match="contrast_limits"):
        to_sam_rgb(np.zeros((4, 4)), (10, 1))
    with pytest.raises(ImageFormatError, match="contrast_limits"):
        to_sam_rgb(np.zeros((4, 4)), (0, np.nan))


def test_get_plane():
    stack = np.arange(24).reshape(2, 3, 4)
    layout = image_layout(stack.shape)
    np.testing.assert_array_equal(get_plane(stack, layout, 1), stack[1])
    with pytest.raises(ImageFormatError, match="Slice 2 does not exist"):
        get_plane(stack, layout, 2)
    flat = stack[0]
    assert get_plane(flat, image_layout(flat.shape)) is not None


@settings(max_examples=40, deadline=None)
@given(
    plane=hnp.arrays(
        np.float64,
        (6, 5),
        elements=st.one_of(st.floats(-1e6, 1e6), st.just(np.nan), st.just(np.inf)),
    ),
    lo=st.floats(-1e5, 1e5),
    width=st.floats(1e-3, 1e5),
)
def test_monotonic_and_in_range(plane, lo, width):
    out = to_sam_rgb(plane, (lo, lo + width))[..., 0].astype(int)
    finite = np.isfinite(plane)
    assert out.min() >= 0 and out.max() <= 255
    vals, res = plane[finite], out[finite]
    order = np.argsort(vals, kind="stable")
    assert np.all(np.diff(res[order]) >= 0)  # brighter input never gets darker output
    assert np.all(res[vals <= lo] == 0) and np.all(res[vals >= lo + width] == 255)
