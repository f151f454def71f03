"""The SAM 2 image encoder: a Hiera trunk and a feature-pyramid neck.

Hiera (Ryali et al. 2023, "Hiera: A Hierarchical Vision Transformer without
the Bells-and-Whistles") cuts the image into 4×4 patches and runs four stages
of transformer blocks; each new stage halves the grid (max-pooling the
queries of its first block) and doubles the width and the number of heads.
Most blocks attend within windows; a few attend globally. The position
embedding is a small learnt map, resized bicubically to the patch grid, plus
a learnt window-sized pattern tiled over it.

The neck projects each stage to ``d_model`` channels and adds the upsampled
(nearest) coarser level to the two coarsest ones; SAM 2 drops the coarsest
level, so the encoder returns three maps at strides 4, 8 and 16.

Tensors inside the trunk are channels-last ``(B, H, W, C)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.sam2.common import MLP

__all__ = ["FpnNeck", "Hiera", "HieraBlock", "ImageEncoder"]


def _pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Max-pool a ``(B, H, W, C)`` map by ``stride`` (floor)."""
    return F.max_pool2d(x.permute(0, 3, 1, 2), stride, stride).permute(0, 2, 3, 1)


def _to_windows(x: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(B, H, W, C)`` -> ``(B·nW, size, size, C)`` windows (zero-padded at the bottom/right)."""
    b, h, w, c = x.shape
    ph, pw = (-h) % size, (-w) % size
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.view(b, hp // size, size, wp // size, size, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, size, size, c), (hp, wp)


def _from_windows(
    windows: torch.Tensor, size: int, padded: tuple[int, int], shape: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`_to_windows`: ``(B·nW, size, size, C)`` -> ``(B, H, W, C)``."""
    hp, wp = padded
    h, w = shape
    b = windows.shape[0] // ((hp // size) * (wp // size))
    x = windows.reshape(b, hp // size, wp // size, size, size, -1).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, hp, wp, -1)
    return x[:, :h, :w, :] if (hp > h or wp > w) else x


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention whose queries may be max-pooled (``q_stride``)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: int = 0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_stride = q_stride
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1)
        q, k, v = qkv.unbind(2)
        if self.q_stride:
            q = _pool(q.reshape(b, h, w, -1), self.q_stride)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


class HieraBlock(nn.Module):
    """One Hiera block: (windowed) attention and an MLP, both pre-norm and residual.

    The first block of a stage changes the width (``dim -> dim_out``, with a
    linear projection ``proj`` on the shortcut) and pools queries and
    shortcut by ``q_stride``.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        window_size: int,
        q_stride: int = 0,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_stride)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, 2, activation="gelu")
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = self.proj(x)
            if self.q_stride:
                shortcut = _pool(shortcut, self.q_stride)
        size = self.window_size
        if size > 0:
            x, padded = _to_windows(x, size)
        x = self.attn(x)
        if size > 0:
            if self.q_stride:
                size //= self.q_stride
            h, w = shortcut.shape[1:3]
            padded = (h + (-h) % size, w + (-w) % size)
            x = _from_windows(x, size, padded, (h, w))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """7×7 convolution with stride 4 (padding 3): image -> ``(B, H/4, W/4, C)``."""

    def __init__(self, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Hiera(nn.Module):
    """The Hiera trunk; returns the output of every stage, finest first, ``(B, C_i, H_i, W_i)``.

    Parameters
    ----------
    embed_dim, num_heads : int
        Width and heads of the first stage (doubled at each new stage).
    stages : sequence of int
        Blocks per stage.
    global_att_blocks : sequence of int
        Indices of the blocks that attend over the whole map.
    window_spec : sequence of int
        Window side per stage for the other blocks. The first block of a
        stage still uses the previous stage's window (on the finer grid).
    window_pos_embed_bkg_spatial_size : (int, int)
        Size of the learnt background position map.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        stages: Sequence[int],
        global_att_blocks: Sequence[int],
        window_spec: Sequence[int] = (8, 4, 14, 7),
        window_pos_embed_bkg_spatial_size: Sequence[int] = (14, 14),
        q_pool: int = 3,
        q_stride: int = 2,
    ) -> None:
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError("Hiera needs one window size per stage.")
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        pool_blocks = {end + 1 for end in self.stage_ends[:-1][:q_pool]}
        self.patch_embed = PatchEmbed(embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(
            torch.zeros(1, embed_dim, window_spec[0], window_spec[0])
        )
        self.blocks = nn.ModuleList()
        dim, heads, stage = embed_dim, num_heads, 0
        for i in range(sum(stages)):
            window = 0 if i in global_att_blocks else window_spec[stage]
            dim_out = dim
            if i - 1 in self.stage_ends:  # first block of a new stage
                dim_out, heads, stage = dim * 2, heads * 2, stage + 1
            self.blocks.append(
                HieraBlock(dim, dim_out, heads, window, q_stride if i in pool_blocks else 0)
            )
            dim = dim_out
        self.channel_list = [self.blocks[i].dim_out for i in self.stage_ends[::-1]]

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        win = self.pos_embed_window
        pos = pos + win.tile(1, 1, h // win.shape[-2], w // win.shape[-1])
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        x = x + self._pos_embed(x.shape[1], x.shape[2])
        outputs = []
        ends = set(self.stage_ends)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs


class _Lateral(nn.Module):
    """A 1×1 convolution, stored as ``conv`` (checkpoint layout ``convs.N.conv``)."""

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FpnNeck(nn.Module):
    """Feature pyramid: 1×1 projections, top-down sums on ``top_down_levels`` (nearest ×2).

    ``backbone_channel_list`` lists the trunk widths coarsest first;
    ``convs[j]`` projects that level. Levels are numbered finest first.
    """

    def __init__(
        self,
        d_model: int,
        backbone_channel_list: Sequence[int],
        top_down_levels: Sequence[int] = (2, 3),
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        self.convs = nn.ModuleList(_Lateral(c, d_model) for c in backbone_channel_list)
        self.top_down_levels = set(top_down_levels)

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        n = len(self.convs) - 1
        out: list[torch.Tensor] = [None] * len(xs)  # type: ignore[list-item]
        previous = None
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](xs[i])
            if i in self.top_down_levels and previous is not None:
                up = F.interpolate(previous.float(), scale_factor=2.0, mode="nearest")
                previous = lateral + up
            else:
                previous = lateral
            out[i] = previous
        return out


class ImageEncoder(nn.Module):
    """Trunk + neck; returns the three finest pyramid levels (strides 4, 8, 16), finest first."""

    def __init__(self, trunk: Hiera, neck: FpnNeck, scalp: int = 1) -> None:
        super().__init__()
        if trunk.channel_list != neck.backbone_channel_list:
            raise ValueError(
                f"The trunk's widths {trunk.channel_list} do not match the neck's "
                f"{neck.backbone_channel_list}."
            )
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        levels = self.neck(self.trunk(images))
        return levels[: len(levels) - self.scalp] if self.scalp else levels
