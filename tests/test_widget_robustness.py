"""Nothing lost, nothing frozen: the widgets under bad input and faults (napari under Xvfb).

Each test drives a real napari viewer the way a user would (layers, clicks as
layer edits, buttons, the dock's close button) and checks two things: the
user is told what happened in one plain sentence (a napari notification), and
no layer is written where the user did not ask — or at all, when the result
no longer fits what is on screen. Models have random weights and a fast
stand-in encoder (``volume_models.fast_sam``) unless the test needs SAM's
real ViT blocks; nothing is downloaded.
"""

from __future__ import annotations

import time
import warnings
from functools import partial

import numpy as np
import pytest
import torch

from napari_sam._widgets import automatic, interactive
from napari_sam.errors import DeviceFallbackWarning, OutOfMemoryError
from napari_sam.predictors.predictor import SamPredictor
from napari_sam.runtime import weights
from napari_sam.runtime.loader import LoadedModel
from napari_sam.workflows.embeddings import DiskCache
from napari_sam.workflows.image import to_sam_rgb
from napari_sam.workflows.propagation import PropagationSettings
from napari_sam.workflows.samples import make_nuclei_3d
from volume_models import fast_sam, small_sam
from widget_helpers import (
    automatic_widget,
    capture_notifications,
    interactive_widget,
    wait_idle,
)

TIMEOUT = 60_000
LAX = PropagationSettings(min_score=0.0, min_overlap=0.0, min_area=1)
FALLBACK = "The GPU ran out of memory; napari-sam finished this work on the CPU, more slowly."


@pytest.fixture(scope="module")
def stack():
    """(7, 64, 80) uint16 nuclei (non-square planes)."""
    return np.ascontiguousarray(make_nuclei_3d()[10:17, 40:104, 16:96])


@pytest.fixture
def model():
    return fast_sam()


@pytest.fixture
def notes(monkeypatch):
    # one capture serves both widget modules: they share napari's notifications module
    return capture_notifications(monkeypatch, interactive)


make_widget = partial(interactive_widget, model_name="fast")
make_auto = partial(automatic_widget, model_name="fast", points=2)


def settle(qtbot, widget):
    wait_idle(qtbot, widget, TIMEOUT)


def slow_encoder(model, seconds):
    forward = model.image_encoder.forward

    def slow(x):
        time.sleep(seconds)
        return forward(x)

    model.image_encoder.forward = slow


def best_mask(model, plane, contrast, xy, rgb=False):
    predictor = SamPredictor(model)
    predictor.set_image(to_sam_rgb(plane, contrast, rgb=rgb))
    masks, scores, _ = predictor.predict(
        point_coords=np.array([xy], float), point_labels=np.array([1])
    )
    return masks[int(np.argmax(scores))]


def use_image(widget, layer):
    widget.image_picker.select(layer)
    widget._on_image_choice()


# --------------------------------------------------------------------------- bad input
def test_commands_without_a_usable_image_say_what_to_do(make_napari_viewer, model, notes):
    viewer = make_napari_viewer()
    widget = make_widget(viewer, model)
    for command in (widget.commit, widget.clear, widget.propagate, widget.precompute):
        command()
    assert len(notes["warning"]) == 4
    assert set(notes["warning"]) == {"Open an image, or choose one in the Image list, first."}
    viewer.add_image(np.zeros((2, 3, 16, 16), np.uint8), name="4D")  # rejected, with a reason
    assert "4 axes" in notes["warning"][-1]
    widget.commit()
    assert "“4D” cannot be segmented" in notes["warning"][-1]
    auto = make_auto(viewer, model)
    auto.run()
    assert "4 axes" in notes["error"][-1] and not auto.busy
    viewer.layers.clear()
    auto.run()
    assert notes["warning"][-1] == "Open or choose an image layer to segment."
    assert [lyr.name for lyr in viewer.layers] == []
    auto.close()
    widget.close()


