"""SAM model configurations, the builder, and fitting a state dict to a model.

:func:`build_model` builds a :class:`Sam` for a configuration with random
weights (initialised as the published implementation does);
:func:`model_from_state` builds one that takes the tensors of a state dict
(checked with strict keys and shapes first). Parameter names equal the keys of
the published ``.pth`` files. No I/O here: files are read by
:mod:`napari_sam.runtime.checkpoints`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from napari_sam.errors import CheckpointError, ModelTypeMismatchError
from napari_sam.model.sam.image_encoder import ImageEncoderViT
from napari_sam.model.sam.mask_decoder import MaskDecoder
from napari_sam.model.sam.prompt_encoder import PromptEncoder
from napari_sam.model.sam.sam import Sam
from napari_sam.model.sam.tiny_vit import TinyViT
from napari_sam.model.sam.transformer import TwoWayTransformer


@dataclass(frozen=True)
class SamConfig:
    """Architecture of a SAM model (ViT encoder).

    The published models use ``img_size=1024``, ``patch_size=16``,
    ``window_size=14`` and a 256-wide prompt encoder / mask decoder; they differ
    in the encoder's width, depth, heads and global-attention blocks.
    """

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8


@dataclass(frozen=True)
class TinyViTConfig:
    """Architecture of MobileSAM: a TinyViT image encoder with SAM's neck and decoder.

    Per-stage settings have one entry per stage; the first stage is
    convolutional (its heads and window are unused). ``merge_strides`` are the
    strides of the merges between stages; MobileSAM's last merge keeps the
    resolution so that the embedding grid is ``img_size / 16``. ``num_classes``
    sizes the unused ImageNet classifier that ``mobile_sam.pt`` carries.
    """

    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    merge_strides: tuple[int, ...] = (2, 2, 1)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    num_classes: int = 1000
    img_size: int = 1024
    #: Input pixels per embedding cell along each axis (4 · 2 · 2 · 1).
    patch_size: int = 16
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8


CONFIGS: dict[str, SamConfig | TinyViTConfig] = {
    "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11)),
    "vit_t": TinyViTConfig(),
}


def build_model(config: SamConfig | TinyViTConfig) -> Sam:
    """Build a :class:`Sam` with random weights for ``config`` (eval mode, CPU)."""
    grid = config.img_size // config.patch_size
    if isinstance(config, TinyViTConfig):
        tiny = TinyViT(
            img_size=config.img_size,
            embed_dims=config.embed_dims,
            depths=config.depths,
            num_heads=config.num_heads,
            window_sizes=config.window_sizes,
            merge_strides=config.merge_strides,
            mlp_ratio=config.mlp_ratio,
            mbconv_expand_ratio=config.mbconv_expand_ratio,
            local_conv_size=config.local_conv_size,
            num_classes=config.num_classes,
            out_chans=config.prompt_embed_dim,
        )
        return _assemble(tiny, config.prompt_embed_dim, grid, config)
    image_encoder = ImageEncoderViT(
        img_size=config.img_size,
        patch_size=config.patch_size,
        embed_dim=config.encoder_embed_dim,
        depth=config.encoder_depth,
        num_heads=config.encoder_num_heads,
        mlp_ratio=4.0,
        out_chans=config.prompt_embed_dim,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=config.window_size,
        global_attn_indexes=config.encoder_global_attn_indexes,
    )
    return _assemble(image_encoder, config.prompt_embed_dim, grid, config)


def _assemble(
    image_encoder: nn.Module, embed_dim: int, grid: int, config: SamConfig | TinyViTConfig
) -> Sam:
    prompt_encoder = PromptEncoder(
        embed_dim=embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(config.img_size, config.img_size),
        mask_in_chans=config.mask_in_chans,
    )
    mask_decoder = MaskDecoder(
        transformer_dim=embed_dim,
        transformer=TwoWayTransformer(
            depth=config.decoder_depth,
            embedding_dim=embed_dim,
            num_heads=config.decoder_num_heads,
            mlp_dim=config.decoder_mlp_dim,
        ),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return Sam(image_encoder, prompt_encoder, mask_decoder).eval()


def detect_model_type(state: Mapping[str, torch.Tensor]) -> str | None:
    """Name the published model type a state dict belongs to, from its shapes.

    Returns ``"vit_b"``, ``"vit_l"``, ``"vit_h"``, ``"vit_t"`` or ``None`` when
    the layout matches none of them.
    """
    if any(k.startswith("image_encoder.layers.") for k in state):
        return "vit_t"
    patch = state.get("image_encoder.patch_embed.proj.weight")
    if patch is None:
        return None
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    for name, cfg in CONFIGS.items():
        if not isinstance(cfg, SamConfig):
            continue
        if patch.shape[0] == cfg.encoder_embed_dim and depth == cfg.encoder_depth:
            return name
    return None


def check_state(
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    *,
    model_type: str,
    source: str,
) -> None:
    """Check that ``state`` has exactly the keys and shapes of ``expected``.

    ``expected`` may live on the ``meta`` device: only shapes are compared.

    Raises
    ------
    ModelTypeMismatchError
        The tensors belong to another published model type.
    CheckpointError
        Keys are missing or unexpected, or shapes differ; the message lists them.
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)
    )
    if not (missing or unexpected or wrong_shape):
        return
    found = detect_model_type(state)
    if found is not None and found != model_type:
        raise ModelTypeMismatchError(
            f"The checkpoint {source} holds a '{found}' model, not '{model_type}'; "
            f"choose model type '{found}' or a '{model_type}' checkpoint.",
            expected=model_type,
            found=found,
        )
    details = []
    if missing:
        details.append(f"{len(missing)} missing key(s): {_preview(missing)}")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected key(s): {_preview(unexpected)}")
    if wrong_shape:
        shapes = [
            f"{k} {tuple(state[k].shape)} instead of {tuple(expected[k].shape)}"
            for k in wrong_shape
        ]
        details.append(f"{len(wrong_shape)} tensor(s) of the wrong shape: {_preview(shapes)}")
    raise CheckpointError(
        f"The checkpoint {source} does not fit the '{model_type}' model: "
        + "; ".join(details)
        + "."
    )


