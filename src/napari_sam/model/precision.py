"""Numeric precision of the image encoder: the GPU fast path.

The image encoder holds almost all of SAM's arithmetic (about 0.5 TFLOP per
1024² image for ViT-B). On a GPU it runs under :func:`torch.autocast` in
bfloat16 (or float16 on GPUs without bfloat16): matrix products and
convolutions use the tensor cores, while the layer norms, softmax statistics
and the residual stream stay in float32 (autocast's own rules). The embedding
it returns is cast back to float32, so the prompt encoder, the mask decoder,
the IoU head and the mask logits always run in float32.

Precision names
---------------
``"auto"``
    bfloat16 on a CUDA GPU that supports it, float16 on an older CUDA GPU,
    float32 on the CPU and on Apple MPS (where reduced precision is not faster
    for this network, or not supported by every kernel it needs).
``"fp32"``
    Always float32: bit-for-bit the reference computation.
``"bf16"``, ``"fp16"``
    That reduced precision on any device that supports autocast with it (the
    CPU supports both; used by the tests to check the code path without a GPU).

Which precision "auto" becomes for models built by the package's loaders
(``NAPARI_SAM_PRECISION``) is decided in :mod:`napari_sam.runtime.config`;
this module does no I/O and reads no environment.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = [
    "PRECISIONS",
    "autocast_dtype",
    "check_precision",
    "encoder_autocast",
]

#: Precision names accepted by :func:`autocast_dtype` and ``Sam.precision``.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
}


def check_precision(precision: str) -> str:
    """Normalise a precision name (case, aliases such as ``"bfloat16"``).

    Raises
    ------
    ValueError
        If the name is not one of :data:`PRECISIONS` (or an alias).
    """
    if not isinstance(precision, str):
        raise ValueError(
            f"The precision must be one of {', '.join(PRECISIONS)}; got {precision!r}."
        )
    name = precision.strip().lower()
    name = _ALIASES.get(name, name)
    if name not in PRECISIONS:
        raise ValueError(
            f"{precision!r} is not a precision napari-sam knows; use one of "
            f"{', '.join(PRECISIONS)}."
        )
    return name


def _cuda_bf16_supported(device: torch.device) -> bool:
    """Whether the GPU has bfloat16 tensor cores (compute capability 8.0, Ampere, or newer)."""
    try:
        major, _minor = torch.cuda.get_device_capability(device)
    except Exception:  # a driver problem: use fp16, which every CUDA GPU has
        return False
    return major >= 8


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for the image encoder, or ``None`` for plain float32.

    Parameters
    ----------
    precision : str
        One of :data:`PRECISIONS` (see the module documentation).
    device : torch.device or str
        Device the encoder runs on.

    Returns
    -------
    torch.dtype or None
        ``torch.bfloat16`` / ``torch.float16`` to autocast to, or ``None``.
    """
    name = check_precision(precision)
    dev = torch.device(device)
    if name == "auto":
        if dev.type != "cuda":
            return None
        return torch.bfloat16 if _cuda_bf16_supported(dev) else torch.float16
    return _DTYPES[name]


@contextlib.contextmanager
def encoder_autocast(dtype: torch.dtype | None, device: torch.device | str) -> Iterator[None]:
    """Context in which the encoder runs with ``dtype`` autocast (``None``: no autocast)."""
    if dtype is None:
        yield
        return
    dev_type = torch.device(device).type
    with torch.autocast(dev_type, dtype=dtype):
        yield
