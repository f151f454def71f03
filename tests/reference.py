"""Build Meta's reference ``segment_anything`` models for parity tests.

Both implementations are built from one random state dict: the reference is
built with a seed, its zero-initialised parameters (absolute and relative
position embeddings) are perturbed so that they matter, the state dict is saved
to a ``.pth`` file, and our builder loads that file with ``strict=True``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from napari_sam.model.build import SamConfig
from napari_sam.runtime.checkpoints import build_from_config

#: A narrow, shallow encoder (fast on a CPU) with windowed and global blocks;
#: prompt encoder and mask decoder have their published sizes.
SMALL = SamConfig(
    encoder_embed_dim=64,
    encoder_depth=4,
    encoder_num_heads=4,
    encoder_global_attn_indexes=(1, 3),
)


def build_reference(config: SamConfig, seed: int = 0):
    """Reference ``segment_anything.modeling.Sam`` for ``config`` (random weights)."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(seed)
    grid = config.img_size // config.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=config.encoder_depth,
            embed_dim=config.encoder_embed_dim,
            img_size=config.img_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=config.encoder_num_heads,
            patch_size=config.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=config.encoder_global_attn_indexes,
            window_size=config.window_size,
            out_chans=config.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_num_heads,
            ),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    perturb_(sam, seed)
    return sam.eval()


@torch.no_grad()
def perturb_(sam: torch.nn.Module, seed: int) -> None:
    """Give zero-initialised tensors random values and make masks decisive.

    Position embeddings start at zero in a fresh model, which would hide any
    error in how they are used. The last hypernetwork layers are scaled up so
    that mask logits are far from the 0 threshold for most pixels.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    for name, p in sam.named_parameters():
        if "pos_embed" in name or "rel_pos" in name:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    for mlp in sam.mask_decoder.output_hypernetworks_mlps:
        mlp.layers[-1].weight.mul_(20.0)


def save_state(sam: torch.nn.Module, path: Path) -> Path:
    torch.save(sam.state_dict(), path)
    return path


def build_pair(config: SamConfig, tmp_dir: Path, seed: int = 0, model_type: str = "custom"):
    """(reference, ours, checkpoint path) sharing one random state dict."""
    ref = build_reference(config, seed)
    ckpt = save_state(ref, Path(tmp_dir) / f"random_{model_type}_{seed}.pth")
    ours = build_from_config(config, ckpt, model_type=model_type)
    return ref, ours, ckpt


# --------------------------------------------------------------------------- MobileSAM


@torch.no_grad()
def perturb_tiny_vit_(encoder: torch.nn.Module, seed: int) -> None:
    """Give the TinyViT encoder's trivially initialised tensors random values.

    A fresh TinyViT has zero attention biases, identity batch normalisation
    (unit scale, zero shift, running mean 0 and variance 1, and zero scale in
    the last convolution of every MBConv block), unit/zero layer norms and zero
    linear biases; any of them could be mishandled unnoticed. Layer-norm shifts
    and ``qkv`` biases in particular decide what the zero tokens that pad a grid
    to whole windows contribute to the attention.
    """
    gen = torch.Generator().manual_seed(seed + 2)

    def rand(shape, lo, hi):
        return torch.rand(shape, generator=gen) * (hi - lo) + lo

    def randn(shape, std):
        return torch.randn(shape, generator=gen) * std

    for module in encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.copy_(rand(module.weight.shape, 0.5, 1.5))
            module.bias.copy_(randn(module.bias.shape, 0.1))
            module.running_mean.copy_(randn(module.running_mean.shape, 0.1))
            module.running_var.copy_(rand(module.running_var.shape, 0.5, 1.5))
        elif isinstance(module, torch.nn.LayerNorm) or type(module).__name__ == "LayerNorm2d":
            module.weight.copy_(rand(module.weight.shape, 0.5, 1.5))
            module.bias.copy_(randn(module.bias.shape, 0.1))
        elif isinstance(module, torch.nn.Linear) and module.bias is not None:
            module.bias.copy_(randn(module.bias.shape, 0.02))
    for name, p in encoder.named_parameters():
        if name.endswith("attention_biases"):
            p.copy_(randn(p.shape, 1.0))


def build_mobilesam_reference(seed: int = 0):
    """Reference ``mobile_sam`` ``vit_t`` model (random weights, perturbed, eval mode)."""
    from mobile_sam import sam_model_registry as ref_registry

    torch.manual_seed(seed)
    sam = ref_registry["vit_t"]()
    perturb_(sam, seed)
    perturb_tiny_vit_(sam.image_encoder, seed)
    # The reference caches its attention-bias masks when switched to eval mode:
    # switch again so that the cache holds the perturbed biases.
    return sam.eval()


def build_mobilesam_pair(tmp_dir: Path, seed: int = 0):
    """(reference MobileSAM, ours via ``sam_model_registry['vit_t']``, checkpoint path)."""
    from napari_sam import sam_model_registry

    ref = build_mobilesam_reference(seed)
    ckpt = save_state(ref, Path(tmp_dir) / f"random_vit_t_{seed}.pth")
    ours = sam_model_registry["vit_t"](checkpoint=str(ckpt))
    return ref, ours, ckpt


def save_decisive_vit_t(path):
    """Save MobileSAM (vit_t) with seeded random weights made decisive (:func:`perturb_`,
    :func:`perturb_tiny_vit_`, seed 0) as a state-dict checkpoint at ``path``; return it."""
    from napari_sam import sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry["vit_t"]()
    perturb_(sam, 0)
    perturb_tiny_vit_(sam.image_encoder, 0)
    torch.save(sam.state_dict(), path)
    return path
