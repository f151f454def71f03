"""SAM 2's prompt encoder and mask decoder.

The prompt encoder is SAM's, with box corners given as points of labels 2
(top-left) and 3 (bottom-right), the way SAM 2 feeds boxes. The mask decoder
is SAM's two-way transformer with three additions: an object-score token
(whose head says whether the object is in the image at all), high-resolution
features (strides 4 and 8) added while upscaling the mask embedding, and a
sigmoid on the predicted IoU. With one output mask requested, an unstable
single mask is replaced by the best of the three multimask outputs
(``dynamic_multimask_via_stability``), as the published predictors do.
"""

from __future__ import annotations

import torch
from torch import nn

from napari_sam.model.sam.common import LayerNorm2d
from napari_sam.model.sam.prompt_encoder import PromptEncoder
from napari_sam.model.sam.transformer import TwoWayTransformer
from napari_sam.model.sam2.common import MLP

__all__ = [
    "LABEL_BOX_BOTTOM_RIGHT",
    "LABEL_BOX_TOP_LEFT",
    "DecoderOutput",
    "Sam2MaskDecoder",
    "Sam2PromptEncoder",
    "Sam2TwoWayTransformer",
]

#: Point labels of box corners.
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3


class Sam2PromptEncoder(PromptEncoder):
    """SAM's prompt encoder, also embedding points labelled 2 and 3 (box corners)."""

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        emb = super()._embed_points(points, labels, pad)
        if pad:
            labels = torch.cat([labels, -labels.new_ones((labels.shape[0], 1))], dim=1)
        for label in (LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT):
            emb = emb + (labels == label).unsqueeze(-1) * self.point_embeddings[label].weight
        return emb


class Sam2TwoWayTransformer(TwoWayTransformer):
    """SAM's two-way transformer with SAM 2's parameter layout (``mlp.layers.N``)."""

    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__(depth, embedding_dim, num_heads, mlp_dim)
        for layer in self.layers:
            layer.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, 2, activation="relu")


class DecoderOutput:
    """What the mask decoder returns for a batch of prompts.

    Attributes
    ----------
    masks : Tensor ``(B, M, 4h, 4w)``
        Mask logits (M = 3 with multimask output, else 1).
    iou : Tensor ``(B, M)``
        Predicted IoU of each mask (0–1).
    tokens : Tensor ``(B, M, C)``
        The output tokens of those masks (object pointers are made from them).
    object_score : Tensor ``(B, 1)``
        Logit that the object is present (> 0: present).
    """

    __slots__ = ("iou", "masks", "object_score", "tokens")

    def __init__(
        self,
        masks: torch.Tensor,
        iou: torch.Tensor,
        tokens: torch.Tensor,
        object_score: torch.Tensor,
    ) -> None:
        self.masks = masks
        self.iou = iou
        self.tokens = tokens
        self.object_score = object_score


