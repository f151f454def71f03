"""InteractiveController on a plain napari ViewerModel: no display, jobs run in the test's thread.

Every expected mask is computed by calling ``SamPredictor`` directly on the
same plane, converted with the same contrast limits, at the data coordinates
the prompt was placed on: the controller must map world -> data coordinates,
pick the slice and flip row/col to x/y exactly as a careful user would by hand.
Models have random weights (the small test config); nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel
from napari.utils.key_bindings import KeymapHandler

from napari_helpers import (
    SCALE,
    TRANSLATE,
    Reference,
    collect,
    cut,
    goto_slice,
    press_on_each,
    rectangle,
    settle,
    to_layer,
    world_of,
)
from napari_sam._widgets.interactive.controller import InteractiveController
from napari_sam._widgets.interactive.keys import KEYS, UNDO_KEY
from napari_sam._widgets.jobs import SyncRunner
from napari_sam.errors import ImageFormatError, WeightsDownloadError
from napari_sam.runtime.loader import LoadedModel
from napari_sam.runtime.progress import Progress
from napari_sam.workflows import interactive as logic
from napari_sam.workflows.embeddings import EmbeddingStore


@pytest.fixture(scope="module")
def stack(nuclei):
    """(6, 96, 160) uint16 nuclei."""
    return cut(nuclei, (12, 18))


@pytest.fixture
def reference(fast_model):
    return Reference(fast_model)


def make(viewer, model=None, name="small-random", **kwargs) -> InteractiveController:
    controller = InteractiveController(viewer, **kwargs)
    if model is not None:
        controller.set_model(model, name)
    return controller


def press(viewer, key: str) -> None:
    """Press ``key`` as napari's canvas would: the selected layer's keymap, then the viewer's."""
    handler = KeymapHandler()
    active = viewer.layers.selection.active
    handler.keymap_providers = [viewer] if active is None else [active, viewer]
    handler.press_key(key)


def test_point_on_anisotropic_stack_matches_direct_prediction_per_slice(
    fast_model, stack, reference
):
    viewer = ViewerModel()
    image = viewer.add_image(stack, scale=SCALE, translate=TRANSLATE, name="nuclei")
    # the user's own Points layer, with another transform than the image
    points = viewer.add_points(
        ndim=3, name="my points", scale=(1.0, 0.25, 0.25), translate=(0.0, 1.0, 2.0)
    )
    c = make(viewer, fast_model)
    c.set_prompt_layer("points", points)
    assert c.prompts.points.current is points
    contrast = tuple(image.contrast_limits)

    k, r, col = 3, 40.3, 71.6
    goto_slice(viewer, k)
    settle(c)
    points.add(points.world_to_data(world_of([k, r, col])))
    settle(c)
    expected = reference.predict(
        stack[k], contrast, point_coords=np.array([[col, r]]), point_labels=np.array([1])
    )
    preview = c.preview.layer.data
    assert preview.shape == stack.shape and expected.any()
    np.testing.assert_array_equal(preview[k] > 0, expected)
    assert not preview[np.arange(6) != k].any()
    np.testing.assert_array_equal(c.preview.layer.scale, SCALE)
    np.testing.assert_array_equal(c.preview.layer.translate, TRANSLATE)
    assert c.status.startswith("Preview on slice 3: 1 object")

    # another slice: its own prompt, its own embedding
    k2, r2, c2 = 1, 60.0, 120.0
    goto_slice(viewer, k2)
    settle(c)
    assert not c.preview.layer.data.any()  # the point of slice 3 does not count here
    points.add(points.world_to_data(world_of([k2, r2, c2])))
    settle(c)
    expected2 = reference.predict(
        stack[k2], contrast, point_coords=np.array([[c2, r2]]), point_labels=np.array([1])
    )
    np.testing.assert_array_equal(c.preview.layer.data[k2] > 0, expected2)
    assert not c.preview.layer.data[k].any()
    assert sorted(key.slice for key in c.embeddings.store.keys()) == [1, 3]
    assert len(c.embeddings.log) == 2

    # back to slice 3: the stored embedding is reused, nothing is encoded again
    goto_slice(viewer, k)
    settle(c)
    np.testing.assert_array_equal(c.preview.layer.data[k] > 0, expected)
    assert len(c.embeddings.log) == 2
    c.close()


