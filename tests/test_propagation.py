"""Propagation of objects through a stack: the rule, the stopping decisions, writing labels.

- The stop decision and the prompts derived from a mask are checked on
  synthetic masks whose answers are known (the interior point against
  scipy's exact distance transform).
- The walk is checked with a stand-in predictor on a synthetic ground-truth
  volume: each object must end exactly where (and why) the volume says.
- With the small random SAM, ``propagate`` must equal the documented rule
  applied by hand: SamPredictor.set_image per slice, prompts computed here
  with scipy/numpy, ``SamPredictor.predict`` per object and slice, and the
  thresholds checked here.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_sam.errors import Cancelled, PropagationError
from napari_sam.predictors.predictor import SamPredictor
from napari_sam.workflows.embeddings import (
    EmbeddingStore,
    StackEmbeddings,
    default_contrast_limits,
)
from napari_sam.workflows.image import to_sam_rgb
from napari_sam.workflows.propagation import (
    PropagationResult,
    PropagationSettings,
    TrackedObject,
    interior_point,
    mask_box,
    mask_iou,
    plan_write,
    prompt_from_mask,
    propagate,
    propagate_masks,
    stop_reason,
)
from napari_sam.workflows.samples import make_nuclei_3d
from volume_models import EncoderCalls, small_sam


def square(shape, r0, c0, size):
    m = np.zeros(shape, bool)
    m[r0 : r0 + size, c0 : c0 + size] = True
    return m


# --------------------------------------------------------------------------- stop decision
def test_stop_reason_on_masks_with_known_answers():
    s = PropagationSettings(min_area=10, min_score=0.5, min_overlap=0.3)
    prev = square((40, 40), 10, 10, 10)  # 100 px
    shifted = square((40, 40), 10, 15, 10)  # overlap 50, union 150: IoU 1/3
    far = square((40, 40), 10, 16, 10)  # overlap 40, union 160: IoU 1/4
    assert mask_iou(prev, shifted) == pytest.approx(1 / 3)
    assert stop_reason(prev, shifted, 0.9, s) is None
    assert stop_reason(prev, far, 0.9, s) == "low_overlap"
    assert stop_reason(prev, np.zeros((40, 40), bool), 0.9, s) == "empty"
    assert stop_reason(prev, square((40, 40), 12, 12, 3), 0.9, s) == "small"  # 9 < 10 px
    assert stop_reason(prev, shifted, 0.49, s) == "low_score"
    assert stop_reason(prev, shifted, float("nan"), s) == "low_score"
    assert stop_reason(prev, shifted, 0.5, s) is None  # thresholds are inclusive
    # order: empty before small before score before overlap
    assert stop_reason(prev, square((40, 40), 30, 30, 3), 0.1, s) == "small"
    assert stop_reason(prev, far, 0.1, s) == "low_score"
    # thresholds off: anything non-empty goes on
    lax = PropagationSettings(min_area=0, min_score=0.0, min_overlap=0.0)
    assert stop_reason(prev, square((40, 40), 30, 30, 1), 0.0, lax) is None
    assert stop_reason(prev, np.zeros((40, 40), bool), 1.0, lax) == "empty"


def test_settings_are_checked():
    for bad in (
        {"use_box": False, "use_point": False},
        {"min_overlap": 1.5},
        {"box_margin": -0.1},
        {"min_area": 2.5},
        {"min_score": float("nan")},
    ):
        with pytest.raises(PropagationError):
            PropagationSettings(**bad)


def test_box_and_interior_point_from_a_mask():
    m = np.zeros((30, 50), bool)
    m[5:15, 10:30] = True  # rows 5..14, cols 10..29
    np.testing.assert_array_equal(mask_box(m), [10, 5, 29, 14])
    np.testing.assert_allclose(mask_box(m, 0.1), [8, 4, 31, 15])
    np.testing.assert_allclose(mask_box(m, 1.0), [0, 0, 49, 24])  # clipped to the image
    m2 = np.zeros((30, 50), bool)
    m2[0:10, 0:4] = True  # touches the image edge: the edge counts as background
    assert tuple(interior_point(m2)) == (1.0, 1.0)
    with pytest.raises(PropagationError):
        mask_box(np.zeros((4, 4), bool))
    g = np.random.default_rng(0)
    for _ in range(20):
        blob = ndimage.gaussian_filter(g.random((40, 60)), 3) > 0.5
        if not blob.any():
            continue
        dist = ndimage.distance_transform_edt(np.pad(blob, 1))[1:-1, 1:-1]
        r, c = np.unravel_index(np.argmax(dist), dist.shape)
        assert tuple(interior_point(blob)) == (c, r)
        assert blob[r, c]
    p = prompt_from_mask(m, PropagationSettings(use_point=False))
    assert p.point is None and p.logits is None and p.box is not None


# --------------------------------------------------------------------------- the walk
class GroundTruthPredictor:
    """Predicts the ground-truth component under the prompt's point (box ignored)."""

    def __init__(self, volume, scores=None):
        self.volume = volume
        self.scores = scores or {}
        self.calls = []

    def __call__(self, z, prompts):
        self.calls.append((z, len(prompts)))
        masks, scores = [], []
        for p in prompts:
            x, y = (int(v) for v in p.point)
            label = self.volume[z, y, x]
            masks.append(self.volume[z] == label if label else np.zeros_like(self.volume[z], bool))
            scores.append(self.scores.get((z, int(label)), 0.95))
        return np.array(masks), np.array(scores), None


