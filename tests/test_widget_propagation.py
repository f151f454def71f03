"""3D controls of the interactive widget in a real napari viewer (run under Xvfb).

Precomputing embeddings (progress, cancel, resume, disk cache) and propagating
objects through a stack: the labels written must be exactly what
``napari_sam.workflows.propagation.propagate`` computes (itself checked against the rule
applied by hand in test_propagation.py), with the same id on every slice,
never over other objects, as ONE undo step, and nothing at all when cancelled.

The model is a real Sam (small config, random weights) whose image encoder is a
fast pooling stand-in (``volume_models.fast_sam``), so encoding takes milliseconds.
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np
import pytest

from napari_sam._widgets import interactive
from napari_sam.runtime.loader import LoadedModel
from napari_sam.workflows.embeddings import DiskCache, StackEmbeddings
from napari_sam.workflows.propagation import PropagationSettings, plan_write, propagate
from napari_sam.workflows.samples import make_nuclei_3d
from volume_models import EncoderCalls, fast_sam
from widget_helpers import capture_notifications, interactive_widget, wait_idle

SCALE = (2.0, 0.5, 0.7)
TRANSLATE = (10.0, -3.0, 5.0)
TIMEOUT = 60_000
LAX = PropagationSettings(min_score=0.0, min_overlap=0.0, min_area=1)


@pytest.fixture(scope="module")
def stack():
    """(7, 96, 160) uint16 nuclei."""
    return np.ascontiguousarray(make_nuclei_3d()[10:17, 40:136, 16:176])


@pytest.fixture
def model():
    return fast_sam()


@pytest.fixture
def notes(monkeypatch):
    """Capture napari notifications raised by the widget."""
    return capture_notifications(monkeypatch, interactive)


make_widget = partial(interactive_widget, model_name="small-fast")


def settle(qtbot, widget):
    wait_idle(qtbot, widget, TIMEOUT)


def world_of(zrc):
    return np.asarray(zrc, float) * np.asarray(SCALE) + np.asarray(TRANSLATE)


def goto_slice(viewer, k):
    viewer.dims.set_point(0, TRANSLATE[0] + SCALE[0] * k)


def set_thresholds(widget, settings, z_range):
    widget.min_score_spin.setValue(settings.min_score)
    widget.min_overlap_spin.setValue(settings.min_overlap)
    widget.min_area_spin.setValue(settings.min_area)
    widget.z_from_spin.setValue(z_range[0])
    widget.z_to_spin.setValue(z_range[1])


def slow_encoder(model, seconds):
    """Make every forward pass of the image encoder take at least ``seconds``."""
    forward = model.image_encoder.forward

    def slow(x):
        time.sleep(seconds)
        return forward(x)

    model.image_encoder.forward = slow


def test_propagate_a_preview_writes_one_undoable_object(
    make_napari_viewer, qtbot, model, stack, notes
):
    viewer = make_napari_viewer()
    image = viewer.add_image(stack, scale=SCALE, translate=TRANSLATE, name="nuclei")
    widget = make_widget(viewer, model)
    assert widget.stack_box.isEnabled()
    assert (widget.z_from_spin.value(), widget.z_to_spin.value()) == (0, 6)
    k = 3
    goto_slice(viewer, k)
    box = np.array([20.0, 25.0, 70.0, 45.0])  # x0, y0, x1, y1
    x0, y0, x1, y1 = box
    corners = world_of([[k, y0, x0], [k, y0, x1], [k, y1, x1], [k, y1, x0]])
    widget.boxes_layer.add_rectangles(
        np.array([widget.boxes_layer.world_to_data(c) for c in corners])
    )
    settle(qtbot, widget)
    seed = widget.preview_layer.data[k] == 1
    assert seed.any()
    set_thresholds(widget, LAX, (1, 5))
    assert widget.labels_layer is None
    widget.propagate()
    assert widget.busy
    settle(qtbot, widget)

    expected = propagate(
        model, stack, seed, k, z_range=(1, 5), settings=LAX, contrast=image.contrast_limits
    )
    labels = widget.labels_layer
    assert labels.name == "nuclei SAM labels" and labels.data.dtype == np.uint32
    np.testing.assert_array_equal(labels.scale, SCALE)
    np.testing.assert_array_equal(labels.data, expected.label_volume(ids=[1]))
    assert set(np.unique(labels.data)) == {0, 1}
    on = [z for z in range(7) if (labels.data[z] == 1).any()]
    assert on == list(range(1, 6))  # the same id on every slice of the range, not beyond
    assert widget.last_propagation.objects[0].extent == (1, 5)
    assert len(widget.boxes_layer.data) == 0 and not widget.preview_layer.data.any()
    assert "Propagated object 1 over slices 1–5" in notes["info"][-1]
    assert "object 1: slices 1–5 (up: the end of the allowed slice range" in notes["info"][-1]
    assert labels.selected_label == 2
    assert notes["error"] == []

    labels.undo()  # ONE step removes the whole object
    assert not labels.data.any()
    labels.redo()
    np.testing.assert_array_equal(labels.data, expected.label_volume(ids=[1]))
    widget.close()


def test_propagate_committed_objects_keeps_ids_and_other_objects(
    make_napari_viewer, qtbot, model, stack, notes
):
    viewer = make_napari_viewer()
    image = viewer.add_image(stack, name="nuclei")
    before = np.zeros(stack.shape, np.uint32)
    yy, xx = np.mgrid[:96, :160]
    before[:, 50:96, 0:80] = 7  # another object, on every slice, where SAM's masks reach
    k = 3
    before[k][((yy - 30) / 12) ** 2 + ((xx - 50) / 18) ** 2 < 1] = 3
    before[k][((yy - 60) / 16) ** 2 + ((xx - 115) / 14) ** 2 < 1] = 5
    labels = viewer.add_labels(before.copy(), name="nuclei SAM labels")
    widget = make_widget(viewer, model)
    assert widget.labels_layer is labels
    viewer.dims.set_point(0, k)
    set_thresholds(widget, LAX, (0, 6))
    widget.ids_edit.setText("3, 5")
    widget.propagate()
    settle(qtbot, widget)

    seeds = np.stack([before[k] == 3, before[k] == 5])
    result = propagate(model, stack, seeds, k, settings=LAX, contrast=image.contrast_limits)
    expected = before.copy()
    for oid, index in plan_write(before, result, ids=[3, 5]):
        expected[index] = oid
    np.testing.assert_array_equal(labels.data, expected)
    assert set(np.unique(labels.data)) == {0, 3, 5, 7}
    assert (labels.data[before == 7] == 7).all()  # never over another object
    for oid, obj in zip((3, 5), result.objects):  # written only where it was followed
        lo, hi = obj.extent
        on = [z for z in range(7) if (labels.data[z] == oid).any()]
        assert len(on) >= 2 and k in on and set(on) <= set(range(lo, hi + 1))
    assert notes["error"] == []
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)

    # an id that is not on the slice is refused with a sentence; nothing runs
    widget.ids_edit.setText("4")
    widget.propagate()
    assert not widget.busy and "Object 4 is not on slice 3" in notes["error"][-1]
    widget.close()


def test_cancel_leaves_the_labels_as_they_were(make_napari_viewer, qtbot, model, stack, notes):
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="nuclei")
    before = np.zeros(stack.shape, np.uint32)
    before[3, 20:50, 30:70] = 2
    labels = viewer.add_labels(before.copy(), name="nuclei SAM labels")
    widget = make_widget(viewer, model)
    viewer.dims.set_point(0, 3)
    set_thresholds(widget, LAX, (0, 6))
    slow_encoder(model, 0.3)  # each slice is encoded on demand, slowly
    widget.propagate()
    qtbot.waitUntil(lambda: widget.job_bar.value() >= 1, timeout=TIMEOUT)
    widget.cancel_job()
    settle(qtbot, widget)
    np.testing.assert_array_equal(labels.data, before)
    assert "cancelled" in widget.status_label.text() and notes["info"]
    assert widget.propagate_button.isEnabled() and not widget.job_bar.isVisible()
    labels.undo()  # nothing was recorded by the cancelled propagation
    np.testing.assert_array_equal(labels.data, before)
    widget.close()


def test_precompute_with_disk_cache_progress_cancel_and_resume(
    make_napari_viewer, qtbot, model, stack, tmp_path, notes
):
    viewer = make_napari_viewer()
    image = viewer.add_image(stack, name="nuclei")
    # no model yet: precompute loads it first (through the widget's model factory)
    widget = make_widget(
        viewer, model_factory=lambda *a, **k: LoadedModel.wrap(model, "small-fast", "fast model")
    )
    widget.disk_check.setChecked(True)
    widget.cache_edit.setText(str(tmp_path))
    widget._on_cache_choice()
    calls = EncoderCalls(model)
    slow_encoder(model, 0.15)
    values = []
    widget._relay.job_progress.connect(lambda done, total: values.append((done, total)))
    widget.precompute()
    qtbot.waitUntil(lambda: len(calls.batches) >= 2, timeout=TIMEOUT)
    widget.cancel_job()
    settle(qtbot, widget)
    done = len(DiskCache(tmp_path))
    assert 2 <= done < 7 and calls.planes == done
    assert "cancelled" in widget.status_label.text()
    assert values[0] == (0, 7) and all(t == 7 for _, t in values)

    # resume: only the missing slices are encoded
    calls.reset()
    values.clear()
    widget.precompute()
    settle(qtbot, widget)
    assert calls.planes == 7 - done and len(DiskCache(tmp_path)) == 7
    assert values[0] == (0, 7 - done) and values[-1] == (7 - done, 7 - done)
    assert "Embeddings of all 7 slices are ready" in widget.status_label.text()

    # a later session (here: plain Python) finds every slice under the widget's keys
    later = StackEmbeddings(
        model, stack, model_id="small-fast", contrast=image.contrast_limits, disk=tmp_path
    )
    assert later.missing() == []
    # and the widget's preview uses the cache: no encoding for a prompt on any slice
    calls.reset()
    widget.store.clear()
    viewer.dims.set_point(0, 5)
    widget.points_layer.add([5, 40.0, 60.0])
    settle(qtbot, widget)
    assert widget.preview_layer.data[5].any() and calls.planes == 0
    assert widget.encode_log == []
    assert notes["error"] == [] and notes["warning"] == []
    widget.close()


def test_stack_controls_follow_the_image(make_napari_viewer, qtbot, model, stack, notes):
    viewer = make_napari_viewer()
    viewer.add_image(stack[0], name="plane")
    widget = make_widget(viewer, model)
    assert not widget.stack_box.isEnabled()
    widget.propagate()
    assert "works on 3D stacks" in notes["info"][-1]
    image = viewer.add_image(stack[:4], name="small stack")
    widget.image_picker.select(image)
    widget._on_image_choice()
    assert widget.stack_box.isEnabled() and widget.z_to_spin.maximum() == 3
    viewer.dims.set_point(0, 2)
    widget.propagate()  # nothing on this slice
    assert "Nothing to propagate" in notes["info"][-1] and not widget.busy
    widget.close()
