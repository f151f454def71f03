"""Microscopy arrays -> the RGB uint8 images SAM expects.

SAM was trained on 8-bit RGB photographs. Microscopy images are often 16-bit
or float, single channel, and their useful range is a small part of the dtype's
range. :func:`to_sam_rgb` maps a 2D plane to SAM's input with the *contrast
limits the user sees in napari* ("what you see is what SAM sees"): values at or
below the lower limit become 0, values at or above the upper limit 255, and a
grayscale plane is repeated into the three channels.

:func:`image_layout` says whether an array (the data of a napari image layer)
is one of the layouts the interactive tools handle: a 2D grayscale image
(YX), a 2D RGB(A) image (YXC) or a 3D grayscale stack (ZYX), and raises an
:class:`~napari_sam.errors.ImageFormatError` with a clear sentence otherwise.

This module imports neither torch nor napari.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_sam.errors import ImageFormatError

__all__ = [
    "ROBUST_PERCENTILES",
    "ImageLayout",
    "get_plane",
    "image_layout",
    "robust_limits",
    "stack_layout",
    "to_sam_rgb",
]

#: Percentiles used as contrast limits when none are given.
ROBUST_PERCENTILES = (0.1, 99.9)

#: A 3D array whose last axis has at most 4 entries and whose other axes have at least
#: this many is taken for a 2D image with its channels last (Y, X, C), not for a stack.
_MIN_CHANNELS_LAST_SIZE = 16

_LAYOUT_HELP = "napari-sam segments 2D grayscale (YX), 2D RGB (YXC) and 3D grayscale (ZYX) images"


@dataclass(frozen=True)
class ImageLayout:
    """How an image array is laid out, as far as SAM is concerned.

    Attributes
    ----------
    kind : {"2D", "2D RGB", "3D", "3D RGB"}
        The layout ("3D RGB": a stack of colour planes ``(Z, Y, X, 3|4)``, which
        only :func:`stack_layout` accepts).
    spatial_shape : tuple of int
        ``(H, W)`` for 2D images, ``(Z, H, W)`` for stacks; the shape of a
        matching label image.
    rgb : bool
        Whether the last axis holds colour channels.
    """

    kind: str
    spatial_shape: tuple[int, ...]
    rgb: bool

    @property
    def is_stack(self) -> bool:
        """True for a 3D stack (prompts and embeddings are per slice)."""
        return self.kind in ("3D", "3D RGB")

    @property
    def plane_shape(self) -> tuple[int, int]:
        """``(H, W)`` of one plane given to SAM."""
        return (self.spatial_shape[-2], self.spatial_shape[-1])

    @property
    def n_slices(self) -> int:
        """Number of planes (1 for a 2D image)."""
        return self.spatial_shape[0] if self.is_stack else 1


def image_layout(shape: Sequence[int], rgb: bool = False, dtype: object = None) -> ImageLayout:
    """Check that an image is a layout napari-sam segments and describe it.

    Parameters
    ----------
    shape : sequence of int
        Shape of the image array (for a napari layer: ``layer.data.shape``).
    rgb : bool
        Whether the last axis holds RGB(A) channels (napari's ``layer.rgb``).
    dtype : dtype-like, optional
        Checked to be a real number type (or bool) if given.

    Returns
    -------
    ImageLayout

    Raises
    ------
    ImageFormatError
        For any other layout (e.g. 4D, a 3D RGB stack, two channels, an empty
        image, a ``(Y, X, C)`` image with 1-4 channels last that is not RGB)
        or a complex / non-numeric dtype.
    """
    shape = tuple(int(s) for s in shape)
    if dtype is not None:
        dt = np.dtype(dtype)
        if not (np.issubdtype(dt, np.number) or dt == np.bool_) or np.issubdtype(
            dt, np.complexfloating
        ):
            raise ImageFormatError(
                f"The image has data type {dt}, which is not a real number type; "
                f"{_LAYOUT_HELP} of integers or floats."
            )
    if rgb:
        if len(shape) != 3:
            raise ImageFormatError(
                f"This RGB image has {len(shape) - 1} spatial axes (shape {shape}); "
                f"{_LAYOUT_HELP}, so RGB stacks must be split into 2D images first."
            )
        if shape[-1] not in (3, 4):
            raise ImageFormatError(
                f"An RGB image needs 3 or 4 colour channels in its last axis, this one has "
                f"{shape[-1]} (shape {shape})."
            )
        spatial = shape[:2]
        kind = "2D RGB"
    elif len(shape) == 2:
        spatial, kind = shape, "2D"
    elif len(shape) == 3:
        n = shape[-1]
        if n <= 4 and min(shape[0], shape[1]) >= _MIN_CHANNELS_LAST_SIZE:
            rgb_hint = " or open it as an RGB image" if n in (3, 4) else ""
            raise ImageFormatError(
                f"The last axis of this image has only {n} entr{'y' if n == 1 else 'ies'} "
                f"(shape {shape}), so it holds channels, not a width; open its channels as "
                f"separate layers (napari: channel_axis=-1) and segment one of them{rgb_hint}."
            )
        spatial, kind = shape, "3D"
    else:
        raise ImageFormatError(
            f"The image has {len(shape)} axes (shape {shape}); {_LAYOUT_HELP}. Split time "
            "points or channels into separate layers first (e.g. right-click the layer > "
            "Split Stack)."
        )
    if min(spatial) < 1:
        raise ImageFormatError(f"The image is empty (shape {shape}).")
    return ImageLayout(kind=kind, spatial_shape=tuple(spatial), rgb=bool(rgb))


def stack_layout(shape: Sequence[int], rgb: bool = False, dtype: object = None) -> ImageLayout:
    """As :func:`image_layout`, and also a stack of RGB(A) planes ``(Z, Y, X, 3|4)``.

    Automatic segmentation (:func:`~napari_sam.workflows.segment.segment_iter`)
    segments such a stack plane by plane, each plane with its colours; the
    interactive tools see RGB stacks through
    :func:`~napari_sam.workflows.planes.plane_geometry` instead.

    Raises
    ------
    ImageFormatError
        As :func:`image_layout`; for an RGB stack, a colour axis without 3 or 4
        entries or an empty stack.
    """
    shape = tuple(int(s) for s in shape)
    if not (rgb and len(shape) == 4):
        return image_layout(shape, rgb=rgb, dtype=dtype)
    plane = image_layout(shape[1:], rgb=True, dtype=dtype)
    if shape[0] < 1:
        raise ImageFormatError(f"The image is empty (shape {shape}).")
    return ImageLayout(kind="3D RGB", spatial_shape=(shape[0], *plane.spatial_shape), rgb=True)


def get_plane(data: object, layout: ImageLayout, index: int | None = None) -> np.ndarray:
    """The 2D plane (``(H, W)`` or ``(H, W, C)``) of ``data`` that SAM sees.

    ``index`` is the slice along Z for a stack and ignored for 2D images. Lazy
    arrays (dask, zarr) are read here, one plane at a time.
    """
    if layout.is_stack:
        if index is None or not 0 <= int(index) < layout.n_slices:
            raise ImageFormatError(
                f"Slice {index} does not exist; the stack has {layout.n_slices} slices."
            )
        return np.asarray(data[int(index)])
    return np.asarray(data)


def robust_limits(plane: np.ndarray) -> tuple[float, float]:
    """Contrast limits from the :data:`ROBUST_PERCENTILES` of the finite values.

    Returns ``(0.0, 1.0)`` for a plane without finite values.
    """
    values = np.asarray(plane)
    if values.dtype == np.bool_:
        return (0.0, 1.0)
    if np.issubdtype(values.dtype, np.floating):
        values = values[np.isfinite(values)]
    if values.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(values, ROBUST_PERCENTILES)
    return (float(lo), float(hi))


def to_sam_rgb(
    plane: np.ndarray,
    contrast_limits: Sequence[float] | None = None,
    rgb: bool = False,
) -> np.ndarray:
    """Convert a 2D plane to the ``(H, W, 3)`` uint8 RGB image SAM expects.

    Parameters
    ----------
    plane : ndarray ``(H, W)``, or ``(H, W, 3|4)`` with ``rgb=True``
        uint8, uint16, any integer, bool or float values. NaN and ``-inf``
        become black (0), ``+inf`` white (255). An alpha channel is dropped.
    contrast_limits : (low, high), optional
        The display range (napari's ``layer.contrast_limits``): ``low`` maps to
        0 and ``high`` to 255, linearly, clipped outside. If omitted, the
        0.1th and 99.9th percentiles of the finite values are used (a robust
        min/max). If ``low == high`` the result is 0 at or below it and 255
        above it (a constant plane gives a black image).
    rgb : bool
        Whether the last axis holds colour channels.

    Returns
    -------
    ndarray ``(H, W, 3)`` uint8

    Raises
    ------
    ImageFormatError
        If the plane is not 2D grayscale or 2D RGB(A), or the contrast limits
        are not two finite increasing numbers.
    """
    arr = np.asarray(plane)
    layout = image_layout(arr.shape, rgb=rgb, dtype=arr.dtype)
    if layout.is_stack:
        raise ImageFormatError(
            f"to_sam_rgb converts one 2D plane, but got an array of shape {arr.shape}; "
            "pass one slice (e.g. stack[z]) or set rgb=True for a colour image."
        )
    if rgb:
        arr = arr[..., :3]
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)

    if contrast_limits is None:
        lo, hi = robust_limits(arr)
    else:
        limits = np.asarray(contrast_limits, dtype=float).ravel()
        if limits.size != 2 or not np.isfinite(limits).all() or limits[0] > limits[1]:
            raise ImageFormatError(
                "contrast_limits must be two finite numbers (low, high) with low <= high, "
                f"got {list(np.asarray(contrast_limits).ravel())}."
            )
        lo, hi = float(limits[0]), float(limits[1])

    if arr.dtype == np.uint8 and lo == 0.0 and hi == 255.0:
        out = arr  # the identity: no float round trip for 8-bit data shown in full range
    else:
        values = arr.astype(np.float64 if arr.dtype.itemsize > 4 else np.float32, copy=False)
        if hi > lo:
            scaled = (values - lo) * (255.0 / (hi - lo))
        else:
            scaled = np.where(values > lo, 255.0, 0.0)
        with np.errstate(invalid="ignore"):
            scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
        out = np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return np.ascontiguousarray(out)
