"""What a run of the automatic dock segments, for every image it takes (no Qt).

Automatic segmentation works on a 2D image (grayscale or RGB) or a stack of
grayscale or RGB planes (:func:`~napari_sam.workflows.segment.segment_iter`).
An image with two or more leading axes before its planes (a time-lapse of
stacks, grayscale or RGB) is segmented one **line** at a time: the stack of
``(Y, X)`` planes along its *last* leading axis (the slices) at the position
the viewer shows on the others (the time point).
"Current slice" segments the plane shown, "all slices" every slice of that
time point (linked through the slices when asked). The result goes into that
part of "<image> SAM auto", which has the image's full shape, scale and
translate; other time points keep their objects, and the new objects get ids
above theirs (:meth:`~napari_sam._widgets.automatic.output.AutoOutput.write`).

The line is ``image.data[outer]``: a view of a numpy image, still lazy for a
dask image (each plane is read when segmented). :func:`run_target` decides
what a run segments for any image (a plane, a stack, or a line), and
:func:`channel_input` what SAM sees of it when the user chose channel layers
(:class:`~napari_sam._widgets.channel_layers.ChannelLayers`): their planes
mixed into SAM's red, green and blue, one plane at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from napari_sam._widgets.layers import axis_name, layer_layout
from napari_sam.errors import ImageFormatError
from napari_sam.workflows.image import ImageLayout, stack_layout
from napari_sam.workflows.planes import PlaneGeometry, plane_geometry
from napari_sam.workflows.prompts import current_slice, layer_affine
from napari_sam.workflows.sam_stack import SamStack

__all__ = [
    "Line",
    "Target",
    "channel_input",
    "image_kind",
    "is_nd",
    "label_shape",
    "line_layout",
    "n_lines",
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
    """Whether ``image`` is segmented line by line: not a pyramid, with 4 layer axes or more
    (the colour axis of an RGB image is not one)."""
    n_axes = image.data.ndim - (1 if image.rgb else 0)
    return not getattr(image, "multiscale", False) and n_axes >= 4


def _geometry(image: Any) -> PlaneGeometry:
    """The planes of an nD ``image`` (refuses a last axis that looks like channels)."""
    shape = tuple(int(s) for s in image.data.shape)
    return plane_geometry(shape, rgb=bool(image.rgb), dtype=image.data.dtype)


def _plain_layout(image: Any) -> ImageLayout:
    """The layout of a 2D image or a stack (grayscale or RGB planes); the one sentence why
    not otherwise (e.g. a multiscale image, 4 axes)."""
    if getattr(image, "multiscale", False):
        return layer_layout(image, "automatic segmentation")  # raises the pyramid sentence
    return stack_layout(image.data.shape, rgb=bool(image.rgb), dtype=image.data.dtype)


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
    _geometry(image)  # refuses channel-like last axes
    shape = tuple(int(s) for s in image.data.shape)
    return stack_layout(shape[-4:] if image.rgb else shape[-3:], rgb=bool(image.rgb),
                        dtype=image.data.dtype)


def shown_layout(image: Any) -> ImageLayout | None:
    """The layout of ``image`` for the dock's estimate and status (for an nD image, that of
    the stack of slices shown), or None if it cannot be segmented."""
    try:
        return _plain_layout(image)
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
        return _plain_layout(image)
    except ImageFormatError:
        layout = line_layout(image)
        if layout is None:
            raise
        return layout


def label_shape(image: Any, layout: ImageLayout) -> tuple[int, ...]:
    """The shape of ``image``'s output layer (an nD image's full shape, without colours)."""
    return _geometry(image).shape if is_nd(image) else layout.spatial_shape


def n_lines(image: Any, layout: ImageLayout | None) -> int:
    """How many stacks (lines) of slices an all-time-points run of ``image`` segments: the
    time points of an nD image (the product of its outer axes), else 1."""
    if layout is None or not is_nd(image):
        return 1
    return math.prod(label_shape(image, layout)[:-3])


def image_kind(image: Any, layout: ImageLayout | None) -> str:
    """What the status line calls ``image``: "image", "stack" or "time-lapse"."""
    if layout is None:
        return "image"
    if is_nd(image):
        return "time-lapse" if len(_geometry(image).shape) == 4 else "image"
    return "stack" if layout.is_stack else "image"


@dataclass(frozen=True)
class Target:
    """What one run segments: ``data`` (the image, or an nD image's line), the slice ``k``
    of a current-slice run (None: all of it) and the line's position ``outer`` (nD only);
    ``whole``: the leading shape of an nD image segmented whole (every time point)."""

    data: Any
    k: int | None
    outer: tuple[int, ...] | None
    whole: tuple[int, ...] | None = None


def run_target(image: Any, layout: ImageLayout, current: bool, world_point: Any,
               every_line: bool = False) -> Target | str:
    """What a run on ``image`` segments (``current``: only the slice shown; ``every_line``:
    every time point of an nD image, else the one shown), or the sentence why it cannot
    start (the viewer is outside the image)."""
    if is_nd(image) and every_line and not current:
        return Target(image.data, None, None, _geometry(image).leading_shape)
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
    index = _geometry(image).index_at(layer_affine(image), world_point)
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


def channel_input(channels: Any, target: Target) -> Any:
    """What SAM sees of ``target`` through the chosen channel layers (``channels``, a
    :class:`~napari_sam._widgets.channel_layers.ChannelLayers` whose first layer is the
    image): the ``(H, W, 3)`` uint8 plane of a 2D image, else the
    :class:`~napari_sam.workflows.sam_stack.SamStack` ``(N, H, W, 3)`` of the stack (or of
    an nD image's line); segment it with ``rgb=True`` and contrast limits ``(0, 255)``.

    Raises
    ------
    ImageFormatError
        If the channel layers no longer fit together (e.g. a shape changed).
    """
    planes = channels.planes()
    g = planes.geometry
    if g.n_leading == 0:
        return planes.sam_image(None)
    return SamStack(planes, (*(target.outer or ()), 0), g.n_leading - 1)
