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
dask image (each plane is read when segmented). :func:`run_target` decides
what a run segments for any image (a plane, a stack, or a line).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from napari_sam._widgets.layers import axis_name, layer_layout
from napari_sam.errors import ImageFormatError
from napari_sam.workflows.image import ImageLayout, image_layout
from napari_sam.workflows.planes import plane_geometry
from napari_sam.workflows.prompts import current_slice, layer_affine

__all__ = [
    "Line",
    "Target",
    "image_kind",
    "is_nd",
    "label_shape",
    "line_layout",
    "position_text",
    "run_layout",
    "run_target",
    "shown_layout",
    "shown_line",
]


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


def shown_layout(image: Any) -> ImageLayout | None:
    """The layout of ``image`` for the dock's estimate and status (for an nD image, that of
    the stack of slices shown), or None if it cannot be segmented."""
    try:
        return image_layout(image.data.shape, rgb=image.rgb)
    except ImageFormatError:
        try:
            return line_layout(image)
        except ImageFormatError:
            return None


def run_layout(image: Any) -> ImageLayout:
    """The layout a run segments (for an nD image, one stack of slices).

    Raises
    ------
    ImageFormatError
        The one sentence why ``image`` cannot be segmented.
    """
    try:
        return layer_layout(image, "automatic segmentation")
    except ImageFormatError:
        layout = line_layout(image)
        if layout is None:
            raise
        return layout


def label_shape(image: Any, layout: ImageLayout) -> tuple[int, ...]:
    """The shape of ``image``'s output layer (an nD image's full shape)."""
    return tuple(image.data.shape) if is_nd(image) else layout.spatial_shape


def image_kind(image: Any, layout: ImageLayout | None) -> str:
    """What the status line calls ``image``: "image", "stack" or "time-lapse"."""
    if layout is None:
        return "image"
    if is_nd(image):
        return "time-lapse" if image.data.ndim == 4 else "image"
    return "stack" if layout.is_stack else "image"


@dataclass(frozen=True)
class Target:
    """What one run segments: ``data`` (the image, or an nD image's line), the slice ``k``
    of a current-slice run (None: all of it) and the line's position ``outer`` (nD only)."""

    data: Any
    k: int | None
    outer: tuple[int, ...] | None


def run_target(image: Any, layout: ImageLayout, current: bool, world_point: Any) -> Target | str:
    """What a run on ``image`` segments (``current``: only the slice shown), or the sentence
    why it cannot start (the viewer is outside the image)."""
    if is_nd(image):  # the stack of slices at the time point shown
        line = shown_line(image, world_point)
        if line is None:
            return "The viewer shows no plane of this image; move the sliders onto it."
        return Target(line.data, line.k if current else None, line.outer)
    k = None
    if layout.is_stack and current:
        k = current_slice(layer_affine(image), layout.spatial_shape, world_point)
        if k is None:
            return "The viewer shows no slice of this stack; move the slider onto it."
    return Target(image.data, k, None)


def shown_line(image: Any, world_point: Any) -> Line | None:
    """The line of the nD ``image`` through the plane at ``world_point``
    (``viewer.dims.point``); None where the viewer is outside the image."""
    geometry = plane_geometry(tuple(image.data.shape), dtype=image.data.dtype)
    index = geometry.index_at(layer_affine(image), world_point)
    if index is None:
        return None
    outer = tuple(int(i) for i in index[:-1])
    return Line(outer, int(index[-1]), image.data[outer])


def position_text(image: Any, outer: tuple[int, ...] | None) -> str:
    """Where a line lies, e.g. ``"t=1"`` (napari's axis label) or ``"axis 0 = 1"``; ""
    without a line."""
    parts = []
    for axis, i in enumerate(outer or ()):
        name = axis_name(image, axis, axis)
        parts.append(f"{name} = {i}" if name == f"axis {axis}" else f"{name}={i}")
    return ", ".join(parts)
