"""MobileSAM (``vit_t``): our TinyViT model against the ``mobile_sam`` reference package.

One random reference model (seeded; attention biases, batch-norm statistics and
affine parameters, layer norms and biases perturbed so that none is trivial) is
saved to a ``.pth`` file; ours loads that file through
``sam_model_registry["vit_t"]`` with ``strict=True``. Both predictors then see
the same odd-sized, non-square images and prompts.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from mobile_sam import SamPredictor as RefPredictor

import napari_sam.model.sam.tiny_vit as tiny_vit
from conftest import smooth_image
from napari_sam import SamPredictor, sam_model_registry
from napari_sam.errors import ModelTypeMismatchError
from napari_sam.model.build import CONFIGS, build_model, check_state, detect_model_type
from reference import build_mobilesam_pair
from test_parity_predictor import assert_masks_match

#: Embedding tolerance, relative to the embedding's mean magnitude.
REL_EMB = 1e-4
ATOL_LOGIT = 1e-3


@pytest.fixture(scope="session")
def mobilesam_pair(tmp_path_factory):
    """(reference MobileSAM, our vit_t, checkpoint path) with the same random weights."""
    return build_mobilesam_pair(tmp_path_factory.mktemp("ckpt_vit_t"), seed=0)


@pytest.fixture(scope="module", params=[(300, 457), (517, 203)], ids=str)
def predictors(request, mobilesam_pair):
    ref, ours, _ = mobilesam_pair
    h, w = request.param
    image = smooth_image(h, w, seed=h + w)
    rp, op = RefPredictor(ref), SamPredictor(ours)
    rp.set_image(image)
    op.set_image(image)
    return rp, op, image


# --------------------------------------------------------------------------- checkpoint layout


def test_state_dict_keys_and_shapes_equal_reference(mobilesam_pair):
    ref, ours, _ = mobilesam_pair
    ref_state, our_state = ref.state_dict(), ours.state_dict()
    assert set(our_state) == set(ref_state)
    assert {k: tuple(v.shape) for k, v in our_state.items()} == {
        k: tuple(v.shape) for k, v in ref_state.items()
    }
    for key, value in ref_state.items():  # the file's tensors, loaded as they are
        assert torch.equal(our_state[key], value), key
    assert not any(t.is_meta for t in ours.state_dict().values())
    assert not any(b.is_meta for _, b in ours.named_buffers())
    # the published layout: 4 stages, the unused classifier, SAM's neck
    assert "image_encoder.layers.2.blocks.5.attn.attention_biases" in our_state
    assert our_state["image_encoder.layers.2.blocks.0.attn.attention_biases"].shape == (5, 196)
    assert "image_encoder.head.weight" in our_state
    assert "image_encoder.layers.3.downsample.conv1.c.weight" not in our_state


def test_random_build_has_reference_layout(mobilesam_pair):
    ref, _, _ = mobilesam_pair
    fresh = sam_model_registry["vit_t"]()
    assert not fresh.training
    assert fresh.img_size == 1024
    assert {k: tuple(v.shape) for k, v in fresh.state_dict().items()} == {
        k: tuple(v.shape) for k, v in ref.state_dict().items()
    }
    assert detect_model_type(fresh.state_dict()) == "vit_t"


def test_attention_bias_index_equals_reference(mobilesam_pair):
    ref, ours, _ = mobilesam_pair
    for stage in (1, 2, 3):
        ref_attn = ref.image_encoder.layers[stage].blocks[0].attn
        our_attn = ours.image_encoder.layers[stage].blocks[0].attn
        ref_mask = ref_attn.attention_biases[:, ref_attn.attention_bias_idxs]
        torch.testing.assert_close(our_attn.bias_mask(torch.float32)[0], ref_mask)


# --------------------------------------------------------------------------- model types


def test_vit_t_checkpoint_into_vit_b_names_vit_t(mobilesam_pair):
    _, _, ckpt = mobilesam_pair
    with pytest.raises(ModelTypeMismatchError, match="'vit_t' model, not 'vit_b'") as info:
        sam_model_registry["vit_b"](checkpoint=ckpt)
    assert info.value.found == "vit_t" and info.value.expected == "vit_b"


def test_vit_b_checkpoint_into_vit_t_names_vit_b(tmp_path):
    with torch.device("meta"):
        shapes = build_model(CONFIGS["vit_b"]).state_dict()
    # Full vit_b key set and shapes; each tensor is one broadcast value (a tiny file).
    state = {k: torch.zeros((), dtype=torch.float16).expand(v.shape) for k, v in shapes.items()}
    path = tmp_path / "sam_vit_b.pth"
    torch.save(state, path)
    assert path.stat().st_size < 5_000_000
    with pytest.raises(ModelTypeMismatchError, match="'vit_b' model, not 'vit_t'") as info:
        sam_model_registry["vit_t"](checkpoint=path)
    assert info.value.found == "vit_b" and info.value.expected == "vit_t"


def test_vit_t_and_vit_b_are_told_apart_from_shapes():
    with torch.device("meta"):
        vit_t = build_model(CONFIGS["vit_t"]).state_dict()
        vit_b = build_model(CONFIGS["vit_b"]).state_dict()
    assert detect_model_type(vit_t) == "vit_t"
    assert detect_model_type(vit_b) == "vit_b"
    with pytest.raises(ModelTypeMismatchError) as info:
        check_state(vit_t, vit_b, model_type="vit_t", source="x.pth")
    assert info.value.found == "vit_b"


def test_auto_model_type_is_vit_t_on_cpu():
    from napari_sam.runtime.loader import resolve_model_type

    assert resolve_model_type("auto", "cpu") == "vit_t"


# --------------------------------------------------------------------------- predictor parity


def test_embedding_and_sizes_match(predictors):
    rp, op, image = predictors
    assert op.original_size == tuple(rp.original_size) == image.shape[:2]
    assert op.input_size == tuple(rp.input_size)
    emb_r, emb_o = rp.get_image_embedding(), op.get_image_embedding()
    assert emb_o.shape == emb_r.shape == (1, 256, 64, 64)
    scale = emb_r.abs().mean().item()
    assert scale > 0.1  # a real signal, not zeros
    torch.testing.assert_close(emb_o, emb_r, atol=REL_EMB * scale, rtol=1e-4)


def _prompts(h, w):
    pts = np.array([[0.3 * w, 0.4 * h], [0.7 * w, 0.6 * h], [0.5 * w, 0.2 * h]])
    box = np.array([0.1 * w, 0.15 * h, 0.8 * w, 0.9 * h])
    return {
        "one_positive": dict(point_coords=pts[:1], point_labels=np.array([1])),
        "pos_neg": dict(point_coords=pts, point_labels=np.array([1, 0, 1])),
        "box": dict(box=box),
        "box_single": dict(box=box, multimask_output=False),
        "box_and_points": dict(point_coords=pts[:2], point_labels=np.array([1, 0]), box=box),
        "points_single": dict(
            point_coords=pts[:2], point_labels=np.array([1, 0]), multimask_output=False
        ),
    }


@pytest.mark.parametrize(
    "case", ["one_positive", "pos_neg", "box", "box_single", "box_and_points", "points_single"]
)
def test_predict_matches_reference(predictors, case):
    rp, op, image = predictors
    kwargs = _prompts(*image.shape[:2])[case]
    m_r, s_r, l_r = rp.predict(**kwargs)
    m_o, s_o, l_o = op.predict(**kwargs)
    n = 1 if kwargs.get("multimask_output") is False else 3
    assert m_o.shape == m_r.shape == (n, *image.shape[:2])
    assert s_o.shape == (n,) and l_o.shape == (n, 256, 256)
    assert m_o.dtype == m_r.dtype == np.bool_
    assert s_o.dtype == s_r.dtype and l_o.dtype == l_r.dtype
    np.testing.assert_allclose(l_o, l_r, atol=ATOL_LOGIT, rtol=1e-4)
    np.testing.assert_allclose(s_o, s_r, atol=1e-4)
    assert_masks_match(m_r, m_o, rp.predict(**kwargs, return_logits=True)[0])
    assert 0 < m_o.mean() < 1  # masks are neither empty nor full


def test_mask_input_from_previous_prediction(predictors):
    rp, op, image = predictors
    kwargs = _prompts(*image.shape[:2])["pos_neg"]
    _, s_r, l_r = rp.predict(**kwargs)
    prev = l_r[int(np.argmax(s_r))][None]
    for multimask in (False, True):
        again = dict(kwargs, mask_input=prev, multimask_output=multimask)
        m_r, s_r2, l_r2 = rp.predict(**again)
        m_o, s_o2, l_o2 = op.predict(**again)
        np.testing.assert_allclose(l_o2, l_r2, atol=ATOL_LOGIT, rtol=1e-4)
        np.testing.assert_allclose(s_o2, s_r2, atol=1e-4)
        assert_masks_match(m_r, m_o, rp.predict(**again, return_logits=True)[0])


# --------------------------------------------------------------------------- encoder code paths


def _grid(n: int) -> int:
    """Embedding cells along an axis of ``n`` pixels (four stride-2 steps, rounding up)."""
    for _ in range(4):
        n = (n - 1) // 2 + 1
    return n


@pytest.mark.parametrize(("batch", "size"), [(1, (200, 136)), (2, (96, 160))], ids=str)
def test_fast_path_equals_autograd_path(mobilesam_pair, monkeypatch, batch, size):
    """Strips, chunks and in-place updates (no autograd) compute the plain forward.

    A tiny work budget forces strips of a few rows, so every strip boundary (stride 1
    and 2, top and bottom image edges, odd sizes) is crossed; grids that are
    not whole windows are padded (down to a single, mostly padded window).
    """
    _, ours, _ = mobilesam_pair
    encoder = ours.image_encoder
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(7))
    monkeypatch.setattr(tiny_vit, "WORK_BYTES", 256 * 1024)
    with torch.no_grad():
        fast = encoder(x)
    with torch.enable_grad():
        x_grad = x.clone().requires_grad_(True)
        slow = encoder(x_grad)
        assert slow.requires_grad  # the plain, differentiable path was taken
        (grad,) = torch.autograd.grad(slow.square().sum(), x_grad)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert fast.shape == (batch, 256, _grid(size[0]), _grid(size[1]))
    torch.testing.assert_close(fast, slow.detach(), atol=2e-5, rtol=1e-5)


def test_training_mode_matches_reference(mobilesam_pair):
    """Train mode: batch statistics, and running statistics updated, as the reference does.

    Compared on the convolutional front (stem and first stage, which hold most
    of the batch norms): the reference's later stages only accept a 1024 input.
    """
    ref, ours, _ = mobilesam_pair
    ref_enc = copy.deepcopy(ref.image_encoder).train()
    our_enc = copy.deepcopy(ours.image_encoder).train()
    x = torch.randn(2, 3, 96, 160, generator=torch.Generator().manual_seed(11))
    mode = tiny_vit._Mode(budget=None, inplace=False)
    with torch.no_grad():
        out_r = ref_enc.layers[0](ref_enc.patch_embed(x))  # (B, h·w, C)
        out_o = our_enc.layers[0](our_enc.patch_embed(x.permute(0, 2, 3, 1), mode), mode)
    assert out_o.shape == (2, 12, 20, 128)
    torch.testing.assert_close(out_o.reshape(out_r.shape), out_r, atol=1e-4, rtol=1e-4)
    state_r, state_o = ref_enc.state_dict(), our_enc.state_dict()
    front = ("patch_embed.", "layers.0.")
    updated = [k for k in state_r if k.startswith(front) and k.endswith(("_mean", "_var"))]
    assert len(updated) == 2 * (2 + 3 * 2 + 3)
    for key in updated:  # both updated their running statistics alike
        torch.testing.assert_close(state_o[key], state_r[key], atol=1e-5, rtol=1e-5)
    assert not torch.equal(state_o[updated[0]], ours.image_encoder.state_dict()[updated[0]])
