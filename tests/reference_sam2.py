"""Build Meta's reference ``sam2`` (1.1.0) models for parity tests, with decisive random weights.

The reference is built from its own SAM 2.1 config (hydra) with a seed; the
tensors a fresh model initialises to zero or to tiny values are then given
values that matter (:func:`perturb_sam2_`), its state dict is saved in the
published layout (``{"model": state_dict}``) and our loader reads that file
with strict keys. ``image_size`` can be lowered (same weights, smaller input)
to keep video tests fast; parity at the published 1024 is tested too.
"""

from __future__ import annotations

from pathlib import Path

import torch

REF_CONFIGS = {
    "sam2_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


@torch.no_grad()
def perturb_sam2_(model: torch.nn.Module, seed: int) -> None:
    """Make the random weights decisive and the outputs non-trivial (documented, seeded).

    - Hiera's position embeddings start at zero and the learnt embeddings of
      the memory ("no memory", temporal slots, "no object" pointer and
      embedding) at a std of 0.02: all get values of std 0.5, so a mistake in
      how any of them is used shows.
    - The ConvNeXt layer scales of the memory fuser start at 1e-6 (the fuser
      would be a no-op): set to 0.5.
    - Mask hypernetworks: last layers ×20 and centred over their 32 outputs,
      and the upscaling layer norm gets a random shift, so that mask logits
      are decided by the image (masks of 20-80 % of the image, not all or
      nothing).
    - Memory: the mask path of the memory encoder and the output of every
      cross-attention to the memory ×10, so that what is remembered changes
      the tracked masks (different objects get different masks).
    - Object-score head: last layer ×3 with bias +10, so that objects are
      present (a random head says "absent" as often as not, and an absent
      object has an empty mask, which would make comparisons vacuous); the
      absent case is compared part by part in test_parity_sam2_components.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    for name, p in model.named_parameters():
        if "pos_embed" in name or name in (
            "maskmem_tpos_enc",
            "no_mem_embed",
            "no_mem_pos_enc",
            "no_obj_ptr",
            "no_obj_embed_spatial",
        ):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        elif name.startswith("memory_encoder.fuser.") and name.endswith(".gamma"):
            p.fill_(0.5)
    decoder = model.sam_mask_decoder
    for mlp in decoder.output_hypernetworks_mlps:
        last = mlp.layers[-1]
        last.weight.mul_(20.0)
        last.weight.sub_(last.weight.mean(0, keepdim=True))
        last.bias.sub_(last.bias.mean())
    norm = decoder.output_upscaling[1]
    norm.bias.copy_(torch.randn(norm.bias.shape, generator=gen))
    model.memory_encoder.mask_downsampler.encoder[-1].weight.mul_(10.0)
    for layer in model.memory_attention.layers:
        layer.cross_attn_image.out_proj.weight.mul_(10.0)
    head = decoder.pred_obj_score_head.layers[-1]
    head.weight.mul_(3.0)
    head.bias.fill_(10.0)


def build_reference_sam2(
    name: str = "sam2_tiny",
    *,
    video: bool = False,
    seed: int = 0,
    image_size: int | None = None,
    state: dict | None = None,
):
    """Reference ``SAM2Base`` (``video``: ``SAM2VideoPredictor``) on the CPU, eval mode.

    Built as ``sam2.build_sam`` builds it (post-processing options on). With
    ``state`` its weights are replaced by that state dict; otherwise random
    (seeded) and perturbed by :func:`perturb_sam2_`.
    """
    from sam2.build_sam import build_sam2, build_sam2_video_predictor

    overrides = [] if image_size is None else [f"++model.image_size={int(image_size)}"]
    torch.manual_seed(seed)
    builder = build_sam2_video_predictor if video else build_sam2
    model = builder(REF_CONFIGS[name], None, device="cpu", hydra_overrides_extra=overrides)
    if state is None:
        perturb_sam2_(model, seed)
    else:
        model.load_state_dict(state, strict=True)
    return model.eval()


def save_sam2_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """Save ``{"model": state_dict}`` like the published ``sam2.1_hiera_*.pt`` files."""
    torch.save({"model": model.state_dict()}, path)
    return path


def build_sam2_pair(name: str, tmp_dir: Path, seed: int = 0, image_size: int | None = None):
    """(reference image model, our Sam2, checkpoint path) sharing one random state dict."""
    from napari_sam.runtime.checkpoints import build_any

    ref = build_reference_sam2(name, seed=seed, image_size=image_size)
    ckpt = save_sam2_checkpoint(ref, Path(tmp_dir) / f"random_{name}_{seed}.pt")
    if image_size is None:
        ours = build_any(name, ckpt)
    else:
        from dataclasses import replace

        from napari_sam.model.sam2.build import SAM2_CONFIGS, sam2_from_state
        from napari_sam.runtime.checkpoints import read_checkpoint

        config = replace(SAM2_CONFIGS[name], image_size=int(image_size))
        ours = sam2_from_state(config, read_checkpoint(ckpt), model_type=name)
    ours.precision = "fp32"
    return ref, ours, ckpt
