"""Resizing images and prompts to SAM's input frame.

SAM sees images whose *longest* side is ``target_length`` (1024) pixels. Point
and box coordinates are x, y in pixels of the image they refer to; they are
scaled with the image.
"""

from __future__ import annotations

from copy import deepcopy

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


class ResizeLongestSide:
    """Resize images so their longest side is ``target_length``, and map coordinates.

    The numpy image path resamples with Pillow's bilinear filter (which
    antialiases when shrinking); the torch path uses
    ``F.interpolate(..., mode="bilinear", antialias=True)``.
    """

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        """``(newh, neww)`` of an ``oldh × oldw`` image resized to ``long_side_length``."""
        scale = long_side_length * 1.0 / max(oldh, oldw)
        newh, neww = oldh * scale, oldw * scale
        return int(newh + 0.5), int(neww + 0.5)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Resize a ``(H, W, 3)`` (or ``(H, W)``) uint8 image; returns uint8, same layout."""
        h, w = image.shape[:2]
        newh, neww = self.get_preprocess_shape(h, w, self.target_length)
        if (newh, neww) == (h, w):
            return np.array(image)
        resized = Image.fromarray(np.ascontiguousarray(image)).resize(
            (neww, newh), resample=Image.BILINEAR
        )
        return np.array(resized)

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """Scale ``(..., 2)`` x, y coordinates of an image of ``original_size`` (H, W)."""
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        coords = deepcopy(coords).astype(float)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """Scale ``(B, 4)`` x0, y0, x1, y1 boxes; returns ``(B, 4)`` float."""
        return self.apply_coords(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """Resize a ``(B, C, H, W)`` float tensor (antialiased bilinear)."""
        newh, neww = self.get_preprocess_shape(image.shape[2], image.shape[3], self.target_length)
        return F.interpolate(
            image, (newh, neww), mode="bilinear", align_corners=False, antialias=True
        )

    def apply_coords_torch(
        self, coords: torch.Tensor, original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Torch version of :meth:`apply_coords` (returns float32)."""
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        coords = deepcopy(coords).to(torch.float)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes_torch(
        self, boxes: torch.Tensor, original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Torch version of :meth:`apply_boxes`."""
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)