def test_negative_point_boxes_multimask_commit_undo_clear(fast_model, stack, reference):
    viewer = ViewerModel()
    image = viewer.add_image(stack, scale=SCALE, translate=TRANSLATE, name="nuclei")
    c = make(viewer, fast_model)
    notes = collect(c)
    points, boxes = c.prompts.points.current, c.prompts.boxes.current
    assert (points.name, boxes.name) == ("SAM points", "SAM boxes")
    contrast = tuple(image.contrast_limits)
    k = 2
    plane = stack[k]
    goto_slice(viewer, k)
    settle(c)

    # a positive and a negative point
    points.add(points.world_to_data(world_of([k, 30.0, 40.0])))
    settle(c)
    c.set_negative(True)
    points.add(points.world_to_data(world_of([k, 34.0, 52.0])))
    settle(c)
    c.set_negative(False)
    assert list(points.features["label"]) == ["positive", "negative"]
    assert not np.allclose(points.face_color[0], points.face_color[1])
    pts_xy = np.array([[40.0, 30.0], [52.0, 34.0]])
    expected = reference.predict(
        plane, contrast, point_coords=pts_xy, point_labels=np.array([1, 0])
    )
    np.testing.assert_array_equal(c.preview.layer.data[k] > 0, expected)

    # a box around both points: one object from box + points
    box1 = np.array([20.0, 25.0, 70.0, 45.0])  # x0, y0, x1, y1 in image pixels
    boxes.add_rectangles(to_layer(boxes, rectangle(k, box1)))
    settle(c)
    expected1 = reference.predict(
        plane, contrast, point_coords=pts_xy, point_labels=np.array([1, 0]), box=box1
    )
    np.testing.assert_array_equal(c.preview.layer.data[k] > 0, expected1)

    # a second box: two objects at once
    box2 = np.array([100.0, 50.0, 150.0, 90.0])
    boxes.add_rectangles(to_layer(boxes, rectangle(k, box2)))
    settle(c)
    expected2 = reference.predict(plane, contrast, box=box2)
    prev = c.preview.layer.data[k]
    np.testing.assert_array_equal(prev == 1, expected1)
    np.testing.assert_array_equal(prev == 2, expected2 & ~expected1)

    # multimask: the next candidate changes the mask, three presses come back
    c.next_candidate()
    assert not np.array_equal(c.preview.layer.data[k] == 1, expected1)
    c.next_candidate()
    c.next_candidate()
    np.testing.assert_array_equal(c.preview.layer.data[k] == 1, expected1)
    c.set_multimask(False)
    c.next_candidate()
    assert "Tick “Multimask”" in notes["info"][-1]
    c.set_multimask(True)

    # commit: ids 1 and 2 in a new uint32 labels layer with the image's geometry
    c.commit()
    labels = c.output.current
    assert labels.name == "nuclei SAM labels" and labels.data.dtype == np.uint32
    assert labels.data.shape == stack.shape
    np.testing.assert_array_equal(labels.scale, SCALE)
    np.testing.assert_array_equal(labels.translate, TRANSLATE)
    np.testing.assert_array_equal(labels.data[k] == 1, expected1)
    np.testing.assert_array_equal(labels.data[k] == 2, expected2 & ~expected1)
    assert len(points.data) == 0 and len(boxes.data) == 0  # prompts of the slice cleared
    assert not c.preview.layer.data.any() and c.status == "Committed objects 1, 2 on slice 2."
    after_first = labels.data.copy()

    # a box over object 1: the new object 3 never takes object 1's pixels
    big = box1 + np.array([-5.0, -5.0, 5.0, 5.0])
    boxes.add_rectangles(to_layer(boxes, rectangle(k, big)))
    settle(c)
    new_mask = c.preview.layer.data[k] > 0
    assert (new_mask & expected1).any() and (new_mask & ~expected1 & ~expected2).any()
    c.commit()
    np.testing.assert_array_equal(labels.data[k] == 1, expected1)
    np.testing.assert_array_equal(labels.data[k] == 3, new_mask & (after_first[k] == 0))

    # undo (the dock's Undo: napari's labels history) removes that commit in one step
    c.undo()
    np.testing.assert_array_equal(labels.data, after_first)

    # overwrite on request
    boxes.add_rectangles(to_layer(boxes, rectangle(k, big)))
    settle(c)
    c.overwrite = True
    c.commit()
    assert (labels.data[k][new_mask] == 3).all()

    # clear drops prompts and preview
    points.add(points.world_to_data(world_of([k, 70.0, 30.0])))
    settle(c)
    assert c.preview.layer.data.any()
    c.clear()
    assert len(points.data) == 0 and not c.preview.layer.data.any()
    assert notes["error"] == []
    c.close()


