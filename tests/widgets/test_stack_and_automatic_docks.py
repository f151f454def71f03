"""The 3D stack controls and the automatic dock in a real napari window (run under Xvfb).

Wiring only (the decisions are tested in tests/controllers): buttons start jobs in
worker threads, progress shows the real stage and the time left, Cancel stops them,
the propagation summary stays in the dock until the next run, settings forms come
from the settings dataclasses (their help as tooltips) and reach the controller.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_helpers import (
    LAX,
    TIMEOUT,
    capture_notifications,
    cut,
    lax_auto,
    open_dock,
    slow_encoder,
    wait_idle,
)
from napari_sam._widgets._qt.automatic import AutomaticSegmentationWidget
from napari_sam.runtime.settings import field_help
from napari_sam.workflows import segment as segment_logic
from napari_sam.workflows.embeddings import DiskCache
from napari_sam.workflows.propagation import PropagationSettings
from napari_sam.workflows.segment import AutoSettings


@pytest.fixture
def notes(monkeypatch):
    return capture_notifications(monkeypatch)


@pytest.fixture(scope="module")
def stack(nuclei):
    """(7, 96, 160) uint16 nuclei."""
    return cut(nuclei, (10, 17))


def test_propagate_button_summary_stays_and_cancel_writes_nothing(
    make_napari_viewer, qtbot, fast_model, stack, notes
):
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="nuclei")
    widget = open_dock(viewer, "interactive", fast_model)
    controls = widget.stack_controls
    assert controls.isEnabled() and (controls.z_from.value, controls.z_to.value) == (0, 6)
    # the thresholds form is made from PropagationSettings, with its help as tooltips
    form = {w.name: w for w in controls.settings_form}
    assert set(form) == {"min_score", "min_overlap", "min_area"}
    assert form["min_score"].tooltip == field_help(PropagationSettings, "min_score")
    form["min_score"].value = 0.0
    form["min_overlap"].value = 0.0
    form["min_area"].value = 1
    assert widget.controller.stack.settings == LAX
    controls.z_from.value = 1
    assert widget.controller.stack.z_range == (1, 6)

    viewer.dims.set_point(0, 3)
    widget.points_layer.add([3, 30.0, 40.0])
    wait_idle(qtbot, widget)
    controls.propagate_button.click()
    assert widget.busy and not controls.propagate_button.isEnabled()
    wait_idle(qtbot, widget)
    summary = controls.summary_label.text()
    assert summary.startswith("Propagated object 1 over slices") and "Object 1:" in summary
    assert notes["info"][-1] == summary  # the whole summary, in one notification
    widget.points_layer.add([3, 60.0, 100.0])  # a new preview: the summary stays
    wait_idle(qtbot, widget)
    assert controls.summary_label.text() == summary
    labels = widget.labels_layer
    written = labels.data.copy()

    # Cancel while propagating (each slice is encoded on demand, slowly)
    slow_encoder(fast_model, 0.3)
    widget.controller.embeddings.store.clear()
    controls.propagate_button.click()
    qtbot.waitUntil(lambda: widget.jobs.bar.maximum() == 1000 and widget.jobs.bar.value() > 0,
                    timeout=TIMEOUT)
    assert "slices" in widget.jobs.bar.format()
    assert controls.summary_label.text() == ""  # the next run started: the old summary goes
    widget.jobs.cancel_button.click()
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(labels.data, written)
    assert "cancelled" in widget.status_label.text() and controls.propagate_button.isEnabled()
    assert widget.jobs.isHidden() and notes["error"] == []
    widget.close()


def test_precompute_button_with_the_disk_cache(make_napari_viewer, qtbot, fast_model, stack,
                                               tmp_path, notes):
    viewer = make_napari_viewer()
    viewer.add_image(stack[:3], name="nuclei")
    widget = open_dock(viewer, "interactive", fast_model)
    controls = widget.stack_controls
    controls.cache_edit.value = str(tmp_path)
    controls.disk_check.setChecked(True)
    assert widget.controller.embeddings.use_disk
    controls.precompute_button.click()
    wait_idle(qtbot, widget)
    assert len(DiskCache(tmp_path)) == 3
    assert "Embeddings of all 3 slices are ready" in widget.status_label.text()
    assert notes["error"] == []
    widget.close()


def test_automatic_dock_runs_shows_the_stage_and_cancels(
    make_napari_viewer, qtbot, fast_model, stack, monkeypatch, notes
):
    viewer = make_napari_viewer()
    viewer.add_image(stack[:3], name="nuclei")
    _, widget = viewer.window.add_plugin_dock_widget(
        "napari-sam-microscopy", "Automatic segmentation (SAM)"
    )
    assert isinstance(widget, AutomaticSegmentationWidget)
    widget.set_model(fast_model, "fast")
    c = widget.controller
    # the settings form is made from AutoSettings: labels and tooltips from its help
    form = {w.name: w for w in widget.objects_form}
    assert form["points_per_side"].label == "Points per side"
    assert form["points_per_side"].tooltip == field_help(AutoSettings, "points_per_side")
    form["points_per_side"].value = 3
    assert c.settings.points_per_side == 3
    lax_auto(c, points=3)
    assert widget.estimate_label.text().startswith("This run: 1 slice × 9 prompts")
    widget.scope_combo.value = "all slices"
    assert widget.estimate_label.text().startswith("This run: 3 slices × 9 prompts")

    real = segment_logic.segment_iter

    def slow(*args, **kwargs):
        steps = real(*args, **kwargs)
        try:
            while True:
                event = next(steps)
                time.sleep(0.2)
                yield event
        except StopIteration as stop:
            return stop.value

    monkeypatch.setattr(segment_logic, "segment_iter", slow)
    widget.run_button.click()
    # the bar says what runs now, as the work names it (not "Loading the model…")
    qtbot.waitUntil(lambda: "slice 1: decoding prompts" in widget.jobs.bar.format(),
                    timeout=TIMEOUT)
    assert widget.status_label.text() == "Segmenting all 3 slices of “nuclei”…"
    qtbot.waitUntil(lambda: "left" in widget.jobs.bar.format(), timeout=TIMEOUT)
    widget.jobs.cancel_button.click()
    wait_idle(qtbot, widget)
    assert "nuclei SAM auto" not in [lyr.name for lyr in viewer.layers]
    assert "cancelled" in notes["info"][-1] and widget.run_button.isEnabled()

    monkeypatch.setattr(segment_logic, "segment_iter", real)
    widget.run_button.click()
    wait_idle(qtbot, widget)
    layer = viewer.layers["nuclei SAM auto"]
    assert layer.data.any() and notes["error"] == [] and notes["warning"] == []
    # its object table, measured in a job off the GUI thread: one row per object
    table = layer.features
    assert list(table["index"]) == [int(i) for i in np.unique(layer.data) if i]
    assert (table["method"] == "automatic").all() and "volume" in table
    widget.close()


def test_automatic_dock_on_a_timelapse_of_stacks(make_napari_viewer, qtbot, fast_model, stack,
                                                 notes):
    """A (T, Z, Y, X) layer: the stack controls are offered, and "all slices" segments the
    slices of the time point the sliders show, in a thread, into the image's full shape."""
    viewer = make_napari_viewer()
    movie = np.stack([stack[:3], stack[3:6]])  # (2, 3, 96, 160)
    image = viewer.add_image(movie, name="movie")
    _, widget = viewer.window.add_plugin_dock_widget(
        "napari-sam-microscopy", "Automatic segmentation (SAM)"
    )
    widget.set_model(fast_model, "fast")
    c = widget.controller
    lax_auto(c, points=3)
    assert widget.stack_form.enabled
    widget.scope_combo.value = "all slices"
    assert widget.estimate_label.text().startswith("This run: 3 slices × 9 prompts")
    viewer.dims.current_step = (1, 0, 0, 0)
    widget.run_button.click()
    wait_idle(qtbot, widget)
    layer = viewer.layers["movie SAM auto"]
    assert layer.data.shape == movie.shape and not layer.data[0].any()
    expected = segment_logic.segment(fast_model, movie[1], settings=c.settings,
                                     contrast_limits=tuple(image.contrast_limits)).labels
    assert expected.max() >= 1
    np.testing.assert_array_equal(layer.data[1], expected)
    assert "at axis 0 = 1" in widget.status_label.text()
    # every time point, in the worker thread: the whole image as segment_planes gives it
    from napari_sam.workflows.planes import ImagePlanes
    from napari_sam.workflows.segment_planes import segment_planes

    assert tuple(widget.scope_combo.choices) == ("current slice", "all slices",
                                                 "all time points")
    widget.scope_combo.value = "all time points"
    assert widget.estimate_label.text().startswith("This run: 6 slices × 9 prompts")
    widget.run_button.click()
    wait_idle(qtbot, widget)
    whole = segment_planes(fast_model, ImagePlanes(movie, contrast=tuple(image.contrast_limits)),
                           settings=c.settings)
    np.testing.assert_array_equal(layer.data, whole.labels)
    assert "2 time points of 3 slices" in widget.status_label.text()
    assert notes["error"] == [] and notes["warning"] == []
    widget.close()


