"""SamPredictor decodes point/box prompts with the image side computed once per embedding."""

from __future__ import annotations

import numpy as np
import torch

from conftest import smooth_image
from napari_sam import SamPredictor
from napari_sam.model.sam import shared_decoder

IMAGE = smooth_image(200, 300, seed=3)
OTHER = smooth_image(200, 300, seed=4)


def _own_decoder(predictor: SamPredictor, point: np.ndarray):
    """The model's own mask decoder on one positive click (multimask)."""
    model = predictor.model
    coords = predictor.transform.apply_coords(point[None], predictor.original_size)
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(
            points=(torch.as_tensor(coords, dtype=torch.float)[None],
                    torch.ones(1, 1, dtype=torch.int)),
            boxes=None, masks=None,
        )
        low, iou = model.mask_decoder(
            image_embeddings=predictor.features, image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=True,
        )
    return low[0].numpy(), iou[0].numpy()


def test_clicks_share_the_image_side_until_the_image_changes(small_model, monkeypatch):
    built = []
    original = shared_decoder.SharedImageDecoder.__init__

    def counting(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(shared_decoder.SharedImageDecoder, "__init__", counting)
    predictor = SamPredictor(small_model)
    predictor.set_image(IMAGE)
    for point in ([40.0, 50.0], [150.0, 120.0], [260.0, 30.0]):
        point = np.array(point)
        masks, scores, logits = predictor.predict(point[None], np.array([1]))
        low, iou = _own_decoder(predictor, point)
        scale = float(np.abs(low).max())
        np.testing.assert_allclose(logits, low, atol=2e-5 * scale, rtol=1e-4)
        np.testing.assert_allclose(scores, iou, atol=1e-5)
        assert masks.shape == (3, 200, 300) and masks.dtype == np.bool_
    assert built == [1]  # one decoder for the three clicks on this embedding
    stored = predictor.get_embedding()
    predictor.set_embedding(stored)  # the same embedding restored (as the dock does)
    predictor.predict(np.array([[60.0, 60.0]]), np.array([1]))
    assert built == [1]
    predictor.set_image(OTHER)
    predictor.predict(np.array([[60.0, 60.0]]), np.array([1]))
    assert built == [1, 1]  # a new embedding: built again
    predictor.set_embedding(stored)
    predictor.predict(np.array([[60.0, 60.0]]), np.array([1]))
    assert built == [1, 1, 1]  # another embedding than the one it was built for


def test_single_mask_and_mask_input_use_the_models_decoder(small_model, monkeypatch):
    predictor = SamPredictor(small_model)
    predictor.set_image(IMAGE)
    used = []
    monkeypatch.setattr(shared_decoder.SharedImageDecoder, "decode",
                        lambda self, sparse: used.append(1))
    _, _, logits = predictor.predict(np.array([[40.0, 50.0]]), np.array([1]),
                                     multimask_output=False)
    predictor.predict(np.array([[40.0, 50.0]]), np.array([1]), mask_input=logits)
    assert used == []