class Sam2MaskDecoder(nn.Module):
    """Predict masks, IoUs, object scores and output tokens.

    Parameters
    ----------
    transformer_dim : int
        Width of the image features and tokens (256).
    num_multimask_outputs : int
        Masks in multimask mode (3).
    stability_delta, stability_thresh : float
        A single-mask output whose stability (area above ``+delta`` over
        area above ``-delta``) is below ``thresh`` is replaced by the best
        multimask output.
    """

    def __init__(
        self,
        transformer_dim: int = 256,
        num_multimask_outputs: int = 3,
        mlp_dim: int = 2048,
        num_heads: int = 8,
        depth: int = 2,
        stability_delta: float = 0.05,
        stability_thresh: float = 0.98,
    ) -> None:
        super().__init__()
        c = transformer_dim
        self.transformer_dim = c
        self.transformer = Sam2TwoWayTransformer(depth, c, num_heads, mlp_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, c)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, c)
        self.obj_score_token = nn.Embedding(1, c)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(c, c // 4, kernel_size=2, stride=2),
            LayerNorm2d(c // 4),
            nn.GELU(),
            nn.ConvTranspose2d(c // 4, c // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.conv_s0 = nn.Conv2d(c, c // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(c, c // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(c, c, c // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(c, 256, self.num_mask_tokens, 3, sigmoid_output=True)
        self.pred_obj_score_head = MLP(c, c, 1, 3)
        self.stability_delta = stability_delta
        self.stability_thresh = stability_thresh

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        high_res: tuple[torch.Tensor, torch.Tensor],
        multimask_output: bool,
        multimask_tokens: bool = True,
    ) -> DecoderOutput:
        """Decode a batch of ``B`` prompts.

        Parameters
        ----------
        image_embeddings : Tensor ``(1 or B, C, h, w)``
            Image features (repeated over the prompts when their batch is 1).
        image_pe : Tensor ``(1, C, h, w)``
        sparse : Tensor ``(B, N, C)``; dense : Tensor ``(B, C, h, w)``
            Prompt embeddings.
        high_res : (Tensor ``(1|B, C/8, 4h, 4w)``, Tensor ``(1|B, C/4, 2h, 2w)``)
            Stride-4 and stride-8 features, already projected by ``conv_s0`` / ``conv_s1``.
        multimask_output : bool
            Three masks instead of one.
        multimask_tokens : bool
            With multimask output, return the three multimask tokens (else the
            single-mask token) as :attr:`DecoderOutput.tokens`.
        """
        masks, iou, mask_tokens, object_score = self._predict(
            image_embeddings, image_pe, sparse, dense, high_res
        )
        if multimask_output:
            masks, iou = masks[:, 1:], iou[:, 1:]
        elif not self.training:
            masks, iou = self._stable_single_mask(masks, iou)
        else:
            masks, iou = masks[:, :1], iou[:, :1]
        tokens = mask_tokens[:, 1:] if multimask_output and multimask_tokens else mask_tokens[:, :1]
        return DecoderOutput(masks, iou, tokens, object_score)

    def _predict(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        high_res: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        b = sparse.shape[0]
        out_tokens = torch.cat(
            [self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight], dim=0
        )
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        src = image_embeddings
        if src.shape[0] != b:
            src = torch.repeat_interleave(src, b, dim=0)
        src = src + dense
        pos = image_pe.expand(b, -1, -1, -1)
        _, c, h, w = src.shape
        hs, src = self.transformer(src, pos, tokens)
        object_token = hs[:, 0]
        iou_token = hs[:, 1]
        mask_tokens = hs[:, 2 : 2 + self.num_mask_tokens]

        src = src.transpose(1, 2).reshape(b, c, h, w)
        up1, norm, act1, up2, act2 = self.output_upscaling
        feat_s0, feat_s1 = high_res
        upscaled = act1(norm(up1(src) + feat_s1))
        upscaled = act2(up2(upscaled) + feat_s0)
        hyper = torch.stack(
            [mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        bu, cu, hu, wu = upscaled.shape
        masks = (hyper @ upscaled.reshape(bu, cu, hu * wu)).reshape(bu, -1, hu, wu)
        iou = self.iou_prediction_head(iou_token)
        object_score = self.pred_obj_score_head(object_token)
        return masks, iou, mask_tokens, object_score

    def _stable_single_mask(
        self, masks: torch.Tensor, iou: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The single-mask output, or the best multimask output where it is unstable."""
        single, single_iou = masks[:, :1], iou[:, :1]
        flat = single.flatten(-2)
        inner = (flat > self.stability_delta).sum(-1).float()
        outer = (flat > -self.stability_delta).sum(-1).float()
        stability = torch.where(outer > 0, inner / outer, 1.0)
        stable = stability >= self.stability_thresh  # (B, 1)
        best = torch.argmax(iou[:, 1:], dim=-1)
        rows = torch.arange(masks.shape[0], device=masks.device)
        best_masks = masks[:, 1:][rows, best].unsqueeze(1)
        best_iou = iou[:, 1:][rows, best].unsqueeze(1)
        masks = torch.where(stable[..., None, None], single, best_masks)
        iou = torch.where(stable, single_iou, best_iou)
        return masks, iou