def test_unusual_images_are_explained_or_segmented(make_napari_viewer, qtbot, model, notes):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    widget = make_widget(viewer, model)

    # two channels last: explained, not taken for a stack of 48 planes 2 pixels wide
    viewer.add_image(rng.integers(0, 900, (48, 64, 2), dtype=np.uint16), name="two channels")
    assert widget.image_layer is None
    assert "holds channels" in notes["warning"][-1] and "channel_axis" in notes["warning"][-1]
    use_image(widget, viewer.add_image(np.zeros((2, 2, 3, 16, 16), np.uint8), name="5D"))
    assert "5 axes" in notes["warning"][-1] and widget.image_layer is None
    n_warnings = len(notes["warning"])
    use_image(widget, viewer.layers["two channels"])  # explained once; the status keeps it
    assert len(notes["warning"]) == n_warnings and "channels" in widget.status_label.text()

    # RGBA: the alpha channel is dropped, the plane is segmented
    rgba = rng.integers(0, 255, (48, 64, 4), dtype=np.uint8)
    image = viewer.add_image(rgba, name="rgba")
    use_image(widget, image)
    points = widget.points_layer
    points.add([20.0, 30.0])
    settle(qtbot, widget)
    expected = best_mask(model, rgba, image.contrast_limits, (30.0, 20.0), rgb=True)
    np.testing.assert_array_equal(widget.preview_layer.data > 0, expected)
    widget.commit()
    assert widget.labels_layer.data.shape == (48, 64) and widget.labels_layer.data.max() == 1

    # float with NaN and ±inf: finite contrast limits, NaN black, +inf white
    flt = rng.random((48, 64)).astype(np.float32)
    flt[:5] = np.nan
    flt[5, :] = np.inf
    flt[6, :] = -np.inf
    image = viewer.add_image(flt, name="float")
    use_image(widget, image)
    assert np.isfinite(image.contrast_limits).all()
    points.add([20.0, 30.0])
    settle(qtbot, widget)
    expected = best_mask(model, flt, image.contrast_limits, (30.0, 20.0))
    np.testing.assert_array_equal(widget.preview_layer.data > 0, expected)
    assert len(notes["warning"]) == n_warnings

    # a constant image: SAM sees one grey; said once, the session goes on
    image = viewer.add_image(np.full((48, 64), 7, np.uint16), name="constant")
    use_image(widget, image)
    points.add([10.0, 10.0])
    settle(qtbot, widget)
    assert "looks uniform to SAM" in notes["warning"][-1]
    points.add([12.0, 12.0])
    settle(qtbot, widget)
    assert len(notes["warning"]) == n_warnings + 1
    assert widget.preview_layer.data.shape == (48, 64)

    # a 1 x 1 image
    image = viewer.add_image(np.array([[3]], np.uint16), name="one pixel")
    use_image(widget, image)
    points.add([0.0, 0.0])
    settle(qtbot, widget)
    widget.commit()
    layer = viewer.layers["one pixel SAM labels"]
    assert layer.data.shape == (1, 1)
    assert notes["error"] == []
    widget.close()


def test_a_5000_square_image_is_segmented_without_freezing(make_napari_viewer, qtbot, model, notes):
    viewer = make_napari_viewer()
    plane = np.zeros((5000, 5000), np.uint8)
    plane[2000:3000, 1500:2600] = 200
    viewer.add_image(plane, name="large")
    widget = make_widget(viewer, model)
    widget.points_layer.add([2500.0, 2000.0])
    qtbot.waitUntil(lambda: widget._encode_worker is not None, timeout=TIMEOUT)
    settle(qtbot, widget)  # the event loop ran throughout (waitUntil processes events)
    assert widget.preview_layer.data.shape == (5000, 5000) and widget.preview_layer.data.any()
    widget.commit()
    labels = viewer.layers["large SAM labels"]
    assert labels.data.max() == 1 and notes["error"] == []
    widget.close()


def test_degenerate_boxes_and_prompt_layers_with_more_axes(make_napari_viewer, qtbot, model, notes):
    viewer = make_napari_viewer()
    plane = np.ascontiguousarray(make_nuclei_3d()[14, 40:104, 16:96])
    image = viewer.add_image(plane, name="plane")
    widget = make_widget(viewer, model)
    boxes = widget.boxes_layer
    boxes.add_rectangles(np.array([[10.0, 20.0], [10.0, 20.0], [30.0, 20.0], [30.0, 20.0]]))
    settle(qtbot, widget)
    assert notes["warning"][-1].startswith("1 box on this slice has no area")
    assert widget.preview_layer is None or not widget.preview_layer.data.any()
    widget.clear()
    assert len(boxes.data) == 0  # "clear" removes it too

    # the user's own 3D Points layer over this 2D image: only the points shown count
    mine = viewer.add_points(np.zeros((0, 3)), ndim=3, name="3D points")
    widget.points_picker.select(mine)
    widget._on_prompt_layer_choice()
    assert "has 3 axes and the image “plane” 2" in notes["info"][-1]
    mine.add([[0, 20.0, 30.0], [2, 50.0, 60.0]])
    viewer.dims.set_point(0, 0)
    settle(qtbot, widget)
    contrast = image.contrast_limits
    np.testing.assert_array_equal(
        widget.preview_layer.data > 0, best_mask(model, plane, contrast, (30.0, 20.0))
    )
    viewer.dims.set_point(0, 2)
    settle(qtbot, widget)
    np.testing.assert_array_equal(
        widget.preview_layer.data > 0, best_mask(model, plane, contrast, (60.0, 50.0))
    )
    assert notes["error"] == []
    widget.close()


