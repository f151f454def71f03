"""Parity of automatic mask generation with Meta's ``segment_anything`` on real SAM
networks with identical random weights (the ``small_pair`` fixture).

napari-sam decodes with a shared-image formulation of the mask decoder, so its
logits differ from the reference's by float rounding only; masks must match
pairwise. Random networks give noisy masks whose boxes cover the whole image,
so box NMS would keep a single mask: these tests switch NMS off
(threshold 1.0) and relax the IoU/stability thresholds so that a fair number
of masks survive. NMS, crop handling and small-region removal are compared
exactly in ``test_automatic.py`` (toy model) and ``test_amg_utils.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import smooth_image
from napari_sam import SamAutomaticMaskGenerator, SamPredictor
from napari_sam.model.sam.shared_decoder import SharedImageDecoder
from napari_sam.predictors.amg_utils import remove_small_regions

RefGenerator = pytest.importorskip("segment_anything").SamAutomaticMaskGenerator

IMAGE = smooth_image(256, 320, seed=0)
RELAXED = dict(points_per_side=6, pred_iou_thresh=0.005, stability_score_thresh=0.1,
               box_nms_thresh=1.0)


def _match(ours: list[dict], ref: list[dict]) -> np.ndarray:
    """For each reference mask, the best IoU with any of ours."""
    a = np.stack([r["segmentation"].ravel() for r in ref]).astype(np.float32)
    b = np.stack([r["segmentation"].ravel() for r in ours]).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return (inter / np.maximum(union, 1)).max(axis=1)


def _assert_parity(ours: list[dict], ref: list[dict]) -> None:
    assert len(ref) >= 10, "too few masks for a meaningful comparison"
    assert len(ours) == len(ref)
    best = _match(ours, ref)
    assert np.mean(best >= 0.95) >= 0.97, np.sort(best)[:10]
    # Scores agree to float rounding, record for record.
    ref_iou = np.sort([r["predicted_iou"] for r in ref])
    our_iou = np.sort([r["predicted_iou"] for r in ours])
    np.testing.assert_allclose(our_iou, ref_iou, atol=1e-5)
    ref_stab = np.sort([r["stability_score"] for r in ref])
    our_stab = np.sort([r["stability_score"] for r in ours])
    np.testing.assert_allclose(our_stab, ref_stab, atol=1e-3)


@torch.inference_mode()
@pytest.mark.parametrize("n_points", [1, 3])
def test_shared_image_decoder_matches_mask_decoder(small_model, n_points):
    predictor = SamPredictor(small_model)
    predictor.set_image(IMAGE)
    g = torch.Generator().manual_seed(n_points)
    coords = torch.rand(12, n_points, 2, generator=g) * torch.tensor([1024.0, 819.0])
    labels = torch.randint(0, 2, (12, n_points), generator=g, dtype=torch.int)
    labels[:, 0] = 1
    sparse, dense = small_model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    pe = small_model.prompt_encoder.get_dense_pe()
    ref_low, ref_iou = small_model.mask_decoder(
        image_embeddings=predictor.features, image_pe=pe, sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense, multimask_output=True,
    )
    fast = SharedImageDecoder(small_model, predictor.features, pe, dense[:1])
    iou, low_res_for = fast.decode(sparse)
    torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=1e-5)
    # Any subset of masks, in any grouping of prompts.
    idx = torch.tensor([0, 1, 2, 4, 9, 10, 20, 35])
    low = low_res_for(idx)
    scale = float(ref_low.abs().max())
    torch.testing.assert_close(low, ref_low.reshape(-1, 256, 256)[idx], atol=2e-5 * scale,
                               rtol=1e-4)


def _random_clicks(model, n: int, seed: int):
    """A predictor with IMAGE set, and the prompt encoding of ``n`` random single
    positive clicks: (predictor, sparse, dense, dense positional encoding)."""
    predictor = SamPredictor(model)
    predictor.set_image(IMAGE)
    g = torch.Generator().manual_seed(seed)
    coords = torch.rand(n, 1, 2, generator=g) * torch.tensor([1024.0, 819.0])
    labels = torch.ones(n, 1, dtype=torch.int)
    sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    return predictor, sparse, dense, model.prompt_encoder.get_dense_pe()


@torch.inference_mode()
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shared_image_decoder_reuses_its_buffers(small_model, dtype):
    """Successive calls of different sizes through the same (CPU) buffers give
    what a fresh decoder gives; masks of an earlier call are refused."""
    predictor, sparse, dense, pe = _random_clicks(small_model, 9, seed=7)
    shared = SharedImageDecoder(small_model, predictor.features, pe, dense[:1], dtype=dtype)
    assert shared._pool.active
    for part in (slice(0, 5), slice(5, 7), slice(0, 9), slice(3, 4)):
        fresh = SharedImageDecoder(small_model, predictor.features, pe, dense[:1], dtype=dtype)
        fresh._pool.active = False  # every tensor allocated afresh, as on a GPU
        want_iou, want_for = fresh.decode(sparse[part])
        n = want_iou.numel()
        # All masks (consecutive prompts), then a few of non-consecutive prompts.
        picks = [torch.arange(n), torch.arange(n)[::4]]
        want = [want_for(idx) for idx in picks]
        iou, low_res_for = shared.decode(sparse[part])
        torch.testing.assert_close(iou, want_iou, atol=0, rtol=0)
        for idx, w in zip(picks, want):
            torch.testing.assert_close(low_res_for(idx), w, atol=0, rtol=0)
    assert shared._pool.tensors["keys"].numel() == 9 * shared.keys0.shape[1] * shared.keys0.shape[2]
    shared.decode(sparse[:2])
    with pytest.raises(RuntimeError, match="before the next call"):
        low_res_for(torch.arange(3))


@torch.inference_mode()
def test_shared_image_decoder_does_not_keep_a_large_batch(small_model):
    """A batch whose tokens exceed the pool's limit is decoded in fresh memory, not kept."""
    predictor = SamPredictor(small_model)
    predictor.set_image(IMAGE)
    coords = torch.tensor([[[300.0, 200.0]], [[500.0, 400.0]], [[700.0, 100.0]]])
    labels = torch.ones(3, 1, dtype=torch.int)
    sparse, dense = small_model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    pe = small_model.prompt_encoder.get_dense_pe()
    shared = SharedImageDecoder(small_model, predictor.features, pe, dense[:1])
    hw, c = shared.keys0.shape[1:]
    shared._pool.keep_bytes = 2 * hw * c * 4
    shared.decode(sparse[:2])
    assert {"keys", "normed", "kpe", "logits", "weights"} <= set(shared._pool.tensors)
    kept = dict(shared._pool.tensors)
    iou, _ = shared.decode(sparse)  # 3 prompts: the image tokens are over the limit
    for name in ("keys", "normed", "kpe"):
        assert shared._pool.tensors[name] is kept[name] and kept[name].numel() == 2 * hw * c
    _, ref_iou = small_model.mask_decoder(
        image_embeddings=predictor.features, image_pe=pe, sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense, multimask_output=True,
    )
    torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=1e-5)


