"""The interactive segmentation widget in a real napari viewer (run under Xvfb).

Every expected mask is computed by calling ``SamPredictor`` directly on the
same plane, converted with the same contrast limits, at the data coordinates
the prompt was placed on: the widget must map world -> data coordinates,
pick the slice and flip row/col to x/y exactly as a careful user would by hand.
Models have random weights (the small test config); nothing is downloaded.
"""

from __future__ import annotations

import threading
import time
from functools import partial

import numpy as np
import pytest
import torch
from qtpy.QtCore import QTimer

from napari_sam._widgets import common, interactive
from napari_sam._widgets.interactive import InteractiveSegmentationWidget
from napari_sam.errors import WeightsDownloadError
from napari_sam.model.build import build_model
from napari_sam.predictors.predictor import SamPredictor
from napari_sam.runtime.loader import LoadedModel
from napari_sam.runtime.progress import Progress
from napari_sam.workflows.image import to_sam_rgb
from napari_sam.workflows.samples import make_nuclei_3d
from reference import SMALL
from widget_helpers import capture_notifications, interactive_widget, wait_idle

SCALE = (2.0, 0.5, 0.7)
TRANSLATE = (10.0, -3.0, 5.0)
TIMEOUT = 60_000


@pytest.fixture(scope="module")
def stack():
    """(6, 96, 160) uint16 nuclei: non-square planes, so a row/col mix-up cannot pass."""
    return np.ascontiguousarray(make_nuclei_3d()[12:18, 40:136, 16:176])


def world_of(zrc, scale=SCALE, translate=TRANSLATE):
    return np.asarray(zrc, float) * np.asarray(scale) + np.asarray(translate)


class Reference:
    """SamPredictor called directly, one encoded plane per (slice, contrast)."""

    def __init__(self, model):
        self.predictor = SamPredictor(model)
        self.embeddings = {}

    def predict(self, plane, contrast, multimask=True, **prompts):
        key = (plane.tobytes(), tuple(contrast))
        if key not in self.embeddings:
            self.predictor.set_image(to_sam_rgb(plane, contrast))
            self.embeddings[key] = self.predictor.get_embedding()
        self.predictor.set_embedding(self.embeddings[key])
        masks, scores, _ = self.predictor.predict(multimask_output=multimask, **prompts)
        return masks[int(np.argmax(scores))]


@pytest.fixture(scope="module")
def small_model():
    """The small test architecture with seeded random weights.

    Built with napari-sam's own builder, not through the reference packages:
    importing those (torchvision -> triton) after a napari viewer has created
    its OpenGL context crashes the process (triton's LLVM vs. Mesa's).
    """
    torch.manual_seed(0)
    return build_model(SMALL).eval()


@pytest.fixture(scope="module")
def reference(small_model):
    return Reference(small_model)


@pytest.fixture
def notes(monkeypatch):
    """Capture napari notifications raised by the widget."""
    return capture_notifications(monkeypatch, interactive)


make_widget = partial(interactive_widget, model_name="small-random")


def settle(qtbot, widget):
    wait_idle(qtbot, widget, TIMEOUT)


def to_layer(layer, world_points):
    """World coordinates -> a layer's data coordinates (where napari stores a click)."""
    return np.array([layer.world_to_data(w) for w in np.atleast_2d(world_points)])


def rectangle(k, box):
    """World corners of the box (x0, y0, x1, y1 in image pixels) on slice k."""
    x0, y0, x1, y1 = box
    return world_of([[k, y0, x0], [k, y0, x1], [k, y1, x1], [k, y1, x0]])


def goto_slice(viewer, k, scale=SCALE, translate=TRANSLATE):
    viewer.dims.set_point(0, translate[0] + scale[0] * k)


