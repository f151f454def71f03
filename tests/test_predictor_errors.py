"""Bad input to SamPredictor gets a clear, specific error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam import SamPredictor
from napari_sam.errors import ImageFormatError, ImageNotSetError, PromptError


@pytest.fixture(scope="module")
def predictor(small_pair):
    p = SamPredictor(small_pair[1])
    p.set_image(np.full((40, 60, 3), 128, dtype=np.uint8))
    return p


def test_predict_before_set_image(small_model):
    p = SamPredictor(small_model)
    with pytest.raises(ImageNotSetError, match="set_image"):
        p.predict(point_coords=np.array([[1, 1]]), point_labels=np.array([1]))
    with pytest.raises(RuntimeError):
        p.get_image_embedding()


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((32, 32), np.uint8), r"shape \(H, W, 3\); got shape \(32, 32\)"),
        (np.zeros((32, 32, 4), np.uint8), r"got shape \(32, 32, 4\)"),
        (np.zeros((2, 32, 32, 3), np.uint8), "shape"),
        (np.zeros((32, 32, 3), np.uint16), "got uint16"),
        (np.zeros((32, 32, 3), np.float32), "got float32"),
        (np.zeros((0, 32, 3), np.uint8), "empty"),
        ([[1, 2, 3]], "numpy array"),
    ],
    ids=["gray", "rgba", "4d", "uint16", "float", "empty", "list"],
)
def test_bad_images(small_model, image, match):
    with pytest.raises(ImageFormatError, match=match):
        SamPredictor(small_model).set_image(image)


def test_bad_image_format(small_model):
    with pytest.raises(ValueError, match="'RGB' or 'BGR'"):
        SamPredictor(small_model).set_image(np.zeros((8, 8, 3), np.uint8), image_format="HSV")


def test_bgr_equals_flipped_rgb(small_model):
    img = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    a, b = SamPredictor(small_model), SamPredictor(small_model)
    a.set_image(img)
    b.set_image(np.ascontiguousarray(img[..., ::-1]), image_format="BGR")
    torch.testing.assert_close(a.features, b.features)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(point_coords=np.array([[np.nan, 3.0]]), point_labels=np.array([1])), "NaN"),
        (dict(point_coords=np.array([[np.inf, 3.0]]), point_labels=np.array([1])), "NaN or inf"),
        (
            dict(point_coords=np.array([[1, 2], [3, 4]]), point_labels=np.array([1])),
            "one label per point",
        ),
        (dict(point_coords=np.array([[1, 2]])), "given together"),
        (dict(point_labels=np.array([1])), "given together"),
        (dict(point_coords=np.array([1, 2, 3]), point_labels=np.array([1])), r"\(N, 2\)"),
        (dict(point_coords=np.array([[1, 2]]), point_labels=np.array([7])), "1 \\(foreground\\)"),
        (dict(box=np.array([30, 5, 10, 20])), "inverted"),
        (dict(box=np.array([5, 30, 10, 20])), "inverted"),
        (dict(box=np.array([5, 5, np.nan, 20])), "NaN"),
        (dict(box=np.array([[0, 0, 5, 5], [1, 1, 6, 6]])), "predict_torch"),
        (
            dict(
                point_coords=np.array([[1, 2]]),
                point_labels=np.array([1]),
                mask_input=np.zeros((256, 256)),
            ),
            r"\(1, 256, 256\)",
        ),
    ],
    ids=[
        "nan",
        "inf",
        "length",
        "no_labels",
        "no_coords",
        "rank",
        "label_value",
        "box_x",
        "box_y",
        "box_nan",
        "two_boxes",
        "mask_shape",
    ],
)
def test_bad_prompts(predictor, kwargs, match):
    with pytest.raises(PromptError, match=match):
        predictor.predict(**kwargs)


def test_no_prompt_still_predicts(predictor):
    """Like the reference, no prompt at all is allowed (the model's 'no prompt' output)."""
    masks, scores, _logits = predictor.predict()
    assert masks.shape == (3, 40, 60) and scores.shape == (3,)


def test_set_torch_image_wrong_size(small_model):
    with pytest.raises(ImageFormatError, match="longest side is 1024"):
        SamPredictor(small_model).set_torch_image(torch.zeros(1, 3, 512, 300), (512, 300))


def test_embedding_roundtrip(small_model):
    """An embedding taken out and put back (even as float16) predicts as before."""
    img = np.random.default_rng(2).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    a = SamPredictor(small_model)
    a.set_image(img)
    emb = a.get_embedding()
    assert emb.original_size == (90, 120) and emb.nbytes == 256 * 64 * 64 * 4
    kwargs = dict(point_coords=np.array([[60, 45]]), point_labels=np.array([1]))
    expected = a.predict(**kwargs)
    b = SamPredictor(small_model)
    b.set_embedding(emb)
    for got, want in zip(b.predict(**kwargs), expected):
        np.testing.assert_array_equal(got, want)
    c = SamPredictor(small_model)
    c.set_embedding(type(emb)(emb.features.half(), emb.original_size, emb.input_size))
    assert c.features.dtype == torch.float32
    np.testing.assert_allclose(c.predict(**kwargs)[2], expected[2], atol=0.05)


def test_set_embedding_of_wrong_shape(small_model):
    from napari_sam.predictors.predictor import ImageEmbedding

    with pytest.raises(ImageFormatError, match="another model"):
        SamPredictor(small_model).set_embedding(
            ImageEmbedding(torch.zeros(1, 64, 32, 32), (10, 10), (1024, 1024))
        )
