"""The instance decoder of automatic instance segmentation (AIS), in pure torch.

micro-sam trains, together with its fine-tuned SAM encoders, a convolutional
decoder that turns the image embedding into three per-pixel maps from which a
seeded watershed cuts the objects (see :mod:`napari_sam.workflows.ais`):

0. **foreground** probability;
1. **centre distance**: normalised distance to the centre of the object the
   pixel belongs to (small near the centre);
2. **boundary distance**: normalised, inverted distance to the object's
   boundary (small deep inside an object, large at its edge).

Architecture (a UNETR-style decoder that uses only the encoder's output, no
intermediate encoder features). ``f`` is the ``(B, 256, 64, 64)`` embedding
that every SAM 1 encoder (vit_t, vit_b, vit_l, vit_h) produces for its
1024 × 1024 input canvas; the decoder is therefore the same network for all
of them::

    z9 = stage(f)  512 ch, 128²      stage = 2x up, 3x3 conv, batch norm, ReLU
    z6 = stage(z9) 256 ch, 256²
    z3 = stage(z6) 128 ch, 512²
    z0 = stage(z3)  64 ch, 1024²
    x  = double(f) 512 ch, 64²       double = (instance norm, 3x3 conv, ReLU) x 2
    3x: x = double(cat(up(x), middle half of the channels of z9 / z6 / z3))
    x  = up(x)                        64 ch, 1024²
    x  = double(cat(x, z0))           64 ch, 1024²
    maps = sigmoid(1x1 conv(x))        3 ch, 1024²  (the padded input canvas)

``up`` doubles the size and halves the channels (of the skip branches: maps
``c_in`` to ``c_out`` channels): a transposed 2x2 convolution, or a bilinear
resize followed by a 1x1 convolution, depending on how the decoder was trained
(the parameter names tell: ``*.block.weight`` or ``*.conv.weight``). Each
level concatenates the upsampled features with the *central half* of the
skip tensor's channels (the skip has twice as many; the published decoders
were trained that way). Finally the maps are cropped to the part of the canvas
the resized image covers and resized (bilinear) to the original image size,
as SAM's mask logits are.

Parameter names equal the keys of micro-sam's ``decoder_state`` (the file
``vit_b_decoder.pt`` etc., or the ``"decoder_state"`` entry of an exported
model), so those load with strict keys.

Memory: the last level runs at 1024 × 1024 with 128 channels (512 MB per
float32 tensor). :meth:`InstanceDecoder.forward` runs it in horizontal strips:
only the two 64-channel full-resolution tensors the instance norms need are
kept whole, and the last convolutions only run where the image is (not on
the padding of a non-square image). The result equals the whole-tensor
computation up to float rounding.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.errors import CheckpointError

__all__ = [
    "DECODER_CHANNELS",
    "EMBED_DIM",
    "InstanceDecoder",
    "decoder_from_state",
    "upsampling_of",
]

#: Channels of the SAM 1 embedding the decoder reads (every encoder's neck gives 256).
EMBED_DIM = 256
#: Channels of the decoder's levels, coarsest first.
DECODER_CHANNELS = (512, 256, 128, 64)
#: Output maps, in order.
MAP_NAMES = ("foreground", "center_distances", "boundary_distances")
#: ``eps`` of the normalisation layers (torch's default, which the decoders were trained with).
_EPS = 1e-5
#: Rows of the full-resolution canvas processed at once.
_STRIP = 128


# --------------------------------------------------------------------------- building blocks
class _BilinearUp(nn.Module):
    """2x bilinear upsampling, then a 1x1 convolution (parameters ``conv.*``)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.conv(x)


class _TransposedUp(nn.Module):
    """2x upsampling by a transposed 2x2 convolution of stride 2 (parameters ``block.*``)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.block = nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


_UPSAMPLERS: dict[str, type[nn.Module]] = {
    "bilinear": _BilinearUp,
    "transposed": _TransposedUp,
}


class _Conv3(nn.Module):
    """A 3x3 convolution, zero padding 1 (parameters ``block.*``)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.block = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _Stage(nn.Module):
    """2x up, 3x3 conv, batch norm (running statistics), ReLU."""

    def __init__(self, c_in: int, c_out: int, upsampling: str) -> None:
        super().__init__()
        self.block = nn.Sequential(
            _UPSAMPLERS[upsampling](c_in, c_out),
            _Conv3(c_out, c_out),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )

    @property
    def up(self) -> nn.Module:
        return self.block[0]

    def conv_bn_relu(self, x: torch.Tensor, padding: int | tuple[int, int] = 1) -> torch.Tensor:
        """3x3 conv (with ``padding``), batch norm with running statistics, ReLU."""
        conv = self.block[1].block
        bn = self.block[2]
        x = F.conv2d(x, conv.weight, conv.bias, padding=padding)
        x = F.batch_norm(
            x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
        )
        return x.relu_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_bn_relu(self.up(x))


