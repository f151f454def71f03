"""SAM mask decoder: image embedding + prompt embeddings -> mask logits and IoU scores."""

from __future__ import annotations

import torch
from torch import nn

from napari_sam.model.sam.common import MLP, LayerNorm2d


class MaskDecoder(nn.Module):
    """Predict masks with a two-way transformer and per-mask hypernetworks.

    Parameters
    ----------
    transformer_dim : int
        Channel width of the image embedding and prompt tokens (256).
    transformer : nn.Module
        A :class:`~napari_sam.model.sam.transformer.TwoWayTransformer` (or the
        equivalent), called as ``transformer(image, image_pe, tokens)``.
    num_multimask_outputs : int
        Number of masks in multimask mode (3); one more token is used for the
        single-mask output.
    iou_head_depth, iou_head_hidden_dim : int
        Shape of the MLP that predicts each mask's IoU.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks for a batch of prompts on one image.

        Parameters
        ----------
        image_embeddings : Tensor ``(1, C, h, w)`` (or ``(B, C, h, w)``)
        image_pe : Tensor ``(1, C, h, w)``
        sparse_prompt_embeddings : Tensor ``(B, N, C)``
        dense_prompt_embeddings : Tensor ``(B, C, h, w)``
        multimask_output : bool
            Return the 3 multimask outputs instead of the single-mask output.

        Returns
        -------
        masks : Tensor ``(B, 3 or 1, 4h, 4w)`` logits
        iou_pred : Tensor ``(B, 3 or 1)``
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        picked = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, picked], iou_pred[:, picked]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` masks and IoU predictions (see :meth:`forward`)."""
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat(
            [output_tokens.to(sparse_prompt_embeddings.dtype), sparse_prompt_embeddings], dim=1
        )

        if image_embeddings.shape[0] == b:
            src = image_embeddings
        else:
            src = torch.repeat_interleave(image_embeddings, b, dim=0)
        src = src + dense_prompt_embeddings
        pos_src = image_pe.expand(b, -1, -1, -1) if image_pe.shape[0] == 1 else image_pe
        _, c, h, w = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        src = src.transpose(1, 2).reshape(b, c, h, w)
        upscaled = self.output_upscaling(src)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )  # (B, num_mask_tokens, C/8)
        bu, cu, hu, wu = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(bu, cu, hu * wu)).reshape(bu, -1, hu, wu)
        iou_pred = self.iou_prediction_head(iou_token_out)
        return masks, iou_pred
