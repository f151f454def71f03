"""What precision "auto" means on this machine, and why.

:func:`resolve_auto` turns ``precision="auto"`` into the precision the image
encoder uses on a device, with one phrase saying why:

========  ================================================================
device    "auto" means
========  ================================================================
CUDA      bf16 on GPUs with bf16 tensor cores (compute capability >= 8),
          fp16 on older GPUs (decided by the model, see
          :func:`napari_sam.model.precision.autocast_dtype`)
CPU       bf16 where bf16 matrix products are measured to be fast (AMX,
          AVX-512 BF16, Arm BF16; :func:`napari_sam.model.precision.assess_cpu_bf16`),
          fp32 elsewhere (e.g. AVX2-only CPUs)
MPS       fp32
========  ================================================================

The CPU assessment times one matrix product (~0.1 s) and, where bf16 is fast,
one head of ViT global attention with both attention kernels (~0.2 s;
:func:`apply_cpu_attention` gives a bf16 ViT or TinyViT encoder the faster). It is done once per
process and remembered in ``cpu_bf16.json`` in the cache folder (when that
folder exists), keyed by CPU model, instruction set and PyTorch version, so
other processes on the same kind of machine (a cluster sharing a cache folder
included) need not measure again.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from napari_sam.model.precision import (
    CpuBf16,
    assess_cpu_bf16,
    autocast_dtype,
    check_precision,
    cpu_bf16_isa,
)

__all__ = ["PrecisionChoice", "adopt_cpu_bf16", "apply_cpu_attention", "cpu_bf16",
           "cpu_bf16_for_workers", "forget_cpu_bf16", "resolve_auto"]

#: File in the cache folder that remembers CPU assessments.
CPU_FILE = "cpu_bf16.json"

_LOCK = threading.Lock()
_CPU: CpuBf16 | None = None


@dataclass(frozen=True)
class PrecisionChoice:
    """The encoder precision "auto" resolved to on a device.

    Attributes
    ----------
    precision : str
        What to set ``Sam.precision`` to: ``"bf16"`` or ``"fp32"`` on a CPU,
        ``"auto"`` elsewhere (the model decides per GPU).
    dtype : str
        The resulting arithmetic: ``"bfloat16"``, ``"float16"`` or ``"float32"``.
    reason : str
        Why, for the user, e.g. ``"auto: AVX-512 BF16: bf16 matrix products
        2.5× faster than fp32"``.
    """

    precision: str
    dtype: str
    reason: str


def _fingerprint() -> str:
    caps: dict[str, Any] = {}
    get = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    if get is not None:
        try:
            caps = dict(get())
        except Exception:
            caps = {}
    name = str(caps.get("cpu_name") or "") or _proc_cpu_name()
    return f"{name}|{cpu_bf16_isa(caps) if caps else None}|torch {torch.__version__}"


def _proc_cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _disk_file() -> Path | None:
    """The remembered assessments' file, if the cache folder exists (never created here)."""
    from napari_sam.runtime import config

    try:
        folder = config.cache_dir(create=False)
    except Exception:
        return None
    return folder / CPU_FILE if folder.is_dir() else None


def _read_disk(key: str) -> CpuBf16 | None:
    path = _disk_file()
    if path is None:
        return None
    try:
        entry = json.loads(path.read_text())[key]
        return CpuBf16.from_dict(entry)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_disk(key: str, result: CpuBf16) -> None:
    from napari_sam.runtime.files import atomic_write

    path = _disk_file()
    if path is None:
        return
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data[key] = result.to_dict()
    try:
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    except Exception:  # a read-only cache folder: measure again next time
        pass


def cpu_bf16(*, remember: bool = True) -> CpuBf16:
    """This CPU's bf16 assessment: from this process, from disk, or measured now.

    Parameters
    ----------
    remember : bool
        Use and update the process's and the disk's memory. ``False`` measures
        afresh (benchmarks, ``napari-sam info --measure``).
    """
    global _CPU
    if not remember:
        return assess_cpu_bf16()
    with _LOCK:
        if _CPU is not None:
            return _CPU
        key = _fingerprint()
        result = _read_disk(key)
        if result is None:
            result = assess_cpu_bf16()
            if result.speedup is not None:
                _write_disk(key, result)
        _CPU = result
        return result


def cpu_bf16_for_workers() -> tuple[str, dict[str, Any]]:
    """This machine's fingerprint and assessment, for :func:`adopt_cpu_bf16` in worker
    processes (a Dask cluster's): measured here first if needed."""
    return _fingerprint(), cpu_bf16().to_dict()


def adopt_cpu_bf16(fingerprint: str, assessment: dict[str, Any]) -> bool:
    """Use another process's assessment (:func:`cpu_bf16_for_workers`) if it was made on the
    same kind of machine (CPU model, instruction set, PyTorch), so that every process of one
    run computes alike: two processes timing the attention kernels on a busy machine may
    otherwise pick different ones, whose bf16 roundings differ. Returns whether it was
    adopted (not for another kind of machine, or an unreadable assessment)."""
    global _CPU
    if fingerprint != _fingerprint():
        return False
    try:
        result = CpuBf16.from_dict(assessment)
    except (KeyError, TypeError, ValueError):
        return False
    with _LOCK:
        _CPU = result
    return True


def forget_cpu_bf16() -> None:
    """Forget this process's assessment (the next call reads the disk or measures)."""
    global _CPU
    with _LOCK:
        _CPU = None


def apply_cpu_attention(sam: Any, device: torch.device | str) -> str | None:
    """Give a ViT encoder running in bf16 on a CPU the attention kernel measured fastest
    on this CPU (:attr:`CpuBf16.attention`); the kernel set, or None (left as it is: a GPU,
    float32, or an encoder without the choice)."""
    encoder = getattr(sam, "image_encoder", None)
    if (torch.device(device).type != "cpu" or not hasattr(encoder, "attention_kernel")
            or getattr(sam, "encoder_dtype", None) != torch.bfloat16):
        return None
    cpu = cpu_bf16()
    kernel = cpu.attention if cpu.fast else "fused"
    encoder.attention_kernel = kernel
    return kernel


def resolve_auto(device: torch.device | str) -> PrecisionChoice:
    """What ``precision="auto"`` means for the image encoder on ``device``, and why."""
    dev = torch.device(device)
    if dev.type == "cpu":
        cpu = cpu_bf16()
        if cpu.fast:
            return PrecisionChoice("bf16", "bfloat16", f"auto: {cpu.reason}")
        return PrecisionChoice("fp32", "float32", f"auto: {cpu.reason}")
    dtype = autocast_dtype(check_precision("auto"), dev)
    name = "float32" if dtype is None else str(dtype).removeprefix("torch.")
    if dev.type == "cuda":
        why = (
            "GPU with bf16 tensor cores" if dtype == torch.bfloat16
            else "GPU without bf16 tensor cores"
        )
    elif dev.type == "mps":
        why = "reduced precision is not faster on Apple GPUs"
    else:
        why = f"no reduced-precision fast path on {dev.type}"
    return PrecisionChoice("auto", name, f"auto: {why}")
