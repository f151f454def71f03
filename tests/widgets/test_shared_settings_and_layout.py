"""Both docks together (napari under Xvfb): one model per viewer, settings remembered,
and a layout that fits a 1280x800 screen without squeezing the canvas."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import QPoint, QRect
from qtpy.QtWidgets import QApplication, QPushButton

from napari_helpers import capture_notifications, cut, open_dock, wait_idle
from napari_sam.runtime import settings as user_settings
from napari_sam.runtime.loader import LoadedModel


@pytest.fixture
def notes(monkeypatch):
    return capture_notifications(monkeypatch)


def test_one_model_per_viewer_shared_by_both_docks(make_napari_viewer, qtbot, fast_model,
                                                    nuclei, notes):
    viewer = make_napari_viewer()
    viewer.add_image(cut(nuclei, (12, 14)), name="nuclei")
    loads = []

    def factory(choice, checkpoint, device, **kwargs):
        loads.append(choice)
        return LoadedModel.wrap(fast_model, choice)

    interactive = open_dock(viewer, "interactive", model_factory=factory)
    automatic = open_dock(viewer, "automatic")
    assert automatic.controller.session is interactive.controller.session
    interactive.model_controls.model_combo.value = "vit_b"  # chosen in one dock...
    assert automatic.model_controls.model_combo.value == "vit_b"  # ...shows in the other
    interactive.model_controls.precision_combo.value = "fp32"
    assert automatic.model_controls.precision_combo.value == "fp32"
    interactive.model_controls.load_button.click()
    wait_idle(qtbot, interactive)
    assert loads == ["vit_b"]
    assert automatic.controller.model is interactive.controller.model  # one copy in memory
    assert automatic.model_controls.model_label.text() == "Model: vit_b on cpu"
    automatic.controller.set_settings(points_per_side=2, pred_iou_thresh=0.0,
                                      stability_score_thresh=0.0)
    automatic.run_button.click()
    wait_idle(qtbot, automatic)
    assert loads == ["vit_b"] and "nuclei SAM auto" in viewer.layers  # not loaded again
    automatic.model_controls.model_combo.value = "vit_t"
    assert interactive.controller.model is None  # the other choice: dropped in both
    assert interactive.model_controls.model_combo.value == "vit_t"
    assert notes["error"] == []
    interactive.close()
    automatic.close()


def test_model_and_automatic_settings_are_remembered_across_sessions(
    make_napari_viewer, qtbot, tmp_path, notes
):
    checkpoint = tmp_path / "my_sam.pth"
    checkpoint.write_bytes(b"weights")
    first = make_napari_viewer()
    interactive = open_dock(first, "interactive")
    automatic = open_dock(first, "automatic")
    controls = interactive.model_controls
    controls.model_combo.value = "custom checkpoint file…"
    controls.checkpoint_edit.value = str(checkpoint)
    controls.precision_combo.value = "bf16"
    form = {w.name: w for w in automatic.objects_form}
    form["points_per_side"].value = 12
    form["min_area"].value = 40
    interactive.close()
    automatic.close()

    later = make_napari_viewer()  # a new napari session
    interactive = open_dock(later, "interactive")
    automatic = open_dock(later, "automatic")
    request = interactive.controller.session.request
    assert (request.choice, request.checkpoint, request.precision) == (
        "custom checkpoint file…", str(checkpoint), "bf16")
    assert interactive.model_controls.checkpoint_edit.value == checkpoint
    form = {w.name: w for w in automatic.objects_form}
    assert (form["points_per_side"].value, form["min_area"].value) == (12, 40)
    assert notes["warning"] == []
    interactive.close()
    automatic.close()

    # an old or broken file: one warning, the defaults, never a crash
    user_settings.config.settings_file().write_text('{"version": 0, "model": "vit_b"}')
    broken = make_napari_viewer()
    interactive = open_dock(broken, "interactive")
    automatic = open_dock(broken, "automatic")
    assert len(notes["warning"]) == 1 and "has another format" in notes["warning"][0]
    assert interactive.controller.session.request.choice == "auto"
    assert automatic.controller.settings.points_per_side == 32
    interactive.close()
    automatic.close()


def _global_rect(widget) -> QRect:
    top_left = widget.mapToGlobal(QPoint(0, 0))
    return QRect(top_left, widget.size())


def test_both_docks_fit_a_1280x800_screen(make_napari_viewer, qtbot, fast_model, nuclei):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(cut(nuclei, (10, 20), (0, 192), (0, 192)), name="nuclei")
    window = viewer.window._qt_window
    window.resize(1280, 800)
    interactive = open_dock(viewer, "interactive", fast_model)
    automatic = open_dock(viewer, "automatic")
    for _ in range(20):
        QApplication.processEvents()
    assert window.width() <= 1280 and window.height() <= 800
    canvas = viewer.window._qt_viewer.canvas.native
    assert canvas.width() >= 0.4 * window.width()  # the canvas is not squeezed
    for dock in (interactive, automatic):
        assert dock.width() <= 0.3 * window.width()
        viewport = _global_rect(dock.scroll.viewport())
        buttons = [b for b in dock.findChildren(QPushButton) if b.isVisibleTo(dock)]
        assert len(buttons) >= 3
        for button in buttons:
            # every button can be brought into view, whole, and its text fits
            if dock.body.isAncestorOf(button):
                dock.scroll.ensureWidgetVisible(button)
                QApplication.processEvents()
                assert viewport.contains(_global_rect(button)), button.text()
            assert button.width() >= button.minimumSizeHint().width(), button.text()
        shown = [b for b in buttons if b.isVisible() and not b.visibleRegion().isEmpty()]
        for i, a in enumerate(shown):  # no two buttons overlap
            for b in shown[i + 1:]:
                assert not _global_rect(a).intersects(_global_rect(b)), (a.text(), b.text())
        assert not np.any([b.text() == "" for b in shown])
    interactive.close()
    automatic.close()
