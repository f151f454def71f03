"""SAM 2.1 configurations, the builder, and fitting a state dict to a model.

The published SAM 2.1 models share everything but the Hiera trunk's size;
:data:`SAM2_CONFIGS` lists the four (names as in the published file names).
No I/O here: checkpoint files are read by :mod:`napari_sam.runtime.checkpoints`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from napari_sam.errors import ModelTypeMismatchError
from napari_sam.model.build import _skip_random_init, check_state, detect_model_type
from napari_sam.model.sam2.hiera import FpnNeck, Hiera, ImageEncoder
from napari_sam.model.sam2.memory import MemoryAttention, MemoryEncoder
from napari_sam.model.sam2.sam2 import Sam2

__all__ = [
    "SAM2_CONFIGS",
    "Sam2Config",
    "build_sam2",
    "describe_model_type",
    "detect_sam2_type",
    "is_sam1_state",
    "is_sam2_state",
    "mismatch",
    "sam2_from_state",
]


@dataclass(frozen=True)
class Sam2Config:
    """Architecture of a SAM 2.1 model.

    The Hiera trunk (``embed_dim``, ``num_heads``, ``stages``,
    ``global_att_blocks``, ``window_spec``, ``window_pos_embed_bkg``) is
    what differs between the published sizes; the rest is common to all.
    ``image_size`` may be lowered (e.g. 512) to run the same weights faster
    on smaller inputs; the published models use 1024.
    """

    embed_dim: int
    num_heads: int
    stages: tuple[int, ...]
    global_att_blocks: tuple[int, ...]
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg: tuple[int, int] = (14, 14)
    image_size: int = 1024
    d_model: int = 256
    mem_dim: int = 64
    num_maskmem: int = 7
    max_obj_ptrs: int = 16
    memory_attention_layers: int = 4

    @property
    def channel_list(self) -> tuple[int, ...]:
        """Trunk widths, coarsest stage first (the neck's ``backbone_channel_list``)."""
        n = len(self.stages)
        return tuple(self.embed_dim * 2**i for i in range(n - 1, -1, -1))


#: The published SAM 2.1 sizes.
SAM2_CONFIGS: dict[str, Sam2Config] = {
    "sam2_tiny": Sam2Config(96, 1, (1, 2, 7, 2), (5, 7, 9), window_pos_embed_bkg=(7, 7)),
    "sam2_small": Sam2Config(96, 1, (1, 2, 11, 2), (7, 10, 13), window_pos_embed_bkg=(7, 7)),
    "sam2_base_plus": Sam2Config(112, 2, (2, 3, 16, 3), (12, 16, 20)),
    "sam2_large": Sam2Config(
        144, 2, (2, 6, 36, 4), (23, 33, 43), window_spec=(8, 4, 16, 8), window_pos_embed_bkg=(7, 7)
    ),
}


def build_sam2(config: Sam2Config) -> Sam2:
    """A :class:`Sam2` for ``config`` with random weights (eval mode, CPU)."""
    trunk = Hiera(
        embed_dim=config.embed_dim,
        num_heads=config.num_heads,
        stages=config.stages,
        global_att_blocks=config.global_att_blocks,
        window_spec=config.window_spec,
        window_pos_embed_bkg_spatial_size=config.window_pos_embed_bkg,
    )
    neck = FpnNeck(config.d_model, config.channel_list)
    model = Sam2(
        ImageEncoder(trunk, neck, scalp=1),
        MemoryAttention(config.d_model, config.mem_dim, config.memory_attention_layers),
        MemoryEncoder(config.mem_dim, config.d_model),
        image_size=config.image_size,
        num_maskmem=config.num_maskmem,
        max_obj_ptrs=config.max_obj_ptrs,
    )
    return model.eval()


def is_sam2_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict holds a SAM 2 model (a Hiera trunk and a memory encoder)."""
    return any(k.startswith("image_encoder.trunk.") for k in state) or any(
        k.startswith("memory_encoder.") for k in state
    )


def detect_sam2_type(state: Mapping[str, torch.Tensor]) -> str | None:
    """Name the published SAM 2.1 size a state dict belongs to, from its shapes, or None."""
    patch = state.get("image_encoder.trunk.patch_embed.proj.weight")
    if patch is None:
        return None
    depth = len(
        {k.split(".")[3] for k in state if k.startswith("image_encoder.trunk.blocks.")}
    )
    for name, cfg in SAM2_CONFIGS.items():
        if patch.shape[0] == cfg.embed_dim and depth == sum(cfg.stages):
            return name
    return None


def is_sam1_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict holds a SAM 1 model (a ViT or TinyViT image encoder)."""
    return "image_encoder.patch_embed.proj.weight" in state or any(
        k.startswith("image_encoder.layers.") for k in state
    )


def describe_model_type(name: str | None, sam2: bool | None = None) -> str:
    """``"a SAM 2.1 model ('sam2_tiny')"``, ``"a SAM 1 model ('vit_b')"`` or the family alone."""
    if sam2 is None:
        sam2 = name in SAM2_CONFIGS
    family = "SAM 2.1" if sam2 else "SAM 1"
    return f"a {family} model" + (f" ('{name}')" if name else "")


def mismatch(
    source: str, state: Mapping[str, torch.Tensor], model_type: str
) -> ModelTypeMismatchError | None:
    """The error for a state dict of another family or published size, or None.

    The message names the file and what it holds (a SAM 1 or SAM 2.1 model,
    and which one when it is a published size).
    """
    wanted_sam2 = model_type in SAM2_CONFIGS
    if is_sam2_state(state):
        found, found_sam2 = detect_sam2_type(state), True
    elif is_sam1_state(state):
        found, found_sam2 = detect_model_type(state), False
    else:
        return None
    if found_sam2 == wanted_sam2 and (found is None or found == model_type):
        return None
    choose = f"choose model '{found}'" if found else (
        "choose a SAM 2.1 model (sam2_tiny, sam2_small, sam2_base_plus, sam2_large)"
        if found_sam2
        else "choose a SAM 1 model (vit_t, vit_b, vit_l, vit_h)"
    )
    return ModelTypeMismatchError(
        f"The checkpoint {source} holds {describe_model_type(found, found_sam2)}, not "
        f"{describe_model_type(model_type)}; {choose} for it, or another checkpoint.",
        expected=model_type,
        found=found,
    )


def sam2_from_state(
    config: Sam2Config,
    state: Mapping[str, torch.Tensor],
    *,
    model_type: str = "custom",
    source: str = "state dict",
) -> Sam2:
    """A :class:`Sam2` for ``config`` holding the tensors of ``state`` (strict keys and shapes).

    Built without random initialisation, checked, then given the tensors
    (``assign=True``: about one copy of the weights in memory).

    Raises
    ------
    ModelTypeMismatchError
        ``state`` holds another published model (a SAM 1 model or another SAM 2.1 size).
    CheckpointError
        Keys are missing or unexpected, or shapes differ.
    """
    with _skip_random_init():
        skeleton = build_sam2(config)
    expected = skeleton.state_dict()
    fits = set(expected) == set(state) and all(
        tuple(expected[k].shape) == tuple(state[k].shape) for k in expected
    )
    if not fits:
        error = mismatch(source, state, model_type)
        if error is not None:
            raise error
        check_state(expected, state, model_type=model_type, source=source)
    state = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    skeleton.load_state_dict(state, strict=True, assign=True)
    return skeleton.eval()
