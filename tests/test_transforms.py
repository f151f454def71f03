"""ResizeLongestSide equals the reference on images, coordinates and boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide as RefResize

from napari_sam import ResizeLongestSide


@pytest.mark.parametrize("shape", [(300, 457), (1024, 1024), (2048, 1500), (17, 3), (1, 1)])
def test_apply_image_identical(shape):
    img = np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8)
    ours, ref = ResizeLongestSide(1024).apply_image(img), RefResize(1024).apply_image(img)
    assert ours.dtype == np.uint8 and ours.flags.writeable
    assert np.array_equal(ours, ref)


def test_preprocess_shape():
    assert ResizeLongestSide.get_preprocess_shape(300, 457, 1024) == (672, 1024)
    assert ResizeLongestSide.get_preprocess_shape(2048, 2048, 1024) == (1024, 1024)


def test_coords_and_boxes():
    t, r = ResizeLongestSide(1024), RefResize(1024)
    pts = np.array([[10.0, 20.0], [456.0, 299.0]])
    boxes = np.array([[1, 2, 30, 40], [100, 50, 400, 290]])
    np.testing.assert_array_equal(t.apply_coords(pts, (300, 457)), r.apply_coords(pts, (300, 457)))
    np.testing.assert_array_equal(
        t.apply_boxes(boxes, (300, 457)), r.apply_boxes(boxes, (300, 457))
    )
    assert t.apply_coords(pts, (300, 457)) is not pts
    tp = torch.tensor(pts)
    torch.testing.assert_close(
        t.apply_coords_torch(tp, (300, 457)), r.apply_coords_torch(tp, (300, 457))
    )
    tb = torch.tensor(boxes)
    torch.testing.assert_close(
        t.apply_boxes_torch(tb, (300, 457)), r.apply_boxes_torch(tb, (300, 457))
    )


def test_apply_image_torch_uses_height_and_width():
    """Deliberate fix: the reference sizes a BCHW batch from (B, C) instead of (H, W)."""
    x = torch.rand(2, 3, 300, 457) * 255
    out = ResizeLongestSide(1024).apply_image_torch(x)
    assert out.shape == (2, 3, 672, 1024)
    expected = torch.nn.functional.interpolate(
        x, (672, 1024), mode="bilinear", align_corners=False, antialias=True
    )
    torch.testing.assert_close(out, expected)
    # the reference's result has the wrong aspect ratio for this batch
    assert RefResize(1024).apply_image_torch(x).shape != out.shape