def ellipsoid_volume():
    """(12, 64, 64) labels: 1 = ellipsoid on slices 2..8; 2 = column on all slices, whose
    cross-section jumps to a big square on slice 10; 3 = cone tip of 4 px on slice 1."""
    vol = np.zeros((12, 64, 64), np.int32)
    zz, yy, xx = np.mgrid[:12, :64, :64]
    vol[((zz - 5) / 3.6) ** 2 + ((yy - 16) / 10) ** 2 + ((xx - 16) / 10) ** 2 <= 1] = 1
    col = ((yy - 44) ** 2 + (xx - 44) ** 2 <= 36) & (zz != 10)
    vol[col] = 2
    vol[10, 30:64, 30:64] = 2  # a much bigger cross-section: low overlap
    vol[(zz >= 2) & (zz <= 6) & ((yy - 16) ** 2 + (xx - 50) ** 2 <= 16)] = 3
    vol[1, 15:17, 49:51] = 3  # a 4-pixel tip
    return vol


def test_walk_ends_objects_where_the_volume_says():
    vol = ellipsoid_volume()
    assert set(np.nonzero((vol == 1).any(axis=(1, 2)))[0]) == set(range(2, 9))
    seeds = np.stack([vol[5] == i for i in (1, 2, 3)])
    predictor = GroundTruthPredictor(vol, scores={(3, 3): 0.2})
    seen = []
    result = propagate_masks(
        predictor,
        seeds,
        5,
        12,
        settings=PropagationSettings(min_area=5, min_score=0.5, min_overlap=0.3),
        progress=lambda e: seen.append((e.done, e.total)),
    )
    one, two, three = result.objects
    assert one.slices == list(range(2, 9))
    assert (one.stops[1].slice, one.stops[1].reason) == (9, "empty")
    assert (one.stops[-1].slice, one.stops[-1].reason) == (1, "empty")
    assert two.slices == list(range(0, 10))
    assert (two.stops[1].slice, two.stops[1].reason) == (10, "low_overlap")
    assert (two.stops[-1].slice, two.stops[-1].reason) == (None, "range_end")
    assert three.slices == [4, 5, 6]  # slice 3 scores 0.2
    assert (three.stops[-1].slice, three.stops[-1].reason) == (3, "low_score")
    assert (three.stops[1].slice, three.stops[1].reason) == (7, "empty")
    for obj, i in zip(result.objects, (1, 2, 3)):
        for z in obj.slices:
            np.testing.assert_array_equal(obj.masks[z], vol[z] == i)
    assert 5 not in one.scores and one.scores[6] == 0.95
    # all objects of a slice go in one batch, stopped objects drop out
    assert predictor.calls[:3] == [(6, 3), (7, 3), (8, 2)]
    assert seen[0] == (0, 11) and seen[-1] == (11, 11)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    # the small tip
    seeds3 = (vol[2] == 3)[None]
    small = propagate_masks(
        GroundTruthPredictor(vol), seeds3, 2, 12, settings=PropagationSettings(min_area=5)
    )
    assert small.objects[0].stops[-1].reason == "small" and small.objects[0].extent == (2, 6)
    # a restricted slice range, and the label volume
    ranged = propagate_masks(GroundTruthPredictor(vol), seeds, 5, 12, z_range=(3, 7))
    assert ranged.objects[0].extent == (3, 7)
    assert ranged.objects[0].stops[1] == ranged.objects[0].stops[-1]
    assert ranged.objects[0].stops[1].reason == "range_end"
    labels = ranged.label_volume(ids=[7, 8, 9])
    assert labels.dtype == np.uint32 and labels.shape == vol.shape
    np.testing.assert_array_equal(labels[3:8] == 8, vol[3:8] == 2)
    assert not labels[:3].any() and not labels[8:].any()
    assert "object 7: slices 3–7" in ranged.summary([7, 8, 9])