def test_labels_layer_of_another_shape_or_a_too_small_dtype(
    make_napari_viewer, qtbot, model, notes, monkeypatch
):
    viewer = make_napari_viewer()
    plane = np.ascontiguousarray(make_nuclei_3d()[14, 40:104, 16:96])
    viewer.add_image(plane, name="plane")
    wrong = viewer.add_labels(np.zeros((10, 10), np.uint32), name="other shape")
    full = np.zeros(plane.shape, np.uint8)  # 255 objects: one more does not fit in uint8
    full.flat[:255] = np.arange(1, 256)
    small = viewer.add_labels(full.copy(), name="uint8 labels")
    widget = make_widget(viewer, model)
    widget.labels_picker.select(wrong)
    widget.points_layer.add([40.0, 40.0])
    settle(qtbot, widget)
    widget.commit()
    assert "has shape (10, 10), but the image is (64, 80)" in notes["error"][-1]
    assert not wrong.data.any() and widget.preview_layer.data.any()

    widget.labels_picker.select(small)
    preview = widget.preview_layer.data > 0
    widget.commit()
    assert small.data.dtype == np.uint16
    np.testing.assert_array_equal(small.data[preview & (full == 0)], 256)
    np.testing.assert_array_equal(small.data[full > 0], full[full > 0])  # no id truncated
    assert "too small for object id 256" in notes["info"][-1]
    small.undo()  # the commit is one undo step
    np.testing.assert_array_equal(small.data, full)
    assert notes["error"][-1].startswith("The labels layer “other shape”")

    # SAM finds nothing at the prompts: said so, nothing written
    monkeypatch.setattr(
        interactive,
        "predict_objects",
        lambda *a, **k: [interactive.ObjectMask(np.zeros(plane.shape, bool), 0.1, 0, 3)],
    )
    widget.points_layer.add([20.0, 20.0])
    settle(qtbot, widget)
    widget.commit()
    assert notes["info"][-1].startswith("Nothing to commit: SAM found no object")
    np.testing.assert_array_equal(small.data, full)
    widget.close()


# --------------------------------------------------------------------------- faults
def test_layers_deleted_while_encoding(make_napari_viewer, qtbot, model, stack, notes):
    viewer = make_napari_viewer()
    slow_encoder(model, 0.4)
    image = viewer.add_image(stack[0], name="first")
    widget = make_widget(viewer, model)
    widget.points_layer.add([30.0, 30.0])
    qtbot.waitUntil(lambda: widget._encode_worker is not None, timeout=TIMEOUT)
    viewer.layers.remove(image)  # the image goes while its plane is encoded
    settle(qtbot, widget)
    assert widget.image_layer is None and "Open or choose" in widget.status_label.text()

    second = viewer.add_image(stack[1], name="second")
    assert widget.image_layer is second
    widget.points_layer.add([30.0, 30.0])
    qtbot.waitUntil(lambda: widget._encode_worker is not None, timeout=TIMEOUT)
    viewer.layers.remove("SAM points")  # the prompts go while encoding
    settle(qtbot, widget)
    assert widget.points_layer is None
    assert widget.preview_layer is None or not widget.preview_layer.data.any()
    widget.commit()
    assert notes["info"][-1].startswith("Nothing to commit")
    assert notes["error"] == []
    assert {lyr.name for lyr in viewer.layers} >= {"second", "SAM boxes"}
    widget.close()


