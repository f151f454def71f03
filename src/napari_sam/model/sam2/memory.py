"""SAM 2's memory: the memory encoder and the memory attention.

**Memory encoder.** A frame's mask (as logits at the input resolution) is
turned into a probability, scaled (×20, −10: the published models'
``sigmoid_scale/bias_for_mem_enc``), downsampled 16× by four stride-2
convolutions (each with layer norm and GELU) and a 1×1 projection, added to
the frame's projected image features, mixed by two ConvNeXt blocks and
projected to ``mem_dim`` (64) channels: one *memory* per frame and object.

**Memory attention.** The current frame's image features (stride 16, one
token per cell) attend to themselves and then to the memory bank: the
memories of the prompted frames and of the last few tracked frames (each
with a sine position encoding plus a learnt per-slot temporal encoding) and
the *object pointers* of up to 16 frames (each 256-wide pointer split into
four 64-wide tokens, with a temporal encoding of its distance). Self- and
cross-attention use 2D rotary position encoding (RoPE) on queries and on the
memory keys (not on the pointer tokens).

Cross-attention values live in the 64-wide memory space and are projected
to 256 by ``v_proj``; since attention weights of a query sum to one,
``softmax(QKᵀ)·(M·Wᵥᵀ + b) = (softmax(QKᵀ)·M)·Wᵥᵀ + b`` exactly, so the
weighted sum is taken of the 64-wide memories and projected after: a quarter
of its arithmetic. It is computed in blocks of queries with two matrix
products (faster on a CPU than the fused attention kernel for these shapes),
in float32 like the rest; on a CPU whose image encoder runs in bfloat16
(:attr:`~napari_sam.model.sam2.sam2.Sam2.memory_attention_dtype`) the
attentions and the MLPs run in bfloat16, layer norms and the residual stream
in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.sam2.common import ConvNeXtBlock, LayerNorm2d
from napari_sam.model.sam2.position import AxialRope

__all__ = ["MemoryAttention", "MemoryAttentionLayer", "MemoryEncoder", "RoPEAttention"]


class MaskDownSampler(nn.Module):
    """Four stride-2 3×3 convolutions (×4 channels each, layer norm, GELU) and a 1×1 projection."""

    def __init__(self, embed_dim: int = 256, total_stride: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        chans = 1
        stride = 1
        while stride < total_stride:
            out = chans * 4
            layers += [
                nn.Conv2d(chans, out, kernel_size=3, stride=2, padding=1),
                LayerNorm2d(out),
                nn.GELU(),
            ]
            chans, stride = out, stride * 2
        layers.append(nn.Conv2d(chans, embed_dim, kernel_size=1))
        self.encoder = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class Fuser(nn.Module):
    """ConvNeXt blocks stored as ``layers.N``."""

    def __init__(self, dim: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ConvNeXtBlock(dim) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """Image features + a mask -> a memory ``(B, out_dim, h, w)``.

    ``masks`` are already scaled probabilities (see the module documentation).
    """

    def __init__(self, out_dim: int = 64, in_dim: int = 256, fuser_layers: int = 2) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler(in_dim)
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = Fuser(in_dim, fuser_layers)
        self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(self, pix_feat: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        x = self.pix_feat_proj(pix_feat) + self.mask_downsampler(masks)
        return self.out_proj(self.fuser(x))


class RoPEAttention(nn.Module):
    """Single- or multi-head attention with 2D rotary encoding of queries and keys.

    ``kv_in_dim`` is the width of keys and values before projection (64 for
    the memories). The last ``num_k_exclude_rope`` keys (object pointers) are
    not rotated; the others are whole frames of the query grid.
    """

    #: Queries per block of the attention to the memory (bounds its scratch memory:
    #: block × keys × 4 bytes, 29 MB for 256 queries and a full memory bank).
    query_block = 256

    def __init__(
        self,
        embedding_dim: int = 256,
        num_heads: int = 1,
        kv_in_dim: int | None = None,
        rope_theta: float = 10000.0,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.kv_in_dim = kv_in_dim or embedding_dim
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embedding_dim, embedding_dim)
        self.k_proj = nn.Linear(self.kv_in_dim, embedding_dim)
        self.v_proj = nn.Linear(self.kv_in_dim, embedding_dim)
        self.out_proj = nn.Linear(embedding_dim, embedding_dim)
        self.rope = AxialRope(embedding_dim // num_heads, rope_theta)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        num_k_exclude_rope: int = 0,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """``q`` ``(B, Nq, C)``, ``k``/``v`` ``(B, Nk, kv_in_dim)`` -> ``(B, Nq, C)``.

        ``dtype`` (bfloat16): one-head attention is computed in it by two matrix products
        (:func:`_blocked_attention`); default float32.
        """
        b, nq, _ = q.shape
        q = self._heads(self.q_proj(q))
        k = self._heads(self.k_proj(k))
        rot = self.rope.rotations(nq, q.device)
        q = AxialRope.rotate(q, rot)
        n_rope = k.shape[-2] - num_k_exclude_rope
        if n_rope > 0:
            rotated = AxialRope.rotate(k[:, :, :n_rope], rot)
            k = torch.cat([rotated, k[:, :, n_rope:]], dim=2) if num_k_exclude_rope else rotated
        if self.num_heads == 1 and self.kv_in_dim < self.embedding_dim and not self.training:
            out = self._narrow_value_attention(q[:, 0], k[:, 0], v, dtype)
        elif self.num_heads == 1 and dtype is not None and not self.training:
            out = _blocked_attention(q[:, 0], k[:, 0], self.v_proj(v), dtype, self.query_block)
        else:
            out = F.scaled_dot_product_attention(q, k, self._heads(self.v_proj(v)))
            out = out.transpose(1, 2).reshape(b, nq, -1)
        return self.out_proj(out)

    def _narrow_value_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """One head, values projected after the weighted sum (see the module documentation).

        ``q`` ``(B, Nq, C)``, ``k`` ``(B, Nk, C)``, ``v`` ``(B, Nk, kv_in_dim)`` ->
        ``(B, Nq, C)`` (float32), by :func:`_blocked_attention`; the value
        projection stays float32.
        """
        out = _blocked_attention(q, k, v, dtype, self.query_block)
        return F.linear(out, self.v_proj.weight, self.v_proj.bias)


def _blocked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype | None, block: int
) -> torch.Tensor:
    """``softmax(q kᵀ / √C) v`` for one head, ``block`` queries at a time (bounded scratch
    memory): ``q`` ``(B, Nq, C)``, ``k`` ``(B, Nk, C)``, ``v`` ``(B, Nk, Cv)`` ->
    ``(B, Nq, Cv)`` float32. Two matrix products around a softmax, faster on a CPU than the
    fused kernel for these shapes. With ``dtype`` (bfloat16) queries, keys and values are
    rounded to it once and both products run in it; the softmax is computed in float32 and
    its weights rounded once."""
    scale = q.shape[-1] ** -0.5
    if dtype is not None:
        q, k, v = (q * scale).to(dtype), k.to(dtype), v.to(dtype)
        scale = 1.0
    kt = k.transpose(1, 2)
    out = q.new_empty(q.shape[0], q.shape[1], v.shape[-1])
    for start in range(0, q.shape[1], block):
        part = q[:, start : start + block]
        scores = torch.matmul(part * scale if scale != 1.0 else part, kt)
        torch.matmul(torch.softmax(scores, dim=-1), v, out=out[:, start : start + block])
    return out.float()


class MemoryAttentionLayer(nn.Module):
    """Pre-norm self-attention, cross-attention to the memory bank, and an MLP (ReLU)."""

    def __init__(self, d_model: int = 256, mem_dim: int = 64, dim_feedforward: int = 2048) -> None:
        super().__init__()
        self.self_attn = RoPEAttention(d_model, 1)
        self.cross_attn_image = RoPEAttention(d_model, 1, kv_in_dim=mem_dim)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def self_block(self, tgt: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The pre-norm self-attention step (residual; the attention in ``dtype``)."""
        x = self.norm1(tgt)
        return tgt + self.self_attn(x, x, x, dtype=dtype)

    def memory_block(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        n_ptr: int,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Cross-attention to the memory bank, then the MLP (both pre-norm, residual; both
        in ``dtype``, see :class:`RoPEAttention`)."""
        x = self.norm2(tgt)
        tgt = tgt + self.cross_attn_image(x, memory + memory_pos, memory, num_k_exclude_rope=n_ptr,
                                          dtype=dtype)
        x = self.norm3(tgt)
        if dtype is None:
            return tgt + self.linear2(F.relu(self.linear1(x)))
        hidden = F.relu(F.linear(x.to(dtype), self.linear1.weight.to(dtype),
                                 self.linear1.bias.to(dtype)))
        return tgt + F.linear(hidden, self.linear2.weight.to(dtype),
                              self.linear2.bias.to(dtype)).float()

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_k_exclude_rope: int,
    ) -> torch.Tensor:
        return self.memory_block(self.self_block(tgt), memory, memory_pos, num_k_exclude_rope)


class MemoryAttention(nn.Module):
    """Condition the current frame's features on the memory bank (batch first).

    Parameters of :meth:`forward`: ``curr`` ``(B, N, C)`` image tokens,
    ``curr_pos`` ``(B, N, C)`` their sine encoding (added ×0.1 at the input),
    ``memory`` / ``memory_pos`` ``(B, M, mem_dim)``, ``num_obj_ptr_tokens``
    the pointer tokens at the end of the memory.
    """

    def __init__(
        self,
        d_model: int = 256,
        mem_dim: int = 64,
        num_layers: int = 4,
        dim_feedforward: int = 2048,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.layers = nn.ModuleList(
            MemoryAttentionLayer(d_model, mem_dim, dim_feedforward) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self,
        curr: torch.Tensor,
        curr_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_obj_ptr_tokens: int = 0,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """``curr``/``curr_pos`` may have batch 1 for ``B`` objects' memories: the frame is the
        same for all, so the first self-attention runs once and is shared (exactly).
        ``dtype`` (bfloat16): the attentions and the MLPs run in it (layer norms and the
        residual stream stay float32)."""
        x = curr + 0.1 * curr_pos
        b = memory.shape[0]
        for i, layer in enumerate(self.layers):
            x = layer.self_block(x, dtype)
            if i == 0 and x.shape[0] != b:
                x = x.expand(b, -1, -1)
            x = layer.memory_block(x, memory, memory_pos, num_obj_ptr_tokens, dtype)
        return self.norm(x)
