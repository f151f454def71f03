"""Label images too large for memory, made in a memory-mapped file beside the output.

A time-lapse of stacks can have far more voxels than a computer has memory;
its labels (``uint32``, four bytes per voxel) are then written plane by plane
into a file in a hidden folder next to the output (:func:`labels_on_disk`),
read back plane by plane when the output is written, and removed afterwards.
The file's space is reserved before segmentation starts, so that a full disk is
reported in one sentence at the start, never as a crash halfway through.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from napari_sam.errors import OutputFileError
from napari_sam.runtime.files import temporary_dir

__all__ = ["SPILL_BYTES", "labels_into", "labels_on_disk"]

#: Label images (``uint32``) larger than this are made on disk, not in memory.
SPILL_BYTES = 1 << 30


def labels_into(out: np.ndarray | None, shape: Sequence[int]) -> np.ndarray:
    """``out`` (a ``uint32`` array of ``shape``, e.g. from :func:`labels_on_disk`) or, if
    None, a new zero-filled one in memory: where a label image is assembled.

    Raises
    ------
    ValueError
        If ``out`` is not a ``uint32`` array of ``shape``.
    """
    shape = tuple(int(s) for s in shape)
    if out is None:
        return np.zeros(shape, dtype=np.uint32)
    if tuple(out.shape) != shape or out.dtype != np.uint32:
        raise ValueError(
            f"The labels go into a uint32 array of shape {shape}, "
            f"not {out.dtype} {tuple(out.shape)}."
        )
    return out


@contextlib.contextmanager
def labels_on_disk(
    shape: Sequence[int], near: str | os.PathLike[str]
) -> Iterator[np.ndarray | None]:
    """A zero-filled ``uint32`` array of ``shape`` in a file next to ``near``, or None.

    None when the array takes at most :data:`SPILL_BYTES` (it then belongs in
    memory). Otherwise a :class:`numpy.memmap` backed by a file in a hidden
    folder beside ``near`` (the output being made), removed when the block
    ends. Drop every reference to the array before the block ends (on Windows
    a mapped file cannot be removed; it would be left behind).

    Raises
    ------
    OutputFileError
        If the folder cannot be written or the disk has no room for the array.
    """
    shape = tuple(int(s) for s in shape)
    nbytes = 4 * math.prod(shape)
    if nbytes <= SPILL_BYTES:
        yield None
        return
    near = Path(near).expanduser()
    with temporary_dir(near) as folder:
        file = folder / "labels.uint32"
        try:
            with open(file, "wb") as fh:
                _reserve(fh, nbytes)
        except OSError as exc:
            raise OutputFileError(
                f"There is no room for the labels of this image next to {near}: "
                f"{nbytes / 2**30:.1f} GiB are needed there while it is segmented "
                f"({exc.strerror or exc})."
            ) from exc
        array = np.memmap(file, dtype=np.uint32, mode="r+", shape=shape)
        try:
            yield array
        finally:
            del array


def _reserve(fh: BinaryIO, nbytes: int) -> None:
    """Give the (new, empty) file ``nbytes`` of zeros, with the disk space reserved
    where the system can (a sparse file elsewhere)."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fh.fileno(), 0, nbytes)
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
    fh.truncate(nbytes)
