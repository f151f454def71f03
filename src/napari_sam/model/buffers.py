"""Tensors kept from call to call for the large intermediates of CPU loops.

Automatic mask generation decodes and upscales hundreds of prompts, a batch
at a time, and every step needs intermediates of tens of MB of the same
sizes. A fresh CPU tensor that large is mapped from the system and faulted in
page by page (on a worker thread, whose glibc arena cannot hold blocks over
64 MiB, every time), which costs more than the arithmetic writing it. A
:class:`KeptBuffers` hands out the same memory for the same purpose instead;
ops write into it through their ``out=`` arguments.

On a GPU the caching allocator already reuses memory: a pool made with
``active=False`` gives None for every request and callers allocate afresh.
"""

from __future__ import annotations

import math

import torch

__all__ = ["KeptBuffers"]


class KeptBuffers:
    """Named reusable tensors, each at most ``keep_bytes``.

    Parameters
    ----------
    device : torch.device
    dtype : torch.dtype
        Default dtype of the buffers.
    keep_bytes : int
        Largest buffer kept: a larger request gives None (the caller allocates
        afresh), so that one large batch does not hold its memory until the
        pool is dropped.
    active : bool
        False: every request gives None.

    A buffer is valid until the next request of the same name: callers use
    one name per purpose and are done with its contents before asking again.
    """

    def __init__(
        self,
        device: torch.device | str,
        dtype: torch.dtype,
        keep_bytes: int,
        active: bool = True,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.keep_bytes = int(keep_bytes)
        self.active = bool(active)
        #: The kept memory, by name (flat tensors; requests are views of their start).
        self.tensors: dict[str, torch.Tensor] = {}

    def __call__(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype | None = None
    ) -> torch.Tensor | None:
        """A contiguous tensor of ``shape`` (contents undefined) kept under ``name``,
        or None (pool inactive, or larger than ``keep_bytes``)."""
        if not self.active:
            return None
        dtype = self.dtype if dtype is None else dtype
        n = math.prod(shape)
        if n * dtype.itemsize > self.keep_bytes:
            return None
        buf = self.tensors.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < n:
            del buf
            self.tensors.pop(name, None)  # free the old one before allocating
            buf = torch.empty(n, dtype=dtype, device=self.device)
            self.tensors[name] = buf
        return buf[:n].view(shape)

    def clear(self) -> None:
        """Drop every kept tensor."""
        self.tensors.clear()
