"""Sam2ImagePredictor: SAM 2 on single images, with the methods of ``sam2``'s predictor.

Images are ``(H, W, 3)`` uint8 RGB arrays in memory. SAM 2 stretches every
image to its square input (1024 × 1024, bilinear with antialiasing), so
masks come back at the image's size without padding. Coordinates follow SAM:
points are ``(x, y)`` pixels of the image given to :meth:`set_image` (x =
column), boxes ``(x0, y0, x1, y1)``.

Deliberate differences from ``sam2.SAM2ImagePredictor``: no PIL images and no
Hugging Face download (use :func:`napari_sam.runtime.loader.load`); prompt
and image errors raise napari-sam's errors with one plain sentence; small
holes and specks (``max_hole_area`` / ``max_sprinkle_area``) are removed with
OpenCV instead of a CUDA extension, so they work on every device;
:meth:`get_embedding` / :meth:`set_embedding` store and restore an encoded
image (the embedding caches of :mod:`napari_sam.workflows.embeddings` use them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from napari_sam.errors import ImageFormatError, ImageNotSetError, PromptError
from napari_sam.model.sam2.sam2 import Sam2
from napari_sam.predictors.predictor import ImageEmbedding, _check_rgb_uint8

__all__ = [
    "RESIZE_METHODS",
    "Sam2ImagePredictor",
    "embed_images_sam2",
    "fill_small_regions",
    "sam2_input",
]

#: How an image is resized to SAM 2's square input: ``"bilinear"`` (antialiased, as
#: ``sam2``'s image predictor does) or ``"bicubic"`` (as PIL resizes the JPEG frames
#: ``sam2``'s video predictor reads).
RESIZE_METHODS = ("bilinear", "bicubic")


def sam2_input(image: np.ndarray, size: int, resize: str = "bilinear") -> torch.Tensor:
    """An ``(H, W, 3)`` uint8 RGB image as SAM 2's ``(3, size, size)`` float input in 0–1 (CPU).

    Not yet normalised (see :meth:`Sam2.preprocess`).
    """
    _check_rgb_uint8(image)
    if resize == "bicubic":
        from PIL import Image

        resized = np.asarray(
            Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.BICUBIC)
        )
        return torch.from_numpy(resized / 255.0).permute(2, 0, 1).float()
    if resize != "bilinear":
        known = ", ".join(RESIZE_METHODS)
        raise ImageFormatError(f"resize must be one of {known}, not {resize!r}.")
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    return F.interpolate(
        tensor[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )[0]


def embed_images_sam2(
    model: Sam2, images: Sequence[np.ndarray], resize: str = "bilinear"
) -> list[ImageEmbedding]:
    """Encode ``(H, W, 3)`` uint8 RGB images in one forward pass.

    Returns one :class:`ImageEmbedding` per image (float32, on the model's
    device): ``features`` are the raw stride-16 features, ``high_res`` the
    two projected finer maps, ``input_size`` the square model input.
    """
    if not images:
        return []
    size = model.image_size
    batch = torch.stack([sam2_input(im, size, resize) for im in images]).to(model.device)
    with torch.no_grad():
        feats = model.encode_image(model.preprocess(batch))
    out = []
    for i, image in enumerate(images):
        one = feats.select(i)
        out.append(
            ImageEmbedding(
                one.image if len(images) == 1 else one.image.clone(),
                (int(image.shape[0]), int(image.shape[1])),
                (size, size),
                tuple(h if len(images) == 1 else h.clone() for h in one.high_res),
            )
        )
    return out


def fill_small_regions(
    logits: torch.Tensor,
    threshold: float,
    max_hole_area: float,
    max_sprinkle_area: float = 0.0,
    hole_value: float | None = None,
) -> torch.Tensor:
    """Fill small background holes and remove small foreground specks of mask logits.

    Connected regions (8-connectivity) of ``logits <= threshold`` with at
    most ``max_hole_area`` pixels become ``hole_value`` (default
    ``threshold + 10``); regions of
    ``logits > threshold`` with at most ``max_sprinkle_area`` pixels become
    ``threshold - 10``. Works on ``(..., H, W)`` tensors on any device (the
    labelling runs on the CPU with OpenCV).
    """
    import cv2

    if max_hole_area <= 0 and max_sprinkle_area <= 0:
        return logits
    fill = threshold + 10.0 if hole_value is None else float(hole_value)
    flat = logits.detach().float().cpu().reshape(-1, *logits.shape[-2:]).numpy()
    out = flat.copy()
    for i, plane in enumerate(flat):
        for area, region, value in (
            (max_hole_area, plane <= threshold, fill),
            (max_sprinkle_area, plane > threshold, threshold - 10.0),
        ):
            if area <= 0 or not region.any():
                continue
            _, labels, stats, _ = cv2.connectedComponentsWithStats(
                region.astype(np.uint8), connectivity=8
            )
            small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] <= area)
            small = small[small > 0]
            if small.size:
                out[i][np.isin(labels, small)] = value
    return torch.from_numpy(out).reshape(logits.shape).to(logits.device, logits.dtype)


class Sam2ImagePredictor:
    """Encode an image once with SAM 2 and predict masks for many prompts.

    Parameters
    ----------
    sam_model : Sam2
    mask_threshold : float
        Logit above which a pixel belongs to the mask.
    max_hole_area, max_sprinkle_area : float
        If > 0, holes / specks of at most that many pixels (in the 256 × 256
        low-resolution mask) are filled / removed before upscaling.
    """

    def __init__(
        self,
        sam_model: Sam2,
        mask_threshold: float = 0.0,
        max_hole_area: float = 0.0,
        max_sprinkle_area: float = 0.0,
    ) -> None:
        if not isinstance(sam_model, Sam2):
            raise ImageFormatError(
                f"Sam2ImagePredictor needs a SAM 2 model, got {type(sam_model).__name__}; "
                "use SamPredictor for SAM 1 models."
            )
        self.model = sam_model
        self.mask_threshold = float(mask_threshold)
        self.max_hole_area = float(max_hole_area)
        self.max_sprinkle_area = float(max_sprinkle_area)
        self.reset_predictor()

    # ------------------------------------------------------------------ image
    @property
    def device(self) -> torch.device:
        """Device of the model."""
        return self.model.device

    def reset_predictor(self) -> None:
        """Forget the current image(s)."""
        self._is_image_set = False
        self._is_batch = False
        self._embeddings: list[ImageEmbedding] = []
        self._orig_hw: list[tuple[int, int]] = []

    @property
    def is_image_set(self) -> bool:
        return self._is_image_set

    @torch.no_grad()
    def set_image(self, image: np.ndarray) -> None:
        """Encode an ``(H, W, 3)`` uint8 RGB image for :meth:`predict`."""
        self.reset_predictor()
        self._embeddings = embed_images_sam2(self.model, [image])
        self._orig_hw = [self._embeddings[0].original_size]
        self._is_image_set = True

    @torch.no_grad()
    def set_image_batch(self, image_list: Sequence[np.ndarray]) -> None:
        """Encode several images (one forward pass) for :meth:`predict_batch`."""
        if not isinstance(image_list, (list, tuple)) or not image_list:
            raise ImageFormatError("set_image_batch needs a non-empty list of (H, W, 3) images.")
        self.reset_predictor()
        self._embeddings = embed_images_sam2(self.model, list(image_list))
        self._orig_hw = [e.original_size for e in self._embeddings]
        self._is_image_set = True
        self._is_batch = True

    def get_embedding(self, img_idx: int = 0) -> ImageEmbedding:
        """The current image's embedding (raw features and high-resolution maps)."""
        self._require_image()
        return self._embeddings[img_idx]

    def set_embedding(self, embedding: ImageEmbedding) -> None:
        """Restore an embedding from :meth:`get_embedding` or a cache, without encoding."""
        expected = (1, self.model.hidden_dim, self.model.feature_size, self.model.feature_size)
        if tuple(embedding.features.shape) != expected or len(embedding.high_res) != 2:
            raise ImageFormatError(
                f"The stored image embedding (features {tuple(embedding.features.shape)}, "
                f"{len(embedding.high_res)} high-resolution maps) was not made by this SAM 2 model."
            )
        self.reset_predictor()
        emb = embedding.to(self.device)
        self._embeddings = [
            ImageEmbedding(
                emb.features.float(),
                emb.original_size,
                emb.input_size,
                tuple(h.float() for h in emb.high_res),
            )
        ]
        self._orig_hw = [tuple(int(s) for s in embedding.original_size)]
        self._is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        """The stride-16 image embedding the decoder sees, ``(1, 256, 64, 64)``."""
        self._require_image()
        return self._image_embed(0)

    def _image_embed(self, img_idx: int) -> torch.Tensor:
        # SAM 2 adds its "no memory" embedding to a single image's features.
        return self._embeddings[img_idx].features + self.model.no_mem_embed.view(1, -1, 1, 1)

    # ------------------------------------------------------------------ prompts
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for prompts on the current image.

        Parameters
        ----------
        point_coords : ndarray ``(N, 2)`` or ``(B, N, 2)``, optional
            Points as (x, y) pixels (with ``normalize_coords``; else in 0–1).
        point_labels : ndarray ``(N,)`` or ``(B, N)``, optional
            1 = foreground, 0 = background.
        box : ndarray ``(4,)`` or ``(B, 4)``, optional
            Boxes as x0, y0, x1, y1.
        mask_input : ndarray ``(1, 256, 256)`` or ``(B, 1, 256, 256)``, optional
            Low-resolution logits of an earlier prediction.
        multimask_output : bool
            Three candidate masks (best for a single click).
        return_logits : bool
            Float logits instead of 0/1 masks.

        Returns
        -------
        masks : ndarray ``(C, H, W)`` (``(B, C, H, W)`` for batched prompts) float32
            0/1 (as ``sam2`` returns them), or logits with ``return_logits``.
        scores : ndarray ``(C,)`` float32, predicted IoU
        logits : ndarray ``(C, 256, 256)`` float32, low-resolution logits (clamped to ±32)
        """
        self._require_image()
        return self._predict_numpy(
            0, point_coords, point_labels, box, mask_input, multimask_output, return_logits,
            normalize_coords,
        )

    def predict_batch(
        self,
        point_coords_batch: Sequence[np.ndarray | None] | None = None,
        point_labels_batch: Sequence[np.ndarray | None] | None = None,
        box_batch: Sequence[np.ndarray | None] | None = None,
        mask_input_batch: Sequence[np.ndarray | None] | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """:meth:`predict` for each image of :meth:`set_image_batch`; lists of its three outputs."""
        self._require_image()
        if not self._is_batch:
            raise ImageNotSetError("predict_batch needs images set with set_image_batch(...).")
        outs: tuple[list, list, list] = ([], [], [])
        for i in range(len(self._embeddings)):

            def pick(seq: Sequence | None, i: int = i):
                return None if seq is None else seq[i]

            result = self._predict_numpy(
                i,
                pick(point_coords_batch),
                pick(point_labels_batch),
                pick(box_batch),
                pick(mask_input_batch),
                multimask_output,
                return_logits,
                normalize_coords,
            )
            for lst, arr in zip(outs, result):
                lst.append(arr)
        return outs

    def _predict_numpy(
        self,
        img_idx: int,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        box: np.ndarray | None,
        mask_input: np.ndarray | None,
        multimask_output: bool,
        return_logits: bool,
        normalize_coords: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        coords_t = labels_t = box_t = mask_t = None
        h, w = self._orig_hw[img_idx]
        size = self.model.image_size
        scale = np.array([size / w, size / h]) if normalize_coords else np.array([size, size])
        if point_coords is not None or point_labels is not None:
            coords, labels = _points(point_coords, point_labels)
            coords_t = torch.as_tensor(coords * scale, dtype=torch.float, device=self.device)
            labels_t = torch.as_tensor(labels, dtype=torch.int, device=self.device)
        if box is not None:
            boxes = _boxes(box)
            box_t = torch.as_tensor(
                boxes * np.tile(scale, 2), dtype=torch.float, device=self.device
            )
        if mask_input is not None:
            mask = np.asarray(mask_input, dtype=np.float32)
            if mask.ndim == 3:
                mask = mask[None]
            expected = self.model.sam_prompt_encoder.mask_input_size
            if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2:] != expected:
                raise PromptError(
                    f"mask_input must have shape (1, {expected[0]}, {expected[1]}) (low-resolution "
                    f"logits of an earlier prediction); got {mask.shape}."
                )
            mask_t = torch.as_tensor(mask, device=self.device)
        masks, iou, low = self.predict_torch(
            coords_t, labels_t, box_t, mask_t, multimask_output, return_logits, img_idx=img_idx
        )
        batched = masks.shape[0] > 1
        squeeze = (lambda t: t) if batched else (lambda t: t[0])
        return (
            squeeze(masks).float().cpu().numpy(),
            squeeze(iou).float().cpu().numpy(),
            squeeze(low).float().cpu().numpy(),
        )

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        img_idx: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prediction with prompts already in the model's input frame (0…1024).

        Parameters
        ----------
        point_coords : Tensor ``(B, N, 2)`` or None; point_labels : Tensor ``(B, N)`` or None
        boxes : Tensor ``(B, 4)`` or None
        mask_input : Tensor ``(B, 1, 256, 256)`` or None

        Returns
        -------
        masks : Tensor ``(B, C, H, W)`` bool (float logits with ``return_logits``)
        iou_predictions : Tensor ``(B, C)``
        low_res_logits : Tensor ``(B, C, 256, 256)``, clamped to ±32
        """
        self._require_image()
        if (point_coords is None) != (point_labels is None):
            raise PromptError("Point coordinates and point labels must be given together.")
        points = None
        if point_coords is not None:
            if point_coords.ndim == 2:
                point_coords, point_labels = point_coords[None], point_labels[None]
            points = (point_coords, point_labels)
        if boxes is not None:
            corners = boxes.reshape(-1, 2, 2)
            corner_labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).repeat(
                corners.shape[0], 1
            )
            if points is not None:
                points = (
                    torch.cat([corners, points[0]], dim=1),
                    torch.cat([corner_labels, points[1]], dim=1),
                )
            else:
                points = (corners, corner_labels)
        emb = self._embeddings[img_idx]
        out = self.model.decode(
            self._image_embed(img_idx),
            emb.high_res,
            points,
            mask_input,
            multimask_output,
        )
        low = out.masks.float()
        masks = fill_small_regions(
            low, self.mask_threshold, self.max_hole_area, self.max_sprinkle_area
        )
        masks = F.interpolate(masks, self._orig_hw[img_idx], mode="bilinear", align_corners=False)
        low = torch.clamp(low, -32.0, 32.0)
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, out.iou, low

    def _require_image(self) -> None:
        if not self._is_image_set:
            raise ImageNotSetError(
                "An image must be set with .set_image(...) before mask prediction."
            )


