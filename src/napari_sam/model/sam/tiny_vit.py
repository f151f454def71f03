"""TinyViT image encoder of MobileSAM (model type ``vit_t``).

MobileSAM replaces SAM's ViT with a small hierarchical network (TinyViT-5M,
Wu et al. 2022, distilled from SAM's ViT-H by Zhang et al. 2023). For a
``1024 × 1024`` input it computes:

========================  =========================================  ============
part                      what it does                               output grid
========================  =========================================  ============
``patch_embed``           two 3×3 stride-2 convolutions (+BN, GELU)   256 × 256, 64
``layers[0]``             2 inverted-residual conv blocks (MBConv)    256 × 256, 64
                          then a downsampling merge                   128 × 128, 128
``layers[1]``             2 transformer blocks, 7×7 windows, merge    64 × 64, 160
``layers[2]``             6 transformer blocks, 14×14 windows, merge  64 × 64, 320
``layers[3]``             2 transformer blocks, 7×7 windows           64 × 64, 320
``neck``                  1×1 conv, LN, 3×3 conv, LN (as in SAM)      64 × 64, 256
========================  =========================================  ============

The last merge keeps the resolution (stride 1) so that the embedding has SAM's
``64 × 64`` grid. Every convolution except the neck's is a bias-free
convolution followed by batch normalisation (:class:`ConvBN`, parameters
``c.*`` and ``bn.*``).

A transformer block is: windowed multi-head self-attention (pre-norm, with a
learnt bias per head and per *absolute* offset ``(|dy|, |dx|)`` between two
tokens of a window) added to its input; a 3×3 depthwise :class:`ConvBN`
("local convolution", no residual); a pre-norm two-layer GELU MLP added to its
input. A grid that is not a multiple of the window is padded at the bottom and
right with zero tokens *before* the attention's layer norm, so padding tokens
take part in the attention as keys and values, exactly as in the published
model.

Parameter names equal the ``image_encoder.*`` keys of ``mobile_sam.pt``,
including the unused ImageNet classifier (``norm_head``, ``head``) that the
file carries.

Speed on a CPU
--------------
All activations are kept channels-last, ``(B, H, W, C)`` contiguous, so the
same memory is both the token sequence of the transformer blocks and a
``channels_last`` image for the convolutions: switching between the two is a
free ``permute``. In eval mode batch normalisation is folded into the
convolution weights (``W·s``, ``β − μ·s`` with ``s = γ / √(σ² + ε)``), 1×1
convolutions run as matrix products, attention runs through
:func:`torch.nn.functional.scaled_dot_product_attention` with the bias table as
its additive mask (in bf16 on a CPU where matrix products were measured faster,
two matrix products around an in-place softmax: :attr:`TinyViT.attention_kernel`),
and GELU and residual additions work in place.

The high-resolution part (``patch_embed`` and ``layers[0]``, whose expanded
activations are 256 × 256 × 256 floats = 64 MiB) is computed in horizontal
strips whose temporaries stay below :data:`WORK_BYTES`; attention and MLPs are
chunked the same way. Every output row still sees exactly the input rows it
depends on, so results equal the whole-tensor computation up to float
rounding; the temporaries stay in cache and are recycled by the allocator
instead of being page-faulted in afresh for every call, which on a CPU costs
as much as the arithmetic. Folding BN changes the rounding too: embeddings
differ from the unfolded computation by ~1e-5 of their magnitude.

Strips, chunks and in-place updates are used only when no gradient is needed
(``torch.no_grad``/``torch.inference_mode``, or frozen weights and input); on
other devices than the CPU whole tensors are computed (still in place). With
autograd the encoder computes whole tensors out of place with the same modules
(BN folded in eval mode); in training mode BN uses batch statistics and updates
its running statistics, unfolded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.sam.common import LayerNorm2d, check_attention_kernel, float32_region

#: Approximate upper bound in bytes on one temporary tensor of the strip-wise
#: and chunked computations (CPU, no autograd). 8 MiB keeps the working set of
#: a strip inside the last-level cache and under glibc's 32 MiB mmap limit.
WORK_BYTES = 8 * 1024 * 1024


class _Mode(NamedTuple):
    """How a forward pass is computed.

    ``budget``: bytes per temporary for strips and chunks, ``None`` for whole
    tensors. ``inplace``: activations and residual additions may overwrite
    tensors created during this pass.
    """

    budget: int | None
    inplace: bool


def _gelu(x: torch.Tensor, mode: _Mode) -> torch.Tensor:
    return torch.ops.aten.gelu_(x) if mode.inplace else F.gelu(x)


def _add(x: torch.Tensor, y: torch.Tensor, mode: _Mode) -> torch.Tensor:
    return x.add_(y) if mode.inplace else x + y


def _span(o0: int, o1: int, stride: int, size: int, kernel: int = 3) -> tuple[int, int, int, int]:
    """Input rows of a ``kernel × kernel`` convolution (padding ``kernel // 2``).

    Output rows ``[o0, o1)`` read input rows ``[a, b)`` plus ``top`` / ``bottom``
    rows of zero padding beyond the image edge (``size`` input rows).

    Returns
    -------
    a, b, top, bottom : int
    """
    pad = kernel // 2
    lo = stride * o0 - pad
    hi = stride * (o1 - 1) - pad + kernel  # exclusive
    a, b = max(lo, 0), min(hi, size)
    return a, b, a - lo, hi - b


def _by_rows(
    compute: Callable[[int, int], torch.Tensor], out_h: int, row_bytes: int, mode: _Mode
) -> torch.Tensor:
    """Assemble a ``(B, out_h, W, C)`` result from ``compute(o0, o1)`` row strips.

    The strip height keeps ``row_bytes`` per output row under the mode's
    budget; without a budget the whole result is computed at once.
    """
    rows = out_h if mode.budget is None else max(1, mode.budget // max(row_bytes, 1))
    if rows >= out_h:
        return compute(0, out_h)
    first = compute(0, rows)
    out = first.new_empty((first.shape[0], out_h, *first.shape[2:]))
    out[:, :rows] = first
    del first
    for o0 in range(rows, out_h, rows):
        o1 = min(o0 + rows, out_h)
        out[:, o0:o1] = compute(o0, o1)
    return out


class ConvBN(nn.Module):
    """Bias-free ``Conv2d`` (``c``) followed by ``BatchNorm2d`` (``bn``).

    The ``forward_*`` methods take and return channels-last activations
    ``(B, H, W, C)``. In eval mode the normalisation is folded into the
    convolution's weight and bias.

    Parameters
    ----------
    in_chans, out_chans : int
        Channels in and out.
    kernel : int
        Square kernel size; padding is ``kernel // 2``.
    stride : int
        Stride of the convolution.
    groups : int
        Convolution groups (``in_chans`` for a depthwise convolution).
    bn_weight_init : float
        Initial scale ``γ`` of the normalisation (0 makes a residual branch
        start as the identity).
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(
            in_chans, out_chans, kernel, stride, kernel // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    @property
    def out_chans(self) -> int:
        return self.c.out_channels

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight ``(O, I/groups, k, k)`` and bias ``(O,)`` of conv + BN in eval mode."""
        bn = self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = self.c.weight * scale.view(-1, 1, 1, 1)
        bias = bn.bias - bn.running_mean * scale
        return weight, bias

    def _normalise(self, y: torch.Tensor) -> torch.Tensor:
        """Training-mode / unfolded BN of a channels-last ``(B, H, W, C)`` tensor."""
        return self.bn(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def forward_pointwise(self, x: torch.Tensor) -> torch.Tensor:
        """1×1 convolution of ``x`` ``(B, H, W, I)`` as a matrix product: ``(B, H, W, O)``."""
        if self.training:
            return self._normalise(F.linear(x, self.c.weight.flatten(1)))
        weight, bias = self.folded()
        return F.linear(x, weight.flatten(1), bias)

    def forward_spatial(
        self,
        x: torch.Tensor,
        stride: int | None = None,
        pad_rows: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """``k×k`` convolution of ``x`` ``(B, H, W, I)``; returns ``(B, H', W', O)``.

        With ``pad_rows = (top, bottom)`` the input is a strip of rows: only
        those zero rows are added above/below (columns are padded as usual), so
        the output has exactly the rows the strip determines.
        """
        stride = self.c.stride[0] if stride is None else stride
        pad = self.c.padding[0]
        if pad_rows is None:
            padding: tuple[int, int] = (pad, pad)
        else:
            padding = (0, pad)
            if any(pad_rows):
                x = F.pad(x, (0, 0, 0, 0, pad_rows[0], pad_rows[1]))
        nchw = x.permute(0, 3, 1, 2)  # channels_last memory when x is contiguous
        if self.training:
            y = F.conv2d(nchw, self.c.weight, None, stride, padding, 1, self.c.groups)
            return self._normalise(y.permute(0, 2, 3, 1))
        weight, bias = self.folded()
        y = F.conv2d(nchw, weight, bias, stride, padding, 1, self.c.groups)
        return y.permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """Stem: ``ConvBN(3→C/2, 3×3, s2)``, GELU, ``ConvBN(C/2→C, 3×3, s2)``.

    ``(B, H, W, 3)`` → ``(B, H/4, W/4, C)``. ``seq`` holds the two convolutions
    at indices 0 and 2 (index 1 is the activation), as in the checkpoint.
    """

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(in_chans, embed_dim // 2, 3, 2),
            nn.GELU(),
            ConvBN(embed_dim // 2, embed_dim, 3, 2),
        )

    def forward(self, x: torch.Tensor, mode: _Mode) -> torch.Tensor:
        first, second = self.seq[0], self.seq[2]
        b, h, w, _ = x.shape
        mid_h, mid_w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        out_h = (mid_h - 1) // 2 + 1

        def rows(o0: int, o1: int) -> torch.Tensor:
            m0, m1, m_top, m_bottom = _span(o0, o1, 2, mid_h)
            i0, i1, i_top, i_bottom = _span(m0, m1, 2, h)
            mid = first.forward_spatial(x[:, i0:i1], 2, (i_top, i_bottom))
            mid = _gelu(mid, mode)
            return second.forward_spatial(mid, 2, (m_top, m_bottom))

        if mode.budget is None:
            return second.forward_spatial(_gelu(first.forward_spatial(x), mode))
        row_bytes = 2 * b * mid_w * first.out_chans * x.element_size()
        return _by_rows(rows, out_h, row_bytes, mode)


class MBConv(nn.Module):
    """Inverted residual block: 1×1 expand, GELU, 3×3 depthwise, GELU, 1×1 project.

    ``y = GELU(x + ConvBN₃(GELU(ConvBN₂(GELU(ConvBN₁(x))))))`` on ``(B, H, W, C)``;
    the projection's BN starts at zero scale so that a fresh block is
    ``GELU(x)``.
    """

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden, 1)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim, 1, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor, mode: _Mode) -> torch.Tensor:
        b, h, w, _ = x.shape

        def rows(o0: int, o1: int) -> torch.Tensor:
            a, e, top, bottom = _span(o0, o1, 1, h)
            hid = _gelu(self.conv1.forward_pointwise(x[:, a:e]), mode)
            hid = _gelu(self.conv2.forward_spatial(hid, 1, (top, bottom)), mode)
            out = _add(self.conv3.forward_pointwise(hid), x[:, o0:o1], mode)
            return _gelu(out, mode)

        if mode.budget is None:
            hid = _gelu(self.conv1.forward_pointwise(x), mode)
            hid = _gelu(self.conv2.forward_spatial(hid), mode)
            return _gelu(_add(self.conv3.forward_pointwise(hid), x, mode), mode)
        row_bytes = b * w * self.conv1.out_chans * x.element_size()
        return _by_rows(rows, h, row_bytes, mode)


class PatchMerging(nn.Module):
    """Downsampling between stages: 1×1 ConvBN, GELU, 3×3 depthwise ConvBN, GELU, 1×1 ConvBN.

    ``(B, H, W, C_in)`` → ``(B, H/s, W/s, C_out)``; the depthwise convolution
    has stride ``s`` (2, or 1 for MobileSAM's last merge).
    """

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim, 1)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim, 1)

    def forward(self, x: torch.Tensor, mode: _Mode) -> torch.Tensor:
        b, h, w, _ = x.shape
        stride = self.conv2.c.stride[0]
        out_h = (h - 1) // stride + 1

        def rows(o0: int, o1: int) -> torch.Tensor:
            a, e, top, bottom = _span(o0, o1, stride, h)
            hid = _gelu(self.conv1.forward_pointwise(x[:, a:e]), mode)
            hid = _gelu(self.conv2.forward_spatial(hid, stride, (top, bottom)), mode)
            return self.conv3.forward_pointwise(hid)

        if mode.budget is None:
            hid = _gelu(self.conv1.forward_pointwise(x), mode)
            return self.conv3.forward_pointwise(_gelu(self.conv2.forward_spatial(hid), mode))
        row_bytes = stride * b * w * self.conv1.out_chans * x.element_size()
        return _by_rows(rows, out_h, row_bytes, mode)


def _offset_index(window: int, device: torch.device) -> torch.Tensor:
    """``(N, N)`` index of the bias for each (query, key) pair of a window, ``N = window²``.

    Tokens are numbered row-major (``t = y * window + x``); the pair's bias is
    entry ``|y_q − y_k| * window + |x_q − x_k|`` of the per-head table.
    """
    pos = torch.arange(window, device=device)
    d = (pos[:, None] - pos[None, :]).abs()  # (window, window)
    index = d[:, None, :, None] * window + d[None, :, None, :]  # [y_q, x_q, y_k, x_k]
    return index.reshape(window * window, window * window)


class WindowAttention(nn.Module):
    """Pre-norm multi-head self-attention inside square windows, with a learnt offset bias.

    Parameters
    ----------
    dim : int
        Token width ``C``.
    num_heads : int
        Heads; each has width ``C / num_heads`` for queries, keys and values.
    window : int
        Window side ``w``; a window holds ``N = w²`` tokens.

    Notes
    -----
    ``qkv`` produces, per token, ``num_heads`` groups of ``[q | k | v]`` (each
    ``C / num_heads`` wide), i.e. its output viewed as
    ``(..., num_heads, 3, head_dim)``. ``attention_biases`` has shape
    ``(num_heads, w²)``: one value per head and per offset ``(|dy|, |dx|)``.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Token width {dim} is not divisible by {num_heads} heads.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window = window
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self._index: dict[torch.device, torch.Tensor] = {}
        #: ``"fused"`` or ``"matmul"``: see :attr:`TinyViT.attention_kernel`.
        self.kernel = "fused"

    def bias_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """Additive attention mask ``(1, heads, N, N)`` built from ``attention_biases``."""
        device = self.attention_biases.device
        index = self._index.get(device)
        if index is None:
            index = self._index[device] = _offset_index(self.window, device)
        return self.attention_biases[:, index].unsqueeze(0).to(dtype)

    def attend(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention within each window: ``(n_windows, N, C)`` → ``(n_windows, N, C)``."""
        n, length, dim = tokens.shape
        qkv = F.linear(
            F.layer_norm(tokens, (dim,), self.norm.weight, self.norm.bias, self.norm.eps),
            self.qkv.weight,
            self.qkv.bias,
        )
        # (n, N, heads, 3·hd) -> (n, heads, N, 3·hd); q, k, v are strided views.
        q, k, v = (
            qkv.view(n, length, self.num_heads, -1).transpose(1, 2).split(self.head_dim, dim=-1)
        )
        if mask.dtype != q.dtype:  # e.g. under autocast
            mask = mask.to(q.dtype)
        if self.kernel == "matmul" and q.dtype != torch.float32 and not torch.is_grad_enabled():
            out = _matmul_window_attention(q, k, v, mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (n, heads, N, hd)
        return F.linear(
            out.transpose(1, 2).reshape(n, length, dim), self.proj.weight, self.proj.bias
        )

    def forward(self, x: torch.Tensor, mode: _Mode) -> torch.Tensor:
        """Return ``x + attention(x)`` for ``x`` ``(B, H, W, C)``.

        The result is ``(B, H, W, C)`` and may be a view into a padded buffer.
        """
        b, h, w, c = x.shape
        win = self.window
        nh, nw = -(-h // win), -(-w // win)
        # Zero-padded copy of x: the residual stream of this block.
        stream = F.pad(x, (0, 0, 0, nw * win - w, 0, nh * win - h))
        grid = stream.view(b, nh, win, nw, win, c)
        mask = self.bias_mask(x.dtype)
        per_band = nh
        if mode.budget is not None:
            band_bytes = b * nw * win * win * 3 * c * x.element_size()
            per_band = max(1, min(nh, mode.budget // band_bytes))
        if per_band >= nh and not mode.inplace:
            tokens = grid.transpose(2, 3).reshape(b * nh * nw, win * win, c)
            y = self.attend(tokens, mask).view(b, nh, nw, win, win, c).transpose(2, 3)
            return (grid + y).reshape(b, nh * win, nw * win, c)[:, :h, :w]
        for r0 in range(0, nh, per_band):
            band = grid[:, r0 : r0 + per_band]  # (B, k, win, nw, win, C)
            k = band.shape[1]
            tokens = band.transpose(2, 3).reshape(b * k * nw, win * win, c)
            y = self.attend(tokens, mask).view(b, k, nw, win, win, c).transpose(2, 3)
            band.add_(y)
        return stream[:, :h, :w]


def _matmul_window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``softmax(q·kᵀ/√d + mask) · v`` as two matrix products around an in-place softmax.

    ``q``, ``k``, ``v`` ``(n, heads, N, d)`` and ``mask`` ``(1, heads, N, N)`` in one reduced
    precision (bf16); no autograd. The logits are written once and overwritten by the
    probabilities, which are rounded to ``q``'s dtype before the second product (as
    :func:`~napari_sam.model.sam.image_encoder.attention_with_rel_pos` does with
    ``kernel="matmul"``). On a 2-core AVX-512 BF16 CPU this ran TinyViT's 7×7 and 14×14
    windows 1.35–1.5× faster than PyTorch's fused CPU kernel (``docs/benchmarks.md``).
    """
    logits = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2)).add_(mask)
    torch.softmax(logits, dim=-1, out=logits)
    return torch.matmul(logits, v)


class FeedForward(nn.Module):
    """Pre-norm MLP ``fc2(GELU(fc1(LN(x))))`` on ``(..., C)`` tokens; hidden width ``hidden``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def _mlp(self, x: torch.Tensor, mode: _Mode) -> torch.Tensor:
        x = F.layer_norm(x, x.shape[-1:], self.norm.weight, self.norm.bias, self.norm.eps)
        return self.fc2(_gelu(self.fc1(x), mode))

    def forward(self, x: torch.Tensor, mode: _Mode) -> torch.Tensor:
        """Return ``x + mlp(x)``; with an in-place mode ``x`` (contiguous) is updated."""
        if not mode.inplace:
            return x + self._mlp(x, mode)
        x = x.contiguous()
        flat = x.view(-1, x.shape[-1])
        rows = flat.shape[0]
        if mode.budget is not None:
            rows = max(1, mode.budget // (self.fc1.out_features * x.element_size()))
        for chunk in flat.split(rows):
            chunk.add_(self._mlp(chunk, mode))
        return x


class TinyViTBlock(nn.Module):
    """Transformer block of TinyViT on ``(B, H, W, C)`` tokens.

    ``x ← x + attn(x)`` (windowed), ``x ← local_conv(x)`` (3×3 depthwise
    ConvBN), ``x ← x + mlp(x)``.
    """

    def __init__(
        self, dim: int, num_heads: int, window: int, mlp_ratio: float, local_conv_size: int
    ) -> None:
        super().__init__()
        self.attn = WindowAttention(dim, num_heads, window)
        self.local_conv = ConvBN(dim, dim, local_conv_size, groups=dim)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, mode: _Mode) -> torch.Tensor:
        x = self.attn(x, mode)
        x = self.local_conv.forward_spatial(x)  # a fresh contiguous tensor
        return self.mlp(x, mode)


class ConvStage(nn.Module):
    """First stage: MBConv ``blocks``, then an optional ``downsample`` merge."""

    def __init__(
        self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging | None
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor, mode: _Mode) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mode)
        return x if self.downsample is None else self.downsample(x, mode)


class AttentionStage(nn.Module):
    """A stage of :class:`TinyViTBlock` ``blocks``, then an optional ``downsample`` merge."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: int,
        mlp_ratio: float,
        local_conv_size: int,
        downsample: PatchMerging | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window, mlp_ratio, local_conv_size) for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor, mode: _Mode) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mode)
        return x if self.downsample is None else self.downsample(x, mode)


