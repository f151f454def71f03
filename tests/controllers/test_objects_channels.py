"""Channel layers as SAM's RGB in the interactive controller (no display).

napari splits a (C, Y, X) or (C, Z, Y, X) array into one Image layer per
channel (``channel_axis=0``), each with its own contrast limits. The dock takes
1-3 of them as SAM's red, green and blue inputs: the expected mask is
SamPredictor called directly on ``channels_to_rgb`` of the chosen channels'
planes with each layer's contrast limits (what the user sees is what SAM sees).
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_helpers import collect, settle
from napari_sam._widgets.interactive.controller import InteractiveController
from napari_sam.predictors.predictor import SamPredictor
from napari_sam.workflows.channels import channels_to_rgb


def best(model, rgb, xy):
    predictor = SamPredictor(model)
    predictor.set_image(rgb)
    masks, scores, _ = predictor.predict(point_coords=np.array([xy], float),
                                         point_labels=np.array([1]))
    return masks[int(np.argmax(scores))]


@pytest.fixture(scope="module")
def czyx(nuclei):
    """(3, 4, 96, 160) uint16: three different "channels" of the synthetic nuclei."""
    parts = [nuclei[z : z + 4, 40:136, 16:176] for z in (4, 12, 20)]
    data = np.stack(parts).astype(np.uint16)
    data[1] = data[1] // 3 + 50  # another range: its own contrast limits matter
    return data


def test_two_channel_layers_of_a_cyx_image_are_what_sam_sees(fast_model, czyx):
    cyx = np.ascontiguousarray(czyx[:, 2])
    viewer = ViewerModel()
    layers = viewer.add_image(cyx, channel_axis=0, name=["dapi", "gfp", "rfp"])
    layers[1].contrast_limits = (60.0, 900.0)
    c = InteractiveController(viewer)
    c.set_model(fast_model, "fast")
    notes = collect(c)
    c.set_channels([layers[1], layers[2]])
    assert c.image is layers[1] and notes["info"][-1] == "SAM sees “gfp” as red, “rfp” as green."
    points = c.prompts.points.current
    points.add([40.3, 71.6])
    settle(c)
    limits = [tuple(layers[1].contrast_limits), tuple(layers[2].contrast_limits)]
    expected = best(fast_model, channels_to_rgb([cyx[1], cyx[2]], limits), (71.6, 40.3))
    assert expected.any()
    np.testing.assert_array_equal(c.preview.layer.data > 0, expected)
    (key,) = c.embeddings.store.keys()
    assert key.channels == (0, 1) and key.contrast == (60.0, 900.0, *limits[1])

    # the user changes the second channel's contrast: SAM sees the new one
    layers[2].contrast_limits = (limits[1][0], limits[1][1] / 4)
    settle(c)
    limits[1] = tuple(layers[2].contrast_limits)
    expected2 = best(fast_model, channels_to_rgb([cyx[1], cyx[2]], limits), (71.6, 40.3))
    np.testing.assert_array_equal(c.preview.layer.data > 0, expected2)
    assert len(c.embeddings.log) == 2

    c.commit()
    labels = c.output.current
    assert labels.data.shape == (96, 160)
    features = labels.features
    mask = labels.data == 1
    assert features["mean_intensity_gfp"][0] == pytest.approx(cyx[1][mask].mean())
    assert features["mean_intensity_rfp"][0] == pytest.approx(cyx[2][mask].mean())

    # bad choices: one sentence each, the choice in use is kept
    other = viewer.add_image(np.zeros((50, 50), np.uint16), name="other")
    c.set_channels([layers[0], other])
    assert "has shape (50, 50) but “dapi” has (96, 160)" in notes["error"][-1]
    c.set_channels([*layers, other])
    assert "Choose 1 to 3 channel layers" in notes["error"][-1]
    assert c.channels.layers == [layers[1], layers[2]]
    # removing a channel layer: back to the image alone, said once
    viewer.layers.remove(layers[2])
    assert c.channels.layers == [] and "was removed" in notes["info"][-1]
    c.close()


def test_channels_one_and_two_of_a_czyx_image_on_a_slice(fast_model, czyx):
    viewer = ViewerModel()
    layers = viewer.add_image(czyx, channel_axis=0, name=["c0", "c1", "c2"])
    c = InteractiveController(viewer)
    c.set_model(fast_model, "fast")
    c.set_channels(layers[1:])
    assert c.layout.kind == "3D"
    viewer.dims.set_point(0, 2)
    points = c.prompts.points.current
    points.add([2, 60.0, 120.0])
    settle(c)
    limits = [tuple(lyr.contrast_limits) for lyr in layers[1:]]
    expected = best(fast_model, channels_to_rgb([czyx[1, 2], czyx[2, 2]], limits), (120.0, 60.0))
    np.testing.assert_array_equal(c.preview.layer.data[2] > 0, expected)
    assert [k.slice for k in c.embeddings.store.keys()] == [2]
    c.commit()
    assert c.output.current.data.shape == czyx.shape[1:]
    np.testing.assert_array_equal(c.output.current.data[2] == 1, expected)
    c.set_channels(None)  # the image alone again: another embedding
    settle(c)
    points.add([2, 30.0, 40.0])
    settle(c)
    assert len(c.embeddings.store) == 2
    c.close()


def test_channels_of_one_czyx_layer_by_its_channel_axis(fast_model, czyx):
    """One (C, Z, Y, X) layer (a multichannel TIFF opened as it is): channels 1 and 2 of its
    axis 0 become channel layers in SAM's slot colours, and SAM sees exactly them."""
    import dask.array as da

    viewer = ViewerModel()
    lazy = da.from_array(czyx, chunks=(1, 1, 96, 160))
    image = viewer.add_image(lazy, name="cells", scale=(1, 2.0, 0.5, 0.5))
    c = InteractiveController(viewer)
    c.set_model(fast_model, "fast")
    notes = collect(c)
    assert c.image is image and c.layout.kind == "nD"
    c.set_channel_axis(0, "1, 2")
    made = [viewer.layers["cells channel 1"], viewer.layers["cells channel 2"]]
    assert c.channels.layers == made and c.image is made[0]
    assert [lyr.colormap.name for lyr in made] == ["red", "green"]
    assert not image.visible and all(lyr.visible for lyr in made)
    assert all(isinstance(lyr.data, da.Array) for lyr in made)  # still lazy
    assert tuple(made[0].scale) == (2.0, 0.5, 0.5) and c.layout.kind == "3D"
    assert notes["info"][-1] == "SAM sees “cells channel 1” as red, “cells channel 2” as green."
    viewer.dims.set_point(1, 2 * 2.0)  # z = 2 in world units (scale 2)
    points = c.prompts.points.current
    assert points.ndim == 3
    points.add([2, 60.0, 120.0])  # data (z, y, x) of the points layer (the image's scale)
    settle(c)
    limits = [tuple(lyr.contrast_limits) for lyr in made]
    expected = best(fast_model, channels_to_rgb([czyx[1, 2], czyx[2, 2]], limits), (120.0, 60.0))
    assert expected.any()
    np.testing.assert_array_equal(c.preview.layer.data[2] > 0, expected)
    c.commit()
    labels = c.output.current
    assert labels.name == "cells SAM labels"  # named after the image the channels came from
    assert labels.data.shape == czyx.shape[1:] and tuple(labels.scale) == (2.0, 0.5, 0.5)
    np.testing.assert_array_equal(labels.data[2] == 1, expected)
    assert labels.features["mean_intensity_cells channel 1"][0] == pytest.approx(
        czyx[1][labels.data == 1].mean())

    # choosing again reuses the layers; bad choices: one sentence each, nothing made
    n_layers = len(viewer.layers)
    c.set_channel_axis(0, [1, 2])
    assert len(viewer.layers) == n_layers, [lyr.name for lyr in viewer.layers]
    assert c.channels.layers == made
    c.set_image(image)
    for axis, chosen, words in (
        (0, [3], "Channel 3 does not exist"),
        (0, [0, 1, 2, 0], "Choose 1 to 3 channels"),
        (0, "one two", "is not a list of channel numbers"),
        (2, [1], "is one of the two axes of the plane"),
    ):
        c.set_channel_axis(axis, chosen)
        assert words in notes["error"][-1], notes["error"][-1]
        assert notes["error"][-1].count(".") <= 3
    assert len(viewer.layers) == n_layers
    rgb = viewer.add_image(np.zeros((20, 30, 3), np.uint8), name="photo", rgb=True)
    c.set_image(rgb)
    c.set_channel_axis(0, None)
    assert "has no axis to take channels from" in notes["error"][-1]
    c.close()


