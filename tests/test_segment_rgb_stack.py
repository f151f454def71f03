"""Automatic segmentation of a stack of colour planes ``(Z, Y, X, 3)``.

Each plane is segmented with its colours, exactly as the same plane alone
(2D RGB), ids numbered on through the slices; linking, tiling and the
instance decoder (AIS; ``test_ais.py``) work on such stacks as on grayscale ones.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_helpers import colour_stack as make_colour_stack
from napari_sam.errors import ImageFormatError
from napari_sam.workflows.image import image_layout, stack_layout
from napari_sam.workflows.segment import AutoSettings, link_slices, segment
from napari_sam.workflows.tiling import Tiling
from volume_models import fast_sam

LAX = AutoSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                   min_area=0, max_area_fraction=1.0)


@pytest.fixture(scope="module")
def colour_stack(nuclei):
    """(3, 64, 80, 3) uint8: per slice, three nuclei planes as red, green and blue."""
    return make_colour_stack(nuclei)


def _by_plane(model, stack, **kwargs):
    """The planes segmented one at a time, ids numbered on as a stack run numbers them."""
    out, offset = np.zeros(stack.shape[:3], np.uint32), 0
    for z in range(stack.shape[0]):
        labels = segment(model, stack[z], rgb=True, contrast_limits=(0, 255), **kwargs).labels
        out[z] = np.where(labels > 0, labels + offset, 0)
        offset += int(labels.max())
    return out


def test_stack_layout_accepts_rgb_stacks_only_where_asked():
    layout = stack_layout((5, 40, 30, 3), rgb=True, dtype=np.uint8)
    assert layout.kind == "3D RGB" and layout.is_stack and layout.rgb
    assert layout.spatial_shape == (5, 40, 30) and layout.n_slices == 5
    assert layout.plane_shape == (40, 30)
    assert stack_layout((40, 30, 4), rgb=True).kind == "2D RGB"
    assert stack_layout((5, 40, 30)).kind == "3D"
    with pytest.raises(ImageFormatError, match="RGB stacks must be split"):
        image_layout((5, 40, 30, 3), rgb=True)  # the interactive tools' layouts: unchanged
    with pytest.raises(ImageFormatError, match="3 or 4 colour channels"):
        stack_layout((5, 40, 30, 2), rgb=True)
    with pytest.raises(ImageFormatError, match="empty"):
        stack_layout((0, 40, 30, 3), rgb=True)


def test_each_colour_plane_as_alone_linked_and_some_slices(colour_stack):
    model = fast_sam()
    result = segment(model, colour_stack, rgb=True, contrast_limits=(0, 255), settings=LAX)
    expected = _by_plane(model, colour_stack, settings=LAX)
    assert expected.max() >= 3 and all(expected[z].any() for z in range(3))
    np.testing.assert_array_equal(result.labels, expected)
    assert result.slices == [0, 1, 2]
    # the colours matter: the same planes in gray give other objects
    gray = segment(model, colour_stack[..., 0], contrast_limits=(0, 255), settings=LAX)
    assert not np.array_equal(gray.labels, result.labels)

    linking = AutoSettings(**{**LAX.as_dict(), "link_slices": True})
    linked = segment(model, colour_stack, rgb=True, contrast_limits=(0, 255), settings=linking)
    reference, _ = link_slices(expected, linking.link_iou, slices=[0, 1, 2])
    np.testing.assert_array_equal(linked.labels, reference)

    one = segment(model, colour_stack, rgb=True, contrast_limits=(0, 255), settings=LAX,
                  slices=[1])
    plane = segment(model, colour_stack[1], rgb=True, contrast_limits=(0, 255), settings=LAX)
    np.testing.assert_array_equal(one.labels[1], plane.labels)
    assert not one.labels[[0, 2]].any()


def test_tiled_runs_on_colour_stacks(colour_stack):
    model = fast_sam()
    big = np.repeat(np.repeat(colour_stack[:2], 2, axis=1), 2, axis=2)  # (2, 128, 160, 3)
    tiles = Tiling.on((128, 128), (32, 32))
    tiled = segment(model, big, rgb=True, contrast_limits=(0, 255), settings=LAX, tiling=tiles)
    np.testing.assert_array_equal(tiled.labels, _by_plane(model, big, settings=LAX,
                                                          tiling=tiles))
    assert tiled.labels.max() >= 2 and tiled.n_masks >= 2

