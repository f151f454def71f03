"""Models for the 3D tests: the small random SAM, and one with a fast stand-in encoder.

``fast_sam()`` is a real :class:`~napari_sam.model.sam.sam.Sam` (prompt encoder and
mask decoder of the small test config, random weights) whose image encoder is
replaced by an average pooling and a fixed 1×1 convolution: it maps a plane to
a (1, 256, 64, 64) embedding in milliseconds, deterministically and depending
on the pixels, so cache logic and widget plumbing can be tested quickly. Tests
that check SAM's behaviour use ``small_sam()`` (the real encoder).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.build import build_model
from reference import SMALL


class PoolEncoder(nn.Module):
    """(B, 3, 1024, 1024) -> (B, 256, 64, 64): 16×16 average pooling and a 1×1 convolution."""

    img_size = 1024

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = nn.Conv2d(3, 256, 1)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(256, 3, 1, 1, generator=g))
            self.proj.bias.copy_(torch.randn(256, generator=g) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.avg_pool2d(x, 16))


def small_sam(seed: int = 0):
    """The small test architecture with seeded random weights (real ViT encoder)."""
    torch.manual_seed(seed)
    return build_model(SMALL).eval()


def fast_sam(seed: int = 0):
    """A Sam with the small config's decoder and the fast :class:`PoolEncoder`."""
    sam = small_sam(seed)
    sam.image_encoder = PoolEncoder(seed)
    return sam.eval()


class EncoderCalls:
    """Counts forward passes and encoded planes of a model's image encoder."""

    def __init__(self, model) -> None:
        self.batches: list[int] = []
        self._handle = model.image_encoder.register_forward_hook(
            lambda module, inputs, output: self.batches.append(int(inputs[0].shape[0]))
        )

    @property
    def planes(self) -> int:
        return sum(self.batches)

    def reset(self) -> None:
        self.batches.clear()

    def remove(self) -> None:
        self._handle.remove()
