"""SamAutomaticMaskGenerator: pipeline parity, outputs, progress, cancellation, bad input.

Most tests use a *toy* SAM whose encoder and decoder are simple, deterministic
functions (a blurred brightness map; blob-shaped mask logits around each point
prompt, following the image's brightness). Both implementations then see the
exact same logits, so everything after the decoder (IoU and stability
filtering, crop edges, NMS within and across crops, small-region removal,
encodings) must give *identical* records, down to the order. Real SAM weights
are compared in ``test_automatic_parity.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch import nn

from conftest import smooth_image
from napari_sam import SamAutomaticMaskGenerator
from napari_sam.errors import Cancelled, ImageFormatError, NapariSamError, SettingsError
from napari_sam.model.sam.sam import Sam
from napari_sam.model.sam.shared_decoder import SharedImageDecoder
from napari_sam.predictors.amg_utils import rle_to_mask
from napari_sam.predictors.automatic import AmgProgress

RefGenerator = pytest.importorskip("segment_anything").SamAutomaticMaskGenerator


# ============================================================================= toy model
class ToyEncoder(nn.Module):
    """Embedding = mean brightness of 16×16 pixel cells, (1, 1, 64, 64)."""

    img_size = 1024

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x.mean(1, keepdim=True), 16)


class ToyPromptEncoder(nn.Module):
    """Passes the point coordinates (model input frame) through as the 'embedding'."""

    embed_dim = 1  # the shape of ToyEncoder's embedding: (1, 1, 64, 64)
    image_embedding_size = (64, 64)

    def forward(self, points, boxes, masks):
        coords, _ = points
        return coords.float(), torch.zeros(coords.shape[0], 1, 64, 64)

    def get_dense_pe(self) -> torch.Tensor:
        return torch.zeros(1, 1, 64, 64)


class ToyDecoder(nn.Module):
    """Three nested blobs per point: pixels of similar brightness near the point,
    with a ripple that makes small holes and islands; IoU scores vary with the
    point position."""

    radii = (70.0, 160.0, 420.0)
    tolerances = (0.25, 0.5, 0.9)

    def __init__(self) -> None:
        super().__init__()
        c = (torch.arange(256, dtype=torch.float32) + 0.5) * 4  # low-res pixel centres
        self.register_buffer("c", c, persistent=False)
        ripple = torch.sin(c[:, None] / 9.0) * torch.sin(c[None, :] / 7.0)
        self.register_buffer("ripple", ripple, persistent=False)

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings,
                dense_prompt_embeddings, multimask_output):
        bright = F.interpolate(image_embeddings[:1], (256, 256), mode="bilinear",
                               align_corners=False)[0, 0]
        p = sparse_prompt_embeddings[:, 0, :]
        ix = (p[:, 0] / 4).long().clamp(0, 255)
        iy = (p[:, 1] / 4).long().clamp(0, 255)
        diff = (bright[None] - bright[iy, ix][:, None, None]).abs()
        dx = self.c[None, None, :] - p[:, 0, None, None]
        dy = self.c[None, :, None] - p[:, 1, None, None]
        dist = torch.sqrt(dx * dx + dy * dy)
        masks, ious = [], []
        for k, (r, t) in enumerate(zip(self.radii, self.tolerances)):
            masks.append(3.0 * (6.0 * (t - diff) / t + 5.0 * (1.0 - dist / r)
                                + 2.5 * self.ripple))
            ious.append(0.75 + 0.24 * torch.sin(0.013 * p[:, 0] + 0.007 * p[:, 1] + 1.7 * k))
        masks = torch.stack([masks[1], *masks], 1)
        ious = torch.stack([ious[1], *ious], 1)
        if multimask_output:
            return masks[:, 1:], ious[:, 1:]
        return masks[:, :1], ious[:, :1]


@pytest.fixture(scope="module")
def toy_pair():
    """(reference Sam, our Sam) sharing the toy modules."""
    from segment_anything.modeling import Sam as RefSam

    enc, prompt, dec = ToyEncoder(), ToyPromptEncoder(), ToyDecoder()
    ours = Sam(image_encoder=enc, prompt_encoder=prompt, mask_decoder=dec).eval()
    ref = RefSam(image_encoder=enc, prompt_encoder=prompt, mask_decoder=dec,
                 pixel_mean=[123.675, 116.28, 103.53],
                 pixel_std=[58.395, 57.12, 57.375]).eval()
    return ref, ours


@pytest.fixture(scope="module")
def toy_model(toy_pair):
    return toy_pair[1]


IMAGE = smooth_image(192, 256, seed=3)


def _assert_same_records(ours, ref):
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert set(a) == set(b)
        for key in ("area", "bbox", "predicted_iou", "point_coords", "stability_score",
                    "crop_box"):
            assert a[key] == b[key], key
        seg_a, seg_b = a["segmentation"], b["segmentation"]
        if isinstance(seg_b, np.ndarray):
            assert seg_a.shape == seg_b.shape and seg_a.dtype == bool
            np.testing.assert_array_equal(seg_a, seg_b)
        else:
            assert seg_a == seg_b


# ============================================================================= parity
CONFIGS = {
    "defaults": dict(points_per_side=12),
    "relaxed": dict(points_per_side=12, pred_iou_thresh=0.8, stability_score_thresh=0.8,
                    box_nms_thresh=0.5),
    "crops+small-regions": dict(points_per_side=12, crop_n_layers=1,
                                crop_n_points_downscale_factor=2, pred_iou_thresh=0.8,
                                stability_score_thresh=0.85, min_mask_region_area=300),
    "no-filters": dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                       stability_score_offset=0.5, points_per_batch=10),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_toy_parity_with_reference(toy_pair, name):
    ref_model, our_model = toy_pair
    kwargs = CONFIGS[name]
    ref = RefGenerator(ref_model, **kwargs).generate(IMAGE)
    ours = SamAutomaticMaskGenerator(our_model, **kwargs).generate(IMAGE)
    assert len(ref) >= (1 if name == "defaults" else 10)
    _assert_same_records(ours, ref)


@pytest.mark.parametrize("mode", ["uncompressed_rle", "coco_rle"])
def test_toy_parity_output_modes(toy_pair, mode):
    ref_model, our_model = toy_pair
    kwargs = dict(CONFIGS["relaxed"], output_mode=mode)
    ref = RefGenerator(ref_model, **kwargs).generate(IMAGE)
    ours = SamAutomaticMaskGenerator(our_model, **kwargs).generate(IMAGE)
    assert len(ours) >= 10
    _assert_same_records(ours, ref)


def test_rle_outputs_decode_to_binary_masks(toy_model):
    kwargs = dict(CONFIGS["crops+small-regions"])
    binary = SamAutomaticMaskGenerator(toy_model, **kwargs).generate(IMAGE)
    coco = SamAutomaticMaskGenerator(toy_model, output_mode="coco_rle", **kwargs).generate(IMAGE)
    raw = SamAutomaticMaskGenerator(toy_model, output_mode="uncompressed_rle",
                                    **kwargs).generate(IMAGE)
    assert len(binary) == len(coco) == len(raw) >= 10
    for b, c, r in zip(binary, coco, raw):
        assert isinstance(c["segmentation"]["counts"], str)
        assert c["segmentation"]["size"] == r["segmentation"]["size"] == list(IMAGE.shape[:2])
        decoded = mask_utils.decode(
            {"size": c["segmentation"]["size"], "counts": c["segmentation"]["counts"].encode()}
        ).astype(bool)
        np.testing.assert_array_equal(decoded, b["segmentation"])
        np.testing.assert_array_equal(rle_to_mask(r["segmentation"]), b["segmentation"])
        assert all(isinstance(n, int) for n in r["segmentation"]["counts"])
        assert b["area"] == int(b["segmentation"].sum())


def test_record_types(toy_model):
    records = SamAutomaticMaskGenerator(toy_model, **CONFIGS["relaxed"]).generate(IMAGE)
    rec = records[0]
    assert isinstance(rec["area"], int)
    assert all(isinstance(v, int) for v in rec["bbox"] + rec["crop_box"])
    assert isinstance(rec["predicted_iou"], float)
    assert isinstance(rec["stability_score"], float)
    assert len(rec["point_coords"]) == 1 and len(rec["point_coords"][0]) == 2
    assert rec["crop_box"] == [0, 0, IMAGE.shape[1], IMAGE.shape[0]]
    x, y, w, h = rec["bbox"]
    rows = np.flatnonzero(rec["segmentation"].any(1))
    cols = np.flatnonzero(rec["segmentation"].any(0))
    assert [x, y, x + w, y + h] == [cols[0], rows[0], cols[-1], rows[-1]]


def test_explicit_point_grids_equal_points_per_side(toy_model):
    from napari_sam.predictors.amg_utils import build_point_grid

    a = SamAutomaticMaskGenerator(toy_model, **CONFIGS["relaxed"]).generate(IMAGE)
    kwargs = dict(CONFIGS["relaxed"], points_per_side=None, point_grids=[build_point_grid(12)])
    b = SamAutomaticMaskGenerator(toy_model, **kwargs).generate(IMAGE)
    _assert_same_records(b, a)


def test_batch_size_does_not_change_results(toy_model):
    a = SamAutomaticMaskGenerator(toy_model, points_per_batch=7,
                                  **CONFIGS["relaxed"]).generate(IMAGE)
    b = SamAutomaticMaskGenerator(toy_model, points_per_batch=200,
                                  **CONFIGS["relaxed"]).generate(IMAGE)
    _assert_same_records(a, b)


# ============================================================================= progress
def test_progress_callback_and_generator(toy_model):
    gen = SamAutomaticMaskGenerator(toy_model, points_per_batch=50, crop_n_layers=1,
                                    crop_n_points_downscale_factor=2, **{
                                        k: v for k, v in CONFIGS["relaxed"].items()})
    calls = []
    records = gen.generate(IMAGE, progress=lambda e: calls.append((e.done, e.total)))
    # 5 crops; 144 points in batches of 50 -> 3 batches; 36 per crop -> 1 batch each.
    total = 5 + 3 + 4 + 1
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert all(t == total for _, t in calls)

    steps = gen.generate_iter(IMAGE)
    events = []
    with pytest.raises(StopIteration) as stop:
        while True:
            events.append(next(steps))
    assert all(isinstance(e, AmgProgress) for e in events)
    assert [e.stage for e in events][:2] == ["starting", "encoding"]
    assert events[-1].stage == "post-processing"
    assert {e.n_crops for e in events} == {5}
    _assert_same_records(stop.value.value, records)  # the generator's return value


def test_cancel(toy_model):
    gen = SamAutomaticMaskGenerator(toy_model, points_per_batch=16, **CONFIGS["relaxed"])
    polls = []

    def should_cancel():
        polls.append(1)
        return len(polls) > 3

    with pytest.raises(Cancelled) as err:
        gen.generate(IMAGE, should_cancel=should_cancel)
    assert isinstance(err.value, NapariSamError) and isinstance(err.value, RuntimeError)
    assert len(polls) == 4
    # The generator is reusable after a cancelled run.
    assert len(gen.generate(IMAGE)) >= 10


def test_generator_close_stops_work(toy_model):
    gen = SamAutomaticMaskGenerator(toy_model, points_per_batch=16, **CONFIGS["relaxed"])
    steps = gen.generate_iter(IMAGE)
    next(steps)
    next(steps)
    steps.close()  # napari's thread_worker quits this way
    with pytest.raises(StopIteration):
        next(steps)


# ============================================================================= input checks
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(points_per_side=None), "exactly one of points_per_side and point_grids"),
        (dict(point_grids=[np.zeros((4, 2))]), "exactly one"),
        (dict(output_mode="rle"), "output_mode"),
        (dict(pred_iou_thresh=1.5), "pred_iou_thresh"),
        (dict(stability_score_thresh=-0.1), "stability_score_thresh"),
        (dict(box_nms_thresh=2), "box_nms_thresh"),
        (dict(crop_nms_thresh=float("nan")), "crop_nms_thresh"),
        (dict(crop_overlap_ratio=1.0), "crop_overlap_ratio"),
        (dict(stability_score_offset=-1), "stability_score_offset"),
        (dict(points_per_side=0), "points_per_side"),
        (dict(points_per_side=8.5), "points_per_side"),
        (dict(points_per_batch=0), "points_per_batch"),
        (dict(crop_n_layers=-1), "crop_n_layers"),
        (dict(crop_n_points_downscale_factor=0), "crop_n_points_downscale_factor"),
        (dict(min_mask_region_area=-5), "min_mask_region_area"),
        (dict(points_per_side=4, crop_n_layers=3, crop_n_points_downscale_factor=2),
         "layer 3 would get no points"),
        (dict(points_per_side=None, point_grids=[np.zeros((4, 2))], crop_n_layers=1),
         "needs 2"),
        (dict(points_per_side=None, point_grids=[np.full((4, 2), 2.0)]), r"\[0, 1\]"),
        (dict(points_per_side=None, point_grids=[np.zeros((4, 3))]), "shape"),
        (dict(points_per_side=None, point_grids=np.zeros((4, 2))), "list"),
    ],
)
def test_bad_arguments(toy_model, kwargs, match):
    with pytest.raises(SettingsError, match=match) as err:
        SamAutomaticMaskGenerator(toy_model, **kwargs)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((10, 0), np.uint8), "empty"),
        (np.zeros((16, 16, 3), np.uint16), "uint16"),
        (np.zeros((16, 16), np.float32), "float32"),
        (np.zeros((16, 16, 4), np.uint8), "alpha"),
        (np.zeros((2, 16, 16, 3), np.uint8), "shape"),
        ([[0, 1], [2, 3]], "numpy array"),
    ],
)
def test_bad_images(toy_model, image, match):
    gen = SamAutomaticMaskGenerator(toy_model, points_per_side=4)
    with pytest.raises(ImageFormatError, match=match):
        gen.generate(image)


def test_grayscale_is_repeated_to_rgb(toy_model):
    gray = IMAGE[..., 1].copy()
    gen = SamAutomaticMaskGenerator(toy_model, **CONFIGS["relaxed"])
    rgb = gen.generate(np.repeat(gray[..., None], 3, axis=2))
    _assert_same_records(gen.generate(gray), rgb)
    _assert_same_records(gen.generate(gray[..., None]), rgb)


@pytest.mark.parametrize("shape", [(1, 40, 3), (40, 1, 3), (1, 1, 3), (3, 2, 3)])
def test_tiny_images(toy_model, shape):
    """One-pixel-wide images work, with and without crops (degenerate crops are skipped)."""
    image = np.full(shape, 128, np.uint8)
    for layers in (0, 2):
        gen = SamAutomaticMaskGenerator(toy_model, points_per_side=4, crop_n_layers=layers,
                                        pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                        min_mask_region_area=2)
        records = gen.generate(image)
        for rec in records:
            assert rec["segmentation"].shape == shape[:2]


# ============================================================================= decoder choice
def test_toy_model_uses_generic_decoder(toy_model):
    assert not SharedImageDecoder.supports(toy_model)
    assert not SamAutomaticMaskGenerator(toy_model)._fast_decoder


def test_small_model_uses_fast_decoder(small_model):
    assert SharedImageDecoder.supports(small_model)
    assert SamAutomaticMaskGenerator(small_model)._fast_decoder


def test_fast_decoder_falls_back_when_it_disagrees(small_model, monkeypatch):
    original = SharedImageDecoder.decode

    def broken(self, sparse):
        iou, low_res_for = original(self, sparse)
        return iou + 0.5, low_res_for

    monkeypatch.setattr(SharedImageDecoder, "decode", broken)
    gen = SamAutomaticMaskGenerator(small_model, points_per_side=2, pred_iou_thresh=0.0,
                                    stability_score_thresh=0.0)
    with pytest.warns(RuntimeWarning, match="disagrees"):
        records = gen.generate(IMAGE[:64, :64])
    assert not gen._fast_decoder
    assert all(r["predicted_iou"] < 0.5 for r in records)


def test_chunking_does_not_change_results(toy_model, small_model, monkeypatch):
    """Tiny memory budgets (one mask per upscaling step, one prompt per decoder
    call) give the same records as the defaults."""
    import napari_sam.predictors.automatic as automatic

    toy_kwargs = dict(CONFIGS["crops+small-regions"], points_per_side=8)
    small_kwargs = dict(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                        box_nms_thresh=1.0)
    image = IMAGE[:96, :128]
    toy_ref = SamAutomaticMaskGenerator(toy_model, **toy_kwargs).generate(IMAGE)
    small_ref = SamAutomaticMaskGenerator(small_model, **small_kwargs).generate(image)
    monkeypatch.setattr(automatic, "_UPSCALE_BUDGET_BYTES", 1)
    monkeypatch.setattr(automatic, "_PROMPT_CHUNK", 1)
    monkeypatch.setattr(automatic, "_CPU_DECODE_CHUNK", 1)
    _assert_same_records(SamAutomaticMaskGenerator(toy_model, **toy_kwargs).generate(IMAGE),
                         toy_ref)
    small = SamAutomaticMaskGenerator(small_model, **small_kwargs).generate(image)
    assert len(small) == len(small_ref) == 27
    for a, b in zip(small, small_ref):
        assert a["point_coords"] == b["point_coords"]
        assert abs(a["predicted_iou"] - b["predicted_iou"]) < 1e-5
        inter = np.logical_and(a["segmentation"], b["segmentation"]).sum()
        union = np.logical_or(a["segmentation"], b["segmentation"]).sum()
        assert inter / union > 0.99


def test_generate_iter_checks_the_image_at_once(toy_model):
    gen = SamAutomaticMaskGenerator(toy_model, points_per_side=4)
    with pytest.raises(ImageFormatError):
        gen.generate_iter(np.zeros((8, 8), np.uint16))  # no next() needed


# ============================================================ GPU path, run on the CPU
def test_points_per_batch_auto(toy_model, monkeypatch):
    import napari_sam.runtime.memory as memory

    assert SamAutomaticMaskGenerator(toy_model, points_per_batch=None).points_per_batch == 64
    seen = {}

    def fake(device, bytes_per_item, *, maximum, cpu_default=1):
        seen.update(maximum=maximum, cpu_default=cpu_default)
        return 300

    monkeypatch.setattr(memory, "auto_batch_size", fake)
    gen = SamAutomaticMaskGenerator(toy_model, points_per_side=32, points_per_batch=None)
    assert gen.points_per_batch == 300 and seen == {"maximum": 1024, "cpu_default": 64}
    gen = SamAutomaticMaskGenerator(toy_model, points_per_side=8, points_per_batch=None)
    assert seen["maximum"] == 64  # never more than the grid


def test_gpu_chunk_limits_give_the_same_records(toy_model, monkeypatch):
    """The GPU's limits (whole batch per decoder call, large upscale chunks)."""
    ref = SamAutomaticMaskGenerator(toy_model, **CONFIGS["crops+small-regions"]).generate(IMAGE)
    monkeypatch.setattr(SamAutomaticMaskGenerator, "_limits",
                        lambda self: (2**34, 64, None))
    gen = SamAutomaticMaskGenerator(toy_model, points_per_batch=None,
                                    **CONFIGS["crops+small-regions"])
    _assert_same_records(gen.generate(IMAGE), ref)