def test_walk_cancel_and_input_checks():
    vol = ellipsoid_volume()
    seeds = (vol[5] == 1)[None]
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled, match="nothing was changed"):
        propagate_masks(GroundTruthPredictor(vol), seeds, 5, 12, should_cancel=cancel)
    gt = GroundTruthPredictor(vol)
    for kwargs, match in [
        ({"masks": np.zeros((1, 64, 64), bool)}, "no pixels on slice 5"),
        ({"masks": np.zeros(5)}, "shape"),
        ({"z": 12}, "does not exist"),
        ({"z_range": (6, 9)}, "must include"),
        ({"z_range": (0, 12)}, "within"),
    ]:
        args = {"masks": seeds, "z": 5, **kwargs}
        with pytest.raises(PropagationError, match=match):
            propagate_masks(gt, args.pop("masks"), args.pop("z"), 12, **args)
    assert gt.calls == []


# --------------------------------------------------------------------------- with SAM, by hand
@pytest.fixture(scope="module")
def model():
    return small_sam()


@pytest.fixture(scope="module")
def stack():
    """(7, 96, 160) uint16 nuclei."""
    return np.ascontiguousarray(make_nuclei_3d()[10:17, 40:136, 16:176])


@pytest.fixture(scope="module")
def by_hand_embeddings(model, stack):
    """Each slice encoded with SamPredictor.set_image, as a user would."""
    contrast = default_contrast_limits(stack)
    predictor = SamPredictor(model)
    out = {}
    for z in range(stack.shape[0]):
        predictor.set_image(to_sam_rgb(stack[z], contrast))
        out[z] = predictor.get_embedding()
    return out


@pytest.fixture(scope="module")
def seeds():
    yy, xx = np.mgrid[:96, :160]
    return np.stack(
        [
            ((yy - 40) / 14) ** 2 + ((xx - 50) / 20) ** 2 < 1,
            ((yy - 60) / 18) ** 2 + ((xx - 115) / 16) ** 2 < 1,
        ]
    )


