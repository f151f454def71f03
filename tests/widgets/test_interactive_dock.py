"""The interactive dock in a real napari window (run under Xvfb): wiring, threads, keys.

What the controller decides is tested without a display in tests/controllers; here:
the first click on the canvas after opening the sample makes a preview, the work
runs in worker threads while the GUI stays responsive, buttons and pickers call the
controller, every plugin key works with every plugin layer selected (real key
events), progress and Cancel, and closing the dock. Models have random weights and
a fast stand-in encoder unless a test needs SAM's real ViT blocks.
"""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest
from qtpy.QtCore import QPoint, Qt, QTimer
from qtpy.QtTest import QTest
from qtpy.QtWidgets import QLabel

from napari_helpers import (
    TIMEOUT,
    capture_notifications,
    cut,
    open_dock,
    press_on_each,
    slow_encoder,
    use_model,
    wait_idle,
)
from napari_sam._widgets._qt.interactive import InteractiveSegmentationWidget
from napari_sam._widgets.interactive.keys import KEYS, UNDO_KEY
from napari_sam.errors import DeviceFallbackWarning
from napari_sam.runtime import weights
from napari_sam.runtime.loader import LoadedModel
from napari_sam.workflows import interactive as logic
from volume_models import small_sam

FALLBACK = "The GPU ran out of memory; napari-sam finished this work on the CPU, more slowly."
QT_KEYS = {"N": (Qt.Key.Key_N, Qt.KeyboardModifier.NoModifier),
           "Shift+C": (Qt.Key.Key_C, Qt.KeyboardModifier.ShiftModifier),
           "Shift+X": (Qt.Key.Key_X, Qt.KeyboardModifier.ShiftModifier),
           "Shift+M": (Qt.Key.Key_M, Qt.KeyboardModifier.ShiftModifier),
           "Shift+F": (Qt.Key.Key_F, Qt.KeyboardModifier.ShiftModifier),
           "Shift+O": (Qt.Key.Key_O, Qt.KeyboardModifier.ShiftModifier),
           "Shift+N": (Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier),
           "Shift+B": (Qt.Key.Key_B, Qt.KeyboardModifier.ShiftModifier),
           UNDO_KEY: (Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)}


@pytest.fixture
def notes(monkeypatch):
    return capture_notifications(monkeypatch)


def canvas_of(viewer):
    return viewer.window._qt_viewer.canvas.native


def key(viewer, name: str) -> None:
    """Press a key on napari's canvas, as a user does."""
    code, modifier = QT_KEYS[name]
    QTest.keyClick(canvas_of(viewer), code, modifier)


