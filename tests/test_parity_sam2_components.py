"""Parity of SAM 2.1's parts with Meta's ``sam2`` on identical random weights (256-pixel inputs).

Each part of the video path is fed the same random inputs in both
implementations: image encoder and position encodings, the SAM heads
(multimask, single mask, objects absent), a mask taken as output, the memory
encoder, the memory attention with object-pointer tokens, and the temporal
encoding of pointers. The full propagation is compared in
``test_parity_sam2_video.py``.
"""

from __future__ import annotations

import pytest
import torch

from reference_sam2 import build_reference_sam2

ATOL = 1e-4


@pytest.fixture(scope="module")
def pair(sam2_small_input):
    ours, state = sam2_small_input
    ref = build_reference_sam2("sam2_tiny", video=True, image_size=256, state=state)
    return ref, ours


@pytest.fixture(scope="module")
def frame(pair):
    """Features of one random 256-pixel image, from both (they are checked equal)."""
    ref, ours = pair
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 3, 256, 256, generator=g)
    with torch.no_grad():
        r = ref.forward_image(x)
        o = ours.encode_image(x)
    return r, o


def test_image_features_and_positions(pair, frame):
    _, ours = pair
    r, o = frame
    for a, b in zip(r["backbone_fpn"], [*o.high_res, o.image]):
        assert a.abs().mean() > 0.05
        torch.testing.assert_close(b, a, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(ours.vision_pos(), r["vision_pos_enc"][-1], atol=1e-6, rtol=0)


def _ref_feats(ref, r, b):
    out = {
        "backbone_fpn": [f.expand(b, -1, -1, -1) for f in r["backbone_fpn"]],
        "vision_pos_enc": [p.expand(b, -1, -1, -1) for p in r["vision_pos_enc"]],
    }
    _, feats, pos, sizes = ref._prepare_backbone_features(out)
    high = [
        x.permute(1, 2, 0).view(x.size(1), x.size(2), *s) for x, s in zip(feats[:-1], sizes[:-1])
    ]
    return feats, pos, sizes, high


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("absent", [False, True])
def test_heads(pair, frame, multimask, absent):
    ref, ours = pair
    r, _ = frame
    b = 3
    feats, _, sizes, high = _ref_feats(ref, r, b)
    pix = feats[-1].permute(1, 2, 0).view(b, 256, *sizes[-1])
    g = torch.Generator().manual_seed(7)
    coords = torch.rand(b, 2, 2, generator=g) * 256
    labels = torch.tensor([[1, 0], [1, 1], [2, 3]], dtype=torch.int32)
    heads = [ref.sam_mask_decoder.pred_obj_score_head, ours.sam_mask_decoder.pred_obj_score_head]
    saved = [h.layers[-1].bias.clone() for h in heads]
    try:
        # absent: masks -1024 and the "no object" pointer in both; present: the real outputs
        for h in heads:
            h.layers[-1].bias.data.fill_(-50.0 if absent else 50.0)
        with torch.no_grad():
            rr = ref._forward_sam_heads(
                pix,
                point_inputs={"point_coords": coords, "point_labels": labels},
                high_res_features=high,
                multimask_output=multimask,
            )
            oo = ours.heads(pix, tuple(high), points=(coords, labels), multimask_output=multimask)
    finally:
        for h, bias in zip(heads, saved):
            h.layers[-1].bias.data.copy_(bias)
    low_multi, _, ious, low, _, ptr, score = rr
    assert (score > 0).all() != absent and (score < 0).all() == absent
    torch.testing.assert_close(oo.multi_masks, low_multi, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(oo.ious, ious, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(oo.masks, low, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(oo.obj_ptr, ptr, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(oo.object_score, score, atol=1e-3, rtol=1e-5)
    if not absent:
        assert 0.02 < (low > 0).float().mean() < 0.98


def test_mask_as_output(pair, frame):
    ref, ours = pair
    r, _ = frame
    feats, _, sizes, high = _ref_feats(ref, r, 2)
    pix = feats[-1].permute(1, 2, 0).view(2, 256, *sizes[-1])
    masks = torch.zeros(2, 1, 256, 256)
    masks[0, 0, 40:120, 60:200] = 1  # the second object has an empty mask: absent
    with torch.no_grad():
        rr = ref._use_mask_as_output(pix, high, masks)
        oo = ours.mask_as_output(pix, tuple(high), masks)
    torch.testing.assert_close(oo.masks, rr[3], atol=1e-5, rtol=0)
    torch.testing.assert_close(oo.obj_ptr, rr[5], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(oo.object_score, rr[6], atol=0, rtol=0)


@pytest.mark.parametrize("from_points", [False, True])
def test_memory_encoder(pair, frame, from_points):
    ref, ours = pair
    r, o = frame
    feats, _, sizes, _ = _ref_feats(ref, r, 2)
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(2, 1, 256, 256, generator=g) * 8
    scores = torch.tensor([[3.0], [-2.0]])  # second object absent: "no object" embedding added
    with torch.no_grad():
        mem, pos = ref._encode_new_memory(
            feats, sizes, logits, scores, is_mask_from_pts=from_points
        )
        ours_mem = ours.encode_memory(o.image, logits, scores, binarize=from_points)
    assert mem.abs().mean() > 0.05
    torch.testing.assert_close(ours_mem, mem, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(ours.memory_pos(), pos[0][:1], atol=1e-6, rtol=0)


def test_memory_attention_with_pointers(pair, frame):
    ref, ours = pair
    r, _ = frame
    b, hw, frames, n_ptr = 2, 16 * 16, 3, 5
    g = torch.Generator().manual_seed(13)
    feats, pos, _, _ = _ref_feats(ref, r, b)
    memory = torch.randn(frames * hw + 4 * n_ptr, b, 64, generator=g)
    memory_pos = torch.randn(frames * hw + 4 * n_ptr, b, 64, generator=g)
    with torch.no_grad():
        out = ref.memory_attention(
            curr=feats[-1:],
            curr_pos=pos[-1:],
            memory=memory,
            memory_pos=memory_pos,
            num_obj_ptr_tokens=4 * n_ptr,
        )
        ours_out = ours.memory_attention(
            feats[-1].transpose(0, 1),
            pos[-1].transpose(0, 1),
            memory.transpose(0, 1),
            memory_pos.transpose(0, 1),
            4 * n_ptr,
        )
    assert out.abs().mean() > 0.1
    torch.testing.assert_close(ours_out, out.transpose(0, 1), atol=ATOL, rtol=1e-4)


def test_pointer_temporal_encoding(pair):
    from sam2.modeling.sam2_utils import get_1d_sine_pe

    ref, ours = pair
    distances = torch.tensor([0, 3, -2, 1, 15])
    with torch.no_grad():
        expected = ref.obj_ptr_tpos_proj(get_1d_sine_pe(distances / 15, dim=256))
        got = ours.pointer_pos(distances, 16)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