def test_slice_change_during_encoding_never_lands_on_the_wrong_slice(
    make_napari_viewer, qtbot, model, stack, notes
):
    viewer = make_napari_viewer()
    image = viewer.add_image(stack, name="nuclei")
    widget = make_widget(viewer, model)
    slow_encoder(model, 0.5)
    points = widget.points_layer
    viewer.dims.set_point(0, 3)
    points.add([3, 30.0, 40.0])
    qtbot.waitUntil(lambda: widget._encode_worker is not None, timeout=TIMEOUT)
    viewer.dims.set_point(0, 1)  # while slice 3 is encoded
    points.add([1, 20.0, 60.0])
    settle(qtbot, widget)
    contrast = image.contrast_limits
    preview = widget.preview_layer.data
    np.testing.assert_array_equal(preview[1] > 0, best_mask(model, stack[1], contrast, (60, 20)))
    assert not preview[np.arange(7) != 1].any()
    assert sorted(key.slice for key in widget.store.keys()) == [1, 3]
    viewer.dims.set_point(0, 3)
    settle(qtbot, widget)
    np.testing.assert_array_equal(
        widget.preview_layer.data[3] > 0, best_mask(model, stack[3], contrast, (40, 30))
    )
    assert not widget.preview_layer.data[1].any() and len(widget.encode_log) == 2
    widget.close()


def test_cancel_during_encoding(make_napari_viewer, qtbot, stack, notes):
    sam = small_sam()  # the real ViT image encoder: cancelled between its blocks
    viewer = make_napari_viewer()
    viewer.add_image(stack[2], name="plane")
    widget = make_widget(viewer, sam)
    ran = []

    def slow_block(module, inputs):
        ran.append(module)
        time.sleep(0.3)

    handles = [b.register_forward_pre_hook(slow_block) for b in sam.image_encoder.blocks]
    widget.points_layer.add([30.0, 30.0])
    qtbot.waitUntil(lambda: len(ran) >= 1, timeout=TIMEOUT)
    assert widget.cancel_button.isEnabled()
    widget.cancel_button.click()
    settle(qtbot, widget)
    assert notes["info"][-1].startswith("Encoding cancelled")
    assert len(ran) < len(sam.image_encoder.blocks)
    assert len(widget.store) == 0 and not widget.cancel_button.isEnabled()
    assert widget.preview_layer is None or not widget.preview_layer.data.any()

    for h in handles:
        h.remove()
    widget.points_layer.add([32.0, 30.0])  # the next prompt encodes again, to the end
    settle(qtbot, widget)
    assert len(widget.store) == 1 and widget.preview_layer.data.any()
    assert notes["error"] == []
    widget.close()