def test_crops_encoded_ahead_in_batches(toy_model, monkeypatch):
    ref = SamAutomaticMaskGenerator(toy_model, **CONFIGS["crops+small-regions"]).generate(IMAGE)
    batches = []
    handle = toy_model.image_encoder.register_forward_hook(
        lambda module, args, out: batches.append(int(args[0].shape[0]))
    )
    monkeypatch.setattr(SamAutomaticMaskGenerator, "_encodes_ahead", lambda self: True)
    import napari_sam.runtime.memory as memory

    monkeypatch.setattr(memory, "auto_batch_size", lambda *a, **k: 3)  # 3 fit "on the GPU"
    try:
        gen = SamAutomaticMaskGenerator(toy_model, **CONFIGS["crops+small-regions"])
        records = gen.generate(IMAGE)
    finally:
        handle.remove()
    assert batches == [3, 2]  # the image + 4 crops, 3 per forward pass
    assert gen._crop_embeddings == {}
    _assert_same_records(records, ref)


def test_decoder_out_of_memory_halves_the_batch(toy_model, monkeypatch):
    from napari_sam.errors import DeviceFallbackWarning

    ref = SamAutomaticMaskGenerator(toy_model, **CONFIGS["relaxed"]).generate(IMAGE)
    real = SamAutomaticMaskGenerator._process_batch
    sizes = []

    def tight(self, points, crop_box, orig_size):
        sizes.append(len(points))
        if len(points) > 20:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.1 GiB")
        return real(self, points, crop_box, orig_size)

    monkeypatch.setattr(SamAutomaticMaskGenerator, "_process_batch", tight)
    gen = SamAutomaticMaskGenerator(toy_model, points_per_batch=64, **CONFIGS["relaxed"])
    with pytest.warns(DeviceFallbackWarning, match="64 prompts at once"):
        records = gen.generate(IMAGE)
    assert gen.points_per_batch == 16 and sizes[:3] == [64, 32, 16]
    _assert_same_records(records, ref)


@pytest.mark.parametrize("width", [1, 7, 8, 13, 64, 203])
def test_packbits_rows_equals_numpy(width):
    from napari_sam.predictors.automatic import _packbits_rows

    masks = torch.rand(3, 5, width, generator=torch.Generator().manual_seed(width)) > 0.5
    packed = _packbits_rows(masks)
    assert packed.dtype == torch.uint8
    np.testing.assert_array_equal(packed.numpy(), np.packbits(masks.numpy(), axis=-1))


def test_masks_packed_on_the_device_give_the_same_records(toy_model, monkeypatch):
    """The GPU's transfer (bits packed before the copy, rows unpacked per box)."""
    ref = SamAutomaticMaskGenerator(toy_model, **CONFIGS["crops+small-regions"]).generate(IMAGE)
    monkeypatch.setattr(SamAutomaticMaskGenerator, "_packs_on_device", lambda self: True)
    gen = SamAutomaticMaskGenerator(toy_model, **CONFIGS["crops+small-regions"])
    _assert_same_records(gen.generate(IMAGE), ref)
