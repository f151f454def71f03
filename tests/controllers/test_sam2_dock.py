"""SAM 2.1 in the interactive dock's controller, on a plain ViewerModel (no display).

A tiny SAM 2.1 with seeded random (perturbed) weights on 256-pixel inputs (the
``sam2_small_input`` fixture) keeps these fast. Clicks must give exactly what
``Sam2ImagePredictor`` gives when called directly; propagation with the "SAM 2
memory" method must write exactly what ``MemoryPropagation`` computes, as one
undo step, never over other objects, and nothing when cancelled.
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_helpers import collect, goto_slice, settle, world_of
from napari_sam._widgets.interactive.controller import InteractiveController
from napari_sam.predictors.sam2_predictor import Sam2ImagePredictor
from napari_sam.workflows.image import to_sam_rgb

ONE = (1.0, 1.0, 1.0)
ZERO = (0.0, 0.0, 0.0)


@pytest.fixture(scope="module")
def model(sam2_small_input):
    return sam2_small_input[0]


@pytest.fixture(scope="module")
def stack(nuclei_stack):
    """Nine slices of the real nuclei stack (uint16), cropped to 96 × 128 pixels."""
    return np.ascontiguousarray(nuclei_stack[26:35, 40:136, 60:188])


def make(viewer, model) -> InteractiveController:
    c = InteractiveController(viewer)
    c.set_model(model, "sam2-tiny-random")
    return c


def click(c, viewer, k, row, col, positive=True) -> None:
    goto_slice(viewer, k, ONE, ZERO)
    settle(c)
    c.set_negative(not positive)
    points = c.prompts.points.current
    points.add(points.world_to_data(world_of([k, row, col], ONE, ZERO)))
    settle(c)


def direct(model, plane, contrast, xy) -> np.ndarray:
    """Sam2ImagePredictor called directly: the best of three masks for one click."""
    predictor = Sam2ImagePredictor(model)
    predictor.set_image(to_sam_rgb(plane, contrast))
    masks, scores, _ = predictor.predict(
        point_coords=np.array([xy], float), point_labels=np.array([1])
    )
    return masks[int(np.argmax(scores))] > 0


def test_a_click_predicts_with_the_sam2_image_path_and_commits(model, stack):
    viewer = ViewerModel()
    image = viewer.add_image(stack, name="nuclei")
    c = make(viewer, model)
    notes = collect(c)
    click(c, viewer, 4, 30.0, 40.0)
    expected = direct(model, stack[4], image.contrast_limits, (40.0, 30.0))
    assert expected.any() and not expected.all()
    assert isinstance(c.predictor, Sam2ImagePredictor)
    np.testing.assert_array_equal(c.preview.layer.data[4] > 0, expected)
    (key,) = c.embeddings.store.keys()
    assert len(c.embeddings.store.get(key).high_res) == 2  # SAM 2's maps are kept
    c.commit()
    labels = c.output.current
    np.testing.assert_array_equal(labels.data[4] == 1, expected)
    assert notes["error"] == []
    c.close()


def test_batched_prediction_gives_the_per_object_masks_with_sam2(model, stack):
    from napari_sam.workflows import interactive as logic
    from napari_sam.workflows.prompts import ObjectPrompt

    predictor = logic.make_predictor(model)
    assert isinstance(predictor, Sam2ImagePredictor)
    predictor.set_embedding(logic.encode_plane(model, stack[4], None, False))
    objects = [
        ObjectPrompt(point_coords=np.array([[40.0, 30.0]]), point_labels=np.array([1])),
        ObjectPrompt(box=np.array([60.0, 40.0, 100.0, 80.0])),
    ]
    one = logic.predict_objects(predictor, objects, True, 1)
    cache = logic.PredictionCache()
    batched = logic.predict_objects_batched(predictor, objects, True, 1, cache=cache,
                                            cache_key="k")
    for a, b in zip(one, batched):
        assert a.mask.any()
        np.testing.assert_array_equal(a.mask, b.mask)
        assert (a.score, a.candidate) == (b.score, b.candidate) and b.stability is not None
    again = logic.predict_objects_batched(predictor, objects, True, 1, cache=cache, cache_key="k")
    assert cache.hits == 2 and again[0] is batched[0]