# ---------------------------------------------------------------------- input checks
def _points(coords: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
    if coords is None or labels is None:
        raise PromptError("Point coordinates and point labels must be given together.")
    coords = np.asarray(coords, dtype=float)
    labels = np.asarray(labels)
    if coords.ndim not in (2, 3) or coords.shape[-1] != 2:
        raise PromptError(f"point_coords must have shape (N, 2) as (x, y); got {coords.shape}.")
    if labels.shape != coords.shape[:-1]:
        raise PromptError(
            f"point_labels must hold one label per point: points of shape {coords.shape} but "
            f"labels of shape {labels.shape}."
        )
    if not np.isfinite(coords).all():
        raise PromptError("point_coords contain NaN or infinite values.")
    if not np.isin(labels, (0, 1)).all():
        raise PromptError("point_labels must be 1 (foreground) or 0 (background).")
    return coords, labels


def _boxes(box: object) -> np.ndarray:
    boxes = np.asarray(box, dtype=float)
    if boxes.ndim > 2 or boxes.shape[-1:] != (4,):
        raise PromptError(
            f"box must have shape (4,) or (B, 4) as x0, y0, x1, y1; got {boxes.shape}."
        )
    boxes = boxes.reshape(-1, 4)
    if not np.isfinite(boxes).all():
        raise PromptError("The box contains NaN or infinite values.")
    if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        raise PromptError(f"The box {boxes.tolist()} is inverted: expected x0 <= x1 and y0 <= y1.")
    return boxes
