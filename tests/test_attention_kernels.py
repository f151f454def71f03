"""The two ways ViT global attention with relative positions is computed.

``attention_with_rel_pos(..., kernel="fused")`` passes the relative-position
bias to PyTorch's fused attention; ``kernel="matmul"`` (chosen on CPUs where it
is measured faster in bf16) computes ``softmax(q·kᵀ/√d + bias)·v`` with two
matrix products per head and query slice. Both are compared with the
attention written out in float64.
"""

from __future__ import annotations

import pytest
import torch

from napari_sam.model.sam import image_encoder
from napari_sam.model.sam.image_encoder import _matmul_attention, attention_with_rel_pos


def _inputs(side: int, heads: int = 3, d: int = 16, batch: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    n = side * side
    q, k, v = (torch.randn(batch, heads, n, d, generator=gen) for _ in range(3))
    rel_h, rel_w = (torch.randn(batch, heads, n, side, generator=gen) * 2 for _ in range(2))
    return q, k, v, rel_h, rel_w


def _written_out(q, k, v, rel_h, rel_w):
    q, k, v, rel_h, rel_w = (t.double() for t in (q, k, v, rel_h, rel_w))
    bias = (rel_h[..., :, None] + rel_w[..., None, :]).flatten(-2)
    logits = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + bias
    return torch.softmax(logits, -1) @ v


@torch.inference_mode()
def test_matmul_kernel_equals_the_written_out_attention(monkeypatch):
    monkeypatch.setattr(image_encoder, "ATTN_MASK_BUDGET", 40 * 1024)  # several row slices
    args = _inputs(32)  # 1024 keys
    expected = _written_out(*args)
    out = _matmul_attention(*args)
    assert out.shape == expected.shape
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(attention_with_rel_pos(*args), out, atol=2e-5, rtol=1e-5)


@torch.inference_mode()
def test_matmul_kernel_in_bf16_is_as_close_as_the_fused_one():
    args = _inputs(32, heads=2, d=64, batch=1)
    expected = _written_out(*args)
    bf16 = [t.bfloat16() for t in args]
    errors = {}
    for kernel in ("fused", "matmul"):
        out = attention_with_rel_pos(*bf16, kernel=kernel)
        assert out.dtype == torch.bfloat16
        errors[kernel] = float((out.double() - expected).abs().max() / expected.abs().max())
    # mostly the rounding of q, k, v and the bias to bf16 (sharp random attention here);
    # the matmul kernel's bf16 probabilities add a little
    assert errors["fused"] < 0.05 and errors["matmul"] < 0.05, errors
    assert errors["matmul"] < 2 * errors["fused"], errors


@torch.inference_mode()
def test_matmul_kernel_is_only_used_where_it_pays(monkeypatch):
    calls = []
    monkeypatch.setattr(image_encoder, "_matmul_attention", lambda *a: calls.append(1))
    window = [t.bfloat16() for t in _inputs(14)]  # 196 keys: a 14x14 window
    attention_with_rel_pos(*window, kernel="matmul")
    float32 = _inputs(32)
    attention_with_rel_pos(*float32, kernel="matmul")  # float32 stays on the fused kernel
    assert calls == []
    attention_with_rel_pos(*[t.bfloat16() for t in float32], kernel="matmul")
    assert calls == [1]
    with pytest.raises(ValueError, match="attention kernel"):
        attention_with_rel_pos(*float32, kernel="flash")