def test_fallback_warnings_and_out_of_memory_reach_the_user(
    make_napari_viewer, qtbot, model, stack, monkeypatch, notes
):
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="nuclei")
    widget = make_widget(viewer)
    # as if loaded on a GPU (its weights are on the CPU: moved there after running out of memory)
    widget.set_model(LoadedModel(model, "vit_b", "fast", "vit_b", torch.device("cuda")))
    real_encode = interactive.encode_plane

    def encode_with_fallback(*args, **kwargs):
        warnings.warn(FALLBACK, DeviceFallbackWarning, stacklevel=2)
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(interactive, "encode_plane", encode_with_fallback)
    viewer.dims.set_point(0, 2)
    widget.points_layer.add([2, 30.0, 40.0])
    settle(qtbot, widget)
    assert notes["warning"] == [FALLBACK]
    assert widget.preview_layer.data[2].any()  # the result still arrives
    assert widget.model_label.text() == "Model: vit_b on cpu (moved from cuda: out of memory)"
    # "Load model" loads it again where the user asked (here: the factory's stand-in)
    widget.model_factory = lambda *a, **k: LoadedModel.wrap(model, "fast")
    widget.load_model()
    settle(qtbot, widget)
    assert widget.model_label.text() == "Model: fast on cpu"

    def out_of_memory(*args, **kwargs):
        raise OutOfMemoryError("This slice does not fit in memory, even on the CPU.")

    monkeypatch.setattr(interactive, "encode_plane", out_of_memory)
    viewer.dims.set_point(0, 4)
    widget.points_layer.add([4, 30.0, 40.0])
    settle(qtbot, widget)
    assert notes["error"] == ["This slice does not fit in memory, even on the CPU."]

    # the mask decoder runs on the main thread: its fallbacks are shown the same way
    real_predict = interactive.predict_objects

    def predict_with_fallback(*args, **kwargs):
        warnings.warn(FALLBACK, DeviceFallbackWarning, stacklevel=2)
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(interactive, "encode_plane", real_encode)
    monkeypatch.setattr(interactive, "predict_objects", predict_with_fallback)
    viewer.dims.set_point(0, 2)
    widget.points_layer.add([2, 35.0, 45.0])
    settle(qtbot, widget)
    assert notes["warning"] == [FALLBACK] * 2 and widget.preview_layer.data[2].any()
    monkeypatch.setattr(interactive, "predict_objects", real_predict)

    # propagation: the same warning, every time it happens (napari would show it once)
    real_propagate = interactive.propagate

    def propagate_with_fallback(*args, **kwargs):
        warnings.warn(FALLBACK, DeviceFallbackWarning, stacklevel=2)
        return real_propagate(*args, **kwargs)

    monkeypatch.setattr(interactive, "encode_plane", real_encode)
    monkeypatch.setattr(interactive, "propagate", propagate_with_fallback)
    viewer.dims.set_point(0, 2)
    settle(qtbot, widget)
    for _ in range(2):
        widget.propagate()
        settle(qtbot, widget)
    assert notes["warning"] == [FALLBACK] * 4

    # automatic segmentation
    real_segment = automatic.segment_iter

    def segment_with_fallback(*args, **kwargs):
        warnings.warn(FALLBACK, DeviceFallbackWarning, stacklevel=2)
        return (yield from real_segment(*args, **kwargs))

    monkeypatch.setattr(automatic, "segment_iter", segment_with_fallback)
    auto = make_auto(viewer, model)
    auto.run("current slice")
    qtbot.waitUntil(lambda: not auto.busy, timeout=TIMEOUT)
    assert notes["warning"] == [FALLBACK] * 5
    assert "nuclei SAM auto" in [lyr.name for lyr in viewer.layers]

    def segment_out_of_memory(*args, **kwargs):
        raise OutOfMemoryError("This image does not fit in memory, even on the CPU.")
        yield  # a generator, like segment_iter

    monkeypatch.setattr(automatic, "segment_iter", segment_out_of_memory)
    auto.run("current slice")
    qtbot.waitUntil(lambda: not auto.busy, timeout=TIMEOUT)
    assert notes["error"][-1] == "This image does not fit in memory, even on the CPU."
    auto.close()
    widget.close()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty weights cache, and the vit_t entry of the checkpoint table pointing at a
    local source (file:// URL) that a test may remove or slow down."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(cache))
    source = tmp_path / "source.pt"
    source.write_bytes(bytes(range(256)) * 1600)  # 400 kB

    def point_at(url, size):
        info = weights.CheckpointInfo("vit_t", "mobile_sam_test.pt", url, size)
        monkeypatch.setitem(weights.CHECKPOINTS, "vit_t", info)

    point_at("file:///no/such/folder/mobile_sam.pt", 1000)
    return cache, source, point_at


def test_model_missing_offline_or_download_interrupted(
    make_napari_viewer, qtbot, monkeypatch, offline, notes
):
    cache, source, point_at = offline
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.uint8))
    widget = make_widget(viewer)
    widget.model_combo.setCurrentText("vit_t")
    widget.device_combo.setCurrentText("cpu")
    widget.load_model()
    settle(qtbot, widget)
    (message,) = notes["error"]
    assert str(cache / "mobile_sam_test.pt") in message and "no/such/folder" in message
    assert widget.model is None and not [p for p in cache.rglob("*") if p.is_file()]

    # a download stopped with Cancel: no partial file is left in the cache
    point_at(source.as_uri(), source.stat().st_size)
    real_download = weights._download_file

    def slow_download(*args, progress_callback=None, **kwargs):
        def slow(event):
            time.sleep(0.02)
            progress_callback(event)

        return real_download(*args, progress_callback=slow, chunk_size=4096, **kwargs)

    monkeypatch.setattr(weights, "_download_file", slow_download)
    widget.load_model()
    qtbot.waitUntil(lambda: widget.progress_bar.value() > 0, timeout=TIMEOUT)
    widget.cancel_button.click()
    settle(qtbot, widget)
    assert "cancel" in notes["info"][-1].lower() and len(notes["error"]) == 1
    assert widget.model is None and not [p for p in cache.rglob("*") if p.is_file()]

    # a custom checkpoint that is not there
    widget.model_combo.setCurrentText(interactive.CUSTOM_CHECKPOINT)
    widget.checkpoint_edit.setText("/no/such/checkpoint.pth")
    widget.load_model()
    settle(qtbot, widget)
    assert "/no/such/checkpoint.pth does not exist" in notes["error"][-1]
    widget.close()


