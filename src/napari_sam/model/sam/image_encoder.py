"""ViT image encoder of SAM (ViT-B/L/H).

A plain Vision Transformer over 16×16 patches of a 1024×1024 image. Most
blocks attend inside 14×14 windows; a few blocks (``global_attn_indexes``)
attend over the whole 64×64 token grid. Every attention adds a *decomposed
relative position* term: for a query at grid cell (qh, qw) and a key at
(kh, kw) the logit gets ``q·R_h[qh-kh] + q·R_w[qw-kw]`` with learnt tables
``rel_pos_h`` / ``rel_pos_w`` of shape ``(2*size-1, head_dim)``. A convolutional
"neck" maps the tokens to a ``(B, 256, 64, 64)`` embedding.

Attention runs through :func:`torch.nn.functional.scaled_dot_product_attention`
with the relative-position term passed as its additive ``attn_mask``. The mask
of a global block is ``heads × 4096 × 4096`` values (800 MB in fp32 for
ViT-B), so it is built and consumed in slices whose size is bounded by
:func:`attention_mask_budget` (small on a CPU, large on a GPU); results are
identical, peak memory is small. Under autocast (the GPU fast path, see
:mod:`napari_sam.model.precision`) q, k, v and the mask are bf16/fp16 and
SDPA picks its fused memory-efficient kernel.

Tensors inside the blocks are channels-last: ``(B, H, W, C)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.sam.common import (
    LayerNorm2d,
    MLPBlock,
    check_attention_kernel,
    float32_region,
)

#: Largest number of mask elements materialised at once by the attention of
#: one block on a CPU (4 M fp32 values = 16 MB): small enough to stay in
#: cache-friendly sizes, large enough that the per-call overhead is negligible.
ATTN_MASK_BUDGET = 4 * 1024 * 1024

#: The same bound on a GPU (128 M values = 256 MB in bf16): a GPU wants few,
#: large kernel launches; this lets one call cover ~8 heads of a global block.
GPU_ATTN_MASK_BUDGET = 128 * 1024 * 1024


#: Fewest keys for which ``kernel="matmul"`` computes one head and a slice of queries at
#: a time (ViT global attention has 4096); windows (14×14: 196 keys) are computed all
#: heads of several windows at a time (:func:`_matmul_window_attention`).
MATMUL_MIN_KEYS = 1024


def attention_mask_budget(device: torch.device) -> int:
    """Mask elements one attention call may materialise on ``device``."""
    return ATTN_MASK_BUDGET if device.type == "cpu" else GPU_ATTN_MASK_BUDGET


def relative_position_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Gather the relative-position embeddings for every (query, key) pair on one axis.

    Parameters
    ----------
    q_size, k_size : int
        Number of query and key positions along the axis.
    rel_pos : Tensor, shape ``(L, C)``
        Learnt table; ``L`` is normally ``2 * max(q_size, k_size) - 1``. A table
        of another length is linearly resampled to that length first.

    Returns
    -------
    Tensor, shape ``(q_size, k_size, C)``
        Entry ``[i, j]`` embeds the offset between query ``i`` and key ``j``.
    """
    span = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != span:
        table = F.interpolate(rel_pos.t().unsqueeze(0), size=span, mode="linear")
        table = table.squeeze(0).t()
    else:
        table = rel_pos
    # When the two axes differ in length, positions are stretched to the longer one.
    q_stretch = max(k_size / q_size, 1.0)
    k_stretch = max(q_size / k_size, 1.0)
    q_pos = torch.arange(q_size, device=rel_pos.device)[:, None] * q_stretch
    k_pos = torch.arange(k_size, device=rel_pos.device)[None, :] * k_stretch
    index = (q_pos - k_pos + (k_size - 1) * k_stretch).long()
    return table[index]


