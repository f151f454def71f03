"""Propagation along a chosen axis of a (T, Z, Y, X) image in a real napari window (Xvfb).

Wiring only (the exact labels are checked in tests/controllers/test_propagation_nd.py):
the "Propagate along" combo lists the image's axes by napari's axis labels with z
chosen, the range follows the axis chosen, and the Propagate button and Shift+F
write labels only at the current t (along z) or the current z (along t).
"""

from __future__ import annotations

import numpy as np
from napari.utils.key_bindings import KeymapHandler

from napari_helpers import LAX, open_dock, wait_idle


def tzyx_movie(nuclei_stack) -> np.ndarray:
    """(3, 5, 96, 160) uint16: time point t holds slices 20 + t ... 24 + t of the real stack."""
    crop = nuclei_stack[:, 80:176, 48:208]
    return np.ascontiguousarray(np.stack([crop[20 + t:25 + t] for t in range(3)]))


def test_propagate_along_z_then_t_at_the_viewers_position(make_napari_viewer, qtbot,
                                                          fast_model, nuclei_stack):
    movie = tzyx_movie(nuclei_stack)
    viewer = make_napari_viewer()
    viewer.add_image(movie, name="movie", axis_labels=("t", "z", "y", "x"))
    widget = open_dock(viewer, "interactive", fast_model)
    widget.controller.stack.settings = LAX
    controls = widget.stack_controls
    combo = controls.axis_combo
    assert controls.isEnabled() and not controls.axis_row.isHidden()
    assert [combo.itemText(i) for i in range(combo.count())] == ["t", "z"]
    assert combo.currentText() == "z" and (controls.z_from.value, controls.z_to.value) == (0, 4)
    assert (controls.z_from.label, controls.z_to.label) == ("From slice", "To slice")

    viewer.dims.set_point(0, 1)
    viewer.dims.set_point(1, 2)
    widget.points_layer.add([1, 2, 46.0, 64.0])
    wait_idle(qtbot, widget)
    assert widget.controller.preview.layer.data[1, 2].any()
    controls.propagate_button.click()
    wait_idle(qtbot, widget)
    labels = widget.labels_layer
    assert labels.data.shape == movie.shape
    ts, zs = np.nonzero(labels.data.any(axis=(2, 3)))
    assert set(ts) == {1} and len(set(zs)) >= 2  # along z, at t = 1 only
    assert controls.summary_label.text().startswith("Propagated object 1 over z ")
    along_z = labels.data.copy()

    combo.setCurrentIndex(combo.findText("t"))  # follow the committed object in time
    assert widget.controller.stack.axis_in_use() == 0 and controls.z_to.value == 2
    assert (controls.z_from.label, controls.z_to.label) == ("From frame", "To frame")
    handler = KeymapHandler()
    handler.keymap_providers = [viewer.layers.selection.active, viewer]
    handler.press_key("Shift+F")
    wait_idle(qtbot, widget)
    changed = labels.data != along_z
    ts, zs = np.nonzero(changed.any(axis=(2, 3)))
    assert set(zs) == {2} and {0, 2} <= set(ts)  # along t, at z = 2 only
    assert "over t 0–2 at z=2" in controls.summary_label.text()
    widget.close()
