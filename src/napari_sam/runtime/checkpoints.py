"""Reading checkpoint files into models.

:func:`read_checkpoint` reads a ``.pth`` / ``.pt`` file (``weights_only``, no
code executed) into a flat state dict; :func:`build_from_config` builds a model
from a configuration and, when given, a checkpoint file (strict keys);
:func:`build_any` does the same for a model name of either family (SAM 1 or
SAM 2.1).
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

__all__ = ["build_any", "build_from_config", "read_checkpoint"]

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