class TinyViT(nn.Module):
    """TinyViT image encoder with SAM's neck: ``(B, 3, S, S)`` → ``(B, out_chans, S/16, S/16)``.

    Parameters
    ----------
    img_size : int
        Side ``S`` of the (normalised, padded) square input; 1024 for MobileSAM.
    in_chans : int
        Input channels (3, RGB).
    embed_dims, depths, num_heads, window_sizes : sequence of int
        Per stage: width, number of blocks, attention heads and window side
        (the first stage is convolutional and ignores heads and window).
    merge_strides : sequence of int
        Stride of the merge after each stage but the last (MobileSAM: 2, 2, 1).
    mlp_ratio, mbconv_expand_ratio : float
        Hidden width of the transformer MLPs and of the MBConv blocks.
    local_conv_size : int
        Kernel of the depthwise convolution inside transformer blocks.
    num_classes : int
        Outputs of the unused classifier ``head`` (kept for strict loading).
    out_chans : int
        Channels of the embedding produced by the neck (256).
    """

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        merge_strides: Sequence[int] = (2, 2, 1),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        num_classes: int = 1000,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        n = len(embed_dims)
        if not (
            len(depths) == len(num_heads) == len(window_sizes) == n and len(merge_strides) == n - 1
        ):
            raise ValueError("TinyViT stage settings must all have one entry per stage.")
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        self.layers = nn.ModuleList()
        for i in range(n):
            merge = None
            if i < n - 1:
                merge = PatchMerging(embed_dims[i], embed_dims[i + 1], merge_strides[i])
            if i == 0:
                stage: nn.Module = ConvStage(embed_dims[0], depths[0], mbconv_expand_ratio, merge)
            else:
                stage = AttentionStage(
                    embed_dims[i],
                    depths[i],
                    num_heads[i],
                    window_sizes[i],
                    mlp_ratio,
                    local_conv_size,
                    merge,
                )
            self.layers.append(stage)
        # ImageNet classifier of the TinyViT backbone: stored in mobile_sam.pt, never used.
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes)
        self._init_weights()
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Truncated-normal (σ = 0.02) linear weights, zero biases, unit layer norms."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def attention_kernel(self) -> str:
        """How the window attention is computed: ``"fused"`` (PyTorch's fused kernel, the
        default) or ``"matmul"`` (two matrix products around a softmax, used only in
        reduced precision without autograd). The loader picks ``"matmul"`` for bf16 on CPUs
        where it measured matrix-product attention faster
        (:func:`napari_sam.runtime.precision.apply_cpu_attention`)."""
        blocks = self._window_attentions()
        return blocks[0].kernel if blocks else "fused"

    @attention_kernel.setter
    def attention_kernel(self, kernel: str) -> None:
        check_attention_kernel(kernel)
        for attn in self._window_attentions():
            attn.kernel = kernel

    def _window_attentions(self) -> list[WindowAttention]:
        return [m for m in self.modules() if isinstance(m, WindowAttention)]

    def _mode(self, x: torch.Tensor) -> _Mode:
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in self.parameters())
        )
        if self.training or needs_grad:
            return _Mode(budget=None, inplace=False)
        return _Mode(budget=WORK_BYTES if x.device.type == "cpu" else None, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode normalised images ``(B, 3, S, S)`` into embeddings ``(B, 256, S/16, S/16)``."""
        mode = self._mode(x)
        x = x.permute(0, 2, 3, 1).contiguous()  # (B, S, S, 3) channels-last
        x = self.patch_embed(x, mode)
        for stage in self.layers:
            x = stage(x, mode)
        with float32_region(x):  # the embedding is never rounded to bf16
            return self._neck(x.float())

    def _neck(self, x: torch.Tensor) -> torch.Tensor:
        """SAM neck on ``(B, h, w, C)`` tokens; returns a contiguous ``(B, 256, h, w)``."""
        conv1, norm1, conv2, norm2 = self.neck
        x = F.linear(x, conv1.weight.flatten(1))
        x = F.layer_norm(x, x.shape[-1:], norm1.weight, norm1.bias, norm1.eps)
        x = F.conv2d(x.permute(0, 3, 1, 2), conv2.weight, None, 1, 1).permute(0, 2, 3, 1)
        x = F.layer_norm(x, x.shape[-1:], norm2.weight, norm2.bias, norm2.eps)
        return x.permute(0, 3, 1, 2).contiguous()
