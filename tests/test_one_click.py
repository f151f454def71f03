"""One click = one cell (workflows.interactive): grouping rule, batched prediction, cache.

The batched prediction is checked against :func:`predict_objects` (one
``SamPredictor.predict`` call per object) on the real nuclei sample: the
same candidates, scores to 1e-5 and masks up to floating-point rounding (the
shared-image decoder re-arranges SAM's decoder algebraically, so a pixel
whose logit is within rounding of the threshold may flip: at most 1 in
10 000 pixels). The model is the small test decoder with
the fast stand-in encoder (tests/volume_models.py): batching concerns the
prompt encoder and mask decoder only.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bio_samples import sample
from decoder_calls import decoder_calls
from napari_sam.predictors.amg_utils import stability_score
from napari_sam.predictors.predictor import SamPredictor
from napari_sam.workflows.image import to_sam_rgb
from napari_sam.workflows.interactive import (
    CPU_DECODER_BYTES,
    STABILITY_OFFSET,
    PredictionCache,
    compose_preview,
    decoder_batch,
    group_clicks,
    plan_commit,
    predict_objects,
    predict_objects_batched,
)
from napari_sam.workflows.labels import apply_plan
from volume_models import fast_sam

Z = 30
N_CLICKS = 6


# --------------------------------------------------------------------------- the rule
def test_each_free_positive_point_is_one_object_and_boxes_keep_their_points():
    pts = np.array([[10, 10], [50, 50], [12, 14], [200, 200], [30, 30]], float)
    labels = np.array([1, 1, 1, 1, 0])
    boxes = np.array([[0, 0, 20, 20], [5, 5, 15, 16]], float)
    got = group_clicks(pts, labels, boxes)
    # point 0 (10,10) is in both boxes -> the smaller box 1; point 2 (12,14) too -> box 1
    assert got.n_boxes == 2 and len(got.objects) == 4
    np.testing.assert_array_equal(got.objects[1].point_coords, pts[[0, 2]])
    assert got.objects[0].point_coords is None
    np.testing.assert_array_equal(got.clicks, [1, 3])
    # the negative point (30, 30) refines the nearest click: (50, 50) at 28.3 px, not (200, 200)
    np.testing.assert_array_equal(got.objects[2].point_coords, pts[[1, 4]])
    np.testing.assert_array_equal(got.objects[2].point_labels, [1, 0])
    np.testing.assert_array_equal(got.objects[3].point_coords, pts[[3]])
    np.testing.assert_array_equal(got.point_object, [1, 2, 1, 3, 2])


def test_negative_point_ties_go_to_the_earlier_click_and_lonely_negatives_are_unassigned():
    pts = np.array([[20, 0], [0, 0], [10, 0], [0, 40]], float)  # negative (10,0) is 10 px from both
    labels = np.array([1, 1, 0, 0])
    got = group_clicks(pts, labels)
    np.testing.assert_array_equal(got.objects[0].point_coords, pts[[0, 2]])  # point 0 comes first
    np.testing.assert_array_equal(got.objects[1].point_coords, pts[[1, 3]])  # (0,40) is nearer 1
    alone = group_clicks(pts[2:], labels[2:])
    assert alone.objects == [] and list(alone.unassigned) == [0, 1]
    assert list(alone.point_object) == [-1, -1]


def test_clicks_on_labelled_objects_are_ignored_and_not_refined():
    plane = np.zeros((40, 40), np.uint32)
    plane[5:15, 5:15] = 7
    pts = np.array([[10.4, 10.4], [30, 30], [14.5, 4.5], [12, 12]], float)
    labels = np.array([1, 1, 1, 0])
    got = group_clicks(pts, labels, labels_plane=plane)
    # (14.5, 4.5) rounds half up to row 5, col 15: outside the object (cols 5..14)
    np.testing.assert_array_equal(got.ignored, [0])
    np.testing.assert_array_equal(got.ignored_labels, [7])
    np.testing.assert_array_equal(got.clicks, [1, 2])
    # the negative point near the ignored click goes to the nearest *used* click (point 2)
    np.testing.assert_array_equal(got.objects[1].point_coords, pts[[2, 3]])


def test_compose_preview_widens_its_type_beyond_255_objects():
    masks = [np.zeros((20, 20), bool) for _ in range(300)]
    for i, m in enumerate(masks):
        m.flat[i] = True
    preview = compose_preview(masks, (20, 20))
    assert preview.dtype == np.uint16 and preview.flat[299] == 300


# --------------------------------------------------------------------------- batched = one by one
@pytest.fixture(scope="module")
def nuclei_predictor():
    stack = sample("nuclei.tif")
    truth = sample("nuclei_label.tif")
    predictor = SamPredictor(fast_sam(0))
    predictor.set_image(to_sam_rgb(stack[Z], (float(stack.min()), float(stack.max()))))
    ids = [i for i in np.unique(truth[Z]) if i][:N_CLICKS]  # few: the decoder is slow on a CPU
    centres = ndimage.center_of_mass(truth[Z] > 0, truth[Z], ids)
    clicks = np.array([[c, r] for r, c in centres])  # (x, y)
    return predictor, clicks, truth[Z]


def same_masks(a, b) -> bool:
    """Equal up to floating-point rounding: at most 1 in 10 000 pixels differ."""
    return a.shape == b.shape and np.count_nonzero(a != b) <= a.size // 10_000


def _check_same(one, batch):
    assert len(one) == len(batch)
    for a, b in zip(one, batch):
        assert same_masks(a.mask, b.mask) and a.mask.sum() > 0
        assert a.score == pytest.approx(b.score, abs=1e-5)
        assert (a.candidate, a.n_candidates) == (b.candidate, b.n_candidates)


@pytest.mark.parametrize(("multimask", "candidate"), [(True, 0), (True, 1), (False, 0)])
def test_batched_prediction_equals_one_by_one_on_the_nuclei_sample(
    nuclei_predictor, multimask, candidate
):
    predictor, clicks, truth = nuclei_predictor
    assert len(clicks) == N_CLICKS
    # clicks, two negative points and a box with a point: objects of 3 prompt kinds
    pts = np.vstack([clicks, clicks[:2] + np.array([6.0, -5.0])])
    labels = np.r_[np.ones(len(clicks), int), 0, 0]
    box = np.array([[0, 0, 100, 100]], float)
    free = ~((pts[:, 0] <= 100) & (pts[:, 1] <= 100))
    grouped = group_clicks(pts[free], labels[free], box)
    kinds = {(0 if o.point_coords is None else len(o.point_coords), o.box is not None)
             for o in grouped.objects}
    assert len(kinds) >= 2

    one = predict_objects(predictor, grouped.objects, multimask, candidate)
    areas = [int(o.mask.sum()) for o in one]
    assert 0 < min(areas) and max(areas) < truth.size  # non-trivial reference masks
    assert len({o.mask.tobytes() for o in one}) > 1

    with decoder_calls(predictor.model) as calls:
        batch = predict_objects_batched(predictor, grouped.objects, multimask, candidate)
    _check_same(one, batch)
    # each prompt kind decoded together, in batches of decoder_batch objects on this CPU
    # (the shared-image decoder with multimask output)
    step = decoder_batch(predictor.features, len(grouped.objects))
    sizes = sorted(sum(1 for o in grouped.objects
                       if (0 if o.point_coords is None else len(o.point_coords),
                           o.box is not None) == kind) for kind in kinds)
    expected = sorted(min(step, n - start) for n in sizes for start in range(0, n, step))
    assert sorted(calls) == expected


def test_decoder_batches_fit_the_cpu_caches_and_a_gpu_takes_all():
    import torch

    embedding = torch.empty((1, 256, 64, 64))  # SAM's, float32: 4 MiB per object
    assert decoder_batch(embedding, 50) == CPU_DECODER_BYTES // (4 * 2**20) == 2
    assert decoder_batch(embedding.bfloat16(), 50) == 4
    assert decoder_batch(embedding, 1) == 1
    assert decoder_batch(torch.empty((1, 8, 4, 4)), 50) == 50  # small: all at once
    assert decoder_batch(torch.empty((1, 256, 64, 64), device="meta"), 50) == 50  # not a CPU


def test_stability_is_that_of_the_upsampled_logits(nuclei_predictor):
    predictor, clicks, _ = nuclei_predictor
    grouped = group_clicks(clicks[:3], np.ones(3, int))
    batch = predict_objects_batched(predictor, grouped.objects, multimask=False)
    for obj, res in zip(grouped.objects, batch):
        logits, _, _ = predictor.predict(
            obj.point_coords, obj.point_labels, multimask_output=False, return_logits=True
        )
        import torch

        expected = stability_score(
            torch.as_tensor(logits[0]), predictor.model.mask_threshold, STABILITY_OFFSET
        )
        assert res.stability == pytest.approx(float(expected), abs=1e-6)


def test_cache_predicts_only_the_new_click_and_commit_writes_every_object(nuclei_predictor):
    predictor, clicks, truth = nuclei_predictor
    cache = PredictionCache()
    key = ("nuclei", Z)
    first = group_clicks(clicks[:-1], np.ones(len(clicks) - 1, int))
    predict_objects_batched(predictor, first.objects, cache=cache, cache_key=key)
    with decoder_calls(predictor.model) as calls:
        grouped = group_clicks(clicks, np.ones(len(clicks), int))
        masks = predict_objects_batched(predictor, grouped.objects, cache=cache, cache_key=key)
    assert calls == [1] and cache.hits == len(clicks) - 1
    _check_same(predict_objects(predictor, grouped.objects), masks)
    # another embedding key: everything is predicted again
    predict_objects_batched(predictor, grouped.objects[:2], cache=cache, cache_key=("other", Z))
    assert cache.misses == len(clicks) + 2

    preview = compose_preview([m.mask for m in masks], truth.shape)
    existing = np.zeros(truth.shape, np.uint32)
    existing[:8, :8] = 99
    plan = plan_commit(existing, preview, next_id=100)
    out = apply_plan(existing, plan)
    assert (out[:8, :8] == 99).all()  # never overwritten
    assert len(plan) == len(np.unique(preview)) - (0 in preview)
    assert sorted(oid for oid, _ in plan) == list(range(100, 100 + len(plan)))


def test_a_model_whose_shared_decoder_disagrees_keeps_its_own_decoder(monkeypatch):
    """The shared-image decoder is checked once per model against the model's decoder; on
    disagreement that model is decoded by its own decoder (same masks as one by one)."""
    from napari_sam.model.sam import shared_decoder
    from napari_sam.predictors import predictor as predictor_module

    stack = sample("nuclei.tif")
    predictor = SamPredictor(fast_sam(3))
    predictor.set_image(to_sam_rgb(stack[Z], (float(stack.min()), float(stack.max()))))
    grouped = group_clicks(np.array([[60.0, 70.0], [150.0, 120.0], [200.0, 40.0]]),
                           np.ones(3, int))
    checks = []
    monkeypatch.setattr(shared_decoder, "agrees_with_model",
                        lambda *args, **kwargs: checks.append(1) or False)
    with decoder_calls(predictor.model) as calls:
        batch = predict_objects_batched(predictor, grouped.objects)
        again = predict_objects_batched(predictor, grouped.objects)
    assert checks == [1] and predictor_module._SHARED_OK[predictor.model] is False
    step = decoder_batch(predictor.features, 3)
    assert calls == 2 * ([step] * (3 // step) + ([3 % step] if 3 % step else []))
    one = predict_objects(predictor, grouped.objects)
    for a, b, c in zip(one, batch, again):
        np.testing.assert_array_equal(a.mask, b.mask)  # the model's own decoder: exact
        np.testing.assert_array_equal(b.mask, c.mask)
