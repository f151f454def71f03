"""Unit tests of the automatic-mask-generation utilities, on inputs whose answer is known.

Where Meta's ``segment_anything`` (or torchvision) has the same stage, it is
used as a second opinion on random inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from napari_sam.predictors.amg_utils import (
    area_from_rle,
    batched_nms,
    box_area,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    build_point_grid,
    coco_encode_rle,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_coco_rle,
    mask_to_rle,
    masks_to_boxes,
    nms,
    remove_small_regions,
    remove_small_regions_cropped,
    rle_to_mask,
    stability_score,
)

ref_amg = pytest.importorskip("segment_anything.utils.amg")


# ----------------------------------------------------------------------------- grids, crops
def test_point_grid_known():
    g = build_point_grid(2)
    np.testing.assert_allclose(g, [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    assert build_point_grid(1).tolist() == [[0.5, 0.5]]


@pytest.mark.parametrize("n", [1, 3, 16, 32])
def test_point_grid_matches_reference(n):
    np.testing.assert_array_equal(build_point_grid(n), ref_amg.build_point_grid(n))


def test_layer_point_grids():
    grids = build_all_layer_point_grids(16, 2, 2)
    assert [len(g) for g in grids] == [256, 64, 16]
    with pytest.raises(ValueError):
        build_point_grid(0)


@pytest.mark.parametrize("size", [(512, 512), (300, 701), (1, 5), (1000, 64)])
@pytest.mark.parametrize("layers", [0, 1, 2])
@pytest.mark.parametrize("overlap", [512 / 1500, 0.0, 0.5])
def test_crop_boxes_match_reference(size, layers, overlap):
    assert generate_crop_boxes(size, layers, overlap) == ref_amg.generate_crop_boxes(
        size, layers, overlap
    )


def test_crop_boxes_known():
    boxes, layers = generate_crop_boxes((100, 200), 1, 0.2)
    # overlap = int(0.2 * 100 * 2 / 2) = 20; crop w = ceil((20 + 200) / 2) = 110, h = 60
    assert boxes == [[0, 0, 200, 100], [0, 0, 110, 60], [0, 40, 110, 100],
                     [90, 0, 200, 60], [90, 40, 200, 100]]
    assert layers == [0, 1, 1, 1, 1]


def test_box_xyxy_to_xywh():
    assert box_xyxy_to_xywh([2, 3, 10, 7]) == [2, 3, 8, 4]
    assert box_xyxy_to_xywh(np.array([1, 1, 1, 1])) == [1, 1, 0, 0]


# ----------------------------------------------------------------------------- stability
def test_stability_score_known():
    # Logits 0..99 laid out in a 10x10 image: > 50 + 10 -> 39 pixels, > 50 - 10 -> 59.
    logits = torch.arange(100, dtype=torch.float32).reshape(1, 10, 10)
    s = stability_score(logits, 50.0, 10.0)
    assert s.dtype == torch.float32
    assert s.item() == pytest.approx(39 / 59)
    # Nested batch dims; an all-negative mask has no pixel above the low threshold -> NaN.
    logits = torch.stack([torch.full((4, 5), 5.0), torch.full((4, 5), -5.0)]).reshape(2, 1, 4, 5)
    s = stability_score(logits, 0.0, 1.0)
    assert s.shape == (2, 1)
    assert s[0, 0] == 1.0 and torch.isnan(s[1, 0])


def test_stability_score_matches_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 33, 41, generator=g) * 3
    ours = stability_score(logits, 0.0, 1.0)
    ref = ref_amg.calculate_stability_score(logits, 0.0, 1.0)
    assert torch.equal(ours, ref)


# ----------------------------------------------------------------------------- boxes
def test_masks_to_boxes_known():
    m = torch.zeros(4, 6, 8, dtype=torch.bool)
    m[0, 2:5, 1:4] = True  # rows 2..4, cols 1..3
    m[1, 0, 7] = True  # single pixel, top-right corner
    m[3] = True  # full
    boxes = masks_to_boxes(m)
    assert boxes.dtype == torch.int64
    assert boxes.tolist() == [[1, 2, 3, 4], [7, 0, 7, 0], [0, 0, 0, 0], [0, 0, 7, 5]]


def test_masks_to_boxes_shapes_and_empty():
    assert masks_to_boxes(torch.zeros(0, 5, 5, dtype=torch.bool)).shape == (0, 4)
    m = torch.zeros(2, 3, 5, 5, dtype=torch.bool)
    m[1, 2, 1, 3] = True
    boxes = masks_to_boxes(m)
    assert boxes.shape == (2, 3, 4)
    assert boxes[1, 2].tolist() == [3, 1, 3, 1]
    assert masks_to_boxes(torch.ones(5, 7)).tolist() == [0, 0, 6, 4]


def test_masks_to_boxes_matches_reference():
    g = torch.Generator().manual_seed(1)
    m = torch.rand(20, 31, 17, generator=g) > 0.995
    m[3] = False
    assert torch.equal(masks_to_boxes(m), ref_amg.batched_mask_to_box(m))


def test_box_area():
    assert box_area(torch.tensor([[0, 0, 10, 5], [2, 2, 2, 9]])).tolist() == [50, 0]


# ----------------------------------------------------------------------------- crop edges
def test_box_near_crop_edge_known():
    crop, image = [100, 0, 300, 200], [0, 0, 400, 200]
    boxes = torch.tensor([
        [0, 50, 50, 100],  # left crop edge (x=100) is not an image edge -> cut
        [50, 50, 150, 150],  # inside
        [50, 0, 150, 199],  # touches top/bottom, which are image edges -> kept
        [60, 60, 185, 100],  # right edge at 285: within 20 px of the crop edge 300 -> cut
        [60, 60, 179, 100],  # right edge at 279: 21 px away -> kept
    ])
    assert is_box_near_crop_edge(boxes, crop, image).tolist() == [True, False, False, True, False]


def test_box_near_crop_edge_matches_reference():
    g = torch.Generator().manual_seed(2)
    xy = torch.randint(0, 150, (200, 2), generator=g)
    boxes = torch.cat([xy, xy + torch.randint(0, 100, (200, 2), generator=g)], 1)
    for crop in ([0, 0, 256, 256], [40, 60, 256, 200], [100, 0, 300, 256]):
        ours = is_box_near_crop_edge(boxes, crop, [0, 0, 300, 256])
        ref = ref_amg.is_box_near_crop_edge(boxes, crop, [0, 0, 300, 256])
        assert torch.equal(ours, ref)


# ----------------------------------------------------------------------------- NMS
def _random_boxes(n, seed, integer=False, n_cats=1):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + wh], 1)
    if integer:
        boxes = boxes.round()
    scores = torch.rand(n, generator=g)
    cats = torch.randint(0, n_cats, (n,), generator=g)
    return boxes, scores, cats


def test_nms_known():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # IoU(box0, box1) = 81 / 119 = 0.68
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms(boxes, scores, 0.7).tolist() == [3, 1, 2]
    # IoU exactly 1 is not above a threshold of 1: nothing is suppressed.
    assert sorted(nms(boxes, scores, 1.0).tolist()) == [0, 1, 2, 3]
    # Categories never suppress each other.
    cats = torch.tensor([0, 1, 0, 1])
    assert batched_nms(boxes, scores, cats, 0.5).tolist() == [3, 0, 2]


def test_nms_ties_and_degenerate_boxes():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 5, 5], [5, 5, 5, 5.0]])
    scores = torch.ones(4)
    # Equal scores: the lower index wins; zero-area boxes never suppress (IoU is NaN).
    assert nms(boxes, scores, 0.5).tolist() == [0, 2, 3]
    assert nms(boxes[:0], scores[:0], 0.5).tolist() == []
    with pytest.raises(ValueError):
        nms(boxes[:, :3], scores, 0.5)
    with pytest.raises(ValueError):
        batched_nms(boxes, scores[:3], torch.zeros(4), 0.5)


@pytest.mark.parametrize("n", [1, 37, 500, 2500])
@pytest.mark.parametrize("thresh", [0.0, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("n_cats", [1, 4])
def test_nms_matches_torchvision(n, thresh, n_cats):
    tv = pytest.importorskip("torchvision.ops")
    boxes, scores, cats = _random_boxes(n, seed=n, n_cats=n_cats)
    ours = batched_nms(boxes, scores, cats, thresh)
    ref = tv.batched_nms(boxes, scores, cats, thresh)
    if n <= 1000:
        assert torch.equal(ours, ref)
    else:
        # Beyond 1000 boxes torchvision re-sorts its result with an unstable sort,
        # so boxes of equal score may come in any order.
        assert sorted(ours.tolist()) == sorted(ref.tolist())
        key = [(-scores[i].item(), i) for i in ours.tolist()]
        assert key == sorted(key)


@pytest.mark.parametrize("n", [300, 1500])
def test_nms_matches_torchvision_with_ties(n):
    """Integer boxes and few distinct scores: many exact ties in IoU and score.

    torchvision orders equal scores differently from call to call for big
    inputs; the kept set is the same, and ours is ordered by (score desc, index).
    """
    tv = pytest.importorskip("torchvision.ops")
    boxes, _, cats = _random_boxes(n, seed=7, integer=True, n_cats=1)
    scores = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(3)).float()
    ours = batched_nms(boxes, scores, cats, 0.5)
    ref = tv.batched_nms(boxes, scores, cats, 0.5)
    assert sorted(ours.tolist()) == sorted(ref.tolist())
    key = [(-scores[i].item(), i) for i in ours.tolist()]
    assert key == sorted(key)


def test_nms_block_boundary(monkeypatch):
    """Suppression across row blocks of the overlap matrix."""
    import napari_sam.predictors.amg_utils as amg

    tv = pytest.importorskip("torchvision.ops")
    boxes, scores, cats = _random_boxes(300, seed=11)
    monkeypatch.setattr(amg, "_NMS_BLOCK", 7)
    assert torch.equal(amg.batched_nms(boxes, scores, cats, 0.4),
                       tv.batched_nms(boxes, scores, cats, 0.4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_nms_on_gpu_matches_cpu():
    boxes, scores, cats = _random_boxes(3000, seed=5, n_cats=3)
    cpu = batched_nms(boxes, scores, cats, 0.5)
    gpu = batched_nms(boxes.cuda(), scores.cuda(), cats.cuda(), 0.5)
    assert gpu.device.type == "cuda"
    assert torch.equal(gpu.cpu(), cpu)


# ----------------------------------------------------------------------------- RLE
def test_rle_known():
    m = np.array([[0, 1, 1], [0, 0, 1]], dtype=bool)
    # Column-major pixel order: 0 0 | 1 0 | 1 1 -> runs of 2 zeros, 1 one, 1 zero, 2 ones.
    rle = mask_to_rle(m)[0]
    assert rle == {"size": [2, 3], "counts": [2, 1, 1, 2]}
    assert area_from_rle(rle) == 3
    # A mask starting with a foreground pixel starts with an empty background run.
    assert mask_to_rle(np.ones((2, 2), bool))[0]["counts"] == [0, 4]
    assert mask_to_rle(np.zeros((2, 2), bool))[0]["counts"] == [4]
    np.testing.assert_array_equal(rle_to_mask(rle), m)


def test_rle_round_trip_and_reference():
    g = np.random.default_rng(0)
    masks = g.random((12, 17, 23)) > 0.6
    masks[0] = False
    masks[1] = True
    masks[2, 0, 0] = True
    rles = mask_to_rle(torch.as_tensor(masks))
    assert rles == ref_amg.mask_to_rle_pytorch(torch.as_tensor(masks))
    for mask, rle in zip(masks, rles):
        back = rle_to_mask(rle)
        assert back.flags.c_contiguous
        np.testing.assert_array_equal(back, mask)
        assert area_from_rle(rle) == mask.sum()


def test_rle_to_mask_rejects_bad_counts():
    with pytest.raises(ValueError, match="sum to 6"):
        rle_to_mask({"size": [2, 3], "counts": [2, 2]})
    with pytest.raises(ValueError):
        rle_to_mask({"size": [2, 3], "counts": [7, -1]})


def test_coco_rle():
    g = np.random.default_rng(1)
    for _ in range(5):
        mask = g.random((19, 26)) > 0.5
        coco = mask_to_coco_rle(mask)
        assert isinstance(coco["counts"], str)
        rle = mask_to_rle(mask)[0]
        assert coco == coco_encode_rle(rle) == ref_amg.coco_encode_rle(rle)
        decoded = mask_utils.decode({"size": coco["size"], "counts": coco["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), mask)


# ----------------------------------------------------------------------------- small regions
def test_remove_small_holes_and_islands_known():
    m = np.zeros((20, 20), bool)
    m[2:12, 2:12] = True
    m[5:7, 5:7] = False  # 4-pixel hole
    m[16:18, 16:18] = True  # 4-pixel island
    filled, changed = remove_small_regions(m, 5, "holes")
    assert changed and filled[5:7, 5:7].all() and filled.sum() == m.sum() + 4
    cleaned, changed = remove_small_regions(filled, 5, "islands")
    assert changed and not cleaned[16:18, 16:18].any() and cleaned.sum() == 100
    same, changed = remove_small_regions(cleaned, 5, "islands")
    assert not changed and same is not None and (same == cleaned).all()
    # Background touching the image border counts as a (big) hole only if small.
    corner = np.ones((6, 6), bool)
    corner[0, 0] = False
    filled, changed = remove_small_regions(corner, 2, "holes")
    assert changed and filled.all()
    # All islands small: the largest is kept.
    m = np.zeros((10, 10), bool)
    m[0, 0] = True
    m[5:7, 5:7] = True
    kept, changed = remove_small_regions(m, 100, "islands")
    assert changed and kept.sum() == 4 and kept[5:7, 5:7].all()
    with pytest.raises(ValueError):
        remove_small_regions(m, 5, "both")


def test_remove_small_regions_matches_reference():
    g = np.random.default_rng(2)
    for _ in range(200):
        m = g.random(tuple(g.integers(1, 40, 2))) < g.uniform(0.2, 0.8)
        thr = int(g.integers(1, 40))
        for mode in ("holes", "islands"):
            ours, changed = remove_small_regions(m, thr, mode)
            ref, ref_changed = ref_amg.remove_small_regions(m, thr, mode)
            assert changed == ref_changed
            np.testing.assert_array_equal(ours, ref)


def _full_frame(m, thr):
    ref, c1 = ref_amg.remove_small_regions(m, thr, "holes")
    ref, c2 = ref_amg.remove_small_regions(ref, thr, "islands")
    return ref, c1 or c2


def _window_of(m):
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    if rows.size == 0:
        return np.zeros((0, 0), bool), (0, 0)
    return m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], (rows[0], cols[0])


def _paste(crop, origin, shape):
    full = np.zeros(shape, bool)
    full[origin[0] : origin[0] + crop.shape[0], origin[1] : origin[1] + crop.shape[1]] = crop
    return full


def test_remove_small_regions_cropped_equals_full_frame():
    """Cropped cleaning gives exactly the whole-image result, on random masks that
    touch image edges, span the full width or height, are empty, or have thin
    outside strips."""
    import cv2

    g = np.random.default_rng(3)
    for trial in range(1500):
        h, w = (int(v) for v in g.integers(1, 48, 2))
        m = g.random((h, w)) < g.uniform(0.2, 0.9)
        if trial % 2:
            m = cv2.dilate(m.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool)
        if trial % 3 == 0:  # confine to a random window
            r0, r1 = sorted(g.integers(0, h + 1, 2))
            c0, c1 = sorted(g.integers(0, w + 1, 2))
            z = np.zeros_like(m)
            z[r0:r1, c0:c1] = m[r0:r1, c0:c1]
            m = z
        thr = int(g.integers(1, 80))
        ref, ref_changed = _full_frame(m, thr)
        crop, origin = _window_of(m)
        new, new_origin, changed = remove_small_regions_cropped(crop, origin, (h, w), thr)
        assert changed == ref_changed
        np.testing.assert_array_equal(_paste(new, new_origin, (h, w)), ref)
        if changed and ref.any():  # the result is cut to its bounding box
            assert new.any(0)[[0, -1]].all() and new.any(1)[[0, -1]].all()


def test_remove_small_regions_cropped_thin_outside_strip():
    # The mask spans the full width; the 1-row strip above it is a small "hole".
    m = np.zeros((10, 10), bool)
    m[1:9, :] = True
    crop, origin = _window_of(m)
    new, new_origin, changed = remove_small_regions_cropped(crop, origin, (10, 10), 15)
    ref, _ = _full_frame(m, 15)
    assert changed and ref.all()
    np.testing.assert_array_equal(_paste(new, new_origin, (10, 10)), ref)


def test_counts_per_plane_match_a_batched_sum():
    from napari_sam.predictors.amg_utils import count_above, count_true

    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 40, 50, generator=g)
    want = (logits > 0.3).sum(dim=(-2, -1), dtype=torch.int32)
    got = count_above(logits, 0.3)
    assert got.dtype == torch.int32 and torch.equal(got, want)
    masks = logits > -0.2
    assert torch.equal(count_true(masks), masks.sum(dim=(-2, -1), dtype=torch.int32))
    assert count_true(masks[0, 0]).item() == int(masks[0, 0].sum())  # a single plane
    assert count_above(logits[:0], 0.0).shape == (0, 3)  # no planes


def test_masks_to_boxes_of_a_strided_view():
    g = torch.Generator().manual_seed(3)
    m = torch.rand(6, 21, 13, generator=g) > 0.97
    view = m.transpose(1, 2)[::2]  # not contiguous
    assert torch.equal(masks_to_boxes(view), masks_to_boxes(view.contiguous()))
    assert torch.equal(masks_to_boxes(view), ref_amg.batched_mask_to_box(view.contiguous()))