def test_contrast_change_re_encodes_with_new_limits(fast_model, stack, reference):
    viewer = ViewerModel()
    image = viewer.add_image(stack[4], name="plane")
    c = make(viewer, fast_model)
    c.prompts.points.current.add([50.0, 80.0])
    settle(c)
    assert len(c.embeddings.log) == 1
    image.contrast_limits = (float(stack[4].min()), float(np.percentile(stack[4], 60)))
    settle(c)
    assert len(c.embeddings.log) == 2
    assert len({key.contrast for key in c.embeddings.store.keys()}) == 2
    expected = reference.predict(
        stack[4], tuple(image.contrast_limits),
        point_coords=np.array([[80.0, 50.0]]), point_labels=np.array([1]),
    )
    np.testing.assert_array_equal(c.preview.layer.data > 0, expected)
    c.close()


def test_a_bf16_encoding_is_kept_and_reused(fast_model, stack):
    """A bf16 model's embeddings are keyed "<model>@bfloat16": the encoding a click starts
    is kept under that key and the next click reuses it (it was once dropped as "another
    model's", so the dock encoded the same plane again and again)."""
    fast_model.precision = "bf16"
    viewer = ViewerModel()
    viewer.add_image(stack[4], name="plane")
    c = make(viewer, fast_model)
    c.prompts.points.current.add([50.0, 80.0])
    settle(c)
    assert c.preview.layer.data.any()
    assert len(c.embeddings.log) == 1
    assert {key.model_id for key in c.embeddings.store.keys()} == {"small-random@bfloat16"}
    c.prompts.points.current.add([40.0, 60.0])
    settle(c)
    assert len(c.embeddings.log) == 1  # the kept embedding, not a second encoding
    c.close()


def test_encode_errors_are_reported_once_and_a_full_store_still_works(
    fast_model, stack, monkeypatch
):
    viewer = ViewerModel()
    viewer.add_image(stack[2])
    c = make(viewer, fast_model, store=EmbeddingStore(max_mb=0))
    notes = collect(c)
    real_encode = logic.encode_plane

    def failing_encode(*args, **kwargs):
        raise ImageFormatError("This plane cannot be encoded.")

    monkeypatch.setattr(logic, "encode_plane", failing_encode)
    c.prompts.points.current.add([40.0, 50.0])
    settle(c)
    assert notes["error"] == ["This plane cannot be encoded."]  # reported, not retried in a loop
    assert len(c.embeddings.log) == 1 and c.status == "This plane cannot be encoded."

    monkeypatch.setattr(logic, "encode_plane", real_encode)
    c.prompts.points.current.add([45.0, 55.0])
    settle(c)
    # the store keeps nothing (0 MB), yet the plane is encoded once and predicted
    assert len(c.embeddings.store) == 0 and len(c.embeddings.log) == 2
    assert c.preview.layer.data.any()
    c.close()