def _preview(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", … ({len(items) - n} more)" if len(items) > n else "")


def random_model(config: SamConfig | TinyViTConfig) -> Sam:
    """:func:`build_model`, safe while another thread builds a model from a state dict."""
    with _init_lock:  # never while another thread skips random initialisation
        return build_model(config)


def model_from_state(
    config: SamConfig | TinyViTConfig,
    state: Mapping[str, torch.Tensor],
    *,
    model_type: str = "custom",
    source: str = "state dict",
) -> Sam:
    """Build a model for ``config`` that takes the tensors of ``state`` (strict keys).

    The model is built without random initialisation (its parameters are
    allocated but never written, so the memory is not touched), checked
    against ``state`` (:func:`check_state`; ``source`` names the file in the
    messages), and then takes the tensors directly (``assign=True``): loading
    costs about one copy of the weights in memory instead of two.

    The skeleton is deliberately not built on the ``meta`` device: that makes
    torch import ``torch._dynamo`` and with it ``triton``, which crashes a
    process that already has an OpenGL context from Mesa (napari under
    llvmpipe): both bundle LLVM.
    """
    with _skip_random_init():
        skeleton = build_model(config)
    expected = skeleton.state_dict()
    check_state(expected, state, model_type=model_type, source=source)
    state = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    skeleton.load_state_dict(state, strict=True, assign=True)
    return skeleton.eval()


#: ``torch.nn.init`` functions that fill a tensor with random numbers.
_RANDOM_INITS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "xavier_uniform_",
    "xavier_normal_",
    "orthogonal_",
)
_init_lock = threading.Lock()


@contextlib.contextmanager
def _skip_random_init() -> Iterator[None]:
    """Make ``torch.nn.init``'s random fills no-ops while a model is built.

    Every parameter they would fill is overwritten from a checkpoint right
    after. Serialised with a lock so that two threads building models at once
    cannot see each other's patch.
    """
    with _init_lock:
        saved = {name: getattr(torch.nn.init, name) for name in _RANDOM_INITS}
        try:
            for name in _RANDOM_INITS:
                setattr(torch.nn.init, name, _keep)
            yield
        finally:
            for name, fn in saved.items():
                setattr(torch.nn.init, name, fn)


def _keep(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    return tensor
