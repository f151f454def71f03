"""Checks that need a CUDA GPU (skipped without one; run them on a GPU machine).

The same logic is tested on the CPU in test_precision.py / test_memory.py;
these add what only a GPU can show: the fused attention kernels accept our
inputs, and bf16 on the GPU's own kernels stays within the accuracy target.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.model.build import CONFIGS, build_model
from napari_sam.predictors.predictor import SamPredictor, embed_images
from reference import SMALL, perturb_

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _image():
    rng = np.random.default_rng(0)
    img = (rng.random((300, 457, 3)) * 60).astype(np.uint8)
    img[80:220, 150:330] += 150
    return img


@pytest.mark.parametrize("config", ["small", "vit_t"])
def test_encoder_runs_on_fused_attention_kernels_only(config):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    sam = build_model(SMALL if config == "small" else CONFIGS["vit_t"]).cuda().eval()
    sam.precision = "auto"
    assert sam.encoder_dtype in (torch.bfloat16, torch.float16)
    x = sam.preprocess(torch.rand(2, 3, 1024, 1024, device="cuda") * 255)
    # With the unfused (math) kernel excluded, any call it would need raises.
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        with torch.no_grad():
            out = sam.encode(x)
    assert out.dtype == torch.float32 and out.shape == (2, 256, 64, 64)


def test_bf16_masks_match_fp32_on_the_gpu():
    torch.manual_seed(0)
    sam = build_model(SMALL).eval()
    perturb_(sam, 0)
    sam = sam.cuda()
    image = _image()
    out = {}
    for precision in ("fp32", "auto"):
        sam.precision = precision
        predictor = SamPredictor(sam)
        predictor.set_image(image)
        out[precision] = predictor.predict(
            point_coords=np.array([[240.0, 150.0]]), point_labels=np.array([1])
        )
    (m32, i32, _), (m16, i16, _) = out["fp32"], out["auto"]
    for k in range(3):
        union = np.logical_or(m32[k], m16[k]).sum()
        assert np.logical_and(m32[k], m16[k]).sum() / max(union, 1) >= 0.98
    np.testing.assert_allclose(i16, i32, atol=1e-2)


def test_batched_encoding_on_the_gpu_equals_single():
    torch.manual_seed(0)
    sam = build_model(SMALL).cuda().eval()
    sam.precision = "fp32"
    image = _image()
    images = [image, np.ascontiguousarray(image[:200, :150])]
    batched = embed_images(sam, images, batch_size=2)
    single = embed_images(sam, images, batch_size=1)
    for b, s in zip(batched, single):
        torch.testing.assert_close(b.features, s.features, atol=2e-4, rtol=2e-4)