def test_point_on_anisotropic_stack_matches_direct_prediction_per_slice(
    make_napari_viewer, qtbot, small_model, stack, reference
):
    viewer = make_napari_viewer()
    image = viewer.add_image(stack, scale=SCALE, translate=TRANSLATE, name="nuclei")
    # the user's own Points layer, with another transform than the image
    points = viewer.add_points(
        ndim=3, name="my points", scale=(1.0, 0.25, 0.25), translate=(0.0, 1.0, 2.0)
    )
    widget = make_widget(viewer, small_model)
    widget.points_picker.select(points)
    widget._on_prompt_layer_choice()
    assert widget.points_layer is points
    contrast = tuple(image.contrast_limits)

    k, r, c = 3, 40.3, 71.6
    goto_slice(viewer, k)
    points.add(points.world_to_data(world_of([k, r, c])))
    settle(qtbot, widget)
    expected = reference.predict(
        stack[k], contrast, point_coords=np.array([[c, r]]), point_labels=np.array([1])
    )
    preview = widget.preview_layer.data
    assert preview.shape == stack.shape and expected.any()
    np.testing.assert_array_equal(preview[k] > 0, expected)
    assert not preview[np.arange(6) != k].any()
    np.testing.assert_array_equal(widget.preview_layer.scale, SCALE)
    np.testing.assert_array_equal(widget.preview_layer.translate, TRANSLATE)

    # another slice: its own prompt, its own embedding
    k2, r2, c2 = 1, 60.0, 120.0
    goto_slice(viewer, k2)
    settle(qtbot, widget)
    assert not widget.preview_layer.data.any()  # the point of slice 3 does not count here
    points.add(points.world_to_data(world_of([k2, r2, c2])))
    settle(qtbot, widget)
    expected2 = reference.predict(
        stack[k2], contrast, point_coords=np.array([[c2, r2]]), point_labels=np.array([1])
    )
    np.testing.assert_array_equal(widget.preview_layer.data[k2] > 0, expected2)
    assert not widget.preview_layer.data[k].any()
    assert sorted(key.slice for key in widget.store.keys()) == [1, 3]
    assert len(widget.encode_log) == 2

    # back to slice 3: the stored embedding is reused, nothing is encoded again
    goto_slice(viewer, k)
    settle(qtbot, widget)
    np.testing.assert_array_equal(widget.preview_layer.data[k] > 0, expected)
    assert len(widget.encode_log) == 2
    widget.close()