def _onehot_keys(kh: int, kw: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(kh + kw, kh * kw)`` matrix ``E`` with ``[rel_h | rel_w] @ E`` = the bias mask.

    Key ``j`` sits in key row ``j // kw`` and key column ``j % kw``; column ``j`` of
    ``E`` has a one in row ``j // kw`` and in row ``kh + j % kw``.
    """
    keys = torch.arange(kh * kw, device=device)
    e = torch.zeros(kh + kw, kh * kw, dtype=dtype, device=device)
    e[keys // kw, keys] = 1
    e[kh + keys % kw, keys] = 1
    return e


def _bias_mask(rel_h: torch.Tensor, rel_w: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Write the additive mask ``rel_h[..., i, kh] + rel_w[..., i, kw]`` into ``out``.

    ``rel_h``, ``rel_w``: ``(..., L, Kh)``, ``(..., L, Kw)``; ``out``: ``(..., L, Kh * Kw)``
    of their dtype. A wide grid (global attention) is a broadcast addition; a
    narrow one (14×14 windows, where broadcasting over 14 elements is slow) is a
    small matrix product with one-hot key positions, which is exact (each
    output is the sum of two terms) and ~6× faster on a CPU.
    """
    kh, kw = rel_h.shape[-1], rel_w.shape[-1]
    if kw >= 32:
        torch.add(rel_h[..., :, None], rel_w[..., None, :], out=out.unflatten(-1, (kh, kw)))
    else:
        e = _onehot_keys(kh, kw, rel_h.dtype, rel_h.device)
        torch.matmul(torch.cat([rel_h, rel_w], dim=-1), e, out=out)
    return out


def attention_with_rel_pos(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    kernel: str = "fused",
) -> torch.Tensor:
    """Scaled dot-product attention plus the decomposed relative-position bias.

    Parameters
    ----------
    q, k, v : Tensor, shape ``(B, heads, L, D)``
        May be strided views (e.g. of one fused ``qkv`` projection) as long as
        the last axis is contiguous. ``L`` = number of tokens.
    rel_h, rel_w : Tensor, shapes ``(B, heads, L, Kh)`` and ``(B, heads, L, Kw)``
        Per-query bias towards each key row / key column; ``Kh * Kw == L``.

    kernel : {"fused", "matmul"}
        How a slice is computed: ``"fused"``, PyTorch's fused attention kernel
        (:func:`~torch.nn.functional.scaled_dot_product_attention`, whose
        accumulators stay float32); ``"matmul"``, two batched matrix products
        around a softmax, in the dtype of ``q``
        (see :data:`~napari_sam.model.sam.common.ATTENTION_KERNELS`).
        ``"matmul"`` applies in reduced precision (bf16/fp16) only: global attention
        (at least :data:`MATMUL_MIN_KEYS` keys) one head and slice at a time, windows
        several at a time; float32 always takes the fused kernel. On a 2-core AVX-512
        BF16 CPU the windows' matrix products made ViT-B's encoder 5 % faster than the
        fused kernel in its windows (``docs/benchmarks.md``).

    Returns
    -------
    Tensor, shape ``(B, heads, L, D)``
        When sliced (see below), a transposed view of a ``(B, L, heads, D)``
        tensor, so that merging the heads back into channels is free.

    Notes
    -----
    The mask has the dtype of ``q`` (bf16 under autocast: built, read and
    added in bf16, no float32 round trip) and is materialised in slices of at
    most :func:`attention_mask_budget` elements, all written into one buffer.
    """
    b, heads, length, d = q.shape
    kh, kw = rel_h.shape[-1], rel_w.shape[-1]
    keys = kh * kw
    if rel_h.dtype != q.dtype:  # SDPA wants one dtype
        rel_h, rel_w = rel_h.to(q.dtype), rel_w.to(q.dtype)
    check_attention_kernel(kernel)
    if kernel == "matmul" and q.dtype != torch.float32:
        if keys >= MATMUL_MIN_KEYS:
            return _matmul_attention(q, k, v, rel_h, rel_w)
        return _matmul_window_attention(q, k, v, rel_h, rel_w)
    budget = attention_mask_budget(q.device)
    if b * heads * length * keys <= budget:
        mask = _bias_mask(rel_h, rel_w, q.new_empty(b, heads, length, keys))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    rows = max(1, min(length, budget // keys))
    group = max(1, min(heads, budget // (rows * keys)))
    out = q.new_empty(b, length, heads, d).transpose(1, 2)
    buffer = q.new_empty(group * rows * keys)
    for i in range(b):
        for h0 in range(0, heads, group):
            hs = slice(h0, min(h0 + group, heads))
            for r0 in range(0, length, rows):
                rs = slice(r0, min(r0 + rows, length))
                n = (hs.stop - hs.start) * (rs.stop - rs.start) * keys
                mask = buffer[:n].view(1, hs.stop - hs.start, rs.stop - rs.start, keys)
                _bias_mask(rel_h[i : i + 1, hs, rs], rel_w[i : i + 1, hs, rs], mask)
                out[i : i + 1, hs, rs] = F.scaled_dot_product_attention(
                    q[i : i + 1, hs, rs], k[i : i + 1, hs], v[i : i + 1, hs], attn_mask=mask
                )
    return out


def _matmul_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor
) -> torch.Tensor:
    """:func:`attention_with_rel_pos` as ``softmax(q·kᵀ·scale + bias) · v``, one head and
    a slice of queries at a time (the bias-mask budget), the logits written over the mask.

    Two matrix products per slice in ``q``'s dtype: on a CPU in bf16 oneDNN runs them at
    the matrix units' rate, while PyTorch's fused CPU kernel reached ~37 % of it on
    ViT-B's global attention (``docs/benchmarks.md``). The probabilities are rounded to
    ``q``'s dtype before the second product (as GPU flash kernels do).
    """
    b, heads, length, d = q.shape
    kh, kw = rel_h.shape[-1], rel_w.shape[-1]
    keys = kh * kw
    rows = max(1, min(length, attention_mask_budget(q.device) // keys))
    scale = d ** -0.5
    out = q.new_empty(b, length, heads, d).transpose(1, 2)
    buffer = q.new_empty(1, rows, keys)
    for i in range(b):
        for h in range(heads):
            k_t = k[i, h : h + 1].transpose(-1, -2)
            v_h = v[i, h : h + 1]
            for r0 in range(0, length, rows):
                n = min(rows, length - r0)
                logits = buffer[:, :n]
                _bias_mask(rel_h[i, h : h + 1, r0 : r0 + n], rel_w[i, h : h + 1, r0 : r0 + n],
                           logits)
                logits.baddbmm_(q[i, h : h + 1, r0 : r0 + n], k_t, alpha=scale)
                out[i, h : h + 1, r0 : r0 + n] = torch.bmm(torch.softmax(logits, -1), v_h)
    return out


def _matmul_window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor
) -> torch.Tensor:
    """:func:`attention_with_rel_pos` for windows (few keys) as ``softmax(q·kᵀ·scale + bias)·v``,
    all heads of several windows at a time (the bias-mask budget): the bias is written into
    one buffer, the logits added onto it, the softmax written over them, then one batched
    product with the values. Probabilities are rounded to ``q``'s dtype, as in
    :func:`_matmul_attention`.
    """
    b, heads, length, d = q.shape
    keys = rel_h.shape[-1] * rel_w.shape[-1]
    per = max(1, min(b, attention_mask_budget(q.device) // (heads * length * keys)))
    out = q.new_empty(b, length, heads, d).transpose(1, 2)
    buffer = q.new_empty(per * heads * length * keys)
    for i in range(0, b, per):
        n = min(per, b - i)
        logits = buffer[: n * heads * length * keys].view(n, heads, length, keys)
        _bias_mask(rel_h[i : i + n], rel_w[i : i + n], logits)
        logits.view(n * heads, length, keys).baddbmm_(
            q[i : i + n].reshape(n * heads, length, d),
            k[i : i + n].reshape(n * heads, length, d).transpose(1, 2),
            alpha=d**-0.5,
        )
        torch.softmax(logits, dim=-1, out=logits)
        out[i : i + n] = torch.matmul(logits, v[i : i + n])
    return out


class Attention(nn.Module):
    """Multi-head self-attention over a token grid, optionally with relative positions.

    Parameters
    ----------
    dim : int
        Token width.
    num_heads : int
        Number of heads; ``dim`` must be divisible by it.
    qkv_bias : bool
        Whether the fused ``qkv`` projection has a bias.
    use_rel_pos : bool
        Add the decomposed relative-position term.
    input_size : tuple of int
        ``(H, W)`` of the grid the attention sees (the window, or the whole grid);
        it sets the size of ``rel_pos_h`` and ``rel_pos_w``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Token width {dim} is not divisible by {num_heads} heads.")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        self.kernel = "fused"  # of the relative-position attention (attention_with_rel_pos)
        if use_rel_pos:
            if input_size is None:
                raise ValueError("Relative positions need the input size of the attention grid.")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over ``x`` of shape ``(B, H, W, C)``; returns the same shape.

        q, k and v stay strided views of the one ``qkv`` projection
        ``(B, H·W, 3, heads, D)``: SDPA reads them in place (4D, so that the
        fused GPU kernels accept them too).
        """
        b, h, w, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).view(b, h * w, 3, heads, c // heads)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # (B, heads, L, D) views
        if self.use_rel_pos:
            rel_h, rel_w = self.rel_pos_terms(q, h, w)
            out = attention_with_rel_pos(q, k, v, rel_h, rel_w, self.kernel)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, c))

    def rel_pos_terms(self, q: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Relative-position terms of queries ``q`` ``(B, heads, H·W, D)`` on an ``H × W`` grid.

        Returns ``rel_h`` ``(B, heads, H·W, H)`` and ``rel_w`` ``(B, heads, H·W, W)``:
        ``q · R_h[qh - kh]`` for every key row and ``q · R_w[qw - kw]`` for every
        key column, in ``q``'s dtype (bf16 under autocast).
        """
        b, heads, _, d = q.shape
        table_h = relative_position_table(h, h, self.rel_pos_h).to(q.dtype)  # (h, h, D)
        table_w = relative_position_table(w, w, self.rel_pos_w).to(q.dtype)  # (w, w, D)
        grid_q = q.reshape(b * heads, h, w, d)
        rel_h = torch.einsum("nhwd,hkd->nhwk", grid_q, table_h)
        rel_w = torch.einsum("nhwd,wkd->nhwk", grid_q, table_w)
        return rel_h.reshape(b, heads, h * w, h), rel_w.reshape(b, heads, h * w, w)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Cut a ``(B, H, W, C)`` grid into non-overlapping ``window × window`` tiles.

    The grid is zero-padded at the bottom/right to a multiple of ``window``.

    Returns
    -------
    tiles : Tensor, shape ``(B * nH * nW, window, window, C)``
    padded_hw : tuple of int
        ``(Hp, Wp)``, the padded grid size.
    """
    b, h, w, c = x.shape
    pad_h = (window - h % window) % window
    pad_w = (window - w % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    tiles = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)
    return tiles, (hp, wp)


def window_unpartition(
    tiles: torch.Tensor, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: tiles back to a ``(B, H, W, C)`` grid.

    The result is a view that drops the padding (not contiguous when there was
    padding): its one consumer, the residual addition, reads it as it is,
    which saves a copy of the whole grid.
    """
    hp, wp = padded_hw
    h, w = hw
    b = tiles.shape[0] // ((hp // window) * (wp // window))
    x = tiles.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :] if hp > h or wp > w else x


class Block(nn.Module):
    """Pre-norm transformer block with windowed (``window_size > 0``) or global attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        use_rel_pos: bool = False,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            input_size=input_size if window_size == 0 else (window_size, window_size),
        )
        self.norm2 = norm_layer(dim)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), act=act_layer)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, H, W, C)`` -> same shape."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            hw = (x.shape[1], x.shape[2])
            x, padded_hw = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, padded_hw, hw)
        else:
            x = self.attn(x)
        x = shortcut + x  # float32 residual stream (also under autocast)
        if torch.is_grad_enabled():
            return x + self.mlp(self.norm2(x))
        return x.add_(self.mlp(self.norm2(x)))  # x is ours: no new 12 MB buffer


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: ``(B, 3, H, W)`` -> ``(B, H/16, W/16, C)``."""

    def __init__(
        self,
        kernel_size: tuple[int, int] = (16, 16),
        stride: tuple[int, int] = (16, 16),
        padding: tuple[int, int] = (0, 0),
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class ImageEncoderViT(nn.Module):
    """SAM's ViT image encoder.

    Input: normalised, padded images ``(B, 3, img_size, img_size)`` float32.
    Output: embeddings ``(B, out_chans, img_size/patch_size, img_size/patch_size)``.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        use_abs_pos: bool = True,
        use_rel_pos: bool = False,
        window_size: int = 0,
        global_attn_indexes: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(
            kernel_size=(patch_size, patch_size),
            stride=(patch_size, patch_size),
            in_chans=in_chans,
            embed_dim=embed_dim,
        )
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                norm_layer=norm_layer,
                act_layer=act_layer,
                use_rel_pos=use_rel_pos,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    @property
    def attention_kernel(self) -> str:
        """How the global-attention blocks compute attention: ``"fused"`` (default) or
        ``"matmul"`` (:func:`attention_with_rel_pos`; the loader picks ``"matmul"`` for
        bf16 on CPUs where it was measured faster, :mod:`napari_sam.runtime.precision`)."""
        return self.blocks[0].attn.kernel if len(self.blocks) else "fused"

    @attention_kernel.setter
    def attention_kernel(self, kernel: str) -> None:
        check_attention_kernel(kernel)
        for block in self.blocks:
            block.attn.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        with float32_region(x):  # the embedding is never rounded to bf16
            return self.neck(x.permute(0, 3, 1, 2).float())
