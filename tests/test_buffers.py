"""Kept buffers for large CPU intermediates (napari_sam.model.buffers) and the
mask upscaling that writes into them."""

from __future__ import annotations

import pytest
import torch

from napari_sam.model.buffers import KeptBuffers


def test_kept_buffers_reuse_memory_by_name():
    pool = KeptBuffers("cpu", torch.float32, keep_bytes=4096)
    a = pool("a", (4, 8))
    assert a.shape == (4, 8) and a.dtype == torch.float32 and a.is_contiguous()
    again = pool("a", (2, 16))  # same memory, another shape
    assert again.data_ptr() == a.data_ptr()
    smaller = pool("a", (3,))
    assert smaller.data_ptr() == a.data_ptr()
    assert pool("b", (4, 8)).data_ptr() != a.data_ptr()  # one buffer per name
    grown = pool("a", (16, 16))  # larger: allocated afresh, then kept
    assert grown.numel() == 256 and pool("a", (16, 16)).data_ptr() == grown.data_ptr()
    as_bool = pool("a", (10,), torch.bool)
    assert as_bool.dtype == torch.bool
    assert set(pool.tensors) == {"a", "b"}
    pool.clear()
    assert pool.tensors == {}


def test_kept_buffers_refuse_large_requests_and_inactive_pools():
    pool = KeptBuffers("cpu", torch.float32, keep_bytes=400)
    assert pool("a", (100,)) is not None
    assert pool("a", (101,)) is None  # 404 bytes: the caller allocates afresh
    assert pool.tensors["a"].numel() == 100  # the kept one stays as it was
    assert pool("b", (101,), torch.bfloat16) is not None  # 202 bytes
    off = KeptBuffers("cpu", torch.float32, keep_bytes=400, active=False)
    assert off("a", (10,)) is None and off.tensors == {}


@pytest.mark.parametrize(
    "input_size, original_size",
    [((1024, 1024), (1024, 1024)), ((1024, 768), (2048, 1536)), ((1024, 700), (1024, 700)),
     ((819, 1024), (300, 375))],
    ids=["square", "larger", "cut-only", "smaller"],
)
def test_postprocess_masks_into_buffers_is_the_same(small_model, input_size, original_size):
    """Upscaling into kept buffers gives what fresh tensors give, bit for bit, and
    the next call overwrites the same memory."""
    g = torch.Generator().manual_seed(5)
    pool = KeptBuffers("cpu", torch.float32, keep_bytes=2**30)
    results = []
    for _ in range(2):
        low = torch.randn(1, 3, 256, 256, generator=g)
        want = small_model.postprocess_masks(low, input_size, original_size)
        got = small_model.postprocess_masks(low, input_size, original_size, buffers=pool)
        assert got.shape == (1, 3, *original_size) and got.is_contiguous()
        assert torch.equal(got, want)
        results.append(got.data_ptr())
    assert results[0] == results[1]


def test_predictions_own_their_masks(small_model):
    """The predictor upscales into kept buffers, yet every prediction's masks and
    logits stay as they were after later predictions, and equal unbuffered ones."""
    import numpy as np

    from conftest import smooth_image
    from napari_sam import SamPredictor

    predictor = SamPredictor(small_model)
    predictor.set_image(smooth_image(300, 457, seed=4))
    first, second = np.array([[100.0, 120.0]]), np.array([[400.0, 250.0]])
    label = np.array([1])
    masks, _, _ = predictor.predict(first, label)
    kept = masks.copy()
    logits, _, _ = predictor.predict(first, label, return_logits=True)
    kept_logits = logits.copy()
    assert set(predictor.upscale_buffers.tensors) == {"padded", "upscaled"}
    predictor.predict(second, label)
    predictor.predict(second, label, return_logits=True)
    np.testing.assert_array_equal(masks, kept)
    np.testing.assert_array_equal(logits, kept_logits)
    np.testing.assert_array_equal(masks, logits > small_model.mask_threshold)
    predictor._upscale_buffers = KeptBuffers("cpu", torch.float32, 0, active=False)
    np.testing.assert_array_equal(predictor.predict(first, label)[0], kept)


@pytest.mark.parametrize(
    "input_size, original_size",
    [((1024, 1024), (2048, 2048)), ((1024, 768), (2048, 1536)), ((1024, 700), (1024, 700)),
     ((819, 1024), (300, 375)), ((1024, 1001), (1500, 1466))],
    ids=["double", "double-cut", "cut-only", "smaller", "odd"],
)
def test_opencv_upscaling_matches_the_model(small_model, input_size, original_size):
    """predictors.upscale resizes CPU logits with OpenCV: the model's own (ATen)
    upscaling to float rounding, into kept buffers or fresh memory."""
    from napari_sam.predictors.upscale import postprocess_masks

    g = torch.Generator().manual_seed(6)
    low = torch.randn(2, 3, 256, 256, generator=g) * 8
    want = small_model.postprocess_masks(low, input_size, original_size)
    pool = KeptBuffers("cpu", torch.float32, keep_bytes=2**30)
    for buffers in (None, pool):
        got = postprocess_masks(small_model, low, input_size, original_size, buffers)
        assert got.shape == want.shape and got.dtype == torch.float32 and got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=0, atol=2e-5 * float(low.abs().max()))
    # Other dtypes are the model's own upscaling, exactly.
    half = low.to(torch.bfloat16)
    assert torch.equal(postprocess_masks(small_model, half, input_size, original_size),
                       small_model.postprocess_masks(half, input_size, original_size))
