"""A line of planes as the stack of colour images SAM sees, converted one plane at a time.

Automatic segmentation (:func:`~napari_sam.workflows.segment.segment_iter`)
reads a stack plane by plane. To segment what SAM sees through an
:class:`~napari_sam.workflows.planes.ImagePlanes` — 1–3 channel layers as red,
green and blue, each with its contrast limits — :class:`SamStack` shows the
planes along one leading axis as a ``(N, H, W, 3)`` uint8 RGB stack, to be
segmented with ``rgb=True`` and contrast limits ``(0, 255)``. Only the plane
asked for is read and converted (the last one is kept, since a tiled run
reads one plane window by window).

No napari or torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_sam.workflows.planes import AxisStack, ImagePlanes

__all__ = ["SamStack"]


class SamStack(AxisStack):
    """The planes of ``planes`` along leading ``axis`` through ``index``, as SAM's input.

    ``stack[k]`` is plane ``k`` as SAM's ``(H, W, 3)`` uint8 RGB image
    (:meth:`ImagePlanes.sam_image`); ``stack[k, rows, cols]`` a window of it.
    ``shape`` is ``(N, H, W, 3)``.
    """

    def __init__(self, planes: ImagePlanes, index: Sequence[int] | int | None, axis: int) -> None:
        super().__init__(planes, index, axis)
        self.shape = (*self.shape, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 4
        self._last: tuple[int, np.ndarray] | None = None

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if not isinstance(key, (int, np.integer)):
            raise TypeError("A SamStack is read one plane at a time: stack[k] or stack[k, ...].")
        k = int(key)
        if not 0 <= k < self.shape[0]:
            raise IndexError(f"plane {k} of {self.shape[0]}")
        if self._last is None or self._last[0] != k:
            self._last = (k, self.planes.sam_image(self.full_index(k)))
        plane = self._last[1]
        return np.array(plane[rest] if rest else plane)  # a copy: the kept plane stays as made
