"""Position encodings of SAM 2.

- :func:`sine_2d`: the fixed sine/cosine encoding of a feature map (the image
  features at stride 16 and the memories), normalised to the map's size.
- :func:`sine_1d`: the sine/cosine encoding of a scalar (how far an object
  pointer's frame is from the current one).
- :class:`AxialRope`: 2D rotary position encoding of the memory attention:
  the first half of every query/key vector is rotated by angles proportional
  to the token's column, the second half by its row.

All are computed in float32 from the formulas (no parameters).
"""

from __future__ import annotations

import math

import torch

__all__ = ["AxialRope", "sine_1d", "sine_2d"]


def _sine_frequencies(n: int, temperature: float, device: torch.device | None) -> torch.Tensor:
    """``temperature ** (2 * (i // 2) / n)`` for ``i < n``: consecutive pairs share a frequency."""
    i = torch.arange(n, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / n)


def sine_2d(
    channels: int,
    height: int,
    width: int,
    *,
    temperature: float = 10000.0,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Sine encoding of an ``(height, width)`` grid: ``(1, channels, height, width)`` float32.

    Rows and columns are numbered from 1 and divided by the last number
    (plus 1e-6), times 2π. The first ``channels / 2`` channels encode the
    row, the rest the column; within each half, channels alternate
    ``sin, cos`` of the same frequency.
    """
    half = channels // 2
    scale = 2 * math.pi
    eps = 1e-6
    ys = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    xs = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    ys = ys / (ys[-1] + eps) * scale
    xs = xs / (xs[-1] + eps) * scale
    freq = _sine_frequencies(half, temperature, device)

    def encode(values: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, half)
        angles = values[:, None] / freq
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(ys)[:, None, :].expand(height, width, half)
    pos_x = encode(xs)[None, :, :].expand(height, width, half)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1).unsqueeze(0).contiguous()


def sine_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine encoding of scalars: ``(..., dim)`` = ``[sin(p / f_i)…, cos(p / f_i)…]``."""
    half = dim // 2
    freq = _sine_frequencies(half, temperature, positions.device)
    angles = positions.float().unsqueeze(-1) / freq
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class AxialRope:
    """Rotary encoding of tokens on a square grid (row-major), for one head width.

    The head's ``dim`` channels form ``dim / 2`` pairs, each rotated as a
    complex number: pair ``j < dim / 4`` by the angle ``column * f_j``, pair
    ``dim / 4 + j`` by ``row * f_j``, with ``f_j = theta ** (-4 j / dim)``.
    The rotations (unit complex numbers) are kept per grid side and device.
    """

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        if dim % 4:
            raise ValueError(f"Rotary encoding needs a head width divisible by 4, got {dim}.")
        self.dim = dim
        self.theta = theta
        self._tables: dict[tuple[int, str], torch.Tensor] = {}

    def rotations(self, n_tokens: int, device: torch.device) -> torch.Tensor:
        """``(n_tokens, dim / 2)`` complex64 unit rotations for a square grid of tokens."""
        side = math.isqrt(n_tokens)
        if side * side != n_tokens:
            raise ValueError(f"Rotary encoding needs a square grid of tokens, got {n_tokens}.")
        key = (side, str(device))
        table = self._tables.get(key)
        if table is None:
            quarter = self.dim // 4
            freq = 1.0 / (
                self.theta ** (torch.arange(0, self.dim, 4)[:quarter].float() / self.dim)
            )
            t = torch.arange(n_tokens, dtype=torch.float32)
            col = t % side
            row = torch.div(t, side, rounding_mode="floor")
            angles = torch.cat([torch.outer(col, freq), torch.outer(row, freq)], dim=-1)
            table = torch.polar(torch.ones_like(angles), angles).to(device)
            self._tables[key] = table
        return table

    @staticmethod
    def rotate(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` ``(..., N, dim)`` by ``rotations`` ``(n, dim / 2)``, N a multiple of n.

        With ``N > n`` the tokens are consecutive frames of the same grid,
        each rotated alike. Computed in float32, returned in ``x``'s dtype.
        """
        n, pairs = rotations.shape
        lead = x.shape[:-2]
        reps = x.shape[-2] // n
        xc = torch.view_as_complex(x.float().reshape(*lead, reps, n, pairs, 2).contiguous())
        return torch.view_as_real(xc * rotations).reshape(x.shape).to(x.dtype)