def test_automatic_dock_channel_layers_by_the_button_then_image_only(
    make_napari_viewer, qtbot, fast_model, stack, notes
):
    """Two channel layers selected in the layer list and "Selected as channels": the run
    segments what SAM sees of both (red, green, each with its contrast limits); "Image only"
    goes back to the first alone. An RGB stack is offered the stack controls."""
    from napari_sam.workflows.channels import channels_to_rgb

    viewer = make_napari_viewer()
    nuc, mem = viewer.add_image(np.stack([stack[:3], stack[3:6]]), channel_axis=0,
                                name=["nuclei", "membranes"])
    widget, c = _automatic_dock(viewer, fast_model)
    controls = widget.channel_controls
    assert not controls.image_only_button.isEnabled()
    # a short unnamed axis is offered as a channel axis, but the section stays folded
    assert not controls.axis_row.isHidden() and not widget.channels_section.isExpanded()
    viewer.layers.selection = {nuc, mem}
    controls.channels_button.click()
    assert controls.channels_label.text() == "SAM sees “nuclei” as red, “membranes” as green."
    assert controls.image_only_button.isEnabled()
    assert widget.image_picker.value is nuc
    assert tuple(widget.scope_combo.choices) == ("current slice", "all slices")  # a stack
    widget.scope_combo.value = "all slices"
    widget.run_button.click()
    wait_idle(qtbot, widget)
    contrasts = [tuple(nuc.contrast_limits), tuple(mem.contrast_limits)]
    seen = np.stack([channels_to_rgb([nuc.data[z], mem.data[z]], contrasts) for z in range(3)])
    expected = segment_logic.segment(fast_model, seen, rgb=True, contrast_limits=(0, 255),
                                     settings=c.settings).labels
    assert expected.max() >= 1
    np.testing.assert_array_equal(viewer.layers["nuclei SAM auto"].data, expected)
    controls.image_only_button.click()
    assert c.channels.layers == [] and controls.channels_label.text() == ""
    assert widget.status_label.text() == "Ready to segment the stack “nuclei”."

    colour = viewer.add_image(np.repeat(stack[:3, ..., None], 3, axis=-1).astype(np.uint8),
                              rgb=True, name="colour stack")
    widget.image_picker.pick(colour)
    assert widget.stack_form.enabled
    assert widget.status_label.text() == "Ready to segment the stack “colour stack”."
    assert notes["error"] == [] and notes["warning"] == []
    widget.close()


