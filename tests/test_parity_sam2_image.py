"""Parity of Sam2ImagePredictor with ``sam2.SAM2ImagePredictor`` on identical random weights.

Published configurations at the published resolution (1024): tiny and base+.
Masks must agree (IoU >= 0.99, in fact everywhere the reference logit is not
within 1e-3 of the threshold), low-resolution logits within 1e-3, predicted
IoUs within 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import smooth_image
from napari_sam.errors import ImageNotSetError, PromptError
from napari_sam.predictors.sam2_predictor import Sam2ImagePredictor
from napari_sam.runtime.checkpoints import build_any, read_checkpoint
from reference_sam2 import build_reference_sam2

ATOL_LOGIT = 1e-3


@pytest.fixture(scope="module", params=["sam2_tiny", "sam2_base_plus"])
def predictors(request, sam2_checkpoint):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    name = request.param
    path = sam2_checkpoint(name)
    ref = build_reference_sam2(name, state=read_checkpoint(path))
    ours = build_any(name, path)
    ours.precision = "fp32"
    image = smooth_image(300, 457, seed=3)
    rp, op = SAM2ImagePredictor(ref), Sam2ImagePredictor(ours)
    with torch.no_grad():
        rp.set_image(image)
    op.set_image(image)
    return rp, op, image


def _iou(a, b):
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def _cases(h, w):
    pts = np.array([[0.3 * w, 0.4 * h], [0.7 * w, 0.6 * h], [0.5 * w, 0.2 * h]])
    box = np.array([0.1 * w, 0.15 * h, 0.8 * w, 0.9 * h])
    return {
        "one_click": dict(point_coords=pts[:1], point_labels=np.array([1])),
        "clicks_pos_neg": dict(point_coords=pts, point_labels=np.array([1, 0, 1])),
        "box": dict(box=box),
        "box_and_clicks": dict(point_coords=pts[:2], point_labels=np.array([1, 0]), box=box),
        "single_mask": dict(
            point_coords=pts[:2], point_labels=np.array([1, 1]), multimask_output=False
        ),
        "box_single_mask": dict(box=box, multimask_output=False),
        "logits": dict(point_coords=pts[:1], point_labels=np.array([1]), return_logits=True),
        "batched_boxes": dict(box=np.stack([box, box * 0.5 + 10]), multimask_output=False),
    }


CASES = list(_cases(1, 1))


@pytest.mark.parametrize("case", CASES)
def test_predict_matches_reference(predictors, case):
    rp, op, image = predictors
    kwargs = _cases(*image.shape[:2])[case]
    with torch.no_grad():
        m_r, s_r, l_r = rp.predict(**kwargs)
    m_o, s_o, l_o = op.predict(**kwargs)
    assert m_o.shape == m_r.shape and m_o.dtype == m_r.dtype == np.float32
    assert s_o.shape == s_r.shape and l_o.shape == l_r.shape
    fractions = (np.asarray(m_r) > 0).reshape(-1, *image.shape[:2]).mean(axis=(1, 2))
    assert ((fractions > 0.01) & (fractions < 0.99)).any()  # not a trivial output
    np.testing.assert_allclose(l_o, l_r, atol=ATOL_LOGIT, rtol=1e-4)
    np.testing.assert_allclose(s_o, s_r, atol=1e-4)
    planes = (-1, *image.shape[:2])
    for a, b in zip(np.asarray(m_r).reshape(planes), m_o.reshape(planes)):
        assert _iou(a, b) >= 0.99


def test_mask_input_and_embedding(predictors):
    rp, op, image = predictors
    kwargs = _cases(*image.shape[:2])["one_click"]
    with torch.no_grad():
        _, s_r, l_r = rp.predict(**kwargs)
        best = l_r[np.argmax(s_r)][None]
        m_r, _, l_r2 = rp.predict(**kwargs, mask_input=best, multimask_output=False)
    m_o, _, l_o2 = op.predict(**kwargs, mask_input=best, multimask_output=False)
    np.testing.assert_allclose(l_o2, l_r2, atol=ATOL_LOGIT, rtol=1e-4)
    assert _iou(m_r, m_o) >= 0.99
    torch.testing.assert_close(
        op.get_image_embedding(), rp.get_image_embedding(), atol=1e-4, rtol=1e-4
    )
    # an embedding restored from a cache predicts the same
    again = Sam2ImagePredictor(op.model)
    again.set_embedding(op.get_embedding())
    np.testing.assert_array_equal(again.predict(**kwargs)[2], op.predict(**kwargs)[2])


def test_batch_of_images(predictors):
    """A batch of images predicts what each image alone predicts (parity shown above)."""
    _, op, image = predictors
    if op.model.image_encoder.trunk.patch_embed.proj.out_channels != 96:
        pytest.skip("the batch path is checked once, on the tiny model")
    other = smooth_image(200, 180, seed=9)
    pts = [np.array([[50.0, 60.0]]), np.array([[90.0, 30.0]])]
    labels = [np.array([1]), np.array([1])]
    batch = Sam2ImagePredictor(op.model)
    batch.set_image_batch([image, other])
    masks, scores, logits = batch.predict_batch(pts, labels)
    single = Sam2ImagePredictor(op.model)
    for img, p, lab, m, s, lg in zip([image, other], pts, labels, masks, scores, logits):
        single.set_image(img)
        m1, s1, l1 = single.predict(p, lab)
        assert m.shape == m1.shape == (3, *img.shape[:2])
        np.testing.assert_allclose(lg, l1, atol=1e-4)
        np.testing.assert_allclose(s, s1, atol=1e-5)


def test_errors_are_one_sentence(predictors):
    _, op, _ = predictors
    fresh = Sam2ImagePredictor(op.model)
    with pytest.raises(ImageNotSetError):
        fresh.predict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([1]))
    with pytest.raises(PromptError, match="one label per point"):
        op.predict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([1, 1]))
    with pytest.raises(PromptError, match="inverted"):
        op.predict(box=np.array([10.0, 10.0, 5.0, 20.0]))
