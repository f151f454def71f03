"""Keep freed memory for reuse during allocation-heavy CPU loops (Linux, glibc).

SAM's mask decoder on many prompts (automatic mask generation) allocates and
frees tensors of tens of MB at every step. glibc's ``malloc`` serves blocks
that large with fresh ``mmap`` calls, or hands freed memory at the top of its
heap back to the system, so each new tensor is faulted in page by page and
zero-filled by the kernel: on a 2-vCPU machine that cost more than the
arithmetic of the ops writing them (automatic masks, 32×32 points, vit_t
in float32 on a 2-vCPU EPYC: 13.9 s, and 9.4 s with freed memory kept).

:func:`reuse_freed_memory` raises glibc's two thresholds while a loop runs,
so freed blocks are reused, and on leaving returns what is free to the
system (``malloc_trim``) and sets the thresholds to the values glibc's own
adaptive rule reaches after the first large tensor is freed (32 MiB / 64 MiB).
On other C libraries and systems (macOS, Windows, musl) it does nothing.
Nested and concurrent uses are counted: the thresholds are lowered when the
last one leaves.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
import threading
from collections.abc import Iterator

__all__ = ["reuse_freed_memory"]

#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap, and this much free memory at
#: its top is kept, while a loop runs.
HELD_BYTES = 1 << 30
#: Afterwards: glibc's adaptive ceiling (``DEFAULT_MMAP_THRESHOLD_MAX`` on
#: 64-bit systems, and twice that for trimming).
AFTER_MMAP_BYTES = 32 << 20
AFTER_TRIM_BYTES = 64 << 20

_lock = threading.Lock()
_depth = 0


@functools.cache
def _glibc():
    """The process's glibc (with ``mallopt`` and ``malloc_trim``), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (not musl)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def reuse_freed_memory(active: bool = True) -> Iterator[None]:
    """Within the block, freed memory stays in the process for reuse.

    Parameters
    ----------
    active : bool
        False makes this a no-op (e.g. for work on a GPU, whose allocator
        caches already).
    """
    libc = _glibc() if active else None
    if libc is None:
        yield
        return
    global _depth
    with _lock:
        _depth += 1
        if _depth == 1:
            libc.mallopt(M_MMAP_THRESHOLD, HELD_BYTES)
            libc.mallopt(M_TRIM_THRESHOLD, HELD_BYTES)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(M_MMAP_THRESHOLD, AFTER_MMAP_BYTES)
                libc.mallopt(M_TRIM_THRESHOLD, AFTER_TRIM_BYTES)
                libc.malloc_trim(0)
