"""Parity of SamPredictor / Sam.forward with Meta's segment_anything on identical weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor as RefPredictor

from conftest import smooth_image
from napari_sam import SamPredictor

ATOL_EMB = 1e-4
ATOL_LOGIT = 1e-3


def assert_masks_match(ref_masks, ours_masks, ref_logits, margin=1e-3):
    """Binary masks agree wherever the reference logit is not within ``margin`` of 0."""
    ref_masks = np.asarray(ref_masks)
    ours_masks = np.asarray(ours_masks)
    assert ref_masks.shape == ours_masks.shape
    assert ref_masks.dtype == ours_masks.dtype
    decisive = np.abs(np.asarray(ref_logits)) > margin
    assert np.array_equal(ref_masks[decisive], ours_masks[decisive])
    # the comparison must not be vacuous
    assert decisive.mean() > 0.99


@pytest.fixture(scope="module", params=[(300, 457), (517, 203), (64, 64)], ids=str)
def predictors(request, small_pair):
    ref, ours, _ = small_pair
    h, w = request.param
    image = smooth_image(h, w, seed=h)
    rp, op = RefPredictor(ref), SamPredictor(ours)
    rp.set_image(image)
    op.set_image(image)
    return rp, op, image


def test_embedding_and_sizes_match(predictors):
    rp, op, image = predictors
    assert op.original_size == tuple(rp.original_size) == image.shape[:2]
    assert op.input_size == tuple(rp.input_size)
    emb_r, emb_o = rp.get_image_embedding(), op.get_image_embedding()
    assert emb_o.shape == emb_r.shape == (1, 256, 64, 64)
    assert emb_r.abs().mean() > 0.1  # a real signal, not zeros
    torch.testing.assert_close(emb_o, emb_r, atol=ATOL_EMB, rtol=1e-4)


def _prompts(h, w):
    pts = np.array([[0.3 * w, 0.4 * h], [0.7 * w, 0.6 * h], [0.5 * w, 0.2 * h]])
    box = np.array([0.1 * w, 0.15 * h, 0.8 * w, 0.9 * h])
    return {
        "one_positive": dict(point_coords=pts[:1], point_labels=np.array([1])),
        "pos_neg": dict(point_coords=pts, point_labels=np.array([1, 0, 1])),
        "box": dict(box=box),
        "box_and_points": dict(point_coords=pts[:2], point_labels=np.array([1, 0]), box=box),
        "single_mask": dict(
            point_coords=pts[:2], point_labels=np.array([1, 1]), multimask_output=False
        ),
        "logits": dict(point_coords=pts[:1], point_labels=np.array([1]), return_logits=True),
    }


@pytest.mark.parametrize(
    "case", ["one_positive", "pos_neg", "box", "box_and_points", "single_mask", "logits"]
)
def test_predict_matches_reference(predictors, case):
    rp, op, image = predictors
    kwargs = _prompts(*image.shape[:2])[case]
    m_r, s_r, l_r = rp.predict(**kwargs)
    m_o, s_o, l_o = op.predict(**kwargs)
    n = 1 if kwargs.get("multimask_output") is False else 3
    assert m_o.shape == (n, *image.shape[:2])
    assert s_o.shape == (n,) and l_o.shape == (n, 256, 256)
    assert s_o.dtype == s_r.dtype and l_o.dtype == l_r.dtype
    np.testing.assert_allclose(l_o, l_r, atol=ATOL_LOGIT, rtol=1e-4)
    np.testing.assert_allclose(s_o, s_r, atol=1e-4)
    if kwargs.get("return_logits"):
        assert m_o.dtype == np.float32
        np.testing.assert_allclose(m_o, m_r, atol=ATOL_LOGIT, rtol=1e-4)
    else:
        assert m_o.dtype == np.bool_
        logits_full = rp.predict(**{**kwargs, "return_logits": True})[0]
        assert_masks_match(m_r, m_o, logits_full)
        assert 0 < m_o.mean() < 1  # masks are neither empty nor full


def test_mask_input_from_previous_prediction(predictors):
    rp, op, image = predictors
    kwargs = _prompts(*image.shape[:2])["pos_neg"]
    _, s_r, l_r = rp.predict(**kwargs)
    best = int(np.argmax(s_r))
    prev = l_r[best][None]
    again = dict(kwargs, mask_input=prev, multimask_output=False)
    m_r, s_r2, l_r2 = rp.predict(**again)
    m_o, s_o2, l_o2 = op.predict(**again)
    np.testing.assert_allclose(l_o2, l_r2, atol=ATOL_LOGIT, rtol=1e-4)
    np.testing.assert_allclose(s_o2, s_r2, atol=1e-4)
    assert_masks_match(m_r, m_o, rp.predict(**again, return_logits=True)[0])


def test_predict_torch_batched_boxes(predictors):
    rp, op, image = predictors
    h, w = image.shape[:2]
    boxes = torch.tensor(
        [
            [0.1 * w, 0.1 * h, 0.5 * w, 0.6 * h],
            [0.4 * w, 0.3 * h, 0.95 * w, 0.9 * h],
            [0.0, 0.0, w - 1.0, h - 1.0],
        ]
    )
    tb_r = rp.transform.apply_boxes_torch(boxes, image.shape[:2])
    tb_o = op.transform.apply_boxes_torch(boxes, image.shape[:2])
    torch.testing.assert_close(tb_o, tb_r)
    m_r, s_r, l_r = rp.predict_torch(None, None, boxes=tb_r, multimask_output=False)
    m_o, s_o, l_o = op.predict_torch(None, None, boxes=tb_o, multimask_output=False)
    assert m_o.shape == m_r.shape == (3, 1, h, w)
    torch.testing.assert_close(l_o, l_r, atol=ATOL_LOGIT, rtol=1e-4)
    torch.testing.assert_close(s_o, s_r, atol=1e-4, rtol=1e-4)
    logits = rp.predict_torch(None, None, boxes=tb_r, multimask_output=False, return_logits=True)[0]
    assert_masks_match(m_r.numpy(), m_o.numpy(), logits.numpy())


def test_sam_forward_batch(small_pair):
    ref, ours, _ = small_pair
    imgs = [smooth_image(200, 333, seed=5), smooth_image(411, 260, seed=6)]
    batch_r, batch_o = [], []
    for i, img in enumerate(imgs):
        from napari_sam import ResizeLongestSide

        t = ResizeLongestSide(1024)
        x = torch.as_tensor(t.apply_image(img)).permute(2, 0, 1).contiguous()
        pts = torch.as_tensor(
            t.apply_coords(np.array([[[50.0, 60.0], [120.0, 90.0]]]), img.shape[:2]),
            dtype=torch.float,
        )
        rec = {
            "image": x,
            "original_size": img.shape[:2],
            "point_coords": pts,
            "point_labels": torch.tensor([[1, 0]]),
        }
        if i == 1:
            rec["boxes"] = t.apply_boxes_torch(
                torch.tensor([[10.0, 20.0, 200.0, 300.0]]), img.shape[:2]
            )
        batch_r.append(rec)
        batch_o.append(dict(rec))
    out_r = ref(batch_r, multimask_output=True)
    out_o = ours(batch_o, multimask_output=True)
    assert len(out_o) == 2
    for r, o, img in zip(out_r, out_o, imgs):
        assert set(o) == {"masks", "iou_predictions", "low_res_logits"}
        assert o["masks"].shape == (1, 3, *img.shape[:2]) and o["masks"].dtype == torch.bool
        torch.testing.assert_close(
            o["low_res_logits"], r["low_res_logits"], atol=ATOL_LOGIT, rtol=1e-4
        )
        torch.testing.assert_close(o["iou_predictions"], r["iou_predictions"], atol=1e-4, rtol=1e-4)
        agree = (o["masks"] == r["masks"]).float().mean().item()
        assert agree > 0.9999


def test_full_vit_b_config(tmp_path):
    """The published vit_b architecture, end to end, once."""
    from segment_anything import sam_model_registry as ref_registry

    from napari_sam import sam_model_registry
    from reference import perturb_

    torch.manual_seed(3)
    ref = ref_registry["vit_b"]()
    perturb_(ref, seed=3)
    ref.eval()
    ckpt = tmp_path / "vit_b_random.pth"
    torch.save(ref.state_dict(), ckpt)
    ours = sam_model_registry["vit_b"](checkpoint=str(ckpt))
    image = smooth_image(480, 640, seed=9)
    rp, op = RefPredictor(ref), SamPredictor(ours)
    rp.set_image(image)
    op.set_image(image)
    torch.testing.assert_close(op.features, rp.features, atol=1e-3, rtol=1e-3)
    kwargs = dict(point_coords=np.array([[320, 240], [100, 100]]), point_labels=np.array([1, 0]))
    m_r, s_r, l_r = rp.predict(**kwargs)
    m_o, s_o, l_o = op.predict(**kwargs)
    np.testing.assert_allclose(l_o, l_r, atol=5e-3, rtol=1e-3)
    np.testing.assert_allclose(s_o, s_r, atol=1e-3)
    assert_masks_match(m_r, m_o, rp.predict(**kwargs, return_logits=True)[0], margin=1e-2)
