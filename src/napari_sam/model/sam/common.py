"""Small building blocks shared by the SAM sub-networks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

#: How the image encoders compute attention in reduced precision: ``"fused"``
#: (PyTorch's fused kernel) or ``"matmul"`` (two matrix products around a softmax);
#: see :func:`~napari_sam.model.sam.image_encoder.attention_with_rel_pos` and
#: :attr:`~napari_sam.model.sam.tiny_vit.TinyViT.attention_kernel`.
ATTENTION_KERNELS = ("fused", "matmul")


def check_attention_kernel(kernel: str) -> str:
    """``kernel`` if it is one of :data:`ATTENTION_KERNELS` (ValueError otherwise)."""
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"Unknown attention kernel {kernel!r}; use one of {ATTENTION_KERNELS}.")
    return kernel


@contextlib.contextmanager
def float32_region(x: torch.Tensor) -> Iterator[None]:
    """Compute in float32 inside, even under autocast on ``x``'s device.

    The encoders' necks use it: their two convolutions and layer norms make the
    embedding, so computing them in float32 removes the last bf16 roundings of
    every feature (about a quarter of the bf16 encoder's error) for ~0.6 % of
    ViT-B's arithmetic (~7 % of MobileSAM's). The caller casts inputs to float32.
    """
    device_type = x.device.type
    if device_type == "meta" or not torch.is_autocast_enabled(device_type):
        # "meta" (shape-only tensors, e.g. when FLOPs are counted) has no autocast
        yield
        return
    with torch.autocast(device_type, enabled=False):
        yield


class LayerNorm2d(nn.Module):
    """Layer normalisation over the channel axis of a ``(B, C, H, W)`` tensor.

    Parameters are named ``weight`` and ``bias`` (shape ``(C,)``) as in the
    published checkpoints.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise channels-last with the fused kernel, then go back to NCHW.
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class MLPBlock(nn.Module):
    """Two-layer feed-forward block ``lin2(act(lin1(x)))`` of a transformer."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.lin1(x)
        if isinstance(self.act, nn.GELU) and not torch.is_grad_enabled():
            # In place: the hidden activations are the block's largest tensor
            # (4 × width per token); a fresh buffer for GELU's output costs as
            # much in page faults as the GELU itself on a CPU.
            hidden = torch.ops.aten.gelu_(hidden, approximate=self.act.approximate)
        else:
            hidden = self.act(hidden)
        return self.lin2(hidden)


class MLP(nn.Module):
    """Stack of ``num_layers`` linear layers with ReLU between them.

    Used for the hypernetworks that turn mask tokens into mask weights and for
    the IoU prediction head. Layers are stored in ``self.layers`` as in the
    checkpoints.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        if self.sigmoid_output:
            x = torch.sigmoid(x)
        return x