def test_automatic_dock_channels_of_a_layers_channel_axis(
    make_napari_viewer, qtbot, fast_model, stack, notes
):
    """A (C, Z, Y, X) image opened as one layer, as napari's reader opens a TIFF (no axis
    names): the Channels section opens with the short first axis chosen; "Use channels" with
    "1 0" makes the channel layers and the run segments what SAM sees of them into
    "<image> SAM auto"."""
    from napari_sam.workflows.channels import channels_to_rgb

    viewer = make_napari_viewer()
    data = np.stack([stack[:3], stack[3:6]])  # (C=2, Z=3, Y, X)
    viewer.add_image(data, name="cells")
    widget, c = _automatic_dock(viewer, fast_model)
    controls = widget.channel_controls
    assert widget.channels_section.isExpanded() and not controls.axis_row.isHidden()
    assert controls.axis_combo.currentText() == "0 (2)"
    controls.channels_edit.setText("1 0")
    controls.axis_button.click()
    red, green = viewer.layers["cells channel 1"], viewer.layers["cells channel 0"]
    assert c.channels.layers == [red, green] and widget.image_picker.value is red
    assert controls.channels_label.text() == (
        "SAM sees “cells channel 1” as red, “cells channel 0” as green.")
    widget.scope_combo.value = "all slices"
    widget.run_button.click()
    wait_idle(qtbot, widget)
    contrasts = [tuple(red.contrast_limits), tuple(green.contrast_limits)]
    seen = np.stack([channels_to_rgb([data[1, z], data[0, z]], contrasts) for z in range(3)])
    expected = segment_logic.segment(fast_model, seen, rgb=True, contrast_limits=(0, 255),
                                     settings=c.settings).labels
    assert expected.max() >= 1
    np.testing.assert_array_equal(viewer.layers["cells SAM auto"].data, expected)
    assert notes["error"] == [] and notes["warning"] == []
    widget.close()


def _automatic_dock(viewer, model):
    """The automatic dock from the plugin menu, with ``model`` and a lax 3×3 point grid."""
    _, widget = viewer.window.add_plugin_dock_widget(
        "napari-sam-microscopy", "Automatic segmentation (SAM)"
    )
    widget.set_model(model, "fast")
    lax_auto(widget.controller, points=3)
    return widget, widget.controller