def test_prompts_outside_and_unsupported_images(fast_model):
    viewer = ViewerModel()
    viewer.add_image(np.zeros((2, 3, 16, 16, 2), np.uint8), name="5D")  # no obvious plane
    c = InteractiveController(viewer)
    notes = collect(c)
    c.set_model(fast_model, "fast")
    assert c.image is None and "no obvious plane" in c.status
    assert c.prompts.points.current is None

    rgb = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    viewer.add_image(rgb, name="rgb", scale=(0.5, 0.5))
    c.set_image(viewer.layers["rgb"])
    assert c.image.name == "rgb" and c.prompts.points.current is not None

    # a point outside the image is ignored with a message
    points = c.prompts.points.current
    points.add(points.world_to_data([-20.0, 5.0]))
    settle(c)
    assert any("outside the image" in m for m in notes["warning"])
    assert c.preview.layer is None or not c.preview.layer.data.any()
    points.add(points.world_to_data([10.0, 12.0]))
    settle(c)
    assert c.preview.layer.data.shape == (48, 64) and c.preview.layer.data.any()
    c.commit()
    assert c.output.current.data.max() == 1
    c.close()


def test_keys_work_on_every_plugin_layer_and_closing_gives_them_back(fast_model, stack):
    viewer = ViewerModel()

    def mine(v):
        """the user's own binding"""

    viewer.bind_key("Shift+C", mine)
    viewer.add_image(stack, name="nuclei")
    c = make(viewer, fast_model)
    goto_slice(viewer, 2, (1, 1, 1), (0, 0, 0))
    points, boxes = c.prompts.points.current, c.prompts.boxes.current
    points.add([2, 40.0, 60.0])
    settle(c)
    plugin_layers = (points, boxes, c.preview.layer)

    # every key reaches the plugin whichever of its layers (or the image) is selected
    assert set(c.keys.actions) == set(KEYS)
    pressed = []
    real = dict(c.keys.actions)
    for key in KEYS:
        c.keys.actions[key] = lambda key=key: pressed.append(key)
    mine_labels = viewer.add_labels(np.zeros(stack.shape, np.uint8), name="mine")
    for layer in (*plugin_layers, c.image, mine_labels):
        viewer.layers.selection.active = layer
        for key in KEYS:
            press(viewer, key)
    assert pressed == list(KEYS) * 5
    viewer.layers.remove(mine_labels)
    c.keys.actions.update(real)

    # N switches new points between positive and negative; Shift+C commits
    viewer.layers.selection.active = boxes
    press(viewer, "N")
    assert c.prompts.negative and points.feature_defaults["label"][0] == "negative"
    press(viewer, "N")
    press(viewer, "Shift+C")
    labels = c.output.current
    committed = labels.data.copy()
    assert committed.max() == 1 and len(points.data) == 0

    # Ctrl+Z on any plugin layer undoes the last change of the output labels
    def undone_then_redone():
        assert not labels.data.any()
        labels.redo()
        np.testing.assert_array_equal(labels.data, committed)

    press_on_each(viewer, plugin_layers, press, UNDO_KEY, undone_then_redone)

    c.close()
    # the user's own binding is back; the plugin's other keys and its Ctrl+Z are gone
    bindings = {str(k): f for k, f in viewer.keymap.items()}
    assert bindings["Shift+C"] is mine
    assert not {"N", "Shift+X", "Shift+M", "Shift+F", "Shift+O"} & set(bindings)
    for layer in plugin_layers:
        assert UNDO_KEY not in {str(k) for k in layer.keymap}


