"""The :class:`Sam2` module: every network of SAM 2.1 and the steps of its inference.

Methods are the building blocks the image predictor and the memory tracker
(:mod:`napari_sam.predictors`) combine; none of them keeps state between
calls. Shapes use ``S`` for the square input side (1024), ``h = w = S / 16``
for the feature grid (64) and ``B`` for a batch of objects.

Parameter names equal the keys of the published ``sam2.1_hiera_*.pt`` files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.precision import autocast_dtype, check_precision, encoder_autocast
from napari_sam.model.sam2.common import MLP
from napari_sam.model.sam2.decoder import DecoderOutput, Sam2MaskDecoder, Sam2PromptEncoder
from napari_sam.model.sam2.hiera import ImageEncoder
from napari_sam.model.sam2.memory import MemoryAttention, MemoryEncoder
from napari_sam.model.sam2.position import sine_1d, sine_2d

__all__ = ["NO_OBJECT_SCORE", "HeadOutput", "Sam2", "Sam2Features"]

#: Mask logit written where the object-score head says the object is absent.
NO_OBJECT_SCORE = -1024.0

#: ImageNet mean and standard deviation (0–1 scale) that SAM 2 normalises inputs with.
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


@dataclass
class Sam2Features:
    """An encoded image (or a batch of them).

    Attributes
    ----------
    image : Tensor ``(B, C, h, w)`` float32
        Stride-16 features, as the encoder made them (no "no memory"
        embedding added).
    high_res : (Tensor ``(B, C/8, 4h, 4w)``, Tensor ``(B, C/4, 2h, 2w)``) float32
        Stride-4 and stride-8 features, already projected for the mask decoder.
    """

    image: torch.Tensor
    high_res: tuple[torch.Tensor, torch.Tensor]

    def select(self, i: int) -> Sam2Features:
        """The features of image ``i`` of the batch (batch size 1)."""
        return Sam2Features(self.image[i : i + 1], tuple(h[i : i + 1] for h in self.high_res))


@dataclass
class HeadOutput:
    """What the prompt encoder + mask decoder say about one frame, for ``B`` objects.

    Attributes
    ----------
    multi_masks : Tensor ``(B, M, 4h, 4w)``
        All returned mask logits (``NO_OBJECT_SCORE`` where the object is absent).
    ious : Tensor ``(B, M)``
    masks : Tensor ``(B, 1, 4h, 4w)``
        The chosen mask: the one with the highest predicted IoU.
    iou : Tensor ``(B, 1)``
        Its predicted IoU.
    obj_ptr : Tensor ``(B, C)``
        The object pointer of the chosen mask (the learnt "no object" pointer if absent).
    object_score : Tensor ``(B, 1)``
        Object-presence logit.
    """

    multi_masks: torch.Tensor
    ious: torch.Tensor
    masks: torch.Tensor
    iou: torch.Tensor
    obj_ptr: torch.Tensor
    object_score: torch.Tensor


class Sam2(nn.Module):
    """SAM 2.1: image encoder, prompt encoder, mask decoder, memory encoder and attention.

    Attributes
    ----------
    image_size : int
        Side of the square model input (1024).
    num_maskmem : int
        Memory slots: one for the prompted frames plus ``num_maskmem - 1``
        previous frames (7).
    max_obj_ptrs : int
        Object pointers attended to at most (16).
    precision : str
        Precision of the image encoder (see :mod:`napari_sam.model.precision`); on a
        CPU, bfloat16 there also puts the attention to the memory bank in bfloat16
        (:attr:`memory_attention_dtype`).
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"
    family: str = "sam2"

    def __init__(
        self,
        image_encoder: ImageEncoder,
        memory_attention: MemoryAttention,
        memory_encoder: MemoryEncoder,
        *,
        image_size: int = 1024,
        num_maskmem: int = 7,
        max_obj_ptrs: int = 16,
    ) -> None:
        super().__init__()
        hidden = image_encoder.neck.d_model
        mem_dim = memory_encoder.out_proj.out_channels
        self.image_size = image_size
        self.backbone_stride = 16
        self.hidden_dim = hidden
        self.mem_dim = mem_dim
        self.num_maskmem = num_maskmem
        self.max_obj_ptrs = max_obj_ptrs
        grid = image_size // self.backbone_stride

        self.image_encoder = image_encoder
        self.memory_attention = memory_attention
        self.memory_encoder = memory_encoder
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(num_maskmem, 1, 1, mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, hidden))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, hidden))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, hidden))
        self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, mem_dim))
        for p in (
            self.maskmem_tpos_enc,
            self.no_mem_embed,
            self.no_mem_pos_enc,
            self.no_obj_ptr,
            self.no_obj_embed_spatial,
        ):
            nn.init.trunc_normal_(p, std=0.02)
        self.sam_prompt_encoder = Sam2PromptEncoder(
            embed_dim=hidden,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        )
        self.sam_mask_decoder = Sam2MaskDecoder(hidden)
        self.obj_ptr_proj = MLP(hidden, hidden, hidden, 3)
        self.obj_ptr_tpos_proj = nn.Linear(hidden, mem_dim)
        self.register_buffer(
            "pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False
        )
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)
        self._precision = "auto"
        self._pos_cache: dict[tuple[str, int, int, int], torch.Tensor] = {}

    # ------------------------------------------------------------------ bookkeeping
    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        """Side of the square model input (alias of :attr:`image_size`)."""
        return self.image_size

    @property
    def feature_size(self) -> int:
        """Side of the stride-16 feature grid (64)."""
        return self.image_size // self.backbone_stride

    @property
    def precision(self) -> str:
        """Precision of the image encoder."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        self._precision = check_precision(value)

    @property
    def encoder_dtype(self) -> torch.dtype | None:
        """Autocast dtype of the image encoder on the current device (``None``: float32)."""
        return autocast_dtype(self._precision, self.device)

    @property
    def memory_attention_dtype(self) -> torch.dtype | None:
        """The dtype of the attention to the memory bank: bfloat16 where the image encoder runs
        in bfloat16 on a CPU (that attention is most of a tracked frame's arithmetic after the
        encoder; the masks meet the same accuracy bar), else None (float32)."""
        dtype = self.encoder_dtype
        return dtype if dtype == torch.bfloat16 and self.device.type == "cpu" else None

    encoder_compiled: bool = False

    def compile_encoder(self, mode: str | None = None, backend: str = "inductor") -> None:
        """Compile the image encoder with :func:`torch.compile` (weights untouched)."""
        self.image_encoder.compile(mode=mode, backend=backend, dynamic=False)
        self.encoder_compiled = True

    def _sine(self, channels: int, side: int) -> torch.Tensor:
        key = (str(self.device), channels, side, side)
        pos = self._pos_cache.get(key)
        if pos is None:
            pos = sine_2d(channels, side, side, device=self.device)
            self._pos_cache[key] = pos
        return pos

    def vision_pos(self) -> torch.Tensor:
        """Sine encoding of the stride-16 feature grid, ``(1, C, h, w)``."""
        return self._sine(self.hidden_dim, self.feature_size)

    def memory_pos(self) -> torch.Tensor:
        """Sine encoding of a memory, ``(1, mem_dim, h, w)``."""
        return self._sine(self.mem_dim, self.feature_size)

    # ------------------------------------------------------------------ image
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` RGB in 0–1 -> normalised encoder input."""
        return (images - self.pixel_mean) / self.pixel_std

    def encode_image(self, images: torch.Tensor) -> Sam2Features:
        """Encode normalised ``(B, 3, S, S)`` images (see :meth:`preprocess`).

        The encoder runs in :attr:`precision`; the features are returned in float32.
        """
        with encoder_autocast(self.encoder_dtype, self.device):
            s0, s1, image = self.image_encoder(images)
            s0 = self.sam_mask_decoder.conv_s0(s0)
            s1 = self.sam_mask_decoder.conv_s1(s1)
        return Sam2Features(image.float(), (s0.float(), s1.float()))

    # ------------------------------------------------------------------ prompts -> masks
    def decode(
        self,
        image_embed: torch.Tensor,
        high_res: tuple[torch.Tensor, torch.Tensor],
        points: tuple[torch.Tensor, torch.Tensor] | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
        multimask_tokens: bool = True,
    ) -> DecoderOutput:
        """Prompt encoder + mask decoder on given features.

        Parameters
        ----------
        image_embed : Tensor ``(1 or B, C, h, w)``
            Stride-16 features (with the "no memory" embedding or the memory
            conditioning already applied).
        high_res : see :class:`Sam2Features`
        points : (Tensor ``(B, N, 2)``, Tensor ``(B, N)`` int) or None
            x, y in input pixels (0…S) and labels: 1 positive, 0 negative,
            2/3 box corners, -1 padding. A padding point is appended.
        mask_input : Tensor ``(B, 1, 4h, 4w)`` or None
            Mask logits as a dense prompt.
        """
        sparse, dense = self.sam_prompt_encoder(points=points, boxes=None, masks=mask_input)
        return self.sam_mask_decoder(
            image_embeddings=image_embed,
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse=sparse,
            dense=dense,
            high_res=high_res,
            multimask_output=multimask_output,
            multimask_tokens=multimask_output,
        )

    def heads(
        self,
        image_embed: torch.Tensor,
        high_res: tuple[torch.Tensor, torch.Tensor],
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> HeadOutput:
        """Masks, the best mask, its object pointer and the object score, for ``B`` objects.

        ``image_embed`` has one entry per object (``(B, C, h, w)``). Without
        points, each object gets one padding point. A mask
        prompt at any resolution is resized (bilinear, antialiased) to the
        decoder's ``4h × 4w``. Where the object score is <= 0 every mask
        logit becomes :data:`NO_OBJECT_SCORE` and the pointer the learnt
        "no object" pointer.
        """
        b = image_embed.shape[0]
        if points is None:  # one padding point per object
            coords = torch.zeros(b, 1, 2, device=image_embed.device)
            labels = -torch.ones(b, 1, dtype=torch.int32, device=image_embed.device)
            points = (coords, labels)
        low_size = self.sam_prompt_encoder.mask_input_size
        if mask_input is not None and tuple(mask_input.shape[-2:]) != tuple(low_size):
            mask_input = F.interpolate(
                mask_input.float(),
                size=low_size,
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        out = self.decode(image_embed, high_res, points, mask_input, multimask_output)
        present = out.object_score > 0
        masks = torch.where(present[:, None, None], out.masks, NO_OBJECT_SCORE).float()
        token = out.tokens[:, 0]
        if multimask_output:
            best = torch.argmax(out.iou, dim=-1)
            rows = torch.arange(b, device=masks.device)
            chosen, chosen_iou = masks[rows, best].unsqueeze(1), out.iou[rows, best].unsqueeze(1)
            if out.tokens.shape[1] > 1:
                token = out.tokens[rows, best]
        else:
            chosen, chosen_iou = masks, out.iou
        weight = present.float()
        obj_ptr = weight * self.obj_ptr_proj(token) + (1 - weight) * self.no_obj_ptr
        return HeadOutput(masks, out.iou, chosen, chosen_iou, obj_ptr, out.object_score)

    def mask_as_output(
        self,
        image_embed: torch.Tensor,
        high_res: tuple[torch.Tensor, torch.Tensor],
        masks: torch.Tensor,
    ) -> HeadOutput:
        """A given binary mask ``(B, 1, S, S)`` taken as the frame's output.

        Its logits are ±10; the object pointer comes from the decoder prompted
        with the mask (downsampled by ``mask_downsample``); the object counts
        as present where the mask has any pixel.
        """
        masks = masks.float()
        high = masks * 20.0 - 10.0
        low = F.interpolate(
            high,
            size=(high.shape[-2] // 4, high.shape[-1] // 4),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        ious = masks.new_ones(masks.shape[0], 1)
        ptr = self.heads(image_embed, high_res, mask_input=self.mask_downsample(masks)).obj_ptr
        present = (masks.flatten(1) > 0).any(dim=1, keepdim=True).float()
        score = present * 20.0 - 10.0
        obj_ptr = present * ptr + (1 - present) * self.no_obj_ptr
        return HeadOutput(low, ious, low, ious, obj_ptr, score)

    def upscale(self, low_res: torch.Tensor) -> torch.Tensor:
        """Low-resolution logits ``(B, 1, 4h, 4w)`` -> ``(B, 1, S, S)`` (bilinear)."""
        return F.interpolate(
            low_res.float(),
            size=(self.image_size, self.image_size),
            mode="bilinear",
            align_corners=False,
        )

    # ------------------------------------------------------------------ memory
    def encode_memory(
        self,
        image_embed: torch.Tensor,
        high_res_masks: torch.Tensor,
        object_score: torch.Tensor,
        binarize: bool,
    ) -> torch.Tensor:
        """A memory ``(B, mem_dim, h, w)`` of each object's mask on a frame.

        Parameters
        ----------
        image_embed : Tensor ``(1 or B, C, h, w)``
            The frame's raw stride-16 features.
        high_res_masks : Tensor ``(B, 1, S, S)``
            Mask logits at the input resolution.
        object_score : Tensor ``(B, 1)``
            Where <= 0, the learnt "no object" embedding is added.
        binarize : bool
            Encode ``logits > 0`` instead of their sigmoid (frames the user
            prompted: the memory holds exactly the mask the user saw).
        """
        probs = (high_res_masks > 0).float() if binarize else torch.sigmoid(high_res_masks)
        probs = probs * 20.0 - 10.0
        feats = image_embed
        if feats.shape[0] != probs.shape[0]:
            feats = feats.expand(probs.shape[0], -1, -1, -1)
        memory = self.memory_encoder(feats, probs)
        absent = 1.0 - (object_score > 0).float()
        return memory + absent[..., None, None] * self.no_obj_embed_spatial[..., None, None]

    def pointer_pos(self, distances: torch.Tensor, max_ptrs: int) -> torch.Tensor:
        """Temporal encoding of object pointers ``distances`` frames away: ``(P, mem_dim)``."""
        scale = max(max_ptrs - 1, 1)
        return self.obj_ptr_tpos_proj(sine_1d(distances.float() / scale, self.hidden_dim))

    def condition(
        self,
        image_embed: torch.Tensor,
        memories: torch.Tensor,
        memory_pos: torch.Tensor,
        pointers: torch.Tensor | None,
        pointer_pos: torch.Tensor | None,
    ) -> torch.Tensor:
        """The frame's features conditioned on a memory bank (memory attention).

        Parameters
        ----------
        image_embed : Tensor ``(1 or B, C, h, w)``
            The frame's raw stride-16 features.
        memories : Tensor ``(B, F·h·w, mem_dim)``
            ``F`` memories, flattened row-major and concatenated.
        memory_pos : Tensor ``(B or 1, F·h·w, mem_dim)``
            Their spatial + temporal position encodings.
        pointers : Tensor ``(B, P, C)`` or None
            Object pointers; each is split into ``C / mem_dim`` tokens.
        pointer_pos : Tensor ``(P, mem_dim)`` or None
            Their temporal encodings (:meth:`pointer_pos`).

        Returns
        -------
        Tensor ``(B, C, h, w)``
        """
        b = memories.shape[0]
        _, c, h, w = image_embed.shape
        curr = image_embed.flatten(2).transpose(1, 2)  # batch 1: shared by the B objects
        curr_pos = self.vision_pos().flatten(2).transpose(1, 2)
        memory_pos = memory_pos.expand(b, -1, -1)
        n_ptr_tokens = 0
        if pointers is not None and pointers.shape[1] > 0:
            split = c // self.mem_dim
            ptr_tokens = pointers.reshape(b, -1, self.mem_dim)  # (B, P·split, mem_dim)
            ptr_pos = pointer_pos.repeat_interleave(split, dim=0).unsqueeze(0).expand(b, -1, -1)
            memories = torch.cat([memories, ptr_tokens], dim=1)
            memory_pos = torch.cat([memory_pos, ptr_pos], dim=1)
            n_ptr_tokens = ptr_tokens.shape[1]
        out = self.memory_attention(curr, curr_pos, memories, memory_pos, n_ptr_tokens,
                                    dtype=self.memory_attention_dtype)
        return out.transpose(1, 2).reshape(b, c, h, w)

    def forward(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError(
            "Sam2 has no single forward pass; use Sam2ImagePredictor for images and "
            "napari_sam.workflows.memory_propagation (or MemoryTracker) for stacks and movies."
        )
