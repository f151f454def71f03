"""The reduced-precision encoder (GPU fast path), checked on the CPU.

The CPU supports ``torch.autocast`` with bfloat16 and float16, so the code
path the GPU takes by default (encoder under autocast, embedding cast back to
float32, decoder in float32) runs here; only its speed needs a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.model.build import build_model
from napari_sam.model.precision import PRECISIONS, autocast_dtype, check_precision
from napari_sam.predictors.predictor import SamPredictor, embed_images
from napari_sam.workflows.embeddings import EmbeddingStore, StackEmbeddings
from reference import SMALL, perturb_

POINT = np.array([[200.0, 150.0]])
LABEL = np.array([1])


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    model = build_model(SMALL).eval()
    perturb_(model, 0)
    return model


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    img = np.zeros((300, 457, 3), np.uint8)
    img[...] = (rng.random((300, 457, 1)) * 60).astype(np.uint8)
    img[80:220, 150:330] += 150  # one bright object on a noisy background
    return img


def _predict(sam, image, precision):
    sam.precision = precision
    try:
        predictor = SamPredictor(sam)
        predictor.set_image(image)
        features = predictor.features.clone()
        masks, iou, low = predictor.predict(
            point_coords=POINT, point_labels=LABEL, multimask_output=True, return_logits=True
        )
    finally:
        sam.precision = "auto"
    return features, masks, iou, low


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def test_precision_names():
    assert check_precision(" BF16 ") == "bf16"
    assert check_precision("bfloat16") == "bf16"
    assert check_precision("float32") == "fp32"
    assert check_precision("half") == "fp16"
    for name in PRECISIONS:
        assert check_precision(name) == name
    with pytest.raises(ValueError, match="not a precision"):
        check_precision("int8")
    with pytest.raises(ValueError, match="one of"):
        check_precision(16)


def test_auto_precision_per_device(monkeypatch):
    monkeypatch.delenv("NAPARI_SAM_PRECISION", raising=False)
    assert autocast_dtype("auto", "cpu") is None
    assert autocast_dtype("auto", "mps") is None
    assert autocast_dtype("fp32", "cuda") is None
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16
    import napari_sam.model.precision as precision

    monkeypatch.setattr(precision, "_cuda_bf16_supported", lambda device: True)
    assert autocast_dtype("auto", "cuda") is torch.bfloat16
    monkeypatch.setattr(precision, "_cuda_bf16_supported", lambda device: False)
    assert autocast_dtype("auto", "cuda:0") is torch.float16
    assert autocast_dtype("fp16", "cpu") is torch.float16


def test_model_precision_attribute(sam):
    assert sam.precision == "auto"
    assert sam.encoder_dtype is None  # float32 on the CPU
    with pytest.raises(ValueError):
        sam.precision = "fp8"
    assert sam.precision == "auto"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_masks_match_fp32(sam, image, precision):
    f32, m32, iou32, low32 = _predict(sam, image, "fp32")
    f16, m16, iou16, low16 = _predict(sam, image, precision)
    assert f16.dtype == torch.float32  # the decoder always gets float32
    assert m16.dtype == np.float32 and iou16.dtype == np.float32
    assert not torch.equal(f16, f32), "autocast was not applied"
    scale = float(f32.abs().max())
    tol = 0.02 if precision == "bf16" else 0.005
    assert float((f16 - f32).abs().max()) < tol * scale
    for k in range(3):
        assert _iou(m16[k] > 0, m32[k] > 0) >= 0.98
    np.testing.assert_allclose(iou16, iou32, atol=1e-2)
    np.testing.assert_allclose(iou16, iou32, atol=1e-3)
    assert np.abs(low16 - low32).max() < tol * np.abs(low32).max()


def test_decoder_runs_in_float32_under_reduced_precision(sam, image, monkeypatch):
    """Whichever decoder predicts (the model's, or the shared-image one that
    multimask clicks use), it gets a float32 embedding and computes in float32."""
    from napari_sam.model.sam import shared_decoder

    seen = []
    handle = sam.mask_decoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["image_embeddings"].dtype),
        with_kwargs=True,
    )
    original = shared_decoder.SharedImageDecoder.__init__

    def recording(self, model, features, *args, **kwargs):
        original(self, model, features, *args, **kwargs)
        seen.extend([features.dtype, self.dtype])

    monkeypatch.setattr(shared_decoder.SharedImageDecoder, "__init__", recording)
    try:
        _predict(sam, image, "bf16")
    finally:
        handle.remove()
    assert seen and set(seen) == {torch.float32}
    assert not torch.is_autocast_enabled("cpu")


def test_encoder_runs_under_autocast(sam, image):
    dtypes = []
    handle = sam.image_encoder.blocks[0].attn.qkv.register_forward_hook(
        lambda module, args, out: dtypes.append(out.dtype)
    )
    try:
        _predict(sam, image, "bf16")
        _predict(sam, image, "fp32")
    finally:
        handle.remove()
    assert dtypes == [torch.bfloat16, torch.float32]


def test_batched_embedding_equals_single(sam, image):
    """Several images of different sizes in one forward pass = each alone."""
    other = np.ascontiguousarray(image[:200, :150])
    sam.precision = "fp32"
    try:
        batched = embed_images(sam, [image, other], batch_size=2)
        single = embed_images(sam, [image, other], batch_size=1)
    finally:
        sam.precision = "auto"
    for b, s in zip(batched, single):
        assert b.original_size == s.original_size and b.input_size == s.input_size
        torch.testing.assert_close(b.features, s.features, atol=1e-4, rtol=1e-4)
    predictor = SamPredictor(sam)
    predictor.set_image(other)
    torch.testing.assert_close(predictor.features, single[1].features, atol=1e-5, rtol=1e-5)
    assert single[1].original_size == (200, 150)


def test_cache_keys_separate_precisions(sam):
    stack = np.random.default_rng(1).integers(0, 1000, (2, 64, 64), dtype=np.uint16)
    emb = StackEmbeddings(sam, stack, model_id="m", store=EmbeddingStore())
    key32 = emb.key(0)
    sam.precision = "bf16"
    try:
        key16 = emb.key(0)
    finally:
        sam.precision = "auto"
    assert key32.model_id == "m"
    assert key16.model_id == "m@bfloat16"
    assert key32.digest() != key16.digest()


def test_tiny_vit_under_bf16_matches_fp32(image):
    """MobileSAM's TinyViT encoder (batch norms, convolutions) under autocast."""
    from napari_sam.model.build import CONFIGS
    from reference import perturb_tiny_vit_

    torch.manual_seed(0)
    sam = build_model(CONFIGS["vit_t"]).eval()
    perturb_tiny_vit_(sam.image_encoder, 0)
    f32, m32, iou32, _ = _predict(sam, image, "fp32")
    f16, m16, iou16, _ = _predict(sam, image, "bf16")
    assert not torch.equal(f16, f32)
    assert float((f16 - f32).abs().max()) < 0.05 * float(f32.abs().max())
    for k in range(3):
        assert _iou(m16[k] > 0, m32[k] > 0) >= 0.98
    np.testing.assert_allclose(iou16, iou32, atol=1e-2)


