"""Batch sizes bounded by free memory, and recovery from running out of it.

On a GPU, SAM is fastest with many slices, crops or prompts per forward pass,
but a batch that does not fit raises an out-of-memory error. The functions
here choose batch sizes from the memory the device has free, and
:func:`run_batches` recovers from an out-of-memory error by retrying the same
items in smaller batches, and finally on the CPU, warning the user each time
with :class:`~napari_sam.errors.DeviceFallbackWarning`. Results never depend on
the batch size, so a fallback only costs time.

No napari or Qt here; the widgets turn the warnings into notifications.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from napari_sam.errors import DeviceFallbackWarning, OutOfMemoryError

__all__ = [
    "auto_batch_size",
    "encoder_bytes_per_image",
    "free_memory_bytes",
    "is_out_of_memory",
    "release_cached_memory",
    "run_batches",
]

T = TypeVar("T")

#: Working memory of one 1024² image in the image encoder, in bytes per
#: (token × channel) of its widest layer: the residual stream in float32, the
#: 4× wider MLP activations and q/k/v in bf16, with headroom.
_BYTES_PER_TOKEN_CHANNEL = 48

#: Attention-bias slices are bounded separately (see
#: ``model.image_encoder.attention_mask_budget``); this covers them.
_FIXED_BYTES = 768 * 2**20


def encoder_bytes_per_image(model: Any) -> int:
    """Estimated GPU working memory of encoding one image with ``model``'s encoder.

    Derived from the width of the encoder's widest linear layer input and the
    number of tokens (``(img_size / 16)²``); generous by design, since an
    underestimate costs an out-of-memory retry.
    """
    encoder = getattr(model, "image_encoder", model)
    width = 0
    for module in encoder.modules():
        if isinstance(module, torch.nn.Linear):
            width = max(width, int(module.in_features))
    width = width or 768
    tokens = (int(getattr(encoder, "img_size", 1024)) // 16) ** 2
    return tokens * width * _BYTES_PER_TOKEN_CHANNEL + _FIXED_BYTES


#: Fraction of the free memory a batch may plan to use.
_SAFETY = 0.7


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says a device ran out of memory (CUDA, MPS or the CPU allocator)."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(
        torch.cuda, "OutOfMemoryError", None
    )
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return "out of memory" in text or "can't allocate memory" in text
    return False


def free_memory_bytes(device: torch.device | str) -> int | None:
    """Bytes free on a CUDA device, or ``None`` where it cannot be known (CPU, MPS)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    try:
        free, _total = torch.cuda.mem_get_info(dev)
    except Exception:
        return None
    # Memory PyTorch has cached but not handed out is free for our tensors too.
    try:
        reserved = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
    except Exception:
        reserved = 0
    return int(free + max(reserved, 0))


def auto_batch_size(
    device: torch.device | str,
    bytes_per_item: int,
    *,
    maximum: int,
    cpu_default: int = 1,
) -> int:
    """How many items to process per pass so that the batch fits in free memory.

    Parameters
    ----------
    device : torch.device or str
    bytes_per_item : int
        Working memory one item needs (for example
        :func:`encoder_bytes_per_image`).
    maximum : int
        Never more than this (larger batches stop paying off).
    cpu_default : int
        Returned where free memory cannot be queried (CPU, MPS).

    Returns
    -------
    int
        Between 1 and ``maximum``.
    """
    if maximum < 1:
        raise ValueError(f"maximum must be at least 1, got {maximum}.")
    free = free_memory_bytes(device)
    if free is None:
        return max(1, min(int(cpu_default), int(maximum)))
    fits = int(free * _SAFETY) // max(int(bytes_per_item), 1)
    return max(1, min(fits, int(maximum)))


def release_cached_memory(device: torch.device | str | None = None) -> None:
    """Give memory held by freed tensors back (after an out-of-memory error)."""
    gc.collect()
    if device is None or torch.device(device).type == "cuda":
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    elif torch.device(device).type == "mps":
        mps = getattr(torch, "mps", None)
        if mps is not None and hasattr(mps, "empty_cache"):
            mps.empty_cache()


