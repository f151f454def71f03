"""Choice of the compute device (CUDA GPU, Apple MPS or CPU).

``torch`` is imported inside the functions so that importing this module (for
example through :mod:`napari_sam.cli`) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from napari_sam.errors import DeviceError

if TYPE_CHECKING:
    import torch

__all__ = ["cuda_available", "describe_devices", "mps_available", "resolve_device"]

_AUTO_NAMES = ("auto",)
_CHOICES = "'auto', 'cpu', 'cuda', 'cuda:N' (N = GPU number) or 'mps'"


def cuda_available() -> bool:
    """Whether PyTorch can use an NVIDIA GPU on this machine.

    Returns
    -------
    bool
        ``torch.cuda.is_available()``; ``False`` if the check itself fails.
    """
    import torch

    try:
        return bool(torch.cuda.is_available())
    except Exception:  # a broken driver makes the query raise; treat as "no GPU"
        return False


def mps_available() -> bool:
    """Whether PyTorch can use the Apple-silicon GPU (MPS) on this machine.

    Returns
    -------
    bool
        ``torch.backends.mps.is_available()``; ``False`` on builds without MPS.
    """
    import torch

    mps = getattr(torch.backends, "mps", None)
    if mps is None:
        return False
    try:
        return bool(mps.is_available())
    except Exception:
        return False


def _cuda_device_count() -> int:
    import torch

    try:
        return int(torch.cuda.device_count())
    except Exception:
        return 0


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn a device request into a :class:`torch.device` that exists here.

    Parameters
    ----------
    device : str, torch.device or None, optional
        ``"auto"`` or ``None`` picks the fastest device available, in the
        order CUDA GPU, Apple MPS, CPU. ``"cpu"``, ``"cuda"``, ``"cuda:N"`` and
        ``"mps"`` (or the equivalent :class:`torch.device`) ask for that
        device explicitly. Case and surrounding spaces are ignored.

    Returns
    -------
    torch.device
        The device to put the model and tensors on.

    Raises
    ------
    DeviceError
        If the name is not a device napari-sam supports, or if an explicitly
        requested device is not usable on this machine.
    """
    import torch

    if device is None:
        return _auto_device()
    if isinstance(device, torch.device):
        dev = device
        text = str(device)
    elif isinstance(device, str):
        text = device.strip().lower()
        if text in _AUTO_NAMES:
            return _auto_device()
        try:
            dev = torch.device(text)
        except (RuntimeError, ValueError):
            raise DeviceError(
                f"{device!r} is not a device napari-sam knows; use {_CHOICES}."
            ) from None
    else:
        raise DeviceError(
            f"The device must be given as text or a torch.device, not {type(device).__name__}; "
            f"use {_CHOICES}."
        )

    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        if not cuda_available():
            raise DeviceError(
                f"CUDA was requested ({text!r}) but this machine has no usable NVIDIA GPU; "
                "use device='cpu' or 'auto'."
            )
        count = _cuda_device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(
                f"GPU number {dev.index} was requested but this machine has "
                f"{count} GPU{'s' if count != 1 else ''} (numbered from 0); "
                "use device='cuda:0' or 'auto'."
            )
        return dev
    if dev.type == "mps":
        if not mps_available():
            raise DeviceError(
                "Apple MPS was requested but this machine has no usable Apple-silicon GPU; "
                "use device='cpu' or 'auto'."
            )
        return torch.device("mps")
    raise DeviceError(f"Device type {dev.type!r} is not supported by napari-sam; use {_CHOICES}.")


def _auto_device() -> torch.device:
    import torch

    if cuda_available():
        return torch.device("cuda")
    if mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def describe_devices() -> dict[str, Any]:
    """Summarise the compute devices PyTorch can see, for diagnostics.

    Returns
    -------
    dict
        Keys ``torch_version`` (str), ``cuda_available`` (bool),
        ``cuda_version`` (str or None, the CUDA version PyTorch was built
        with), ``cuda_devices`` (list of GPU names), ``mps_available`` (bool)
        and ``auto`` (str, what ``resolve_device("auto")`` picks).
    """
    import torch

    has_cuda = cuda_available()
    names: list[str] = []
    if has_cuda:
        for index in range(_cuda_device_count()):
            try:
                names.append(str(torch.cuda.get_device_name(index)))
            except Exception:
                names.append("unknown GPU")
    return {
        "torch_version": str(torch.__version__),
        "cuda_available": has_cuda,
        "cuda_version": getattr(torch.version, "cuda", None),
        "cuda_devices": names,
        "mps_available": mps_available(),
        "auto": str(_auto_device()),
    }