class _Double(nn.Module):
    """(instance norm, 3x3 conv, ReLU) twice; the norms have no parameters."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.InstanceNorm2d(c_in),
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.InstanceNorm2d(c_out),
            nn.Conv2d(c_out, c_out, 3, padding=1),
            nn.ReLU(inplace=True),
        )

    @property
    def conv1(self) -> nn.Conv2d:
        return self.block[1]

    @property
    def conv2(self) -> nn.Conv2d:
        return self.block[4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(_normalized(x), self.conv1.weight, self.conv1.bias, padding=1).relu_()
        return F.conv2d(_normalized(x), self.conv2.weight, self.conv2.bias, padding=1).relu_()


class _Levels(nn.Module):
    """The three decoder levels: upsample, join a skip branch, double conv."""

    def __init__(self, channels: Sequence[int], upsampling: str) -> None:
        super().__init__()
        pairs = list(itertools.pairwise(channels))
        self.samplers = nn.ModuleList(_UPSAMPLERS[upsampling](a, b) for a, b in pairs)
        self.blocks = nn.ModuleList(_Double(a, b) for a, b in pairs)

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        for sampler, block, skip in zip(self.samplers, self.blocks, skips):
            x = sampler(x)
            x = block(torch.cat([x, _middle_channels(skip, x.shape[1])], dim=1))
        return x


def _middle_channels(skip: torch.Tensor, n: int) -> torch.Tensor:
    """The central ``n`` channels of ``skip`` (``skip`` has at least ``n``)."""
    start = (skip.shape[1] - n) // 2
    return skip[:, start : start + n]


# --------------------------------------------------------------------------- the decoder
class InstanceDecoder(nn.Module):
    """micro-sam's AIS decoder: SAM embedding -> foreground, centre and boundary distance maps.

    Parameters
    ----------
    upsampling : ``"transposed"`` or ``"bilinear"``
        How the decoder upsamples (fixed by the weights: see :func:`upsampling_of`).
    embed_dim : int
        Channels of the embedding (256 for every SAM 1 encoder).

    Attributes
    ----------
    encoder : str or None
        The encoder architecture (``"vit_b"`` ...) the weights were trained with, when
        known (set by the loader; the network itself is the same for every encoder).
    """

    def __init__(self, upsampling: str = "transposed", embed_dim: int = EMBED_DIM) -> None:
        super().__init__()
        if upsampling not in _UPSAMPLERS:
            raise ValueError(
                f"upsampling must be one of {', '.join(_UPSAMPLERS)}, not {upsampling!r}."
            )
        c = DECODER_CHANNELS
        self.upsampling = upsampling
        self.embed_dim = int(embed_dim)
        self.encoder: str | None = None
        self.deconv1 = _Stage(embed_dim, c[0], upsampling)
        self.deconv2 = _Stage(c[0], c[1], upsampling)
        self.deconv3 = _Stage(c[1], c[2], upsampling)
        self.deconv4 = _Stage(c[2], c[3], upsampling)
        self.base = _Double(embed_dim, c[0])
        self.decoder = _Levels(c, upsampling)
        self.deconv_out = _UPSAMPLERS[upsampling](c[3], c[3])
        self.decoder_head = _Double(2 * c[3], c[3])
        self.out_conv = nn.Conv2d(c[3], len(MAP_NAMES), 1)
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.out_conv.weight.device

    @torch.no_grad()
    def forward(
        self,
        features: torch.Tensor,
        input_size: Sequence[int],
        original_size: Sequence[int],
        *,
        strip: int = _STRIP,
    ) -> torch.Tensor:
        """The three maps of each image, at its original size.

        Parameters
        ----------
        features : Tensor ``(B, 256, 64, 64)``
            SAM image embeddings (any float dtype; computed in float32).
        input_size : (h, w)
            Size of the resized image on SAM's 1024 × 1024 canvas (its top-left part).
        original_size : (H, W)
            Size of the original image.
        strip : int
            Rows of the full-resolution canvas computed at once (memory vs. speed;
            no effect on the result beyond float rounding).

        Returns
        -------
        Tensor ``(B, 3, H, W)`` float32
            Foreground probability, centre distance and boundary distance, each in [0, 1].
        """
        if features.ndim != 4 or features.shape[1] != self.embed_dim:
            raise ValueError(
                f"The decoder needs (B, {self.embed_dim}, h, w) embeddings, got "
                f"{tuple(features.shape)}."
            )
        # Channels-last ("NHWC") activations: faster convolutions on CPUs, and a band of
        # rows of one image is a contiguous block.
        f = features.to(device=self.device, dtype=torch.float32)
        f = f.contiguous(memory_format=torch.channels_last)
        out_h, out_w = (int(s) for s in input_size)
        maps = []
        for i in range(f.shape[0]):
            fi = f[i : i + 1]
            z9 = self.deconv1(fi)
            z6 = self.deconv2(z9)
            z3 = self.deconv3(z6)
            x = self.decoder(self.base(fi), [z9, z6, z3])
            del z9, z6
            z0 = self._skip0(z3, strip)
            del z3
            h1 = self._head_conv1(x, z0, strip)
            del z0, x
            canvas = self._head_out(h1, out_h, out_w, strip)
            del h1
            maps.append(
                F.interpolate(
                    canvas, tuple(int(s) for s in original_size), mode="bilinear",
                    align_corners=False,
                )
            )
        return torch.cat(maps, dim=0)

    # The full-resolution part, strip by strip. ``strip``: rows per step.
    def _skip0(self, z3: torch.Tensor, strip: int) -> torch.Tensor:
        """z0 = stage(z3): the 64-channel skip branch at full resolution."""
        _, _, hh, ww = z3.shape
        h, w = 2 * hh, 2 * ww
        z0 = _empty_like_rows(z3, DECODER_CHANNELS[-1], h, w)
        up = self.deconv4.up
        for r0, r1 in _strips(h, strip):
            rows = _rows(lambda a, b: _up_rows(up, z3, a, b), r0 - 1, r1 + 1, h)
            z0[:, :, r0:r1] = self.deconv4.conv_bn_relu(rows, padding=(0, 1))
        return z0

    def _head_conv1(self, d: torch.Tensor, z0: torch.Tensor, strip: int) -> torch.Tensor:
        """relu(conv1(instance_norm(cat(up(d), z0)))): the head's first half.

        ``d`` is the last level's output at half resolution; ``up(d)`` is
        computed strip by strip (twice: once for its instance-norm statistics),
        never whole.
        """
        _, c, h, w = z0.shape
        up = self.deconv_out
        x_mean, x_std = _strip_stats(lambda a, b: _up_rows(up, d, a, b), _strips(h, strip), c)
        z_mean, z_std = _stats(z0)
        conv = self.decoder_head.conv1

        def joined(a: int, b: int) -> torch.Tensor:
            x = (_up_rows(up, d, a, b) - x_mean) / x_std
            z = (z0[:, :, a:b] - z_mean) / z_std
            return torch.cat([x, z], dim=1)

        h1 = _empty_like_rows(z0, c, h, w)
        for r0, r1 in _strips(h, strip):
            rows = _rows(joined, r0 - 1, r1 + 1, h)
            h1[:, :, r0:r1] = F.conv2d(rows, conv.weight, conv.bias, padding=(0, 1))
        return h1.relu_()

    def _head_out(self, h1: torch.Tensor, out_h: int, out_w: int, strip: int) -> torch.Tensor:
        """sigmoid(out_conv(relu(conv2(instance_norm(h1))))) on the top-left ``out_h x out_w``.

        The statistics cover the whole canvas; the convolutions run only where
        the image is (plus one column for the 3x3 window).
        """
        _, _, h, w = h1.shape
        mean, std = _stats(h1)
        cols = min(w, out_w + 1)
        conv = self.decoder_head.conv2
        out = torch.empty((1, len(MAP_NAMES), out_h, out_w), dtype=h1.dtype, device=h1.device)
        for r0, r1 in _strips(min(h, out_h), strip):
            rows = _rows(lambda a, b: (h1[:, :, a:b, :cols] - mean) / std, r0 - 1, r1 + 1, h)
            y = F.conv2d(rows, conv.weight, conv.bias, padding=(0, 1)).relu_()
            y = F.conv2d(y, self.out_conv.weight, self.out_conv.bias)
            out[:, :, r0:r1] = torch.sigmoid(y[..., :out_w])
        return out


# --------------------------------------------------------------------------- strip helpers
def _strips(height: int, strip: int) -> list[tuple[int, int]]:
    """``(first, end)`` rows of consecutive bands of ``strip`` rows covering ``height``."""
    return [(r0, min(height, r0 + strip)) for r0 in range(0, height, strip)]


def _rows(
    compute: Callable[[int, int], torch.Tensor], r0: int, r1: int, height: int
) -> torch.Tensor:
    """Rows ``r0 .. r1 - 1`` of a full-height tensor given by ``compute(a, b)`` (rows a..b-1),
    with zero rows where ``r0 < 0`` or ``r1 > height`` (the zero padding of a 3x3 conv)."""
    a, b = max(r0, 0), min(r1, height)
    t = compute(a, b)
    if a > r0 or b < r1:
        t = F.pad(t, (0, 0, a - r0, r1 - b))
    return t


def _up_rows(up: nn.Module, t: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
    """Rows ``r0 .. r1 - 1`` of ``up(t)`` (a 2x upsampling), computed from a slab of ``t``.

    A bilinear 2x resize reads at most the neighbouring input row on each
    side, a transposed 2x2 convolution only its own row; one extra input row
    on each side makes the slab's rows equal the whole tensor's.
    """
    n = t.shape[-2]
    a = max(0, r0 // 2 - 1)
    b = min(n, (r1 + 1) // 2 + 1)
    return up(t[:, :, a:b])[:, :, r0 - 2 * a : r1 - 2 * a]


def _empty_like_rows(t: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    """An uninitialised ``(1, c, h, w)`` float32 tensor on ``t``'s device, channels last."""
    return torch.empty(
        (1, c, h, w), dtype=t.dtype, device=t.device, memory_format=torch.channels_last
    )


