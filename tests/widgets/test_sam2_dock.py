"""SAM 2.1 in the interactive dock, in a real napari window (run under Xvfb).

Two nuclei clicked on slice 8 of the real 16-slice nuclei stack (``nuclei.tif``
slices 22–37, the stack of the SAM 2 parity tests), followed both ways with
"SAM 2 memory", undone, redone, saved with the plugin's label TIFF writer, and
their prompts exported as CSV. Wiring only: what is written is checked against
``MemoryPropagation`` in tests/controllers/test_sam2_controller.py. A tiny SAM 2.1
with seeded random weights on 256-pixel inputs; the slice range is narrowed to
6–10 to keep it fast.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_helpers import capture_notifications, open_dock, wait_idle
from napari_sam._widgets.interactive.stack import MEMORY
from napari_sam.workflows.prompt_table import read_prompt_table

#: Centres (row, col) of two nuclei on slice 8 (nuclei 7 and 14 of nuclei_label.tif).
NUCLEI = [(155.0, 112.0), (141.0, 188.0)]
K = 8


@pytest.fixture(scope="module")
def stack(nuclei_stack):
    return np.ascontiguousarray(nuclei_stack[22:38])


def test_two_nuclei_propagated_both_ways_undone_and_saved(
    make_napari_viewer, qtbot, sam2_small_input, stack, tmp_path, monkeypatch
):
    notes = capture_notifications(monkeypatch)
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="nuclei")
    widget = open_dock(viewer, "interactive", sam2_small_input[0], "sam2-tiny-random")
    controls = widget.stack_controls
    assert controls.method_combo.isEnabled()
    assert controls.method_combo.currentData() == MEMORY
    assert controls.memory_form[0].native.isHidden() is False
    assert all(w.native.isHidden() for w in controls.settings_form)  # SAM 1's thresholds
    memory_form = {w.name: w for w in controls.memory_form}
    memory_form["stop_when_absent"].value = False  # random weights: the score is noise
    assert widget.controller.stack.memory.settings.stop_when_absent is False
    controls.z_from.value, controls.z_to.value = 6, 10

    viewer.dims.set_point(0, K)
    widget.points_layer.add([K, *NUCLEI[0]])
    wait_idle(qtbot, widget)
    widget.output_controls.commit_button.click()
    widget.points_layer.add([K, *NUCLEI[1]])
    wait_idle(qtbot, widget)
    labels = widget.labels_layer
    before = labels.data.copy()
    assert set(np.unique(before[K])) == {0, 1}

    controls.propagate_button.click()
    wait_idle(qtbot, widget)
    assert notes["error"] == [], notes["error"]
    for oid in (1, 2):
        on = [z for z in range(len(stack)) if (labels.data[z] == oid).any()]
        assert min(on) < K < max(on) and 6 <= min(on) and max(on) <= 10  # both ways, in range
    summary = controls.summary_label.text()
    assert summary.startswith("Propagated objects 1, 2 over slices 6–10 (Ctrl+Z undoes it).")
    assert controls.export_button.isEnabled()
    after = labels.data.copy()

    widget.output_controls.undo_button.click()  # one undo step
    np.testing.assert_array_equal(labels.data, before)
    labels.redo()
    np.testing.assert_array_equal(labels.data, after)

    from npe2 import PluginManager

    PluginManager.instance().discover()
    path = tmp_path / "nuclei_labels.tif"
    written = labels.save(str(path), plugin="napari-sam-microscopy")
    assert str(path) in written
    np.testing.assert_array_equal(tifffile.imread(path), after)

    table = tmp_path / "prompts.csv"
    assert controls.export_prompts(str(table))
    prompts = read_prompt_table(table)  # the clicked nucleus; the committed one is a mask
    assert [(p.obj, p.z) for p in prompts] == [(2, K)]
    np.testing.assert_allclose(prompts[0].point_coords, [NUCLEI[1][::-1]])