def test_negative_point_boxes_commit_undo_clear(
    make_napari_viewer, qtbot, small_model, stack, reference, notes
):
    viewer = make_napari_viewer()
    image = viewer.add_image(stack, scale=SCALE, translate=TRANSLATE, name="nuclei")
    widget = make_widget(viewer, small_model)
    points, boxes = widget.points_layer, widget.boxes_layer
    assert (points.name, boxes.name) == ("SAM points", "SAM boxes")
    contrast = tuple(image.contrast_limits)
    k = 2
    plane = stack[k]
    goto_slice(viewer, k)

    # a positive and a negative point (toggled with the widget's checkbox)
    points.add(points.world_to_data(world_of([k, 30.0, 40.0])))
    widget.negative_check.setChecked(True)
    points.add(points.world_to_data(world_of([k, 34.0, 52.0])))
    widget.negative_check.setChecked(False)
    assert list(points.features["label"]) == ["positive", "negative"]
    assert not np.allclose(points.face_color[0], points.face_color[1])
    settle(qtbot, widget)
    pts_xy = np.array([[40.0, 30.0], [52.0, 34.0]])
    expected = reference.predict(
        plane, contrast, point_coords=pts_xy, point_labels=np.array([1, 0])
    )
    np.testing.assert_array_equal(widget.preview_layer.data[k] > 0, expected)

    # a box around both points: one object from box + points
    box1 = np.array([20.0, 25.0, 70.0, 45.0])  # x0, y0, x1, y1 in image pixels
    boxes.add_rectangles(to_layer(boxes, rectangle(k, box1)))
    settle(qtbot, widget)
    expected1 = reference.predict(
        plane, contrast, point_coords=pts_xy, point_labels=np.array([1, 0]), box=box1
    )
    np.testing.assert_array_equal(widget.preview_layer.data[k] > 0, expected1)

    # a second box: two objects at once
    box2 = np.array([100.0, 50.0, 150.0, 90.0])
    boxes.add_rectangles(to_layer(boxes, rectangle(k, box2)))
    settle(qtbot, widget)
    expected2 = reference.predict(plane, contrast, box=box2)
    prev = widget.preview_layer.data[k]
    np.testing.assert_array_equal(prev == 1, expected1)
    np.testing.assert_array_equal(prev == 2, expected2 & ~expected1)

    # multimask: the next candidate changes the mask, three presses come back
    widget.next_candidate()
    assert not np.array_equal(widget.preview_layer.data[k] == 1, expected1)
    widget.next_candidate()
    widget.next_candidate()
    np.testing.assert_array_equal(widget.preview_layer.data[k] == 1, expected1)

    # commit: ids 1 and 2 in a new uint32 labels layer with the image's geometry
    widget.commit()
    labels = widget.labels_layer
    assert labels.name == "nuclei SAM labels" and labels.data.dtype == np.uint32
    assert labels.data.shape == stack.shape
    np.testing.assert_array_equal(labels.scale, SCALE)
    np.testing.assert_array_equal(labels.translate, TRANSLATE)
    np.testing.assert_array_equal(labels.data[k] == 1, expected1)
    np.testing.assert_array_equal(labels.data[k] == 2, expected2 & ~expected1)
    assert len(points.data) == 0 and len(boxes.data) == 0  # prompts of the slice cleared
    settle(qtbot, widget)
    assert not widget.preview_layer.data.any()
    after_first = labels.data.copy()

    # a box over object 1: the new object 3 never takes object 1's pixels
    big = box1 + np.array([-5.0, -5.0, 5.0, 5.0])
    boxes.add_rectangles(to_layer(boxes, rectangle(k, big)))
    settle(qtbot, widget)
    new_mask = widget.preview_layer.data[k] > 0
    assert (new_mask & expected1).any() and (new_mask & ~expected1 & ~expected2).any()
    widget.commit()
    np.testing.assert_array_equal(labels.data[k] == 1, expected1)
    np.testing.assert_array_equal(labels.data[k] == 3, new_mask & (after_first[k] == 0))

    # undo (napari's labels history) removes that commit in one step
    labels.undo()
    np.testing.assert_array_equal(labels.data, after_first)

    # overwrite on request
    boxes.add_rectangles(to_layer(boxes, rectangle(k, big)))
    settle(qtbot, widget)
    widget.overwrite_check.setChecked(True)
    widget.commit()
    assert (labels.data[k][new_mask] == 3).all()

    # clear drops prompts and preview
    points.add(points.world_to_data(world_of([k, 70.0, 30.0])))
    settle(qtbot, widget)
    assert widget.preview_layer.data.any()
    widget.clear()
    settle(qtbot, widget)
    assert len(points.data) == 0 and not widget.preview_layer.data.any()
    assert notes["error"] == []
    widget.close()


def test_encoding_runs_in_a_worker_while_the_gui_stays_responsive(
    make_napari_viewer, qtbot, small_model, stack
):
    viewer = make_napari_viewer()
    viewer.add_image(stack[0], scale=SCALE[1:], translate=TRANSLATE[1:])
    widget = make_widget(viewer, small_model)
    ticks = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    widget.points_layer.add([40.0, 50.0])
    qtbot.waitUntil(lambda: len(widget.encode_log) == 1, timeout=TIMEOUT)
    settle(qtbot, widget)
    timer.stop()
    ((thread_id, t0, t1),) = widget.encode_log
    assert thread_id != threading.main_thread().ident
    during = [t for t in ticks if t0 < t < t1]
    # the Qt event loop kept running: a 5 ms timer fired throughout the encoding
    assert t1 - t0 > 0.05
    assert len(during) >= max(3, 0.2 * (t1 - t0) / 0.005), (len(during), t1 - t0)
    assert widget.preview_layer.data.any()
    widget.close()