def test_corrupted_disk_cache_is_detected_and_recomputed(
    make_napari_viewer, qtbot, model, stack, tmp_path, notes
):
    viewer = make_napari_viewer()
    viewer.add_image(stack[:3], name="nuclei")
    widget = make_widget(viewer, model)
    widget.disk_check.setChecked(True)
    widget.cache_edit.setText(str(tmp_path))
    widget._on_cache_choice()
    widget.precompute()
    settle(qtbot, widget)
    files = sorted(tmp_path.rglob("*.npz"))
    assert len(files) == 3
    for path in files:  # every entry damaged: cut in half
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    widget.store.clear()
    viewer.dims.set_point(0, 1)
    widget.points_layer.add([1, 30.0, 40.0])
    settle(qtbot, widget)
    assert len(widget.encode_log) == 1 and widget.preview_layer.data[1].any()
    assert notes["info"][-1].startswith("A damaged file in the embedding cache was deleted")
    (key,) = widget.store.keys()
    assert DiskCache(tmp_path).get(key) is not None  # written again, readable
    assert notes["error"] == []
    widget.close()


def test_propagation_faults_write_nothing_and_ids_are_never_truncated(
    make_napari_viewer, qtbot, model, stack, notes
):
    viewer = make_napari_viewer()
    image = viewer.add_image(stack, name="nuclei")
    widget = make_widget(viewer, model)
    for spin, value in (
        (widget.min_score_spin, LAX.min_score),
        (widget.min_overlap_spin, LAX.min_overlap),
        (widget.min_area_spin, LAX.min_area),
    ):
        spin.setValue(value)
    viewer.dims.set_point(0, 3)
    widget.points_layer.add([3, 30.0, 40.0])
    settle(qtbot, widget)
    slow_encoder(model, 0.2)

    # the image's data is replaced while propagating: nothing is written
    widget.propagate()
    assert widget.busy
    image.data = stack[::-1].copy()
    settle(qtbot, widget)
    assert "“nuclei” was closed or changed during the propagation" in notes["error"][-1]
    assert "nuclei SAM labels" not in [lyr.name for lyr in viewer.layers]

    # the output labels are removed while propagating: nothing is written anywhere
    labels = viewer.add_labels(np.zeros(stack.shape, np.uint8), name="nuclei SAM labels")
    widget.labels_picker.select(labels)
    widget.points_layer.add([3, 30.0, 40.0])
    settle(qtbot, widget)
    widget.propagate()
    viewer.layers.remove(labels)
    settle(qtbot, widget)
    assert "was removed during the propagation" in notes["error"][-1]
    assert not any(lyr.name.endswith("SAM labels") for lyr in viewer.layers)

    # a uint8 layer that already holds object 255: the new object is 256, not 0
    full = np.zeros(stack.shape, np.uint8)
    full[0, 0, 0] = 255
    labels = viewer.add_labels(full.copy(), name="uint8 labels")
    widget.labels_picker.select(labels)
    widget.points_layer.add([3, 30.0, 40.0])
    settle(qtbot, widget)
    widget.propagate()
    settle(qtbot, widget)
    assert labels.data.dtype == np.uint16 and labels.data[3].max() == 256
    assert labels.data[0, 0, 0] == 255 and set(np.unique(labels.data)) == {0, 255, 256}
    labels.undo()
    np.testing.assert_array_equal(labels.data, full)
    widget.close()


