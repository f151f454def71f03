"""Images with more leading axes than a stack, e.g. ``(T, Z, Y, X)``, in the automatic dock (no Qt).

Automatic segmentation works on a 2D image or a ``(Z, Y, X)`` stack
(:func:`~napari_sam.workflows.segment.segment_iter`). A grayscale image with
two or more leading axes (a time-lapse of stacks) is segmented one **line**
at a time: the stack of ``(Y, X)`` planes along its *last* leading axis (the
slices) at the position the viewer shows on the others (the time point).
"Current slice" segments the plane shown, "all slices" every slice of that
time point (linked through the slices when asked). The result goes into that
part of "<image> SAM auto", which has the image's full shape, scale and
translate; other time points keep their objects, and the new objects get ids
above theirs (:meth:`~napari_sam._widgets.automatic.output.AutoOutput.write`).

The line is ``image.data[outer]``: a view of a numpy image, still lazy for a
dask image (each plane is read when segmented).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from napari_sam.workflows.image import ImageLayout, image_layout
from napari_sam.workflows.planes import plane_geometry
from napari_sam.workflows.prompts import layer_affine

__all__ = ["Line", "is_nd", "line_layout", "position_text", "shown_line"]


@dataclass(frozen=True)
class Line:
    """The planes of an nD image the viewer shows, as a stack.

    Attributes
    ----------
    outer : tuple of int
        The position on every leading axis but the last (e.g. ``(t,)``).
    k : int
        The slice shown, along the last leading axis.
    data : array-like ``(N, H, W)``
        ``image.data[outer]``.
    """

    outer: tuple[int, ...]
    k: int
    data: Any


def is_nd(image: Any) -> bool:
    """Whether ``image`` is segmented line by line: grayscale, not a pyramid, 4 axes or more."""
    return not image.rgb and not getattr(image, "multiscale", False) and image.data.ndim >= 4


def line_layout(image: Any) -> ImageLayout | None:
    """The layout of one line of ``image`` (a ``(N, H, W)`` stack), or None if ``image``
    is not an nD image (:func:`is_nd`).

    Raises
    ------
    ImageFormatError
        For an nD image SAM cannot segment plane by plane (e.g. a last axis that
        looks like channels), in one sentence.
    """
    if not is_nd(image):
        return None
    shape = tuple(int(s) for s in image.data.shape)
    plane_geometry(shape, dtype=image.data.dtype)  # refuses channel-like last axes
    return image_layout(shape[-3:], dtype=image.data.dtype)


def shown_line(image: Any, world_point: Any) -> Line | None:
    """The line of the nD ``image`` through the plane at ``world_point``
    (``viewer.dims.point``); None where the viewer is outside the image."""
    geometry = plane_geometry(tuple(image.data.shape), dtype=image.data.dtype)
    index = geometry.index_at(layer_affine(image), world_point)
    if index is None:
        return None
    outer = tuple(int(i) for i in index[:-1])
    return Line(outer, int(index[-1]), image.data[outer])


def position_text(image: Any, outer: tuple[int, ...]) -> str:
    """Where a line lies, e.g. ``"t=1"`` (napari's axis label) or ``"axis 0 = 1"``."""
    labels = list(getattr(image, "axis_labels", ()) or ())
    parts = []
    for axis, i in enumerate(outer):
        label = str(labels[axis]) if axis < len(labels) else ""
        numeric = label.lstrip("-").isdigit() or not label.strip()
        parts.append(f"axis {axis} = {i}" if numeric else f"{label}={i}")
    return ", ".join(parts)