def test_controller_follows_the_image_layers():
    viewer = ViewerModel()
    c = InteractiveController(viewer)
    notes = collect(c)
    assert c.image is None and "Open or choose an image" in c.status
    viewer.add_image(np.zeros((2, 3, 16, 16, 2)), name="5D")  # no obvious plane
    assert c.image is None and len(notes["warning"]) == 1
    viewer.add_points(ndim=2, name="unrelated")  # no repeated warning for the 5D image
    assert len(notes["warning"]) == 1
    viewer.layers.remove("5D")
    image = viewer.add_image(np.zeros((4, 32, 48), np.uint16), name="later")
    assert c.image is image
    assert c.prompts.points.current.name == "SAM points"
    assert c.prompts.points.current.ndim == 3
    assert c.output.current is None  # a new labels layer will be made on commit
    viewer.layers.remove("later")
    assert c.image is None
    c.close()


def test_opening_on_an_image_selects_the_points_layer_in_add_mode_and_box_tool(fast_model, stack):
    viewer = ViewerModel()
    viewer.add_image(stack, name="nuclei")
    assert viewer.layers.selection.active.name == "nuclei"
    c = make(viewer, fast_model)
    points = viewer.layers.selection.active
    assert points is c.prompts.points.current and points.mode == "add"
    # the box tool: the boxes layer, ready to draw rectangles
    c.set_tool("box")
    assert viewer.layers.selection.active is c.prompts.boxes.current
    assert c.prompts.boxes.current.mode == "add_rectangle"
    c.set_tool("points")
    assert viewer.layers.selection.active is points and points.mode == "add"

    # a dock opened before any image: the image napari opens (and selects) gives way to the
    # points layer
    empty = ViewerModel()
    early = make(empty, fast_model)
    opened = empty.add_image(stack, name="opened later")
    assert early.image is opened
    assert empty.layers.selection.active is early.prompts.points.current
    assert early.prompts.points.current.mode == "add"
    early.close()

    # another image: its own prompt layers are not made, but the points layer is selected again
    other = viewer.add_image(stack[:, ::2, ::2].copy(), name="other")
    viewer.layers.selection.active = other
    c.set_image(other)
    assert viewer.layers.selection.active is points and points.mode == "add"

    # a click that goes to another layer: the status says what to select
    viewer.layers.selection.active = other

    class Press:
        type = "mouse_press"

    for callback in viewer.mouse_drag_callbacks:
        callback(viewer, Press())
    assert "select “SAM points”" in c.status and "“other” is selected" in c.status
    c.close()
    assert c._on_click not in viewer.mouse_drag_callbacks


def test_model_load_errors_and_retry(fast_model, stack):
    calls = []

    def factory(choice, checkpoint, device, **kwargs):
        calls.append(choice)
        kwargs["progress_callback"](Progress(50, 100, unit="bytes"))
        if choice == "vit_l":
            raise WeightsDownloadError("Could not download sam_vit_l_0b3195.pth: no network.")
        return LoadedModel.wrap(fast_model, choice)

    viewer = ViewerModel()
    viewer.add_image(stack[1])
    runner = SyncRunner()
    c = InteractiveController(viewer, runner=runner)
    c.session.factory = factory
    notes = collect(c)
    c.session.update(choice="vit_l")
    c.prompts.points.current.add([40.0, 50.0])
    settle(c)
    assert notes["error"] == ["Could not download sam_vit_l_0b3195.pth: no network."]
    assert c.model is None and runner.progress_log == [Progress(50, 100, unit="bytes")]
    assert "press “Load model” to retry" in c.status  # no longer "loading vit_l…"
    assert c.session.describe("not loaded") == (
        "Model: not loaded (the last try failed; “Load model” tries again)"
    )
    c.prompts.points.current.add([41.0, 50.0])  # not retried at every prompt
    settle(c)
    assert calls == ["vit_l"] and "press “Load model” to retry" in c.status

    c.session.update(choice="vit_b")  # another model: loaded for the waiting prompts
    settle(c)
    assert c.model is not None and c.model.model_id == "vit_b"
    assert c.preview.layer.data.any()
    c.close()