def test_a_zcyx_hyperstack_is_shown_channels_first_so_its_channels_line_up(fast_model, czyx):
    """One (Z, C, Y, X) layer (an ImageJ hyperstack opened as it is): napari lines layers of
    fewer axes up with the viewer's last ones, so the (Z, Y, X) channel layers would follow
    the channel slider. The layer is shown channels first instead (a view; its scale and
    axis names follow, as do prompts drawn on it): the z slider moves through the channel
    layers' slices, and a click on slice z is SAM on that slice's channels."""
    zcyx = np.ascontiguousarray(np.moveaxis(czyx, 0, 1))  # (4, 3, 96, 160)
    viewer = ViewerModel()
    image = viewer.add_image(zcyx, name="cells", scale=(2.0, 1.0, 0.5, 0.5),
                             axis_labels=("z", "c", "y", "x"))
    c = InteractiveController(viewer)
    c.set_model(fast_model, "fast")
    notes = collect(c)
    c.set_channel_axis(1, "1 2")
    assert notes["error"] == [], notes["error"]
    assert image.data.shape == (3, 4, 96, 160) and np.shares_memory(image.data, zcyx)
    assert tuple(image.axis_labels) == ("c", "z", "y", "x")
    assert tuple(image.scale) == (1.0, 2.0, 0.5, 0.5) and not image.visible
    made = c.channels.layers
    assert [lyr.name for lyr in made] == ["cells channel 1", "cells channel 2"]
    assert tuple(made[0].scale) == (2.0, 0.5, 0.5)
    assert viewer.dims.axis_labels[:2] == ("c", "z")
    for z in range(4):  # the viewer's z slider is the channel layers' z
        viewer.dims.set_point(1, 2.0 * z)
        assert made[0].world_to_data(viewer.dims.point)[0] == pytest.approx(z)
    viewer.dims.set_point(1, 2.0 * 2)
    points = c.prompts.points.current
    assert points.ndim == 3
    points.add([2, 60.0, 120.0])
    settle(c)
    limits = [tuple(lyr.contrast_limits) for lyr in made]
    expected = best(fast_model, channels_to_rgb([zcyx[2, 1], zcyx[2, 2]], limits), (120.0, 60.0))
    assert expected.any()
    np.testing.assert_array_equal(c.preview.layer.data[2] > 0, expected)
    # choosing again (the axis is first now) reuses the layers
    c.set_channel_axis(0, "1 2")
    assert c.channels.layers == made and image.data.shape == (3, 4, 96, 160)
    c.close()


