"""The :class:`Sam` module: image encoder + prompt encoder + mask decoder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.buffers import KeptBuffers
from napari_sam.model.precision import autocast_dtype, check_precision, encoder_autocast
from napari_sam.model.sam.mask_decoder import MaskDecoder
from napari_sam.model.sam.prompt_encoder import PromptEncoder

#: Per-channel RGB mean and standard deviation (0–255 scale) SAM was trained with.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    """Segment Anything model.

    Attributes
    ----------
    mask_threshold : float
        Logit threshold that turns mask logits into binary masks (0.0).
    image_format : str
        Channel order the model expects (``"RGB"``).
    precision : str
        Precision of the image encoder in :meth:`encode`: ``"auto"`` (default:
        bfloat16 autocast on a CUDA GPU, float32 elsewhere; the package's
        loaders resolve "auto" for the machine, bfloat16 also on CPUs measured
        fast in it), ``"fp32"``, ``"bf16"`` or ``"fp16"``; see
        :mod:`napari_sam.model.precision`.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, float, float] = PIXEL_MEAN,
        pixel_std: tuple[float, float, float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self._precision = "auto"

    @property
    def precision(self) -> str:
        """Precision of the image encoder (see the class documentation)."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        self._precision = check_precision(value)

    @property
    def encoder_dtype(self) -> torch.dtype | None:
        """Autocast dtype :meth:`encode` uses on the current device (``None``: float32)."""
        return autocast_dtype(self._precision, self.device)

    def compile_encoder(self, mode: str | None = None, backend: str = "inductor") -> None:
        """Compile the image encoder with :func:`torch.compile` (in place; weights untouched).

        Worth it for long GPU runs (stacks, automatic segmentation): the first
        encoding of each batch size compiles kernels first, which takes tens of
        seconds to minutes. Off by default; see ``load_model(compile=True)``.
        The parameter names in ``state_dict()`` do not change.

        Parameters
        ----------
        mode : str, optional
            ``torch.compile`` mode (``None``, ``"max-autotune-no-cudagraphs"``, ...).
        backend : str
            ``torch.compile`` backend; ``"inductor"`` (default) generates kernels.
        """
        self.image_encoder.compile(mode=mode, backend=backend, dynamic=False)
        self.encoder_compiled = True

    encoder_compiled: bool = False

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings of preprocessed images, in the model's :attr:`precision`.

        Parameters
        ----------
        images : Tensor ``(B, 3, img_size, img_size)`` float32
            Normalised and padded images (see :meth:`preprocess`).

        Returns
        -------
        Tensor ``(B, 256, img_size/16, img_size/16)`` float32
            Whatever the encoder's precision, the embedding is float32 so the
            decoder always computes masks and IoU scores in float32.
        """
        with encoder_autocast(self.encoder_dtype, self.device):
            features = self.image_encoder(images)
        return features.float()

    @property
    def device(self) -> torch.device:
        """Device the model's parameters live on."""
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        """Side length of the square model input (1024)."""
        return int(self.image_encoder.img_size)

    @torch.no_grad()
    def forward(
        self, batched_input: list[dict[str, Any]], multimask_output: bool
    ) -> list[dict[str, torch.Tensor]]:
        """Predict masks end to end for a batch of images and their prompts.

        Parameters
        ----------
        batched_input : list of dict
            One dict per image with keys

            - ``image``: Tensor ``(3, H, W)``, already resized so that the longest
              side is ``img_size`` (see :class:`~napari_sam.ResizeLongestSide`),
              RGB, 0–255.
            - ``original_size``: ``(H0, W0)`` of the image before resizing.
            - ``point_coords`` ``(B, N, 2)`` (x, y, in the resized frame) and
              ``point_labels`` ``(B, N)``; optional.
            - ``boxes`` ``(B, 4)`` x0, y0, x1, y1 in the resized frame; optional.
            - ``mask_inputs`` ``(B, 1, 256, 256)`` logits; optional.
        multimask_output : bool
            Three masks per prompt instead of one.

        Returns
        -------
        list of dict
            Per image: ``masks`` ``(B, C, H0, W0)`` bool, ``iou_predictions``
            ``(B, C)``, ``low_res_logits`` ``(B, C, 256, 256)``; ``C`` is 3 or 1.
        """
        images = torch.stack([self.preprocess(rec["image"]) for rec in batched_input], dim=0)
        embeddings = self.encode(images)
        image_pe = self.prompt_encoder.get_dense_pe()
        outputs = []
        for rec, embedding in zip(batched_input, embeddings):
            points = None
            if "point_coords" in rec and rec["point_coords"] is not None:
                points = (rec["point_coords"], rec["point_labels"])
            sparse, dense = self.prompt_encoder(
                points=points, boxes=rec.get("boxes"), masks=rec.get("mask_inputs")
            )
            low_res, iou = self.mask_decoder(
                image_embeddings=embedding.unsqueeze(0),
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
            masks = self.postprocess_masks(
                low_res,
                input_size=tuple(rec["image"].shape[-2:]),
                original_size=tuple(rec["original_size"]),
            )
            outputs.append(
                {
                    "masks": masks > self.mask_threshold,
                    "iou_predictions": iou,
                    "low_res_logits": low_res,
                }
            )
        return outputs

    def postprocess_masks(
        self,
        masks: torch.Tensor,
        input_size: tuple[int, ...],
        original_size: tuple[int, ...],
        buffers: KeptBuffers | None = None,
        resize: Resize | None = None,
    ) -> torch.Tensor:
        """Upscale low-resolution logits to the original image.

        The logits ``(B, C, 256, 256)`` cover the padded ``img_size`` square; they
        are resized bilinearly to that square, the padding is cut off (leaving
        ``input_size``), and the rest is resized to ``original_size``.

        ``buffers``, if given, receives the upscaled logits (names "padded" and
        "upscaled"): the result is then only valid until the next call with the
        same buffers. ``resize(x, size, out)`` replaces the bilinear resize (ATen's,
        half-pixel centres) with an equivalent one; ``out`` may be None.

        Returns
        -------
        Tensor ``(B, C, H0, W0)`` logits (float), contiguous.
        """
        size = self.img_size
        resize = _resize_bilinear if resize is None else resize
        lead = tuple(masks.shape[:-2])
        into = None if buffers is None else buffers("padded", (*lead, size, size), masks.dtype)
        masks = resize(masks, (size, size), into)
        masks = masks[..., : input_size[0], : input_size[1]]
        target = tuple(int(s) for s in original_size)
        into = None if buffers is None else buffers("upscaled", (*lead, *target), masks.dtype)
        if tuple(masks.shape[-2:]) == target:
            # A bilinear resize to the same size (align_corners=False) is the
            # identity, exactly: skip it (a 1024² image, or a 1024² crop).
            if masks.is_contiguous():
                return masks
            return masks.contiguous() if into is None else into.copy_(masks)
        return resize(masks, target, into)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``(3, H, W)`` RGB 0–255 pixels and pad to ``img_size`` (bottom/right)."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        size = self.img_size
        return F.pad(x, (0, size - w, 0, size - h))


#: ``resize(x, size, out)``: ``x`` ``(B, C, h, w)`` resized bilinearly to ``size``,
#: into ``out`` if given.
Resize = Callable[[torch.Tensor, tuple[int, int], "torch.Tensor | None"], torch.Tensor]


def _resize_bilinear(
    x: torch.Tensor, size: tuple[int, int], out: torch.Tensor | None
) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` for ``(B, C, H, W)``,
    written into ``out`` if given (the same kernel)."""
    if out is None:
        return F.interpolate(x, size, mode="bilinear", align_corners=False)
    return torch.ops.aten.upsample_bilinear2d.out(x, list(size), False, None, None, out=out)