def walk_by_hand(model, embeddings, seed, z, lo, hi, s, use_mask=False):
    """The documented rule, for one object, with SamPredictor.predict per slice."""
    predictor = SamPredictor(model)
    masks, logits_of, stops = {z: seed}, {}, {}
    for d in (1, -1):
        prev, prev_logits, zc = seed, None, z + d
        stops[d] = None
        while lo <= zc <= hi:
            rows, cols = np.nonzero(prev)
            r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
            mx, my = s.box_margin * (c1 - c0 + 1), s.box_margin * (r1 - r0 + 1)
            h, w = prev.shape
            box = np.array(
                [max(0, c0 - mx), max(0, r0 - my), min(w - 1, c1 + mx), min(h - 1, r1 + my)]
            )
            dist = ndimage.distance_transform_edt(np.pad(prev, 1))[1:-1, 1:-1]
            r, c = np.unravel_index(np.argmax(dist), dist.shape)
            predictor.set_embedding(embeddings[zc])
            logits, scores, low_res = predictor.predict(
                point_coords=np.array([[c, r]]),
                point_labels=np.array([1]),
                box=box,
                mask_input=prev_logits if use_mask else None,
                multimask_output=False,
                return_logits=True,
            )
            mask, score = logits[0] > 0, float(scores[0])
            area = mask.sum()
            iou = (mask & prev).sum() / max((mask | prev).sum(), 1)
            if area == 0 or area < s.min_area or score < s.min_score or iou < s.min_overlap:
                stops[d] = zc
                break
            masks[zc], logits_of[zc] = mask, logits[0]
            prev, prev_logits, zc = mask, low_res[0][None], zc + d
    return masks, logits_of, stops


def assert_same_masks(got, expected, logits):
    """Equal, except possibly where SAM's logit is within float noise of the threshold."""
    bad = got != expected
    assert not bad.any() or np.abs(logits[bad]).max() < 1e-3


@pytest.mark.parametrize("use_mask", [False, True])
def test_propagate_equals_the_rule_applied_by_hand(
    model, stack, by_hand_embeddings, seeds, use_mask
):
    settings = PropagationSettings(min_score=0.09, min_overlap=0.05, min_area=10, use_mask=use_mask)
    embeddings = StackEmbeddings(model, stack, model_id="small", store=EmbeddingStore())
    for z, emb in by_hand_embeddings.items():  # the same encodings (encode_planes == set_image)
        embeddings.store.put(embeddings.key(z), emb)
    calls = EncoderCalls(model)
    try:
        result = propagate(model, embeddings, seeds, 3, z_range=(1, 6), settings=settings)
    finally:
        calls.remove()
    assert calls.planes == 0  # every slice came from the store
    assert isinstance(result, PropagationResult) and result.shape == stack.shape
    reasons = set()
    for i, obj in enumerate(result.objects):
        masks, logits, stops = walk_by_hand(
            model, by_hand_embeddings, seeds[i], 3, 1, 6, settings, use_mask
        )
        assert obj.slices == sorted(masks), i
        for z in obj.slices:
            if z == 3:
                np.testing.assert_array_equal(obj.masks[z], seeds[i])
            else:
                assert_same_masks(obj.masks[z], masks[z], logits[z])
        for d in (1, -1):
            assert obj.stops[d].slice == stops[d]
            reasons.add(obj.stops[d].reason)
    # not vacuous: an object went through several slices, thresholds and the range ended walks
    assert max(len(obj.slices) for obj in result.objects) >= 3
    assert reasons & {"low_score", "low_overlap"}
    assert use_mask or "range_end" in reasons


def test_propagate_with_a_predictor_and_an_array(model, stack, by_hand_embeddings, seeds, tmp_path):
    """The plain array path: embeddings made inside (here on disk), a SamPredictor accepted."""
    predictor = SamPredictor(model)
    store = EmbeddingStore()
    probe = StackEmbeddings(model, stack, model_id="small", store=store)
    for z in (2, 3, 4):
        store.put(probe.key(z), by_hand_embeddings[z])
    settings = PropagationSettings(min_score=0.0, min_overlap=0.0, min_area=1)
    result = propagate(
        predictor, stack, seeds[0], 3, z_range=(2, 4), settings=settings, store=store
    )
    assert result.objects[0].extent == (2, 4) and len(result.objects) == 1
    with pytest.raises(PropagationError, match="model_id"):
        propagate(model, stack, seeds[0], 3, disk=tmp_path)
    with pytest.raises(PropagationError, match="do not pass them again"):
        propagate(model, probe, seeds[0], 3, model_id="x")
    with pytest.raises(PropagationError, match="planes of shape"):
        propagate(model, probe, seeds[0][:50], 3)


