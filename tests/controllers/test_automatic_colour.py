"""The automatic dock on colour input: RGB stacks, RGB time-lapses of stacks, and 1-3
channel layers mixed into SAM's red, green and blue (each with its contrast limits).

Each run's labels equal the library's automatic segmentation of what SAM sees,
computed here independently of the dock (plane by plane RGB made with
``channels_to_rgb``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from napari.components import ViewerModel

from napari_helpers import SCALE, TRANSLATE, collect, colour_stack, cut, lax_auto
from napari_sam._widgets.automatic.controller import AutomaticController
from napari_sam.workflows.channels import channels_to_rgb
from napari_sam.workflows.planes import ImagePlanes
from napari_sam.workflows.segment import segment
from napari_sam.workflows.segment_planes import segment_planes


@pytest.fixture(scope="module")
def colours(nuclei):
    """(3, 64, 80, 3) uint8: per slice, three nuclei planes as red, green and blue."""
    return colour_stack(nuclei)


def make(viewer, model) -> AutomaticController:
    c = AutomaticController(viewer, remember=False)
    c.session.set_model(model, "small-random")
    lax_auto(c, 4)
    return c


def _rgb_segment(model, rgb_stack, settings, **kwargs):
    return segment(model, rgb_stack, rgb=True, contrast_limits=(0, 255), settings=settings,
                   **kwargs).labels


def test_rgb_stack_slice_then_all_slices_linked(fast_model, colours):
    viewer = ViewerModel()
    image = viewer.add_image(colours, rgb=True, scale=SCALE, translate=TRANSLATE, name="he")
    image.contrast_limits = (0, 255)
    c = make(viewer, fast_model)
    notes = collect(c)
    assert c.status == "Ready to segment the stack “he”."
    assert c.layout().kind == "3D RGB" and c.layout().n_slices == 3
    c.set_scope("all slices")
    assert c.estimate().startswith("This run: 3 slices × 16 prompts = 48 prompts to decode, "
                                   "3 image encodings.")

    viewer.dims.set_point(0, TRANSLATE[0] + SCALE[0] * 1)
    c.run("current slice")
    layer = viewer.layers["he SAM auto"]
    assert layer.data.shape == colours.shape[:3] and layer.data.dtype == np.uint32
    np.testing.assert_array_equal(layer.scale, SCALE)
    one = _rgb_segment(fast_model, colours[1], c.settings)
    assert one.max() >= 1
    np.testing.assert_array_equal(layer.data[1], one)
    assert not layer.data[[0, 2]].any()

    c.set_settings(link_slices=True)
    c.run("all slices")
    linked = _rgb_segment(fast_model, colours, c.settings)
    np.testing.assert_array_equal(layer.data, linked)
    assert "3 slices, linked" in c.status
    table = pd.DataFrame(layer.features)  # intensities per colour
    assert {"mean_intensity_red", "mean_intensity_blue"} <= set(table.columns)
    assert notes["error"] == [] and notes["warning"] == []
    c.close()


def test_rgb_timelapse_of_stacks_the_time_point_shown(fast_model, colours):
    movie = np.stack([colours, colours[::-1]])  # (2, 3, 64, 80, 3)
    viewer = ViewerModel()
    image = viewer.add_image(movie, rgb=True, name="movie", axis_labels=("t", "z", "y", "x"))
    image.contrast_limits = (0, 255)
    c = make(viewer, fast_model)
    notes = collect(c)
    assert c.status == "Ready to segment the time-lapse “movie”."
    viewer.dims.set_point(0, 1)
    c.run("all slices")
    layer = viewer.layers["movie SAM auto"]
    assert layer.data.shape == movie.shape[:4]
    np.testing.assert_array_equal(layer.data[1], _rgb_segment(fast_model, movie[1], c.settings))
    assert not layer.data[0].any()
    assert "at t=1" in c.status
    # every time point: each colour plane as SAM sees it, ids on through the time points
    c.run("all time points")
    whole = segment_planes(fast_model, ImagePlanes(movie, rgb=True, contrast=(0, 255)),
                           settings=c.settings)
    assert whole.labels.shape == movie.shape[:4] and whole.labels[0].any()
    np.testing.assert_array_equal(layer.data, whole.labels)
    assert "in 2 time points of 3 slices, linked through the slices →" in c.status
    assert notes["error"] == []
    c.close()


def test_channel_layers_as_red_and_green_with_their_contrast(fast_model, nuclei, tmp_path):
    two = np.stack([cut(nuclei, (10, 13), (40, 104), (16, 96)),
                    cut(nuclei, (16, 19), (40, 104), (16, 96))])  # (C=2, Z=3, 64, 80)
    viewer = ViewerModel()
    nuc, mem = viewer.add_image(two, channel_axis=0, name=["nuclei", "membranes"],
                                scale=SCALE, translate=TRANSLATE)
    nuc.contrast_limits = (float(two[0].min()), float(np.percentile(two[0], 95)))
    mem.contrast_limits = (float(np.percentile(two[1], 20)), float(two[1].max()))
    c = make(viewer, fast_model)
    notes = collect(c)
    c.set_channels([nuc, mem])
    assert c.image is nuc
    assert notes["info"][-1] == "SAM sees “nuclei” as red, “membranes” as green."
    assert c.status == ("Ready to segment the stack “nuclei” (SAM sees “nuclei” as red, "
                        "“membranes” as green).")

    c.set_settings(link_slices=True)
    c.run("all slices")
    contrasts = [tuple(nuc.contrast_limits), tuple(mem.contrast_limits)]
    seen = np.stack([channels_to_rgb([two[0, z], two[1, z]], contrasts) for z in range(3)])
    expected = _rgb_segment(fast_model, seen, c.settings)
    layer = viewer.layers["nuclei SAM auto"]
    assert expected.max() >= 1
    np.testing.assert_array_equal(layer.data, expected)
    # not what the first channel alone gives
    alone = segment(fast_model, two[0], contrast_limits=contrasts[0], settings=c.settings).labels
    assert not np.array_equal(alone, expected)
    # one mean intensity column per channel layer, named after it
    table = pd.DataFrame(layer.features)
    assert {"mean_intensity_nuclei", "mean_intensity_membranes"} <= set(table.columns)

    # the current slice of a changed contrast: SAM sees the new limits
    mem.contrast_limits = (float(two[1].min()), float(np.percentile(two[1], 60)))
    viewer.dims.set_point(0, TRANSLATE[0] + SCALE[0] * 2)
    c.run("current slice")
    plane = channels_to_rgb([two[0, 2], two[1, 2]],
                            [tuple(nuc.contrast_limits), tuple(mem.contrast_limits)])
    fresh = _rgb_segment(fast_model, plane, replace(c.settings, link_slices=False))
    offset = int(layer.data[:2].max())  # new ids above those of the other slices
    np.testing.assert_array_equal(layer.data[2], np.where(fresh > 0, fresh + offset, 0))
    np.testing.assert_array_equal(layer.data[:2], expected[:2])

    # a channel layer removed: the image alone again, said in the status
    viewer.layers.remove(mem)
    assert c.channels.layers == []
    assert c.status == "Ready to segment the stack “nuclei”."
    # image only again, and a wrong choice in one sentence
    c.set_channels([nuc, viewer.layers["nuclei SAM auto"]])
    assert "not a single-channel image layer" in notes["error"][-1]
    assert c.channels.layers == []
    c.close()


def test_two_dimensional_channel_layers(fast_model, nuclei):
    two = np.stack([cut(nuclei, 12, (40, 104), (16, 96)), cut(nuclei, 20, (40, 104), (16, 96))])
    viewer = ViewerModel()
    a, b = viewer.add_image(two, channel_axis=0, name=["a", "b"])
    c = make(viewer, fast_model)
    c.set_channels([b, a])  # slot order: b red, a green
    c.run()
    plane = channels_to_rgb([two[1], two[0]], [tuple(b.contrast_limits), tuple(a.contrast_limits)])
    np.testing.assert_array_equal(viewer.layers["b SAM auto"].data,
                                  _rgb_segment(fast_model, plane, c.settings))
    # tiled: the tiles are cut from what SAM sees of the channels
    big_a = np.repeat(np.repeat(two[0], 2, 0), 2, 1)  # (128, 160)
    big_b = np.repeat(np.repeat(two[1], 2, 0), 2, 1)
    ba, bb = viewer.add_image(np.stack([big_a, big_b]), channel_axis=0, name=["ba", "bb"])
    c.set_channels([ba, bb])
    c.set_choices(tiling="on", tile_size=128, halo=32)
    c.run()
    assert "2 tiles" in c.status
    plane = channels_to_rgb([big_a, big_b], [tuple(ba.contrast_limits), tuple(bb.contrast_limits)])
    np.testing.assert_array_equal(
        viewer.layers["ba SAM auto"].data,
        _rgb_segment(fast_model, plane, c.settings, tiling=c.choices.to_tiling()),
    )
    c.close()


def test_channels_of_one_layers_channel_axis(fast_model, nuclei):
    """A (Z, C, Y, X) file opened as one layer: its channel axis gives the channel layers;
    the run segments what SAM sees of them, into "<layer> SAM auto" of the stack's shape."""
    zc = np.stack([cut(nuclei, (10, 13), (40, 104), (16, 96)),
                   cut(nuclei, (16, 19), (40, 104), (16, 96))], axis=1)  # (Z=3, C=2, 64, 80)
    viewer = ViewerModel()
    cells = viewer.add_image(zc, name="cells", axis_labels=("z", "c", "y", "x"))
    c = make(viewer, fast_model)
    notes = collect(c)
    c.set_channel_axis(1, "1 0")  # channel 1 red, channel 0 green
    red, green = viewer.layers["cells channel 1"], viewer.layers["cells channel 0"]
    assert c.image is red and c.channels.layers == [red, green] and c.channels.source is cells
    assert not cells.visible and red.data.shape == (3, 64, 80)
    assert notes["info"][-1] == "SAM sees “cells channel 1” as red, “cells channel 0” as green."
    c.set_settings(link_slices=True)
    c.run("all slices")
    contrasts = [tuple(red.contrast_limits), tuple(green.contrast_limits)]
    seen = np.stack([channels_to_rgb([zc[z, 1], zc[z, 0]], contrasts) for z in range(3)])
    layer = viewer.layers["cells SAM auto"]  # named after the layer the channels came from
    assert layer.data.shape == (3, 64, 80)
    np.testing.assert_array_equal(layer.data, _rgb_segment(fast_model, seen, c.settings))
    table = pd.DataFrame(layer.features)
    assert {"mean_intensity_cells channel 1", "mean_intensity_cells channel 0"} <= set(
        table.columns)

    # chosen again: the same layers are reused; wrong choices are one sentence, nothing changes
    # shown channels first (C, Z, Y, X), so that the channel layers line up with it
    assert cells.data.shape == (2, 3, 64, 80) and tuple(cells.axis_labels) == ("c", "z", "y", "x")
    c.set_channel_axis(0, "0 1")
    assert len(viewer.layers) == 4 and c.channels.layers == [green, red]
    for axis, text, message in [(0, "0 5", "Channel 5 does not exist"), (0, "a", "not a list of"),
                                (2, "", "one of the two axes of the plane")]:
        c.set_channel_axis(axis, text)
        assert message in notes["error"][-1], notes["error"][-1]
    assert c.channels.layers == [green, red] and len(viewer.layers) == 4
    # channels picked by hand in the layer list are not "made from" the layer any more
    c.set_channels([red])
    assert c.channels.source is None
    c.close()
