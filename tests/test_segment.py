"""Headless automatic segmentation (napari_sam.workflows.segment): slice linking and the pipeline.

Linking is checked on hand-made label slices whose answer is known; the
pipeline against SamAutomaticMaskGenerator + records_to_labels called by hand.
Models have random weights (the small test config); nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam.errors import Cancelled, SettingsError
from napari_sam.model.build import build_model
from napari_sam.predictors.automatic import SamAutomaticMaskGenerator
from napari_sam.workflows.image import to_sam_rgb
from napari_sam.workflows.labels import records_to_labels
from napari_sam.workflows.samples import make_nuclei_3d
from napari_sam.workflows.segment import AutoSettings, link_slices, segment, segment_iter
from reference import SMALL

#: Thresholds at which random weights still give masks (they are noise, but masks).
RELAXED = AutoSettings(
    points_per_side=4,
    pred_iou_thresh=0.0,
    stability_score_thresh=0.0,
    min_area=0,
    max_area_fraction=1.0,
)


def box(shape, r0, r1, c0, c1):
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


# --------------------------------------------------------------------------- linking
def test_link_slices_known_answer():
    """Objects continue, split, vanish, reappear and are born; ids follow the rule."""
    shape = (5, 20, 30)
    lab = np.zeros(shape, np.int32)
    # slice 0: A (id 5) left, B (id 7) right
    lab[0][box(shape[1:], 2, 10, 2, 10)] = 5
    lab[0][box(shape[1:], 2, 10, 20, 28)] = 7
    # slice 1: B shifted by one column (id 1), A shrunk (id 2), a new object C (id 3)
    lab[1][box(shape[1:], 2, 10, 21, 29)] = 1
    lab[1][box(shape[1:], 3, 9, 3, 9)] = 2
    lab[1][box(shape[1:], 14, 18, 12, 16)] = 3
    # slice 2: A splits into a big part (id 4, IoU 24/36) and a small part (id 9, IoU 6/36);
    # C continues (id 1); B is gone
    lab[2][box(shape[1:], 3, 9, 3, 7)] = 4
    lab[2][box(shape[1:], 3, 9, 8, 9)] = 9
    lab[2][box(shape[1:], 14, 18, 12, 16)] = 1
    # slice 3: empty; slice 4: A's region again -> a new object after the gap
    lab[4][box(shape[1:], 3, 9, 3, 9)] = 6

    linked, mapping = link_slices(lab, iou_threshold=0.3)
    assert linked.dtype == np.uint32
    a, b, c = 1, 2, 3  # first appearance order: slice 0 (A=5 < B=7), then C in slice 1
    expected = np.zeros(shape, np.uint32)
    expected[0][lab[0] == 5] = a
    expected[0][lab[0] == 7] = b
    expected[1][lab[1] == 1] = b
    expected[1][lab[1] == 2] = a
    expected[1][lab[1] == 3] = c
    expected[2][lab[2] == 4] = a  # the bigger part keeps A's id
    expected[2][lab[2] == 9] = 4  # the small part (IoU 1/6 < 0.3) is new
    expected[2][lab[2] == 1] = c
    expected[4][lab[4] == 6] = 5  # after an empty slice: new
    np.testing.assert_array_equal(linked, expected)
    assert mapping == {
        (0, 5): a, (0, 7): b, (1, 1): b, (1, 2): a, (1, 3): c,
        (2, 1): c, (2, 4): a, (2, 9): 4, (4, 6): 5,
    }  # fmt: skip


def test_link_slices_greedy_one_to_one_and_threshold():
    shape = (2, 10, 20)
    lab = np.zeros(shape, np.uint16)
    lab[0][box(shape[1:], 0, 10, 0, 10)] = 1  # one object in slice 0
    # two candidates in slice 1 overlap it: IoU 0.6 and 0.4 -> only the better one links
    lab[1][box(shape[1:], 0, 10, 0, 6)] = 1
    lab[1][box(shape[1:], 0, 10, 6, 10)] = 2
    linked, _ = link_slices(lab, iou_threshold=0.3)
    assert set(np.unique(linked[1][lab[1] == 1])) == {1}
    assert set(np.unique(linked[1][lab[1] == 2])) == {2}
    # with a threshold above both IoUs nothing links
    linked, _ = link_slices(lab, iou_threshold=0.7)
    assert set(np.unique(linked[1])) == {0, 2, 3}
    # IoU exactly at the threshold links
    linked, _ = link_slices(lab, iou_threshold=0.6)
    assert set(np.unique(linked[1][lab[1] == 1])) == {1}


def test_link_slices_only_the_given_slices():
    lab = np.zeros((4, 6, 6), np.uint8)
    for z in range(4):
        lab[z, 1:4, 1:4] = 3
    linked, mapping = link_slices(lab, slices=[1, 3])
    assert not linked[0].any() and not linked[2].any()
    # 1 and 3 are consecutive in the list, so they are compared
    assert linked[1, 2, 2] == linked[3, 2, 2] == 1
    assert set(mapping) == {(1, 3), (3, 3)}


@pytest.mark.parametrize(
    ("labels", "threshold"),
    [(np.zeros((4, 4), np.uint8), 0.3), (np.zeros((2, 4, 4), np.uint8), 0.0),
     (np.zeros((2, 4, 4), np.uint8), 1.5), (np.zeros((2, 4, 4), np.float32), 0.3)],
)  # fmt: skip
def test_link_slices_rejects_bad_input(labels, threshold):
    with pytest.raises(SettingsError):
        link_slices(labels, threshold)


# --------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    "change",
    [{"points_per_side": 0}, {"pred_iou_thresh": 1.5}, {"stability_score_thresh": -0.1},
     {"box_nms_thresh": float("nan")}, {"min_area": -1}, {"max_area_fraction": 0.0},
     {"link_iou": 2.0}, {"crop_n_layers": 1.5}],
)  # fmt: skip
def test_settings_out_of_range(change):
    settings = AutoSettings(**change)
    with pytest.raises(SettingsError) as info:
        settings.check()
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- pipeline
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(SMALL).eval()


@pytest.fixture(scope="module")
def stack():
    return np.ascontiguousarray(make_nuclei_3d()[12:15, 40:104, 16:96])


def test_plane_matches_generator_by_hand(model, stack):
    plane = stack[1]
    contrast = (float(plane.min()), float(plane.max()))
    result = segment(model, plane, contrast_limits=contrast, settings=RELAXED)
    assert result.labels.dtype == np.uint32 and result.labels.shape == plane.shape
    assert result.slices is None and result.n_objects >= 1

    records = SamAutomaticMaskGenerator(model, **RELAXED.generator_kwargs()).generate(
        to_sam_rgb(plane, contrast)
    )
    np.testing.assert_array_equal(result.labels, records_to_labels(records, plane.shape))
    assert result.n_masks == len(records)
    assert set(result.scores) == {(None, int(i)) for i in np.unique(result.labels) if i}


def test_stack_slices_ids_progress_and_linking(model, stack):
    events = []
    result = segment(model, stack, settings=RELAXED, slices=[0, 2], progress=events.append)
    assert result.labels.shape == stack.shape and result.slices == [0, 2]
    assert not result.labels[1].any()
    # every slice's objects have their own ids
    ids0, ids2 = set(np.unique(result.labels[0])) - {0}, set(np.unique(result.labels[2])) - {0}
    assert ids0 and ids2 and not ids0 & ids2
    done = [e.done for e in events]
    assert done == sorted(done) and done[-1] == events[-1].total
    assert events[0].slice == 0 and events[-1].slice == 2

    linked = segment(
        model,
        stack,
        settings=AutoSettings(**{**RELAXED.as_dict(), "link_slices": True}),
        slices=[0, 2],
    )
    expected, mapping = link_slices(result.labels, RELAXED.link_iou, slices=[0, 2])
    np.testing.assert_array_equal(linked.labels, expected)
    assert set(linked.scores) == {(z, mapping[(z, lab)]) for (z, lab) in result.scores}


def test_cancel_and_bad_input(model, stack):
    calls = []

    def stop_after_three():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        segment(model, stack, settings=RELAXED, should_cancel=stop_after_three)
    # input errors come at the call, before any work
    from napari_sam.errors import ImageFormatError

    with pytest.raises(ImageFormatError):
        segment_iter(model, np.zeros((2, 3, 8, 8)), settings=RELAXED)
    with pytest.raises(SettingsError):
        segment_iter(model, stack, settings=RELAXED, slices=[3])