def test_contrast_change_re_encodes_with_new_limits(
    make_napari_viewer, qtbot, small_model, stack, reference
):
    viewer = make_napari_viewer()
    image = viewer.add_image(stack[4], name="plane")
    widget = make_widget(viewer, small_model)
    widget.points_layer.add([50.0, 80.0])
    settle(qtbot, widget)
    assert len(widget.encode_log) == 1
    image.contrast_limits = (float(stack[4].min()), float(np.percentile(stack[4], 60)))
    settle(qtbot, widget)
    assert len(widget.encode_log) == 2
    assert len({key.contrast for key in widget.store.keys()}) == 2
    expected = reference.predict(
        stack[4],
        tuple(image.contrast_limits),
        point_coords=np.array([[80.0, 50.0]]),
        point_labels=np.array([1]),
    )
    np.testing.assert_array_equal(widget.preview_layer.data > 0, expected)
    widget.close()


def test_encode_errors_are_reported_once_and_a_full_store_still_works(
    make_napari_viewer, qtbot, small_model, stack, monkeypatch, notes
):
    from napari_sam.errors import ImageFormatError
    from napari_sam.workflows.embeddings import EmbeddingStore

    viewer = make_napari_viewer()
    viewer.add_image(stack[2])
    widget = make_widget(viewer, small_model, store=EmbeddingStore(max_mb=0))
    real_encode = interactive.encode_plane

    def failing_encode(*args, **kwargs):
        raise ImageFormatError("This plane cannot be encoded.")

    monkeypatch.setattr(interactive, "encode_plane", failing_encode)
    widget.points_layer.add([40.0, 50.0])
    settle(qtbot, widget)
    assert notes["error"] == ["This plane cannot be encoded."]  # reported, not retried in a loop
    assert len(widget.encode_log) == 1

    monkeypatch.setattr(interactive, "encode_plane", real_encode)
    widget.points_layer.add([45.0, 55.0])
    settle(qtbot, widget)
    # the store keeps nothing (0 MB), yet the plane is encoded once and predicted
    assert len(widget.store) == 0 and len(widget.encode_log) == 2
    assert widget.preview_layer.data.any()
    widget.close()


def test_keys_prompts_outside_and_unsupported_images(
    make_napari_viewer, qtbot, small_model, stack, notes
):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((2, 3, 16, 16), np.uint8), name="4D")
    widget = make_widget(viewer, small_model)
    assert widget.image_layer is None and notes["warning"]
    assert "4 axes" in notes["warning"][-1] and widget.points_layer is None

    rgb = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    viewer.add_image(rgb, name="rgb", scale=(0.5, 0.5))
    widget.image_picker.select(viewer.layers["rgb"])
    widget._on_image_choice()
    assert widget.image_layer.name == "rgb" and widget.points_layer is not None

    # N toggles the label of new points (the binding lives in the viewer keymap)
    bindings = {str(k): f for k, f in viewer.keymap.items()}
    assert {"N", "Shift+C", "Shift+X", "Shift+M"} <= set(bindings)
    bindings["N"](viewer)
    assert widget.negative_check.isChecked()
    assert widget.points_layer.feature_defaults["label"][0] == "negative"
    bindings["N"](viewer)
    assert not widget.negative_check.isChecked()

    # a point outside the image is ignored with a message
    widget.points_layer.add(widget.points_layer.world_to_data([-20.0, 5.0]))
    settle(qtbot, widget)
    assert any("outside the image" in m for m in notes["warning"])
    assert widget.preview_layer is None or not widget.preview_layer.data.any()
    widget.points_layer.add(widget.points_layer.world_to_data([10.0, 12.0]))
    settle(qtbot, widget)
    assert widget.preview_layer.data.shape == (48, 64) and widget.preview_layer.data.any()
    bindings["Shift+C"](viewer)
    assert widget.labels_layer.data.max() == 1
    widget.close()
    assert not {"N", "Shift+C"} & {str(k) for k in viewer.keymap}


