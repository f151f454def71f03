"""The automatic dock's model list, modes (AIS / point grid) and tiling, without a display.

The instance decoder is a stand-in whose maps hold known discs (``DiscDecoder`` of
tests/test_ais.py); the encoder is the small random SAM of the other tests.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

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
from napari_sam.workflows.segment import segment


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
