"""Images with time and z, (T, Z, Y, X), in the interactive controller (no display).

The dock segments the plane the viewer shows at the current (t, z): the
preview, the embedding key and the commit are keyed by that full leading index,
and the labels have the image's full shape, scale and translate. Every expected
mask is SamPredictor called directly on that plane at the data coordinates of
the click (the image is anisotropic and translated: world -> data exactly once).
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_helpers import Reference, best_mask, collect, settle
from napari_sam._widgets.interactive.controller import InteractiveController

SCALE4 = (1.0, 2.0, 0.5, 0.7)
TRANSLATE4 = (0.0, 10.0, -3.0, 5.0)


@pytest.fixture(scope="module")
def tzyx(nuclei):
    """(3, 4, 96, 160) uint16: 12 slices of the synthetic nuclei as 3 time points of 4 z."""
    return np.ascontiguousarray(nuclei[10:22, 40:136, 16:176]).reshape(3, 4, 96, 160)


def world(t, z, r, c):
    return np.array([t, z, r, c], float) * SCALE4 + TRANSLATE4


def goto(viewer, t, z):
    viewer.dims.set_point(0, world(t, z, 0, 0)[0])
    viewer.dims.set_point(1, world(t, z, 0, 0)[1])


def test_tzyx_image_segments_the_shown_plane_and_commits_at_its_full_index(fast_model, tzyx):
    viewer = ViewerModel()
    image = viewer.add_image(tzyx, name="movie", scale=SCALE4, translate=TRANSLATE4)
    c = InteractiveController(viewer)
    c.set_model(fast_model, "fast")
    assert c.image is image and c.layout.kind == "nD" and c.layout.spatial_shape == tzyx.shape
    assert "nD image “movie” (3, 4, 96, 160)" in c.status
    reference = Reference(fast_model)
    contrast = tuple(image.contrast_limits)
    points = c.prompts.points.current
    assert points.ndim == 4

    t, z, r, col = 2, 1, 40.3, 71.6
    goto(viewer, t, z)
    points.add(points.world_to_data(world(t, z, r, col)))
    settle(c)
    expected = reference.predict(tzyx[t, z], contrast, point_coords=np.array([[col, r]]),
                                 point_labels=np.array([1]))
    preview = c.preview.layer.data
    assert preview.shape == tzyx.shape and expected.any()
    np.testing.assert_array_equal(preview[t, z] > 0, expected)
    assert int((preview > 0).sum()) == int(expected.sum())  # nothing on another plane
    np.testing.assert_array_equal(c.preview.layer.scale, SCALE4)
    assert [key.slice for key in c.embeddings.store.keys()] == [(2, 1)]
    assert c.status.startswith("Preview on plane (2, 1): 1 object")

    # another time point, same z: its own embedding; the first plane's prompt does not count
    goto(viewer, 0, 1)
    settle(c)
    assert not c.preview.layer.data.any()
    points.add(points.world_to_data(world(0, 1, 60.0, 120.0)))
    settle(c)
    expected0 = reference.predict(tzyx[0, 1], contrast, point_coords=np.array([[120.0, 60.0]]),
                                  point_labels=np.array([1]))
    np.testing.assert_array_equal(c.preview.layer.data[0, 1] > 0, expected0)
    assert not c.preview.layer.data[2, 1].any()

    c.commit()
    labels = c.output.current
    assert labels.data.shape == tzyx.shape and labels.data.dtype == np.uint32
    np.testing.assert_array_equal(labels.scale, SCALE4)
    np.testing.assert_array_equal(labels.translate, TRANSLATE4)
    np.testing.assert_array_equal(labels.data[0, 1] == 1, expected0)
    assert int((labels.data > 0).sum()) == int(expected0.sum())
    assert c.status == "Committed object 1 on plane (0, 1)."
    row = labels.features.iloc[0]  # a (T, Z, Y, X) table: one row per object and time point
    assert (row["index"], row["t"], row["z_first"], row["z_last"]) == (1, 0, 1, 1)
    assert len(points.data) == 1  # the prompt of plane (2, 1) is still there

    goto(viewer, 2, 1)
    settle(c)
    np.testing.assert_array_equal(c.preview.layer.data[2, 1] > 0, expected)
    assert len(c.embeddings.log) == 2  # the stored embedding is used again
    c.close()


def test_an_rgb_stack_segments_the_slice_shown(fast_model):
    rng = np.random.default_rng(5)
    zyxc = (rng.random((3, 48, 64, 3)) * 255).astype(np.uint8)
    zyxc[1, 10:30, 20:45] = (250, 40, 40)
    viewer = ViewerModel()
    image = viewer.add_image(zyxc, name="rgb stack")
    assert image.rgb
    c = InteractiveController(viewer)
    c.set_model(fast_model, "fast")
    assert c.image is image and c.layout.kind == "nD" and c.layout.spatial_shape == (3, 48, 64)
    viewer.dims.set_point(0, 1)
    c.prompts.points.current.add([1, 20.0, 30.0])
    settle(c)
    expected = best_mask(fast_model, zyxc[1], image.contrast_limits, (30.0, 20.0), rgb=True)
    np.testing.assert_array_equal(c.preview.layer.data[1] > 0, expected)
    c.commit()
    assert c.output.current.data.shape == (3, 48, 64)
    np.testing.assert_array_equal(c.output.current.data[1] == 1, expected)
    c.close()


def test_an_image_without_an_obvious_plane_is_refused_in_one_sentence():
    viewer = ViewerModel()
    c = InteractiveController(viewer)
    notes = collect(c)
    viewer.add_image(np.zeros((2, 3, 32, 32, 2), np.uint8), name="5D")
    assert c.image is None and len(notes["warning"]) == 1
    assert "no obvious plane" in notes["warning"][0] and "channel_axis=4" in notes["warning"][0]
    c.close()