def test_prompts_drawn_on_the_layer_are_reordered_with_it(fast_model, czyx):
    viewer = ViewerModel()
    viewer.add_image(np.moveaxis(czyx, 0, 1), name="cells")  # (Z, C, Y, X)
    c = InteractiveController(viewer)
    c.set_model(fast_model, "fast")
    drawn = c.prompts.points.current
    drawn.add([3, 2, 10.0, 20.0])  # (z, c, y, x), before channels were chosen
    c.set_channel_axis(1, "1 2")
    np.testing.assert_array_equal(drawn.data, [[2, 3, 10.0, 20.0]])  # (c, z, y, x)
    c.close()


def test_a_rotated_layer_is_not_reordered(fast_model, czyx):
    viewer = ViewerModel()
    zcyx = np.moveaxis(czyx, 0, 1)
    image = viewer.add_image(zcyx, name="tilted", rotate=30)
    c = InteractiveController(viewer)
    c.set_model(fast_model, "fast")
    notes = collect(c)
    n_layers = len(viewer.layers)
    c.set_channel_axis(1, "1 2")
    assert "“tilted” is rotated, sheared or transformed" in notes["error"][-1]
    assert len(viewer.layers) == n_layers and image.data.shape == zcyx.shape and image.visible
    c.close()


def test_four_channels_need_a_choice(fast_model):
    viewer = ViewerModel()
    image = viewer.add_image(np.zeros((4, 40, 50), np.uint16), name="four")
    c = InteractiveController(viewer)
    c.set_model(fast_model, "fast")
    notes = collect(c)
    n_layers = len(viewer.layers)
    c.set_channel_axis(0, "")
    assert notes["error"][-1] == (
        "“four” has 4 channels on axis 0; type 1 to 3 of them (0 to 3), e.g. 1 2.")
    assert len(viewer.layers) == n_layers and image.visible
    mine = viewer.add_labels(np.zeros((40, 50), np.uint32), name="four SAM labels")
    c.set_channel_axis(0, "3")
    assert c.channels.layers == [viewer.layers["four channel 3"]]
    assert c.output.current is mine  # the image's own labels layer, found by its name
    assert viewer.layers["four channel 3"].colormap.name == "gray"
    c.close()


def test_channel_axes_offered_and_guessed():
    from napari.layers import Image

    from napari_sam._widgets.channel_axis import channels_likely, guess_channel_axis, offered_axes

    stack = Image(np.zeros((60, 8, 8), np.uint16))  # a z-stack: nothing to offer
    assert offered_axes(stack) == [] and guess_channel_axis(stack) is None
    two = Image(np.zeros((2, 60, 8, 8), np.uint16))  # (C, Z, Y, X): only the short axis
    assert offered_axes(two) == [(0, "0", 2)] and guess_channel_axis(two) == 0
    named = Image(np.zeros((5, 20, 8, 8), np.uint16), axis_labels=("t", "c", "y", "x"))
    assert offered_axes(named) == [(0, "t", 5), (1, "c", 20)]
    assert guess_channel_axis(named) == 1  # named channels win over the shorter axis
    assert offered_axes(Image(np.zeros((8, 8, 3), np.uint8), rgb=True)) == []
    # what makes the automatic dock open its Channels section: a named axis, or a short
    # first axis before a stack's (napari shows it as time points)
    assert channels_likely(two) and channels_likely(named)
    assert not channels_likely(stack) and not channels_likely(Image(np.zeros((3, 8, 8))))
    assert not channels_likely(Image(np.zeros((12, 60, 8, 8), np.uint16)))
