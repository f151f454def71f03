"""The automatic dock's model list, modes (AIS / point grid) and tiling, without a display.

The instance decoder is a stand-in whose maps hold known discs (``DiscDecoder`` of
tests/test_ais.py); the encoder is the small random SAM of the other tests.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from napari.components import ViewerModel

from napari_helpers import collect, lax_auto, settle
from napari_sam._widgets.automatic.controller import AutomaticController
from napari_sam._widgets.automatic.modes import MODE_AIS, MODE_GRID, RunChoices
from napari_sam._widgets.jobs import SyncRunner
from napari_sam._widgets.model_session import (
    CUSTOM_CHECKPOINT,
    MODEL_CHOICES,
    choice_label,
    has_decoder,
    model_description,
)
from napari_sam.errors import SettingsError
from napari_sam.runtime.loader import LoadedModel, is_sam2
from napari_sam.runtime.weights import models_with_decoder
from napari_sam.workflows import segment as logic
from napari_sam.workflows.ais import AISSettings
from napari_sam.workflows.segment import SAM2_REFUSAL, segment
from napari_sam.workflows.tiling import Tiling
from test_ais import DISCS, DiscDecoder


def with_decoder(sam, name: str = "small-lm") -> LoadedModel:
    """The small random SAM with the disc stand-in decoder, as a loaded micro-sam model."""
    model = LoadedModel.wrap(sam, name, name)
    model.decoder = DiscDecoder()
    return model


def no_load(*args, **kwargs):
    raise AssertionError("the model must not be loaded for a run that is refused")


@pytest.fixture
def plane():
    """A 2D uint16 plane (non-square) with texture."""
    g = np.random.default_rng(3)
    return (g.random((96, 128)) * 1000).astype(np.uint16)


# --------------------------------------------------------------------------- model list
def test_model_list_offers_micro_sam_and_sam2_models_saying_which_have_a_decoder():
    assert MODEL_CHOICES[0] == "auto" and MODEL_CHOICES[-1] == CUSTOM_CHECKPOINT
    for name in ("vit_t", "vit_b", "vit_l", "vit_h"):
        assert name in MODEL_CHOICES and "no AIS decoder" in choice_label(name)
    decoders = models_with_decoder()
    assert "vit_b_lm" in decoders and "vit_t_lm" in decoders
    for name in decoders:
        assert name in MODEL_CHOICES and has_decoder(name)
        assert choice_label(name).endswith("AIS decoder") and "no AIS" not in choice_label(name)
        assert "uses AIS" in model_description(name)
    assert choice_label("vit_b_lm") == "vit_b_lm: micro-sam, light microscopy, AIS decoder"
    sam2 = [name for name in MODEL_CHOICES if is_sam2(name)]
    assert sam2 == ["sam2_tiny", "sam2_small", "sam2_base_plus", "sam2_large"]
    for name in sam2:
        assert "no AIS decoder" in choice_label(name) and not has_decoder(name)
        assert "vit_b_lm" in model_description(name)
    assert len(set(MODEL_CHOICES)) == len(MODEL_CHOICES)


def test_first_session_default_stays_a_sam_model(cache):
    from napari_sam._widgets.model_session import default_model_choice

    assert default_model_choice() == "vit_t"  # nothing cached: the smallest SAM, not vit_t_lm


def test_segment_refuses_a_sam2_model_in_one_sentence():
    from napari_sam.model.sam2.build import SAM2_CONFIGS, build_sam2

    torch.manual_seed(0)
    sam2 = build_sam2(replace(SAM2_CONFIGS["sam2_tiny"], image_size=256)).eval()
    plane = np.zeros((40, 50), np.uint16)
    for mode in ("auto", "amg", "ais"):
        with pytest.raises(SettingsError, match=r"needs a SAM \(ViT\) model.*vit_b_lm"):
            segment(LoadedModel.wrap(sam2, "sam2_tiny"), plane, mode=mode)
    with pytest.raises(SettingsError, match=r"SAM 2\.1"):
        segment(sam2, plane)


def test_sam2_model_is_refused_before_loading_and_after_loading(plane):
    from napari_sam.model.sam2.build import SAM2_CONFIGS, build_sam2

    viewer = ViewerModel()
    viewer.add_image(plane, name="cells")
    c = AutomaticController(viewer)
    c.session.factory = no_load
    notes = collect(c)
    c.session.update(choice="sam2_tiny")
    assert c.mode_text() == SAM2_REFUSAL
    c.run()  # refused before anything is downloaded or loaded
    assert notes["error"] == [SAM2_REFUSAL] and c.status == SAM2_REFUSAL
    # a SAM 2.1 checkpoint file, known only once loaded: refused by segment_iter, no layer
    c.session.update(choice=CUSTOM_CHECKPOINT, checkpoint="/some/sam2.pt")
    torch.manual_seed(0)
    c.session.set_model(build_sam2(replace(SAM2_CONFIGS["sam2_tiny"], image_size=256)).eval(),
                        "sam2-file")
    c.run()
    assert notes["error"] == [SAM2_REFUSAL] * 2
    assert [lyr.name for lyr in viewer.layers] == ["cells"] and not c.busy
    c.close()


# --------------------------------------------------------------------------- modes
def test_mode_resolution_follows_the_model_and_the_users_choice(small_model):
    viewer = ViewerModel()
    viewer.add_image(np.zeros((64, 80), np.uint16), name="cells")
    c = AutomaticController(viewer)
    assert c.choices == RunChoices() and c.choices.mode == "auto"
    c.session.update(choice="vit_b_lm")  # not loaded yet: the published model decides
    assert c.planned_mode() == "ais" and "instance decoder (AIS) of vit_b_lm" in c.mode_text()
    assert c.estimate().startswith("This run (instance decoder, AIS): 1 image, 1 encoding")
    c.session.update(choice="vit_t")
    assert c.planned_mode() == "amg" and c.estimate().startswith("This run: 1 image × 1,024")
    c.session.set_model(with_decoder(small_model))  # loaded: the model decides
    assert c.planned_mode() == "ais"
    c.set_choices(mode=MODE_GRID)
    assert c.planned_mode() == "amg"
    c.session.set_model(small_model, "plain")
    c.set_choices(mode=MODE_AIS)
    assert c.planned_mode() == "ais" and "has no AIS decoder" in c.mode_text()
    c.set_choices(mode="auto")
    assert c.planned_mode() == "amg"
    with pytest.raises(SettingsError, match="mode must be one of"):
        c.set_choices(mode="watershed")
    assert c.choices.mode == "auto"
    c.close()


def test_ais_run_writes_the_decoders_objects_in_one_undo_step(small_model, plane, monkeypatch):
    viewer = ViewerModel()
    image = viewer.add_image(plane, name="cells")
    c = AutomaticController(viewer)
    notes = collect(c)
    model = with_decoder(small_model)
    c.session.set_model(model)
    c.set_ais_settings(min_size=10)
    c.run()
    assert notes["error"] == []
    layer = viewer.layers["cells SAM auto"]
    expected = segment(model, plane, contrast_limits=tuple(image.contrast_limits), mode="ais",
                       ais_settings=AISSettings(min_size=10)).labels
    assert expected.max() == len(DISCS)
    np.testing.assert_array_equal(layer.data, expected)
    assert c.status.startswith(f"instance decoder (AIS): {len(DISCS)} objects in the image → "
                               "“cells SAM auto”")
    assert model.decoder.calls == 2  # the run and the reference above
    # the plane's embedding was kept in the viewer's store: a second run does not encode it
    import napari_sam.predictors.predictor as predictor

    calls, encoded = [], []
    original, embed = logic.segment_iter, predictor.embed_images
    monkeypatch.setattr(logic, "segment_iter",
                        lambda *a, **k: calls.append(k) or original(*a, **k))
    monkeypatch.setattr(predictor, "embed_images",
                        lambda *a, **k: encoded.append(1) or embed(*a, **k))
    c.set_ais_settings(min_size=0)
    c.run()
    assert encoded == [] and calls[0]["store"] is c.session.store
    assert calls[0]["mode"] == "auto" and calls[0]["ais_settings"] == AISSettings()
    assert model.decoder.calls == 3 and layer.data.max() == len(DISCS)
    layer.undo()  # one undo step brings back the first run
    np.testing.assert_array_equal(layer.data, expected)
    c.close()


def test_ais_on_a_model_without_decoder_is_one_sentence_and_no_layer(small_model, plane):
    viewer = ViewerModel()
    viewer.add_image(plane, name="cells")
    c = AutomaticController(viewer)
    notes = collect(c)
    c.set_choices(mode=MODE_AIS)
    c.session.factory = no_load
    c.session.update(choice="vit_t")  # published without a decoder: refused before loading
    c.run()
    assert len(notes["error"]) == 1 and "has no instance decoder" in notes["error"][0]
    assert "vit_b_lm" in notes["error"][0] and "\n" not in notes["error"][0]
    c.session.set_model(small_model, "plain")  # loaded, no decoder: segment_iter refuses
    c.run()
    assert len(notes["error"]) == 2 and "has no instance decoder" in notes["error"][1]
    assert [lyr.name for lyr in viewer.layers] == ["cells"] and not c.busy
    c.close()


def test_tiling_choices_reach_the_run(small_model, monkeypatch):
    viewer = ViewerModel()
    g = np.random.default_rng(5)
    plane = (g.random((300, 260)) * 1000).astype(np.uint16)
    viewer.add_image(plane, name="wide")
    c = AutomaticController(viewer)
    notes = collect(c)
    c.session.set_model(with_decoder(small_model))
    with pytest.raises(SettingsError, match="halo"):
        c.set_choices(tile_size=128, halo=64)  # the halo must be less than half the tile
    c.set_choices(tiling="on", tile_size=128, halo=32)
    assert c.tile_grid() is not None and len(c.tile_grid()) == 9
    assert "Tiled: 3 × 3 tiles of 128 px with a 32 px halo" in c.estimate()
    assert "9 encodings and decoder passes" in c.estimate()
    seen = []
    original = logic.segment_iter
    monkeypatch.setattr(logic, "segment_iter",
                        lambda *a, **k: seen.append(k) or original(*a, **k))
    c.run()
    assert notes["error"] == []
    assert seen[0]["tiling"] == Tiling(mode="on", tile_shape=(128, 128), halo=(32, 32))
    assert c.status.startswith("instance decoder (AIS): ") and "9 tiles per plane" in c.status
    assert viewer.layers["wide SAM auto"].data.max() >= 1
    c.set_choices(tiling="off")
    c.run()
    assert seen[1]["tiling"].mode == "off" and "tiles per plane" not in c.status
    # point grid on tiles: crop layers cannot be combined with tiling (one sentence)
    lax_auto(c, 2)
    c.set_settings(crop_n_layers=1)
    c.set_choices(mode=MODE_GRID, tiling="on")
    c.run()
    assert "Crop layers cannot be combined with tiling" in notes["error"][-1]
    c.close()


def test_cancel_of_an_ais_run_leaves_the_labels_untouched(small_model, plane):
    viewer = ViewerModel()
    viewer.add_image(plane, name="cells")
    before = (np.arange(plane.size, dtype=np.uint32).reshape(plane.shape) % 7)
    existing = viewer.add_labels(before.copy(), name="cells SAM auto")
    c = AutomaticController(viewer, runner=SyncRunner(deferred=True))
    notes = collect(c)
    c.session.set_model(with_decoder(small_model))

    def cancel_at_decoding(job, event):
        if event.stage == "decoding":
            c.cancel()

    c.runner.on_progress = cancel_at_decoding
    c.run()
    settle(c)
    np.testing.assert_array_equal(existing.data, before)
    assert len(existing._undo_history) == 0
    assert "no layer was changed" in notes["info"][-1] and notes["error"] == []
    assert [lyr.name for lyr in viewer.layers] == ["cells", "cells SAM auto"] and not c.busy
    c.close()


def test_mode_tiling_and_ais_settings_are_remembered(small_model):
    viewer = ViewerModel()
    c = AutomaticController(viewer)
    c.set_choices(mode=MODE_GRID, tiling="on", tile_size=512, halo=64)
    c.set_ais_settings(foreground_threshold=0.4, min_size=50)
    c.close()
    again = AutomaticController(ViewerModel())
    assert again.choices == RunChoices(mode=MODE_GRID, tiling="on", tile_size=512, halo=64)
    assert again.ais_settings == AISSettings(foreground_threshold=0.4, min_size=50)
    again.close()


def test_ais_reuses_the_plane_the_interactive_dock_encoded(small_model, plane, monkeypatch):
    """One store per viewer, one key for a plane: a click encodes the plane, the automatic
    dock's AIS run on it encodes nothing (bf16 and fp32 embeddings keep apart keys)."""
    import napari_sam.predictors.predictor as predictor
    from napari_sam._widgets.interactive.controller import InteractiveController

    viewer = ViewerModel()
    viewer.add_image(plane, name="cells")
    model = with_decoder(small_model)
    clicks = InteractiveController(viewer)
    clicks.set_model(model, "small-lm")
    clicks.prompts.points.current.add([40.0, 60.0])
    settle(clicks)
    assert viewer.layers["SAM preview"].data.any()
    encoded = []
    embed = predictor.embed_images
    monkeypatch.setattr(predictor, "embed_images",
                        lambda *a, **k: encoded.append(1) or embed(*a, **k))
    auto = AutomaticController(viewer)
    assert auto.session is clicks.session and clicks.embeddings.store is auto.session.store
    auto.run()
    assert encoded == [] and viewer.layers["cells SAM auto"].data.max() == len(DISCS)
    assert model.embedding_id in {key.model_id for key in auto.session.store.keys()}
    auto.close()
    clicks.close()