def test_open_sample_then_the_first_click_makes_a_preview(make_napari_viewer, qtbot, fast_model):
    viewer = make_napari_viewer(show=True)
    use_model(viewer, fast_model)
    viewer.open_sample("napari-sam-microscopy", "nuclei_3d")
    assert viewer.layers.selection.active.name == "nuclei 3D (synthetic)"
    _, widget = viewer.window.add_plugin_dock_widget(
        "napari-sam-microscopy", "Interactive segmentation (SAM)"
    )
    assert isinstance(widget, InteractiveSegmentationWidget)
    points = viewer.layers["SAM points"]
    assert viewer.layers.selection.active is points and points.mode == "add"
    canvas = canvas_of(viewer)
    qtbot.waitUntil(lambda: canvas.isVisible(), timeout=TIMEOUT)
    center = QPoint(canvas.width() // 2, canvas.height() // 2)
    QTest.mouseClick(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, center)
    qtbot.waitUntil(lambda: len(points.data) == 1, timeout=TIMEOUT)
    assert list(points.features["label"]) == ["positive"]
    wait_idle(qtbot, widget)
    z = int(points.data[0][0])
    assert viewer.layers["SAM preview"].data[z].any()
    assert widget.status_label.text().startswith(f"Preview on slice {z}")

    # the image selected and a click on it: the status line says what to select
    viewer.layers.selection.active = viewer.layers["nuclei 3D (synthetic)"]
    QTest.mouseClick(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, center)
    qtbot.waitUntil(lambda: "placed no prompt" in widget.status_label.text(), timeout=TIMEOUT)
    assert "select “SAM points”" in widget.status_label.text()
    # the Box tool in the dock: the boxes layer, ready to draw rectangles
    widget.prompt_controls.box_tool.click()
    assert viewer.layers.selection.active is viewer.layers["SAM boxes"]
    assert viewer.layers["SAM boxes"].mode == "add_rectangle"
    widget.close()


def test_dock_first_then_open_sample_then_the_first_click_makes_a_preview(
    make_napari_viewer, qtbot, fast_model
):
    viewer = make_napari_viewer(show=True)
    use_model(viewer, fast_model)
    _, widget = viewer.window.add_plugin_dock_widget(
        "napari-sam-microscopy", "Interactive segmentation (SAM)"
    )
    viewer.open_sample("napari-sam-microscopy", "nuclei_3d")  # napari selects the new image...
    points = viewer.layers["SAM points"]
    assert viewer.layers.selection.active is points and points.mode == "add"  # ...not for long
    canvas = canvas_of(viewer)
    qtbot.waitUntil(lambda: canvas.isVisible(), timeout=TIMEOUT)
    QTest.mouseClick(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     QPoint(canvas.width() // 2, canvas.height() // 2))
    qtbot.waitUntil(lambda: len(points.data) == 1, timeout=TIMEOUT)
    wait_idle(qtbot, widget)
    assert viewer.layers["SAM preview"].data[int(points.data[0][0])].any()
    widget.close()


def test_every_key_works_with_every_plugin_layer_selected(make_napari_viewer, qtbot, fast_model,
                                                          nuclei):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(cut(nuclei, (10, 14)), name="nuclei")
    widget = open_dock(viewer, "interactive", fast_model)
    c = widget.controller
    viewer.dims.set_point(0, 2)
    c.prompts.points.current.add([2, 40.0, 60.0])
    wait_idle(qtbot, widget)
    layers = [c.prompts.points.current, c.prompts.boxes.current, c.preview.layer]
    user_labels = viewer.add_labels(np.zeros(c.image.data.shape, np.uint8), name="mine")
    pressed = []
    real = dict(c.keys.actions)
    for name in KEYS:
        c.keys.actions[name] = lambda name=name: pressed.append(name)
    # no napari layer binds the plugin's keys: they arrive with any layer selected
    for layer in (*layers, c.image, user_labels):
        viewer.layers.selection.active = layer
        for name in KEYS:
            key(viewer, name)
    assert pressed == list(KEYS) * (len(layers) + 2)
    viewer.layers.remove(user_labels)
    # napari's own tools are not shadowed: Shift+P is still the boxes' polygon lasso
    viewer.layers.selection.active = c.prompts.boxes.current
    QTest.keyClick(canvas_of(viewer), Qt.Key.Key_P, Qt.KeyboardModifier.ShiftModifier)
    assert c.prompts.boxes.current.mode == "add_polygon_lasso"
    c.keys.actions.update(real)

    # Shift+C commits; Ctrl+Z on every plugin layer undoes it
    key(viewer, "Shift+C")
    labels = c.output.current
    committed = labels.data.copy()
    assert committed.max() == 1
    def undone_then_redone():
        assert not labels.data.any()
        labels.redo()
        np.testing.assert_array_equal(labels.data, committed)

    press_on_each(viewer, layers, key, UNDO_KEY, undone_then_redone)
    # and the dock lists every key
    shown = " ".join(label.text() for label in widget.findChildren(QLabel))
    assert all(name in shown for name in (*KEYS, UNDO_KEY))
    widget.close()


def test_buttons_and_pickers_call_the_controller(make_napari_viewer, qtbot, fast_model, nuclei):
    viewer = make_napari_viewer()
    viewer.add_image(cut(nuclei, 14), name="plane")
    widget = open_dock(viewer, "interactive", fast_model)
    c = widget.controller
    prompts, output = widget.prompt_controls, widget.output_controls
    points = c.prompts.points.current
    prompts.negative_check.setChecked(True)
    assert c.prompts.negative and points.feature_defaults["label"][0] == "negative"
    prompts.negative_check.setChecked(False)
    points.add([40.0, 60.0])
    wait_idle(qtbot, widget)
    first = c.preview.layer.data.copy()
    prompts.next_button.click()
    assert c.candidate == 1 and not np.array_equal(c.preview.layer.data, first)
    output.commit_button.click()
    labels = c.output.current
    assert labels.data.max() == 1 and not c.preview.layer.data.any()
    output.undo_button.click()
    assert not labels.data.any()
    points.add([40.0, 60.0])
    wait_idle(qtbot, widget)
    output.clear_button.click()
    assert len(points.data) == 0

    # the pickers follow the layer list, and a pick reaches the controller
    mine = viewer.add_labels(np.zeros((96, 160), np.uint32), name="mine")
    assert mine in output.labels_picker.widget.choices
    output.labels_picker.pick(mine)
    assert c.output.current is mine
    mine.name = "renamed"
    assert "renamed" in [output.labels_picker.widget.native.itemText(i)
                         for i in range(output.labels_picker.widget.native.count())]
    viewer.layers.remove(mine)
    assert output.labels_picker.value is None and c.output.current is None
    other = viewer.add_image(cut(nuclei, 15), name="other")
    prompts.image_picker.pick(other)
    assert c.image is other
    # N toggles the check box too (the controller says so)
    c.toggle_negative()
    assert prompts.negative_check.isChecked()
    widget.close()


def test_encoding_runs_in_a_worker_while_the_gui_stays_responsive(
    make_napari_viewer, qtbot, fast_model, nuclei
):
    viewer = make_napari_viewer()
    viewer.add_image(cut(nuclei, 12))
    widget = open_dock(viewer, "interactive", fast_model)
    slow_encoder(fast_model, 0.3)
    ticks = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    widget.points_layer.add([40.0, 50.0])
    qtbot.waitUntil(lambda: len(widget.controller.embeddings.log) == 1, timeout=TIMEOUT)
    wait_idle(qtbot, widget)
    timer.stop()
    ((thread_id, t0, t1),) = widget.controller.embeddings.log
    assert thread_id != threading.main_thread().ident
    during = [t for t in ticks if t0 < t < t1]
    # the Qt event loop kept running: a 5 ms timer fired throughout the encoding
    assert t1 - t0 > 0.25
    assert len(during) >= max(3, 0.2 * (t1 - t0) / 0.005), (len(during), t1 - t0)
    assert widget.preview_layer.data.any()
    widget.close()


def test_a_5000_square_image_is_segmented_without_freezing(make_napari_viewer, qtbot, fast_model,
                                                           notes):
    viewer = make_napari_viewer()
    plane = np.zeros((5000, 5000), np.uint8)
    plane[2000:3000, 1500:2600] = 200
    viewer.add_image(plane, name="large")
    widget = open_dock(viewer, "interactive", fast_model)
    widget.points_layer.add([2500.0, 2000.0])
    qtbot.waitUntil(lambda: widget.runner.running("encode"), timeout=TIMEOUT)
    wait_idle(qtbot, widget)  # the event loop ran throughout (waitUntil processes events)
    assert widget.preview_layer.data.shape == (5000, 5000) and widget.preview_layer.data.any()
    widget.output_controls.commit_button.click()
    assert viewer.layers["large SAM labels"].data.max() == 1 and notes["error"] == []
    widget.close()


def test_cancel_button_during_encoding(make_napari_viewer, qtbot, nuclei, notes):
    sam = small_sam()  # the real ViT image encoder: cancelled between its blocks
    viewer = make_napari_viewer()
    viewer.add_image(cut(nuclei, 12), name="plane")
    widget = open_dock(viewer, "interactive", sam)
    ran = []

    def slow_block(module, inputs):
        ran.append(module)
        time.sleep(0.3)

    handles = [b.register_forward_pre_hook(slow_block) for b in sam.image_encoder.blocks]
    widget.points_layer.add([30.0, 30.0])
    qtbot.waitUntil(lambda: len(ran) >= 1, timeout=TIMEOUT)
    assert not widget.jobs.isHidden() and widget.jobs.cancel_button.isEnabled()
    widget.jobs.cancel_button.click()
    wait_idle(qtbot, widget)
    assert notes["info"][-1].startswith("Encoding cancelled")
    assert len(ran) < len(sam.image_encoder.blocks) and widget.jobs.isHidden()
    assert len(widget.controller.embeddings.store) == 0
    for h in handles:
        h.remove()
    widget.points_layer.add([32.0, 30.0])  # the next prompt encodes again, to the end
    wait_idle(qtbot, widget)
    assert len(widget.controller.embeddings.store) == 1 and widget.preview_layer.data.any()
    assert notes["error"] == []
    widget.close()


def test_fallback_warnings_in_workers_are_shown_every_time(
    make_napari_viewer, qtbot, fast_model, nuclei, monkeypatch, notes
):
    viewer = make_napari_viewer()
    viewer.add_image(cut(nuclei, (10, 13)), name="nuclei")
    widget = open_dock(viewer, "interactive")
    # as if loaded on a GPU (its weights are on the CPU: moved there after running out of memory)
    import torch

    widget.set_model(LoadedModel(fast_model, "vit_b", "fast", "vit_b", torch.device("cuda")))
    real_encode = logic.encode_plane

    def encode_with_fallback(*args, **kwargs):
        warnings.warn(FALLBACK, DeviceFallbackWarning, stacklevel=2)
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(logic, "encode_plane", encode_with_fallback)
    for z in (0, 1):
        viewer.dims.set_point(0, z)
        widget.points_layer.add([z, 30.0, 40.0])
        wait_idle(qtbot, widget)
    assert notes["warning"] == [FALLBACK] * 2  # napari would have shown it once
    assert widget.preview_layer.data[1].any()  # the result still arrives
    label = widget.model_controls.model_label.text()
    assert label == "Model: vit_b on cpu (moved from cuda: out of memory)"
    # "Load model" loads it again where the user asked (here: the session's stand-in)
    widget.controller.session.factory = lambda *a, **k: LoadedModel.wrap(fast_model, "fast")
    widget.model_controls.load_button.click()
    wait_idle(qtbot, widget)
    assert widget.model_controls.model_label.text() == "Model: fast on cpu"
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


def test_model_missing_offline_or_download_cancelled(
    make_napari_viewer, qtbot, monkeypatch, offline, notes
):
    cache, source, point_at = offline
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.uint8))
    widget = open_dock(viewer, "interactive")
    controls = widget.model_controls
    controls.model_combo.value = "vit_t"
    controls.device_combo.value = "cpu"
    controls.load_button.click()
    wait_idle(qtbot, widget)
    (message,) = notes["error"]
    assert str(cache / "mobile_sam_test.pt") in message and "no/such/folder" in message
    assert widget.controller.model is None and not [p for p in cache.rglob("*") if p.is_file()]

    # a download stopped with Cancel: progress in the bar, no partial file left in the cache
    point_at(source.as_uri(), source.stat().st_size)
    real_download = weights._download_file

    def slow_download(*args, progress_callback=None, **kwargs):
        def slow(event):
            time.sleep(0.02)
            progress_callback(event)

        return real_download(*args, progress_callback=slow, chunk_size=4096, **kwargs)

    monkeypatch.setattr(weights, "_download_file", slow_download)
    controls.load_button.click()
    qtbot.waitUntil(lambda: widget.jobs.bar.value() > 0, timeout=TIMEOUT)
    assert "MB" in widget.jobs.bar.format()
    widget.jobs.cancel_button.click()
    wait_idle(qtbot, widget)
    assert "cancel" in notes["info"][-1].lower() and len(notes["error"]) == 1
    assert widget.controller.model is None
    assert not [p for p in cache.rglob("*") if p.is_file()]

    # a custom checkpoint that is not there
    controls.model_combo.value = "custom checkpoint file…"
    assert not controls.checkpoint_edit.native.isHidden()
    controls.checkpoint_edit.value = "/no/such/checkpoint.pth"
    controls.load_button.click()
    wait_idle(qtbot, widget)
    assert "/no/such/checkpoint.pth does not exist" in notes["error"][-1]
    widget.close()


def test_closing_the_dock_ends_the_session_and_keeps_the_layers(
    make_napari_viewer, qtbot, fast_model, nuclei, notes
):
    viewer = make_napari_viewer()
    viewer.add_image(cut(nuclei, (10, 17)), name="nuclei")

    def mine(v):
        """the user's own binding"""

    viewer.bind_key("Shift+X", mine)
    widget = open_dock(viewer, "interactive", fast_model)
    c = widget.controller
    viewer.dims.set_point(0, 3)
    widget.points_layer.add([3, 30.0, 40.0])
    wait_idle(qtbot, widget)
    widget.output_controls.commit_button.click()
    labels = widget.labels_layer
    committed = labels.data.copy()
    widget.points_layer.add([3, 50.0, 60.0])
    wait_idle(qtbot, widget)
    slow_encoder(fast_model, 0.2)
    c.stack.settings = c.stack.settings.__class__(min_score=0.0, min_overlap=0.0, min_area=1)
    widget.stack_controls.propagate_button.click()
    names = [lyr.name for lyr in viewer.layers]
    # napari's dock close button: the widget is taken out of the dock, not closed
    viewer.window.remove_dock_widget(widget)
    qtbot.waitUntil(lambda: not widget.runner.running(), timeout=TIMEOUT)
    assert [lyr.name for lyr in viewer.layers] == names
    np.testing.assert_array_equal(labels.data, committed)  # the stopped run wrote nothing
    bindings = {str(k): f for k, f in viewer.keymap.items()}
    assert bindings.get("Shift+X") is mine  # given back
    assert not {"N", "Shift+C", "Shift+M", "Shift+F"} & set(bindings)
    assert UNDO_KEY not in {str(k) for k in viewer.layers["SAM points"].keymap}
    preview = viewer.layers["SAM preview"].data.copy()
    viewer.layers["SAM points"].add([3, 10.0, 10.0])
    # a connected dock would have started its preview timer in this very call
    assert not widget.timer.isActive() and not widget.runner.running()
    np.testing.assert_array_equal(viewer.layers["SAM preview"].data, preview)
    assert notes["error"] == []