# ------------------------------------------------------------------ load_model and the CLI
def test_load_model_precision_and_compile_settings(vit_t_checkpoint, monkeypatch):
    from napari_sam.model.sam.sam import Sam
    from napari_sam.runtime import loader

    compiled = []
    monkeypatch.setattr(Sam, "compile_encoder", lambda self, **kw: compiled.append(self))
    monkeypatch.delenv("NAPARI_SAM_COMPILE", raising=False)
    monkeypatch.delenv("NAPARI_SAM_PRECISION", raising=False)
    sam = loader.load_model("vit_t", vit_t_checkpoint, device="cpu", precision="BF16")
    assert sam.precision == "bf16" and sam.encoder_dtype is torch.bfloat16
    assert compiled == []
    monkeypatch.setenv("NAPARI_SAM_COMPILE", "1")
    sam = loader.load_model("vit_t", vit_t_checkpoint, device="cpu")
    # "auto" on a CPU is resolved by the loader (tests/test_precision_cpu.py)
    assert sam.precision in ("bf16", "fp32") and compiled == [sam]
    sam = loader.load_model("vit_t", vit_t_checkpoint, device="cpu", compile=False)
    assert compiled == [compiled[0]]
    with pytest.raises(ValueError, match="not a precision"):
        loader.load_model("vit_t", vit_t_checkpoint, device="cpu", precision="int4")
    # NAPARI_SAM_PRECISION says what "auto" means; an explicit choice wins over it
    monkeypatch.setenv("NAPARI_SAM_PRECISION", "bf16")
    assert loader.load_model("vit_t", vit_t_checkpoint, device="cpu").precision == "bf16"
    fp32 = loader.load_model("vit_t", vit_t_checkpoint, device="cpu", precision="fp32")
    assert fp32.precision == "fp32"
    monkeypatch.setenv("NAPARI_SAM_PRECISION", "int4")
    with pytest.raises(ValueError, match="not a precision"):
        loader.load_model("vit_t", vit_t_checkpoint, device="cpu")