def test_automatic_run_keeps_to_its_slice_and_drops_stale_results(
    make_napari_viewer, qtbot, model, stack, monkeypatch, notes
):
    viewer = make_napari_viewer()
    image = viewer.add_image(stack, name="nuclei")
    auto = make_auto(viewer, model)
    real_segment = automatic.segment_iter

    def slow_segment(*args, **kwargs):
        time.sleep(0.5)
        return (yield from real_segment(*args, **kwargs))

    monkeypatch.setattr(automatic, "segment_iter", slow_segment)
    viewer.dims.set_point(0, 2)
    auto.run("current slice")
    viewer.dims.set_point(0, 5)  # the user moves on while slice 2 is segmented
    qtbot.waitUntil(lambda: not auto.busy, timeout=TIMEOUT)
    out = viewer.layers["nuclei SAM auto"]
    assert out.data[2].any() and not out.data[np.arange(7) != 2].any()
    before = out.data.copy()

    auto.run("current slice")  # slice 5, and the image's data is replaced meanwhile
    image.data = stack[::-1].copy()
    qtbot.waitUntil(lambda: not auto.busy, timeout=TIMEOUT)
    assert notes["warning"][-1] == (
        "The image “nuclei” changed during the run; the result was dropped."
    )
    np.testing.assert_array_equal(out.data, before)

    auto.run("current slice")  # and the image is closed meanwhile
    viewer.layers.remove(image)
    qtbot.waitUntil(lambda: not auto.busy, timeout=TIMEOUT)
    assert "was closed during the run" in notes["warning"][-1]
    np.testing.assert_array_equal(out.data, before)
    assert notes["error"] == []
    auto.close()


def test_closing_the_dock_ends_the_session_and_keeps_the_layers(
    make_napari_viewer, qtbot, model, stack, notes
):
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="nuclei")
    widget = make_widget(viewer, model)
    viewer.dims.set_point(0, 3)
    widget.points_layer.add([3, 30.0, 40.0])
    settle(qtbot, widget)
    widget.commit()
    labels = widget.labels_layer
    committed = labels.data.copy()
    widget.points_layer.add([3, 50.0, 60.0])
    settle(qtbot, widget)
    slow_encoder(model, 0.2)
    widget.propagate()
    names = [lyr.name for lyr in viewer.layers]
    # napari's dock close button: the widget is taken out of the dock, not closed
    viewer.window.remove_dock_widget(widget)
    qtbot.waitUntil(lambda: widget._job_worker is None, timeout=TIMEOUT)
    assert [lyr.name for lyr in viewer.layers] == names
    np.testing.assert_array_equal(labels.data, committed)  # the stopped run wrote nothing
    assert not {"N", "Shift+C", "Shift+X", "Shift+P"} & {str(k) for k in viewer.keymap}
    preview = viewer.layers["SAM preview"].data.copy()
    viewer.layers["SAM points"].add([3, 10.0, 10.0])
    # a connected widget would have started its preview timer in this very call
    assert not widget._timer.isActive() and widget._encode_worker is None
    np.testing.assert_array_equal(viewer.layers["SAM preview"].data, preview)

    auto = make_auto(viewer, model)
    auto.run("all slices")
    viewer.window.remove_dock_widget(auto)
    qtbot.waitUntil(lambda: not auto.busy, timeout=TIMEOUT)
    assert "nuclei SAM auto" not in [lyr.name for lyr in viewer.layers]
    assert notes["error"] == []


def test_automatic_runs_never_replace_the_users_edits(
    make_napari_viewer, qtbot, model, stack, notes
):
    viewer = make_napari_viewer()
    viewer.add_image(stack[:2], name="nuclei")
    before = np.zeros((2, 64, 80), np.uint32)
    before[0, :4, :4] = 9
    earlier = viewer.add_labels(before.copy(), name="nuclei SAM auto")  # e.g. a saved result
    auto = make_auto(viewer, model)
    auto.run("all slices")
    qtbot.waitUntil(lambda: not auto.busy, timeout=TIMEOUT)
    np.testing.assert_array_equal(earlier.data, before)
    assert "holds objects this widget did not write" in notes["info"][-1]
    first = auto.output_layer
    assert first is not earlier and first.data.any()

    auto.run("all slices")  # its own, unedited result: replaced, one undo step
    qtbot.waitUntil(lambda: not auto.busy, timeout=TIMEOUT)
    assert auto.output_layer is first and len(notes["info"]) == 1

    first.data_setitem((np.array([1]), np.array([5]), np.array([5])), 77)  # the user's edit
    edited = first.data.copy()
    auto.run("current slice")
    qtbot.waitUntil(lambda: not auto.busy, timeout=TIMEOUT)
    np.testing.assert_array_equal(first.data, edited)
    assert auto.output_layer not in (first, earlier) and len(notes["info"]) == 2
    assert len([lyr for lyr in viewer.layers if "SAM auto" in lyr.name]) == 3
    assert notes["error"] == []
    auto.close()
