"""The automatic segmentation widget in a real napari viewer (run under Xvfb).

Each expected label image is computed by calling napari_sam.workflows.segment directly
on the same data with the layer's contrast limits: the widget must pick the
right image, slice and settings, and write the result into "<image> SAM auto"
with the image's geometry, once, as one undo step. Models have random weights
(the small test config, built with napari-sam's builder); nothing is downloaded.
"""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from napari_sam._widgets import automatic
from napari_sam._widgets.automatic import AutomaticSegmentationWidget
from napari_sam.errors import CheckpointError
from napari_sam.model.build import build_model
from napari_sam.workflows.samples import make_nuclei_3d
from napari_sam.workflows.segment import AutoSettings, segment
from reference import SMALL
from widget_helpers import automatic_widget, capture_notifications

SCALE = (2.0, 0.5, 0.7)
TRANSLATE = (10.0, -3.0, 5.0)
TIMEOUT = 120_000


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return build_model(SMALL).eval()


@pytest.fixture(scope="module")
def stack():
    """(3, 64, 80) uint16 nuclei (non-square planes)."""
    return np.ascontiguousarray(make_nuclei_3d()[12:15, 40:104, 16:96])


@pytest.fixture
def notes(monkeypatch):
    return capture_notifications(monkeypatch, automatic)


make_widget = partial(automatic_widget, points=4)


def wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT)


def expected_labels(model, data, image, settings, **kwargs):
    return segment(
        model, data, contrast_limits=tuple(image.contrast_limits), settings=settings, **kwargs
    ).labels


def test_2d_image(make_napari_viewer, qtbot, small_model, stack, notes):
    viewer = make_napari_viewer()
    plane = stack[1]
    image = viewer.add_image(plane, scale=SCALE[1:], translate=TRANSLATE[1:], name="cells")
    image.contrast_limits = (float(np.percentile(plane, 1)), float(np.percentile(plane, 99)))
    widget = make_widget(viewer, small_model)
    assert not widget._stack_box.isEnabled()
    assert widget.settings().points_per_side == 4
    widget.run()
    assert widget.busy
    wait(qtbot, widget)
    assert notes["error"] == []
    layer = viewer.layers["cells SAM auto"]
    assert widget.output_layer is layer
    assert layer.data.dtype == np.uint32 and layer.data.shape == plane.shape
    np.testing.assert_array_equal(layer.scale, SCALE[1:])
    np.testing.assert_array_equal(layer.translate, TRANSLATE[1:])
    expected = expected_labels(small_model, plane, image, widget.settings())
    assert expected.max() >= 1
    np.testing.assert_array_equal(layer.data, expected)
    assert "object" in widget.status_label.text()
    widget.close()


def test_stack_current_slice_then_all_slices_linked_one_undo_step(
    make_napari_viewer, qtbot, small_model, stack, notes, tmp_path
):
    viewer = make_napari_viewer()
    image = viewer.add_image(stack, scale=SCALE, translate=TRANSLATE, name="nuclei")
    widget = make_widget(viewer, small_model)
    assert widget._stack_box.isEnabled()
    settings = widget.settings()

    # the current slice only
    k = 2
    viewer.dims.set_point(0, TRANSLATE[0] + SCALE[0] * k)
    widget.run("current slice")
    wait(qtbot, widget)
    layer = viewer.layers["nuclei SAM auto"]
    assert layer.data.shape == stack.shape and layer.data.dtype == np.uint32
    np.testing.assert_array_equal(layer.scale, SCALE)
    np.testing.assert_array_equal(layer.translate, TRANSLATE)
    one = expected_labels(small_model, stack, image, settings, slices=[k])
    np.testing.assert_array_equal(layer.data, one)
    assert layer.data[k].any() and not layer.data[:k].any()

    # all slices, linked, into the same layer: one undo step brings back the slice result
    widget.link_check.setChecked(True)
    widget.run("all slices")
    wait(qtbot, widget)
    assert viewer.layers["nuclei SAM auto"] is layer
    linked = expected_labels(
        small_model, stack, image, AutoSettings(**{**settings.as_dict(), "link_slices": True})
    )
    np.testing.assert_array_equal(layer.data, linked)
    layer.undo()
    np.testing.assert_array_equal(layer.data, one)
    layer.redo()
    np.testing.assert_array_equal(layer.data, linked)

    # COCO export of the layer: masks decode to the labels; scores while unchanged
    path = widget.export_coco(tmp_path / "nuclei.json")
    data = json.loads(path.read_text())
    assert [im["slice"] for im in data["images"]] == [0, 1, 2]
    for ann in data["annotations"]:
        z = data["images"][ann["image_id"] - 1]["slice"]
        mask = mask_utils.decode(ann["segmentation"]).astype(bool)
        np.testing.assert_array_equal(mask, linked[z] == ann["label"])
        assert "predicted_iou" in ann
    assert len(data["annotations"]) == sum(len(np.unique(p)) - 1 for p in linked)
    layer.data_setitem((np.array([0]), np.array([0]), np.array([0])), 77)  # a user's edit
    data = json.loads(widget.export_coco(tmp_path / "edited.json").read_text())
    assert not any("predicted_iou" in ann for ann in data["annotations"])
    assert notes["error"] == []
    widget.close()