def test_compiled_encoder_gives_the_same_embedding(sam, image):
    """``torch.compile`` in place: same keys, same numbers (eager backend: no compiler here)."""
    import copy

    twin = copy.deepcopy(sam)
    twin.precision = "fp32"
    keys = list(twin.state_dict())
    twin.compile_encoder(backend="eager")
    assert twin.encoder_compiled and list(twin.state_dict()) == keys
    with torch.no_grad():
        x = twin.preprocess(torch.rand(1, 3, 1024, 683) * 255)
        torch.testing.assert_close(twin.encode(x), sam.encode(x), atol=1e-5, rtol=1e-5)


def test_cli_passes_precision(vit_t_checkpoint, tmp_path, monkeypatch):
    import tifffile

    from napari_sam import cli
    from napari_sam.runtime import loader

    seen = {}
    real = loader.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(loader, "load", spy)
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "plane.tif"
    tifffile.imwrite(src, (np.random.default_rng(0).random((48, 40)) * 4000).astype(np.uint16))
    out = tmp_path / "labels.tif"
    code = cli.main(["segment", str(src), "-o", str(out), "--model", "vit_t", "--checkpoint",
                     str(vit_t_checkpoint), "--device", "cpu", "--precision", "bf16",
                     "--points-per-side", "4", "--quiet"])
    assert code == 0 and out.is_file()
    assert seen["precision"] == "bf16" and seen["compile"] is None


@pytest.mark.parametrize("model_type", ["small", "vit_t"])
def test_attention_calls_can_use_fused_gpu_kernels(model_type, monkeypatch):
    """Every SDPA call of the encoders gets 4D q/k/v and a mask of q's dtype.

    PyTorch's fused CUDA kernels (flash, memory-efficient) refuse 3D inputs and
    masks of another dtype, silently falling back to the unfused kernel that
    holds the whole attention matrix: this guards the GPU fast path on a CPU.
    """
    import torch.nn.functional as F

    from napari_sam.model.build import CONFIGS

    torch.manual_seed(0)
    sam = build_model(SMALL if model_type == "small" else CONFIGS["vit_t"]).eval()
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        calls.append((q.ndim, k.ndim, v.ndim, q.dtype,
                      None if attn_mask is None else (attn_mask.ndim, attn_mask.dtype)))
        return real(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    x = sam.preprocess(torch.rand(1, 3, 1024, 1024) * 255)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        calls.clear()
        sam.precision = precision
        with torch.no_grad():
            sam.encode(x)
        assert calls, "the encoder did not use SDPA"
        for q_nd, k_nd, v_nd, q_dtype, mask in calls:
            assert (q_nd, k_nd, v_nd) == (4, 4, 4)
            assert q_dtype == dtype
            assert mask is None or mask == (4, dtype)


def test_widget_model_label_names_a_reduced_precision(sam):
    from napari_sam._widgets.model_session import ModelSession

    session = ModelSession(remember=False)
    session.set_model(sam, "vit_b")
    assert session.describe("") == "Model: vit_b on cpu"  # fp32: nothing to say
    sam.precision = "bf16"
    try:
        assert session.describe("") == "Model: vit_b on cpu, bf16 encoder"
    finally:
        sam.precision = "auto"


def test_float32_region_accepts_shape_only_tensors():
    """The necks' float32 region on the meta device (FLOP counting) does nothing, no error."""
    from napari_sam.model.sam.common import float32_region

    x = torch.empty(1, 4, device="meta")
    with float32_region(x):
        y = x * 2
    assert y.device.type == "meta"