def test_widget_follows_the_image_layers(make_napari_viewer, notes):
    viewer = make_napari_viewer()
    widget = make_widget(viewer)
    assert widget.image_layer is None and "Open or choose an image" in widget.status_label.text()
    viewer.add_image(np.zeros((2, 3, 8, 8)), name="4D")
    assert widget.image_layer is None and len(notes["warning"]) == 1
    viewer.add_points(ndim=2, name="unrelated")  # no repeated warning for the 4D image
    assert len(notes["warning"]) == 1
    viewer.layers.remove("4D")
    image = viewer.add_image(np.zeros((4, 32, 48), np.uint16), name="later")
    assert widget.image_layer is image
    assert widget.points_layer.name == "SAM points" and widget.points_layer.ndim == 3
    assert widget.labels_picker.current() is None  # a new labels layer will be made on commit
    viewer.layers.remove("later")
    assert widget.image_layer is None
    widget.close()


def test_model_loads_in_a_worker_and_errors_become_notifications(
    make_napari_viewer, qtbot, small_model, stack, monkeypatch, notes
):

    calls = []

    def fake_load(model_type, checkpoint=None, device="auto", **kwargs):
        calls.append((model_type, threading.get_ident()))
        kwargs["progress_callback"](Progress(50, 100))
        if model_type == "vit_l":
            raise WeightsDownloadError("Could not download sam_vit_l_0b3195.pth: no network.")
        return LoadedModel.wrap(small_model, model_type)

    monkeypatch.setattr(common, "load", fake_load)
    viewer = make_napari_viewer()
    viewer.add_image(stack[1])
    widget = make_widget(viewer)
    widget.model_combo.setCurrentText("vit_l")
    widget.points_layer.add([40.0, 50.0])
    settle(qtbot, widget)
    assert notes["error"] == ["Could not download sam_vit_l_0b3195.pth: no network."]
    assert widget.model is None

    widget.model_combo.setCurrentText("vit_b")
    widget.load_model()
    settle(qtbot, widget)
    assert widget.model is not None and widget.model.model_id == "vit_b"
    assert calls[-1][0] == "vit_b" and calls[-1][1] != threading.main_thread().ident
    assert widget.preview_layer.data.any()  # the waiting prompt was predicted after loading
    widget.close()


def test_widget_opens_from_the_plugin_menu(make_napari_viewer, qtbot, small_model, stack):
    viewer = make_napari_viewer()
    viewer.add_image(stack[:3], name="stack")
    _, widget = viewer.window.add_plugin_dock_widget(
        "napari-sam-microscopy", "Interactive segmentation (SAM)"
    )
    assert isinstance(widget, InteractiveSegmentationWidget) and widget.viewer == viewer
    assert widget.image_layer.name == "stack"
    assert {"SAM points", "SAM boxes"} <= {layer.name for layer in viewer.layers}
    assert viewer.layers.selection.active.name == "SAM points"
    assert viewer.layers["SAM points"].mode == "add"
    widget.set_model(small_model, "small-random")
    z = round(viewer.dims.point[0])
    viewer.layers["SAM points"].add([z, 40.0, 60.0])
    settle(qtbot, widget)
    assert viewer.layers["SAM preview"].data[z].any()
    widget.commit()
    assert viewer.layers["stack SAM labels"].data.max() == 1
    # the user deletes the preview layer: the next prediction makes a new one
    viewer.layers.remove("SAM preview")
    assert widget.preview_layer is None
    viewer.layers["SAM points"].add([z, 40.0, 60.0])
    settle(qtbot, widget)
    assert viewer.layers["SAM preview"].data[z].any()
    widget.close()