def _normalized(t: torch.Tensor) -> torch.Tensor:
    """Instance norm without parameters: each channel of each image to mean 0, variance 1."""
    var, mean = torch.var_mean(t, dim=(2, 3), unbiased=False, keepdim=True)
    return (t - mean) / torch.sqrt(var + _EPS)


def _stats(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and sqrt(var + eps) of ``(1, C, H, W)``, shaped for broadcasting."""
    var, mean = torch.var_mean(t, dim=(0, 2, 3), unbiased=False, keepdim=True)
    return mean, torch.sqrt(var + _EPS)


def _strip_stats(
    compute: Callable[[int, int], torch.Tensor], strips: Sequence[tuple[int, int]], c: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_stats` of a tensor that is only ever computed strip by strip (float64 sums)."""
    total = 0
    s1 = s2 = 0.0
    for r0, r1 in strips:
        t = compute(r0, r1).double()
        s1 = s1 + t.sum(dim=(0, 2, 3))
        s2 = s2 + (t * t).sum(dim=(0, 2, 3))
        total += t.shape[0] * t.shape[2] * t.shape[3]
    mean = torch.as_tensor(s1) / max(total, 1)
    var = (torch.as_tensor(s2) / max(total, 1) - mean * mean).clamp_min(0.0)
    shape = (1, c, 1, 1)
    std = torch.sqrt(var + _EPS)
    return mean.float().view(shape), std.float().view(shape)


# --------------------------------------------------------------------------- from a state dict
def upsampling_of(state: Mapping[str, torch.Tensor]) -> str:
    """``"transposed"`` or ``"bilinear"``: how the decoder of ``state`` upsamples.

    A transposed convolution is stored as ``decoder.samplers.N.block.*``, a
    bilinear resize + 1x1 convolution as ``decoder.samplers.N.conv.*``.
    """
    samplers = [k for k in state if k.startswith("decoder.samplers.")]
    return "transposed" if any(".block." in k for k in samplers) else "bilinear"


def decoder_from_state(
    state: Mapping[str, torch.Tensor], *, source: str = "state dict"
) -> InstanceDecoder:
    """Build an :class:`InstanceDecoder` holding the tensors of ``state`` (strict keys).

    Raises
    ------
    CheckpointError
        ``state`` is not a decoder state dict, or its keys or shapes do not fit;
        the one-sentence message names the missing, unexpected and wrongly shaped keys.
    """
    if not isinstance(state, Mapping) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(
            f"The decoder in {source} is not a state dict (parameter names mapped to tensors)."
        )
    decoder = InstanceDecoder(upsampling_of(state))
    expected = decoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_preview(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_preview(unexpected)}")
        if wrong:
            shapes = [
                f"{k} {tuple(state[k].shape)} instead of {tuple(expected[k].shape)}" for k in wrong
            ]
            parts.append(f"{len(wrong)} tensor(s) of the wrong shape: {_preview(shapes)}")
        raise CheckpointError(
            f"The decoder in {source} does not fit micro-sam's instance decoder: "
            + "; ".join(parts)
            + "."
        )
    converted = {
        k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state.items()
    }
    decoder.load_state_dict(converted, strict=True)
    return decoder.eval()


def _preview(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", … ({len(items) - n} more)" if len(items) > n else "")
