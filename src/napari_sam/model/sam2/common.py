"""Small building blocks of the SAM 2 networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.sam.common import LayerNorm2d

__all__ = ["MLP", "ConvNeXtBlock", "LayerNorm2d"]


class MLP(nn.Module):
    """``num_layers`` linear layers with an activation between them.

    Parameters are stored as ``layers.0``, ``layers.1``, … as in the published
    SAM 2 checkpoints. ``activation`` is ``"relu"`` (heads, pointers) or
    ``"gelu"`` (the Hiera blocks).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: str = "relu",
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))
        self._act = F.gelu if activation == "gelu" else F.relu
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self._act(x)
        if self.sigmoid_output:
            x = torch.sigmoid(x)
        return x


class ConvNeXtBlock(nn.Module):
    """A ConvNeXt block on ``(B, C, H, W)``: depth-wise 7×7 conv, layer norm,
    point-wise MLP (×4, GELU), layer scale ``gamma``, residual.

    Parameter names (``dwconv``, ``norm``, ``pwconv1``, ``pwconv2``, ``gamma``)
    are those of the checkpoints' memory-encoder fuser.
    """

    def __init__(self, dim: int, kernel_size: int = 7, padding: int = 3) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=kernel_size, padding=padding, groups=dim)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(y))) * self.gamma
        return x + y.permute(0, 3, 1, 2)
