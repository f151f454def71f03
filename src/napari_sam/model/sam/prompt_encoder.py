"""SAM prompt encoder: points, boxes and a low-resolution mask -> embeddings.

Coordinates are in the *model input frame*: x, y in pixels of the resized,
padded ``input_image_size`` image (1024×1024 for SAM), x first.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from napari_sam.model.sam.common import LayerNorm2d

#: Point labels understood by the prompt encoder.
LABEL_PADDING = -1
LABEL_NEGATIVE = 0
LABEL_POSITIVE = 1


class PositionEmbeddingRandom(nn.Module):
    """Fourier-feature positional encoding with a fixed random Gaussian matrix.

    The buffer ``positional_encoding_gaussian_matrix`` (shape ``(2, F)``) is part
    of the published checkpoints.
    """

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats))
        )

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        """``coords`` in ``[0, 1]``, shape ``(..., 2)`` as (x, y) -> ``(..., 2F)``."""
        projected = (2.0 * coords - 1.0) @ self.positional_encoding_gaussian_matrix
        projected = (2.0 * math.pi) * projected
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of every pixel centre of an ``(h, w)`` grid: ``(2F, h, w)``."""
        h, w = size
        matrix = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(h, device=matrix.device, dtype=matrix.dtype) + 0.5) / h
        xs = (torch.arange(w, device=matrix.device, dtype=matrix.dtype) + 0.5) / w
        grid = torch.stack(
            [xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1
        )  # (h, w, 2) as (x, y)
        return self._encode(grid).permute(2, 0, 1)

    def forward_with_coords(
        self, coords_input: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Encode pixel coordinates ``(..., 2)`` (x, y) of an image of size ``(h, w)``."""
        size_xy = torch.tensor(
            [float(image_size[1]), float(image_size[0])], device=coords_input.device
        )
        return self._encode(coords_input.to(torch.float) / size_xy)


class PromptEncoder(nn.Module):
    """Encode prompts for the mask decoder.

    Parameters
    ----------
    embed_dim : int
        Width of the prompt embeddings (256 for SAM).
    image_embedding_size : tuple of int
        ``(h, w)`` of the image embedding (64, 64).
    input_image_size : tuple of int
        ``(H, W)`` of the padded model input (1024, 1024).
    mask_in_chans : int
        Hidden channels of the mask downscaling network (16).
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0: negative point, 1: positive point, 2: box top-left, 3: box bottom-right
        self.num_point_embeddings = 4
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid: ``(1, embed_dim, h, w)``."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """``points`` ``(B, N, 2)`` x,y; ``labels`` ``(B, N)`` -> ``(B, N[+1], C)``."""
        points = points + 0.5  # move to the pixel centre
        if pad:
            b = points.shape[0]
            points = torch.cat([points, points.new_zeros((b, 1, 2))], dim=1)
            labels = torch.cat([labels, -labels.new_ones((b, 1))], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        padding = (labels == LABEL_PADDING).unsqueeze(-1)
        emb = torch.where(padding, self.not_a_point_embed.weight, emb)
        emb = emb + (labels == LABEL_NEGATIVE).unsqueeze(-1) * self.point_embeddings[0].weight
        emb = emb + (labels == LABEL_POSITIVE).unsqueeze(-1) * self.point_embeddings[1].weight
        return emb

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """``boxes`` ``(B, 4)`` as x0, y0, x1, y1 -> ``(B, 2, C)``."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        emb = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_type = torch.cat(
            [self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0
        )
        return emb + corner_type

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        return self.mask_downscaling(masks)

    @staticmethod
    def _get_batch_size(
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    def _get_device(self) -> torch.device:
        return self.point_embeddings[0].weight.device

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed prompts.

        Parameters
        ----------
        points : (Tensor ``(B, N, 2)`` float, Tensor ``(B, N)`` int) or None
            Point coordinates (x, y, model input frame) and labels (1 positive,
            0 negative, -1 padding).
        boxes : Tensor ``(B, 4)`` or None
            Boxes as x0, y0, x1, y1.
        masks : Tensor ``(B, 1, 256, 256)`` or None
            Low-resolution mask logits.

        Returns
        -------
        sparse : Tensor ``(B, N', embed_dim)``
        dense : Tensor ``(B, embed_dim, 64, 64)``
        """
        bs = self._get_batch_size(points, boxes, masks)
        parts = []
        if points is not None:
            coords, labels = points
            parts.append(self._embed_points(coords, labels, pad=boxes is None))
        if boxes is not None:
            parts.append(self._embed_boxes(boxes))
        if parts:
            sparse = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        else:
            sparse = torch.empty((bs, 0, self.embed_dim), device=self._get_device())
        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return sparse, dense