# --------------------------------------------------------------------------- writing
def test_plan_write_never_overwrites_other_objects_and_keeps_ids():
    shape = (3, 10, 10)
    labels = np.zeros(shape, np.uint32)
    labels[:, 0:3, 0:3] = 9  # another object
    labels[1, 5, 5] = 4  # object 4 already has this voxel
    a = {z: square(shape[1:], 0, 0, 6) for z in range(3)}
    b = {z: square(shape[1:], 2, 2, 6) for z in (1, 2)}
    result = PropagationResult(
        z=1, shape=shape, z_range=(0, 2), objects=[TrackedObject(a), TrackedObject(b)]
    )
    plan = plan_write(labels, result, ids=[4, 5])
    out = labels.copy()
    for oid, index in plan:
        out[index] = oid
    assert [oid for oid, _ in plan] == [4, 5]
    assert (out[:, 0:3, 0:3] == 9).all()  # untouched
    for z in range(3):
        np.testing.assert_array_equal(out[z] == 4, a[z] & (labels[z] != 9))
    np.testing.assert_array_equal(out[1] == 5, b[1] & ~a[1])  # the earlier object wins
    assert not (out[0] == 5).any()
    z4 = plan[0][1]
    assert not ((z4[0] == 1) & (z4[1] == 5) & (z4[2] == 5)).any()  # already 4: not listed
    # overwrite on request
    plan = plan_write(labels, result, ids=[4, 5], overwrite=True)
    out = labels.copy()
    for oid, index in plan:
        out[index] = oid
    assert (out[:, 0:3, 0:3] == 4).all()
    # new ids: an object left without voxels uses no id
    covered = PropagationResult(
        z=0,
        shape=shape,
        z_range=(0, 0),
        objects=[TrackedObject({0: square(shape[1:], 0, 0, 2)}), TrackedObject({0: a[0]})],
    )
    plan = plan_write(labels, covered, next_id=10)
    assert [oid for oid, _ in plan] == [10]


def test_objects_decoded_in_smaller_batches_after_out_of_memory(
    model, stack, by_hand_embeddings, seeds, monkeypatch
):
    """All objects of a slice are decoded together; a GPU out-of-memory splits the batch."""
    import torch

    from napari_sam.errors import DeviceFallbackWarning

    settings = PropagationSettings(min_score=0.0, min_overlap=0.0, min_area=1)

    def run():
        embeddings = StackEmbeddings(model, stack, model_id="small", store=EmbeddingStore())
        for z, emb in by_hand_embeddings.items():
            embeddings.store.put(embeddings.key(z), emb)
        return propagate(model, embeddings, seeds, 3, z_range=(2, 4), settings=settings)

    expected = run()
    assert len(seeds) > 1
    real = SamPredictor.predict_torch
    sizes = []

    def tight(self, coords, labels, boxes=None, **kwargs):
        n = len(boxes) if boxes is not None else len(coords)
        sizes.append(n)
        if n > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 MiB")
        return real(self, coords, labels, boxes=boxes, **kwargs)

    monkeypatch.setattr(SamPredictor, "predict_torch", tight)
    with pytest.warns(DeviceFallbackWarning, match="objects at once"):
        got = run()
    assert max(sizes) == len(seeds) and 1 in sizes
    for a, b in zip(got.objects, expected.objects):
        assert a.slices == b.slices
        for z in a.slices:
            np.testing.assert_array_equal(a.masks[z], b.masks[z])
