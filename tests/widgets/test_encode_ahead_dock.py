"""Encoding the slice in view ahead, in a real napari window (Xvfb).

The dock's rest timer encodes the slice the user looks at in a worker thread;
the first canvas click there then needs no encoding; scrolling stops it; the
"Encode the slice in view ahead" box switches it off. The encoder is SAM's
small test ViT with random weights; its forward passes are counted.
"""

from __future__ import annotations

import threading

import numpy as np

from napari_helpers import TIMEOUT, click_canvas, cut, open_dock, shown_canvas, wait_idle
from napari_sam._widgets.interactive.ahead import AHEAD
from napari_sam._widgets.interactive.predict import plane_key


def count_encodes(model):
    """Thread ids of the image encoder's forward passes (a list that grows)."""
    calls: list[int] = []
    forward = model.image_encoder.forward

    def counted(x):
        calls.append(threading.get_ident())
        return forward(x)

    model.image_encoder.forward = counted
    return calls


def test_slice_in_view_is_encoded_ahead_then_clicked_without_waiting(
    make_napari_viewer, qtbot, fast_model, nuclei
):
    calls = count_encodes(fast_model)
    try:
        stack = cut(nuclei, (28, 32))
        viewer = make_napari_viewer(show=True)
        viewer.add_image(stack, name="nuclei")
        viewer.dims.set_point(0, 2)
        widget = open_dock(viewer, "interactive", fast_model, ahead_ms=50)
        c = widget.controller
        assert widget.ahead_box.isChecked()
        wait_idle(qtbot, widget)  # rests on slice 2: encoded ahead, in a worker thread
        assert len(calls) == 1 and calls[0] != threading.get_ident()
        key = plane_key(c, c.model, 2, False)[0]
        assert c.embeddings.find(key)[0] is not None
        assert "No prompts on slice 2" in widget.status_label.text()

        canvas = shown_canvas(qtbot, viewer)
        click_canvas(viewer, canvas, 50.0, 80.0)
        qtbot.waitUntil(lambda: widget.preview_layer is not None
                        and (widget.preview_layer.data[2] > 0).any(), timeout=TIMEOUT)
        wait_idle(qtbot, widget)
        assert len(calls) == 1  # the click was decoded on the plane encoded ahead
        assert widget.status_label.text().startswith("Preview on slice 2")

        widget.ahead_box.setChecked(False)  # the user switches it off
        assert not c.ahead.enabled
        viewer.dims.set_point(0, 3)
        wait_idle(qtbot, widget)
        assert len(calls) == 1 and not c.runner.running(AHEAD)
        widget.ahead_box.setChecked(True)  # and on again: slice 3 is encoded now
        wait_idle(qtbot, widget)
        assert len(calls) == 2
        assert c.embeddings.find(plane_key(c, c.model, 3, False)[0])[0] is not None
        assert not np.asarray(widget.preview_layer.data[3]).any()
        widget.close()
    finally:
        del fast_model.image_encoder.forward


def test_a_click_is_predicted_at_once_and_a_burst_of_points_once(make_napari_viewer, qtbot,
                                                                 fast_model, nuclei):
    stack = cut(nuclei, (28, 32))
    viewer = make_napari_viewer(show=True)
    viewer.add_image(stack, name="nuclei")
    viewer.dims.set_point(0, 1)
    # a debounce of a minute: only the click path can show a preview within this test
    widget = open_dock(viewer, "interactive", fast_model, debounce_ms=60_000, ahead_ms=60_000)
    c = widget.controller
    widget.timer.stop()
    c.flush()
    assert c.ahead.start()  # the slice is encoded (as after a rest)
    qtbot.waitUntil(lambda: not c.runner.running(), timeout=TIMEOUT)
    widget.timer.stop()
    widget.ahead_timer.stop()
    points = widget.points_layer
    points.add([1, 50.0, 80.0])  # what a click on the canvas does
    qtbot.waitUntil(lambda: widget.preview_layer is not None
                    and (widget.preview_layer.data[1] > 0).any(), timeout=2000)
    assert not widget.timer.isActive() and not c.pending  # the click's features event too
    first = np.asarray(widget.preview_layer.data[1]).copy()
    points.add([1, 20.0, 30.0])  # right after: debounced, predicted once the burst ends
    assert widget.timer.isActive() and c.pending
    np.testing.assert_array_equal(widget.preview_layer.data[1], first)
    widget.timer.stop()
    c.flush()
    assert not c.pending
    widget.close()