def test_cancel_leaves_the_layer_untouched(make_napari_viewer, qtbot, small_model, stack, notes):
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="nuclei")
    before = np.arange(stack.size, dtype=np.uint32).reshape(stack.shape) % 5
    existing = viewer.add_labels(before.copy(), name="nuclei SAM auto")
    widget = make_widget(viewer, small_model)
    widget.run("all slices")
    widget.cancel()  # at once
    wait(qtbot, widget)
    np.testing.assert_array_equal(existing.data, before)
    assert "Cancelled" in widget.status_label.text()
    widget.run("all slices")  # while the first slice is being segmented
    qtbot.waitUntil(lambda: widget.progress_bar.value() >= 1, timeout=TIMEOUT)
    widget.cancel()
    wait(qtbot, widget)
    np.testing.assert_array_equal(existing.data, before)
    assert len(existing._undo_history) == 0  # nothing was written
    assert "Cancelled" in widget.status_label.text()
    assert [lyr.name for lyr in viewer.layers] == ["nuclei", "nuclei SAM auto"]
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert notes["error"] == []
    widget.close()


def test_expected_errors_are_notifications(make_napari_viewer, qtbot, stack, notes):
    viewer = make_napari_viewer()

    def failing_factory(choice, checkpoint, device, **kwargs):
        raise CheckpointError("The checkpoint file x.pth could not be read.")

    viewer.add_image(np.zeros((2, 2, 16, 16), np.uint16), name="4d")
    widget = make_widget(viewer, model_factory=failing_factory)
    widget.run()  # a 4D image: refused at once
    assert not widget.busy
    assert len(notes["error"]) == 1 and "4 axes" in notes["error"][0]

    viewer.add_image(stack[0], name="plane")
    widget.image_picker.select(viewer.layers["plane"])
    widget.run()  # the model cannot be loaded: one sentence, no layer
    wait(qtbot, widget)
    assert notes["error"][-1] == "The checkpoint file x.pth could not be read."
    assert "plane SAM auto" not in [lyr.name for lyr in viewer.layers]

    widget.model_combo.setCurrentText(automatic.CUSTOM_CHECKPOINT)
    widget.run()  # custom checkpoint without a file
    assert "Choose a checkpoint file" in notes["error"][-1]

    assert widget.export_coco() is None  # nothing to export yet: a warning, no dialog
    assert any("nothing to export" in w for w in notes["warning"])
    widget.close()


def test_widget_from_the_plugin_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((16, 16), np.uint8), name="img")
    _, widget = viewer.window.add_plugin_dock_widget(
        "napari-sam-microscopy", "Automatic segmentation (SAM)"
    )
    assert isinstance(widget, AutomaticSegmentationWidget)
    assert widget.image_layer is viewer.layers["img"]
