"""Numeric precision of the image encoder: the GPU and CPU fast paths.

The image encoder holds almost all of SAM's arithmetic (about 0.97 TFLOP per
1024² image for ViT-B). It can run under :func:`torch.autocast` in bfloat16
(or float16): matrix products, convolutions and attention use reduced
precision, while layer norms, softmax statistics and the residual stream stay
in float32 (autocast's rules, and the encoders keep their residual streams in
float32). The embedding it returns is cast back to float32, so the prompt
encoder, the interactive mask decoder, the IoU head and the mask logits always
run in float32.

Reduced precision pays where the hardware multiplies bfloat16 faster than
float32: NVIDIA GPUs with tensor cores, and CPUs with bfloat16 matrix
instructions (Intel AMX; AVX-512 BF16 on Intel Cooper Lake and AMD Zen 4 and
newer; Arm BF16). :func:`cpu_bf16_isa` reads those from what PyTorch detects
(``torch.cpu.get_capabilities()``), and :func:`measure_cpu_bf16_speedup`
times one encoder-sized matrix product in both precisions, because an
instruction set alone does not say that PyTorch's kernels use it well. Where
bf16 is fast, :func:`measure_cpu_attention_speedup` also times the two ways
ViT global attention can run in bf16 (PyTorch's fused kernel, or two matrix
products around a softmax), and the faster one is used.

Precision names
---------------
``"auto"``
    On a :class:`~napari_sam.model.sam.sam.Sam` itself: bfloat16 on a CUDA GPU
    that supports it, float16 on an older CUDA GPU, float32 on the CPU and on
    Apple MPS. The model loader (:func:`napari_sam.runtime.loader.load`, used by
    the CLI and the plugin) resolves "auto" for the machine: on a CPU it
    becomes ``"bf16"`` where :func:`assess_cpu_bf16` finds bfloat16 fast, and
    ``"fp32"`` elsewhere. A bare model built with ``sam_model_registry``
    therefore computes on the CPU exactly as ``segment_anything`` does unless
    asked otherwise.
``"fp32"``
    Always float32: the reference computation.
``"bf16"``, ``"fp16"``
    That reduced precision on any device that supports autocast with it (the
    CPU supports both; on a CPU without bfloat16 instructions bf16 is
    emulated and slower than fp32, but gives the same numbers).

Which precision "auto" becomes for models built by the package's loaders
(``NAPARI_SAM_PRECISION``, the measured CPU speed-up remembered on disk) is
decided in :mod:`napari_sam.runtime`; this module does no I/O and reads no
environment.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "MIN_CPU_BF16_SPEEDUP",
    "MIN_MATMUL_ATTENTION_SPEEDUP",
    "PRECISIONS",
    "CpuBf16",
    "assess_cpu_bf16",
    "autocast_dtype",
    "check_precision",
    "cpu_bf16_isa",
    "encoder_autocast",
    "measure_cpu_attention_speedup",
    "measure_cpu_bf16_speedup",
    "precision_tag",
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


def precision_tag(model_id: str, dtype: torch.dtype | None) -> str:
    """The name embedding caches give a model's embeddings: ``model_id``, plus
    ``"@bfloat16"`` / ``"@float16"`` when the encoder runs in reduced precision.

    Embeddings computed in bf16/fp16 differ slightly from float32 ones, so caches
    must keep them apart (``"vit_b"`` vs ``"vit_b@bfloat16"``).
    """
    if dtype is None or dtype == torch.float32:
        return model_id
    return f"{model_id}@{str(dtype).removeprefix('torch.')}"


# --------------------------------------------------------------------------- CPU bf16
#: bfloat16 must multiply at least this many times faster than float32 (measured
#: by :func:`measure_cpu_bf16_speedup`) for "auto" to pick it on a CPU. Matrix
#: products are ~75 % of the encoders' time; the rest (attention softmax,
#: norms) gains less, so a smaller margin would not make the encoder faster.
MIN_CPU_BF16_SPEEDUP = 1.3

#: The matrix-product attention kernel must beat PyTorch's fused one by this factor
#: (:func:`measure_cpu_attention_speedup`) to be chosen: a margin, so that timing
#: noise on a busy machine does not decide.
MIN_MATMUL_ATTENTION_SPEEDUP = 1.1


@dataclass(frozen=True)
class CpuBf16:
    """Whether this CPU runs the image encoder faster in bfloat16, and why.

    Attributes
    ----------
    fast : bool
        True: "auto" means bf16 on this CPU.
    isa : str or None
        The bfloat16 instructions PyTorch found: ``"AMX"``, ``"AVX-512 BF16"``,
        ``"Arm BF16"``, or ``None``.
    speedup : float or None
        Measured bf16 / fp32 throughput of an encoder-sized matrix product
        (``None``: not measured).
    reason : str
        Why, in a few words for the user (shown by ``napari-sam info`` and the
        plugin's model line).
    attention : str
        How attention runs in bf16 on this CPU (ViT's global and window attention, MobileSAM's
        windows): ``"fused"`` (PyTorch's fused kernel) or ``"matmul"`` (two matrix
        products around a softmax), see
        :func:`~napari_sam.model.sam.image_encoder.attention_with_rel_pos` and
        :attr:`~napari_sam.model.sam.tiny_vit.TinyViT.attention_kernel`.
    attention_speedup : float or None
        Measured fused time / matmul time (:func:`measure_cpu_attention_speedup`;
        ``None``: not measured).
    """

    fast: bool
    isa: str | None
    speedup: float | None
    reason: str
    attention: str = "fused"
    attention_speedup: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"fast": self.fast, "isa": self.isa, "speedup": self.speedup,
                "reason": self.reason, "attention": self.attention,
                "attention_speedup": self.attention_speedup}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CpuBf16:
        """The assessment ``to_dict`` wrote (KeyError for one of an older version, which
        did not measure the attention: it is measured again)."""
        speedup = data.get("speedup")
        isa = data.get("isa")
        attention = str(data["attention"])
        if attention not in ("fused", "matmul"):
            raise ValueError(f"unknown attention kernel {attention!r}")
        att_speedup = data.get("attention_speedup")
        return cls(bool(data["fast"]), None if isa is None else str(isa),
                   None if speedup is None else float(speedup), str(data["reason"]),
                   attention, None if att_speedup is None else float(att_speedup))


def _capabilities() -> Mapping[str, Any]:
    """``torch.cpu.get_capabilities()`` (PyTorch >= 2.7), else what older builds expose."""
    get = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    if get is not None:
        try:
            return dict(get())
        except Exception:  # cpuinfo failed to initialise: say nothing
            return {}
    caps: dict[str, Any] = {}
    for key, name in (("amx_bf16", "_is_amx_tile_supported"),
                      ("avx512_bf16", "_is_avx512_bf16_supported")):
        probe = getattr(torch.cpu, name, None)
        if probe is not None:
            try:
                caps[key] = bool(probe())
            except Exception:
                pass
    return caps


def cpu_bf16_isa(capabilities: Mapping[str, Any] | None = None) -> str | None:
    """The bfloat16 matrix instructions of this CPU, as PyTorch detects them.

    Parameters
    ----------
    capabilities : mapping, optional
        ``torch.cpu.get_capabilities()``-style flags (default: this CPU's).

    Returns
    -------
    str or None
        ``"AMX"`` (``amx_bf16``), ``"AVX-512 BF16"`` (``avx512_bf16``),
        ``"Arm BF16"`` (``bf16`` / ``sve_bf16`` on arm64), or ``None`` (e.g. an
        AVX2-only CPU: bfloat16 would be emulated, slower than float32).
    """
    caps = _capabilities() if capabilities is None else capabilities
    if caps.get("amx_bf16") or caps.get("amx_tile"):
        return "AMX"
    if caps.get("avx512_bf16"):
        return "AVX-512 BF16"
    if caps.get("sve_bf16") or caps.get("bf16"):
        return "Arm BF16"
    return None


def measure_cpu_bf16_speedup(repeats: int = 5, tokens: int = 1024, width: int = 768) -> float:
    """How many times faster a bfloat16 matrix product runs than a float32 one here.

    Times ``F.linear`` of ``tokens × width`` activations with a ``width × width``
    weight (ViT-B's attention projection on a quarter of its tokens, ~1.2
    GFLOP) in both precisions, interleaved ``repeats`` times after a warm-up
    (the first bf16 call compiles oneDNN's kernels), with the threads PyTorch
    uses now. Best times are compared, so a busy machine slows both alike.
    Takes ~0.1 s on a 2-core CPU.

    Returns
    -------
    float
        fp32 time / bf16 time (> 1: bf16 is faster).
    """
    gen = torch.Generator().manual_seed(0)
    x32 = torch.randn(tokens, width, generator=gen)
    w32 = torch.randn(width, width, generator=gen)
    x16, w16 = x32.bfloat16(), w32.bfloat16()
    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    with torch.inference_mode():
        F.linear(x32, w32)
        F.linear(x16, w16)
        for _ in range(max(1, repeats)):
            for dtype, (x, w) in ((torch.float32, (x32, w32)), (torch.bfloat16, (x16, w16))):
                start = time.perf_counter()
                F.linear(x, w)
                best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best[torch.float32] / max(best[torch.bfloat16], 1e-9)


def measure_cpu_attention_speedup(repeats: int = 3, tokens: int = 4096,
                                  head_dim: int = 64) -> float:
    """How many times faster the ``"matmul"`` attention kernel runs than the fused one here.

    Times one head of ViT global attention in bfloat16 (``tokens`` queries and keys
    on a square grid, ``head_dim`` wide, with its relative-position bias: one of
    ViT-B's 48 per image) with both kernels of
    :func:`~napari_sam.model.sam.image_encoder.attention_with_rel_pos`,
    interleaved ``repeats`` times after a warm-up; best times are compared.
    Takes ~0.2 s on a 2-core CPU.

    Returns
    -------
    float
        fused time / matmul time (> 1: the matrix products are faster).
    """
    from napari_sam.model.sam.image_encoder import attention_with_rel_pos

    side = round(tokens ** 0.5)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, side * side, head_dim, generator=gen).bfloat16()
               for _ in range(3))
    rel_h, rel_w = (torch.randn(1, 1, side * side, side, generator=gen).bfloat16()
                    for _ in range(2))
    best = {"fused": float("inf"), "matmul": float("inf")}
    with torch.inference_mode():
        for kernel in best:
            attention_with_rel_pos(q, k, v, rel_h, rel_w, kernel)
        for _ in range(max(1, repeats)):
            for kernel in best:
                start = time.perf_counter()
                attention_with_rel_pos(q, k, v, rel_h, rel_w, kernel)
                best[kernel] = min(best[kernel], time.perf_counter() - start)
    return best["fused"] / max(best["matmul"], 1e-9)


def assess_cpu_bf16(
    *, measure: bool = True, capabilities: Mapping[str, Any] | None = None
) -> CpuBf16:
    """Decide whether "auto" should run the image encoder in bfloat16 on this CPU.

    A CPU without bfloat16 instructions (:func:`cpu_bf16_isa` is ``None``) keeps
    float32 without measuring. Otherwise one matrix product is timed in both
    precisions (:func:`measure_cpu_bf16_speedup`) and bf16 is chosen if it is at
    least :data:`MIN_CPU_BF16_SPEEDUP` times faster. With ``measure=False`` the
    instruction set alone decides. Callers remember the result
    (:mod:`napari_sam.runtime.precision` per process and on disk).
    """
    isa = cpu_bf16_isa(capabilities)
    if isa is None:
        return CpuBf16(False, None, None, "this CPU has no bf16 matrix instructions")
    if not measure:
        return CpuBf16(True, isa, None, f"{isa}")
    speedup = measure_cpu_bf16_speedup()
    if speedup >= MIN_CPU_BF16_SPEEDUP:
        att = measure_cpu_attention_speedup()
        return CpuBf16(True, isa, speedup,
                       f"{isa}: bf16 matrix products {speedup:.1f}× faster than fp32",
                       "matmul" if att >= MIN_MATMUL_ATTENTION_SPEEDUP else "fused", att)
    return CpuBf16(False, isa, speedup,
                   f"{isa}, but bf16 matrix products only {speedup:.1f}× as fast as fp32")
