"""Reading checkpoint files into models.

:func:`read_checkpoint` reads a ``.pth`` / ``.pt`` file (``weights_only``, no
code executed) into a flat state dict; :func:`build_from_config` builds a model
from a configuration and, when given, a checkpoint file (strict keys);
:func:`build_any` does the same for a model name of either family (SAM 1 or
SAM 2.1). :func:`read_decoder_state` and :func:`read_decoder_file` find
micro-sam's instance decoder: in an exported model (``{"model_state": ...,
"decoder_state": ...}``) or in a decoder file of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from napari_sam.errors import CheckpointError, UnknownModelTypeError
from napari_sam.model.build import (
    CONFIGS,
    SamConfig,
    TinyViTConfig,
    _init_lock,
    model_from_state,
    random_model,
)
from napari_sam.model.sam.sam import Sam
from napari_sam.model.sam2.build import (
    SAM2_CONFIGS,
    build_sam2,
    is_sam2_state,
    mismatch,
    sam2_from_state,
)

__all__ = [
    "build_any",
    "build_from_config", "read_checkpoint", "read_decoder_file",
    "read_decoder_state",
]

#: The key of the decoder's state dict in a micro-sam export.
DECODER_KEY = "decoder_state"

#: Wrapper keys under which training frameworks nest the actual state dict.
_WRAPPER_KEYS = ("model", "state_dict", "model_state", "model_state_dict")
#: Key prefixes added by DataParallel, Lightning modules or fine-tuning wrappers.
_PREFIXES = ("module.", "sam.", "model.")


def read_checkpoint(path: str | PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat SAM state dict (tensors on the CPU).

    Accepts a plain state dict, one wrapped in ``{"model": ...}``,
    ``{"state_dict": ...}`` or ``{"model_state": ...}``, and keys prefixed with
    ``module.``, ``sam.`` or ``model.``. Files are read with
    ``weights_only=True``: no code in the file is executed.

    Raises
    ------
    CheckpointError
        The file is missing, truncated, not a PyTorch file, or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"The checkpoint file {path} does not exist.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # the unpickler raises many types on a damaged file
        raise CheckpointError(
            f"The checkpoint file {path} could not be read; it is probably incomplete "
            f"(an interrupted download) or not a PyTorch weights file ({type(exc).__name__})."
        ) from exc
    for _ in range(3):  # wrappers can nest, e.g. {"model": {"state_dict": ...}}
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise CheckpointError(
            f"The file {path} does not contain SAM model weights (expected a state dict "
            "mapping parameter names to tensors)."
        )
    state = dict(obj)
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def build_from_config(
    config: SamConfig | TinyViTConfig,
    checkpoint: str | PathLike | None = None,
    *,
    model_type: str = "custom",
) -> Sam:
    """Build a model for ``config``: random weights, or those of ``checkpoint`` (strict).

    Raises
    ------
    CheckpointError
        The file cannot be read or does not fit ``config`` (the message names
        missing, unexpected and wrongly shaped keys).
    ModelTypeMismatchError
        The file holds another published model type.
    """
    if checkpoint is None:
        return random_model(config)
    state = read_checkpoint(checkpoint)
    return model_from_state(config, state, model_type=model_type, source=str(checkpoint))


def build_any(
    model_type: str,
    checkpoint: str | PathLike | None = None,
) -> Any:
    """Build the model ``model_type`` names: SAM 1 (``vit_*``) or SAM 2.1 (``sam2_*``).

    Random weights without ``checkpoint``; otherwise the file's (strict
    keys). A file holding the other family or another size raises
    :class:`~napari_sam.errors.ModelTypeMismatchError` naming the file and what it holds.

    Raises
    ------
    CheckpointError, ModelTypeMismatchError, UnknownModelTypeError
    """
    if model_type in SAM2_CONFIGS:
        config = SAM2_CONFIGS[model_type]
        if checkpoint is None:
            with _init_lock:
                return build_sam2(config)
        state = read_checkpoint(checkpoint)
        return sam2_from_state(config, state, model_type=model_type, source=str(checkpoint))
    if model_type not in CONFIGS:
        known = ", ".join(sorted({*CONFIGS, *SAM2_CONFIGS}))
        raise UnknownModelTypeError(
            f"{model_type!r} is not a model napari-sam knows; choose one of {known}."
        )
    if checkpoint is None:
        return random_model(CONFIGS[model_type])
    state = read_checkpoint(checkpoint)
    if is_sam2_state(state):
        raise mismatch(str(checkpoint), state, model_type)  # a SAM 2.1 file: always an error
    return model_from_state(
        CONFIGS[model_type], state, model_type=model_type, source=str(checkpoint)
    )


# --------------------------------------------------------------------------- decoders
def _load_lazily(path: Path) -> object:
    """``torch.load`` memory-mapped (only the tensors used are read), or plainly for
    files in the legacy format; ``weights_only``: no code is executed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except MemoryError:
        raise
    except Exception:
        return torch.load(path, map_location="cpu", weights_only=True)


def _tensor_dict(obj: object) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, Mapping) and obj and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        return dict(obj)
    return None


def read_decoder_state(path: str | PathLike) -> dict[str, torch.Tensor] | None:
    """The ``"decoder_state"`` stored in a model file next to the SAM weights, or None.

    For a checkpoint that was already read successfully as SAM weights: a file
    without a decoder, or one that cannot be read again, gives None. Memory-mapped:
    the SAM tensors are not read again.
    """
    try:
        obj = _load_lazily(Path(path))
    except MemoryError:
        raise
    except Exception:
        return None
    if isinstance(obj, Mapping):
        return _tensor_dict(obj.get(DECODER_KEY))
    return None


def read_decoder_file(
    path: str | PathLike,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """Read an instance-decoder file: ``(decoder state, SAM state or None)``.

    Accepts a plain decoder state dict (micro-sam's ``*_decoder.pt``) or a
    model export ``{"model_state": ..., "decoder_state": ...}`` (then the SAM
    state is returned too, to check which encoder the decoder belongs to).

    Raises
    ------
    CheckpointError
        The file is missing, unreadable (incomplete, not a PyTorch file) or holds no
        decoder.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"The decoder file {path} does not exist.")
    try:
        obj = _load_lazily(path)
    except MemoryError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"The decoder file {path} could not be read; it is probably incomplete (an "
            f"interrupted download) or not a PyTorch weights file ({type(exc).__name__})."
        ) from exc
    if isinstance(obj, Mapping) and DECODER_KEY in obj:
        decoder = _tensor_dict(obj[DECODER_KEY])
        sam = None
        for key in _WRAPPER_KEYS:
            sam = sam or _tensor_dict(obj.get(key))
        if sam is not None:
            sam = {k.removeprefix("sam."): v for k, v in sam.items()}
    else:
        decoder, sam = _tensor_dict(obj), None
        if decoder is not None and any(k.startswith("image_encoder.") for k in decoder):
            raise CheckpointError(
                f"The file {path} holds SAM weights but no instance decoder; give the "
                "decoder file (e.g. vit_b_decoder.pt) or a model exported with its decoder."
            )
    if decoder is None:
        raise CheckpointError(
            f"The file {path} does not contain an instance decoder (expected a state dict "
            "mapping parameter names to tensors)."
        )
    return decoder, sam