def test_grid_parity_with_reference(small_pair):
    ref_model, our_model, _ = small_pair
    ref = RefGenerator(ref_model, **RELAXED).generate(IMAGE)
    gen = SamAutomaticMaskGenerator(our_model, **RELAXED)
    ours = gen.generate(IMAGE)
    assert gen._fast_decoder  # the shared-image decoder was used (and self-checked)
    _assert_parity(ours, ref)
    # Same records in the same order (sorted by predicted IoU within the crop).
    assert [r["point_coords"] for r in ours] == [r["point_coords"] for r in ref]
    assert [r["crop_box"] for r in ours] == [r["crop_box"] for r in ref]


def test_crop_and_small_region_parity_with_reference(small_pair):
    ref_model, our_model, _ = small_pair
    kwargs = dict(RELAXED, crop_n_layers=1, crop_n_points_downscale_factor=2,
                  crop_nms_thresh=1.0, min_mask_region_area=20)
    ref = RefGenerator(ref_model, **kwargs).generate(IMAGE)
    ours = SamAutomaticMaskGenerator(our_model, **kwargs).generate(IMAGE)
    _assert_parity(ours, ref)
    # The (noisy) masks were cleaned: no hole or island below the minimum area is left.
    for rec in ours:
        for mode in ("holes", "islands"):
            _, changed = remove_small_regions(rec["segmentation"], 20, mode)
            assert not changed


@torch.inference_mode()
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shared_image_decoder_allocates_no_large_tensor_once_warm(small_model, monkeypatch, dtype):
    """Once its buffers exist, decoding and upscaling a batch allocates nothing the
    size of the batch's image tokens (on a worker thread each such tensor would be
    mapped and faulted in afresh): every large intermediate goes into a kept buffer."""
    from torch.profiler import ProfilerActivity, profile

    from napari_sam.model.sam import shared_decoder

    monkeypatch.setattr(shared_decoder, "_SLICE_BYTES", 2**16)
    predictor, sparse, dense, pe = _random_clicks(small_model, 6, seed=3)
    shared = SharedImageDecoder(small_model, predictor.features, pe, dense[:1], dtype=dtype)
    picks = (torch.arange(18), torch.tensor([0, 7, 16]))

    def run(decoder):
        iou, low_res_for = decoder.decode(sparse)
        return iou, [low_res_for(idx) for idx in picks]

    def large_allocations(decoder):
        """Sizes of the allocations over an eighth of the image tokens, other
        than the returned low-resolution logits (in float32 or the decoder's dtype)."""
        run(decoder)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            iou, lows = run(decoder)
        tokens = 6 * decoder.keys0[0].numel() * decoder.keys0.element_size()
        itemsizes = (4, decoder.keys0.element_size())
        returned = {low.numel() * size for low in lows for size in itemsizes}
        sizes = {e.cpu_memory_usage for e in prof.events()}
        return [s for s in sizes if s >= tokens / 8 and s not in returned], iou, lows

    # Allocating afresh (as on a GPU), the probe sees the image-token tensors ...
    fresh = SharedImageDecoder(small_model, predictor.features, pe, dense[:1], dtype=dtype)
    fresh._pool.active = False
    assert large_allocations(fresh)[0]
    # ... with the buffers kept, there are none.
    large, iou, lows = large_allocations(shared)
    assert large == []
    # ... and the result is still the model's own decoder's.
    ref_low, ref_iou = small_model.mask_decoder(
        image_embeddings=predictor.features, image_pe=pe, sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense, multimask_output=True,
    )
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(iou, ref_iou, atol=tol, rtol=tol)
    scale = float(ref_low.abs().max())
    torch.testing.assert_close(lows[0], ref_low.reshape(-1, 256, 256),
                               atol=(2e-5 if dtype == torch.float32 else 5e-2) * scale, rtol=0)