_OUT_OF_MEMORY = object()


def _attempt(process: Callable[[Sequence[T]], Sequence[Any]], batch: Sequence[T]) -> Any:
    """``list(process(batch))``, or :data:`_OUT_OF_MEMORY` if that ran out of memory."""
    try:
        return list(process(batch))
    except Exception as exc:
        if is_out_of_memory(exc):
            return _OUT_OF_MEMORY
        raise


def run_batches(
    items: Sequence[T],
    process: Callable[[Sequence[T]], Sequence[Any]],
    batch_size: int,
    *,
    what: str = "items",
    to_cpu: Callable[[], None] | None = None,
    device: Callable[[], torch.device] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    on_shrink: Callable[[int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    per_item: bool = True,
) -> list[Any]:
    """``process`` the items batch by batch; on out-of-memory retry smaller, then on the CPU.

    Parameters
    ----------
    items : sequence
        What to process, in order.
    process : callable ``(batch) -> sequence``
        Processes a batch and returns one result per item. It must not keep
        side effects of a batch that raised (it is called again with part of
        that batch).
    batch_size : int
        First batch size to try (at least 1).
    what : str
        Plural noun for the warnings (``"slices"``, ``"prompts"``).
    to_cpu : callable, optional
        Moves the work to the CPU (typically ``model.to("cpu")``); called once
        when a single item does not fit on a GPU. Without it, or when already
        on the CPU, a single item that does not fit raises
        :class:`~napari_sam.errors.OutOfMemoryError`.
    device : callable ``() -> torch.device``, optional
        Where the work currently runs (for the CPU fallback and the messages).
    on_batch : callable ``(done, total)``, optional
        Called after each successful batch.
    on_shrink : callable ``(batch_size)``, optional
        Called with the new batch size after an out-of-memory error (so the
        caller can start there next time).
    should_cancel : callable ``() -> bool``, optional
        Polled before each batch; when it returns True the results so far are
        returned (fewer than ``len(items)``).
    per_item : bool
        ``process`` returns one result per item (checked). With ``False`` it
        returns any number of results per batch, which are concatenated.

    Returns
    -------
    list
        One result per processed item, in order (``per_item=False``: the
        batches' results, concatenated).

    Warns
    -----
    DeviceFallbackWarning
        When the batch size is reduced, and when the work moves to the CPU.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    results: list[Any] = []
    total = len(items)
    start = 0
    size = int(batch_size)
    while start < total:
        if should_cancel is not None and should_cancel():
            break
        batch = items[start : start + size]
        out = _attempt(process, batch)
        if out is _OUT_OF_MEMORY:
            # Outside the ``except`` block: the failed batch's tensors are freed now.
            dev = device() if device is not None else None
            release_cached_memory(dev)
            if len(batch) > 1:
                size = max(1, len(batch) // 2)
                if on_shrink is not None:
                    on_shrink(size)
                warnings.warn(
                    f"Not enough memory for {len(batch)} {what} at once; continuing with "
                    f"{size} at a time (slower, same result).",
                    DeviceFallbackWarning,
                    stacklevel=2,
                )
                continue
            if to_cpu is not None and dev is not None and dev.type != "cpu":
                to_cpu()
                release_cached_memory(dev)
                warnings.warn(
                    f"The GPU ran out of memory even for one of the {what}; napari-sam "
                    "continues on the CPU (much slower, same result). Close other programs "
                    "using the GPU or choose a smaller model to stay on the GPU.",
                    DeviceFallbackWarning,
                    stacklevel=2,
                )
                to_cpu = None
                continue
            memory = "GPU memory" if dev is not None and dev.type == "cuda" else "memory"
            raise OutOfMemoryError(
                f"There is not enough {memory} to process even one of the {what}; close "
                "other programs, use a smaller model (vit_t) or a smaller image."
            )
        if per_item and len(out) != len(batch):
            raise RuntimeError(
                f"Internal error: {len(batch)} {what} gave {len(out)} results."
            )
        results.extend(out)
        start += len(batch)
        if on_batch is not None:
            on_batch(start, total)
    return results
