"""``napari-sam gui``: from the command to a clickable image (napari under Xvfb).

The model is MobileSAM's architecture (vit_t) with seeded random weights, saved as
the published file would be: once "already downloaded" (in the weights cache), once
downloaded with progress from a local file:// source. Nothing leaves the machine.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import tifffile
from qtpy.QtCore import QPoint, Qt
from qtpy.QtTest import QTest

from napari_helpers import TIMEOUT, capture_notifications, wait_idle
from napari_sam import cli
from napari_sam._widgets.launch import AUTOMATIC, INTERACTIVE, PLUGIN, open_gui
from napari_sam.runtime import settings as user_settings
from napari_sam.runtime import weights


@pytest.fixture
def catalogue(monkeypatch, tmp_path, vit_t_checkpoint):
    """An empty weights cache, and vit_t published at a local file:// address."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(cache))
    info = weights.CheckpointInfo("vit_t", "mobile_sam.pt", vit_t_checkpoint.as_uri(),
                                  vit_t_checkpoint.stat().st_size)
    monkeypatch.setitem(weights.CHECKPOINTS, "vit_t", info)
    return cache


def click_center(qtbot, viewer) -> None:
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.waitUntil(canvas.isVisible, timeout=TIMEOUT)
    QTest.mouseClick(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     QPoint(canvas.width() // 2, canvas.height() // 2))


def test_gui_opens_the_sample_dock_and_model_then_one_click_gives_a_mask(
    make_napari_viewer, qtbot, catalogue, vit_t_checkpoint, monkeypatch
):
    catalogue.mkdir()
    (catalogue / "mobile_sam.pt").write_bytes(vit_t_checkpoint.read_bytes())  # "on disk"
    notes = capture_notifications(monkeypatch)
    viewer = make_napari_viewer(show=True)
    t0 = time.perf_counter()
    _, dock = open_gui(viewer=viewer)
    assert viewer.layers[0].name == "nuclei 3D (synthetic)"
    points = viewer.layers["SAM points"]
    assert viewer.layers.selection.active is points and points.mode == "add"
    session = dock.controller.session
    assert session.request.choice == "vit_t" and session.loading  # in the background
    click_center(qtbot, viewer)
    qtbot.waitUntil(lambda: len(points.data) == 1, timeout=TIMEOUT)
    wait_idle(qtbot, dock)
    z = int(points.data[0][0])
    assert viewer.layers["SAM preview"].data[z].any()
    print(f"\nfirst-run path, dock open to first preview: {time.perf_counter() - t0:.1f} s")
    assert dock.model_controls.model_label.text().startswith("Model: vit_t on cpu")
    assert notes["error"] == []
    # the model is remembered for the next session
    assert user_settings.read_section("model")[0]["choice"] == "vit_t"
    dock.close()


def test_gui_downloads_the_smallest_model_with_progress(make_napari_viewer, qtbot, catalogue,
                                                        monkeypatch, tmp_path):
    real_download = weights._download_file

    def slow_download(*args, progress_callback=None, **kwargs):
        def slow(event):
            time.sleep(0.01)
            progress_callback(event)

        return real_download(*args, progress_callback=slow, chunk_size=1 << 20, **kwargs)

    monkeypatch.setattr(weights, "_download_file", slow_download)
    image = tmp_path / "cells.tif"
    tifffile.imwrite(image, (np.random.default_rng(0).random((64, 80)) * 4000).astype(np.uint16))
    viewer = make_napari_viewer()
    _, dock = open_gui(image, automatic=True, viewer=viewer)
    assert viewer.layers[0].name == "cells" and dock.controller.image is viewer.layers[0]
    # --automatic: the automatic dock as a tab beside the interactive one
    frame, _ = viewer.window.add_plugin_dock_widget(PLUGIN, INTERACTIVE)
    auto_frame, auto = viewer.window.add_plugin_dock_widget(PLUGIN, AUTOMATIC)
    assert auto_frame in viewer.window._qt_window.tabifiedDockWidgets(frame)
    assert auto.controller.session is dock.controller.session
    qtbot.waitUntil(lambda: "MB" in dock.jobs.bar.format(), timeout=TIMEOUT)
    wait_idle(qtbot, dock)
    assert (catalogue / "mobile_sam.pt").is_file() and dock.controller.model is not None
    dock.close()
    auto.close()


def test_gui_command_refuses_a_missing_image_in_one_line(capsys, tmp_path):
    assert cli.main(["gui", str(tmp_path / "missing.tif")]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"napari-sam: error: The image {tmp_path / 'missing.tif'} does not exist."
