"""One image layer shown channels first, so that the channel layers made from it line up
with it in the viewer (both docks).

napari lines a layer of fewer dimensions up with the viewer's *last* axes. Channel
layers made from a channel axis that is not the layer's first one (a (Z, C, Y, X)
ImageJ hyperstack opened as it is) have the layer's other axes, (Z, Y, X), which
napari would line up with the layer's (C, Y, X): their planes would follow the
channel slider, and the z slider would do nothing. So that layer is shown channels
first instead, (C, Z, Y, X), as napari's own ``channel_axis`` would have opened it:
its data becomes a view in that axis order (nothing is copied or read), and its
scale, translation, axis names and units follow, as do the prompt layers drawn on
it (:func:`permute_prompts`). A layer that is rotated, sheared or given an affine
transform is not reordered (one sentence says so).

Axes here are the layer's own axes (``layer.data`` order). No Qt here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_sam.errors import ImageFormatError

__all__ = ["channels_first", "for_views", "move_to_front", "permute_prompts"]


def move_to_front(ndim: int, axis: int) -> list[int]:
    """The axis order that puts ``axis`` first and keeps the others in order."""
    return [axis, *(a for a in range(ndim) if a != axis)]


def channels_first(layer: Any, axis: int) -> list[int] | None:
    """Show image ``layer`` with its ``axis`` first (see the module); returns the new axis
    order (``order[i]`` is the old axis now at ``i``), or None when ``axis`` is already first.

    Raises
    ------
    ImageFormatError
        The layer is rotated, sheared or has an affine transform (nothing changed).
    """
    if axis == 0:
        return None
    ndim = int(layer.ndim)
    transformed = (
        not np.allclose(np.asarray(layer.rotate, float), np.eye(ndim))
        or not np.allclose(np.asarray(layer.shear, float), 0.0)
        or not np.allclose(np.asarray(layer.affine.affine_matrix, float), np.eye(ndim + 1))
    )
    if transformed:
        raise ImageFormatError(
            f"“{layer.name}” is rotated, sheared or transformed in the viewer, so its channel "
            f"layers could not line up with it; reset its transform, or split its channels "
            "into layers first (napari: File > Open with channel_axis)."
        )
    order = move_to_front(ndim, axis)
    scale, translate = list(layer.scale), list(layer.translate)
    labels, units = list(layer.axis_labels), list(layer.units)
    layer.data = _moved(layer.data, axis)
    layer.scale = [scale[a] for a in order]
    layer.translate = [translate[a] for a in order]
    # napari's default names count from the end ("-4"): they stay as napari gives them
    if not any(str(v).lstrip("-").isdigit() for v in labels):
        layer.axis_labels = [labels[a] for a in order]
    layer.units = [units[a] for a in order]
    return order


def permute_prompts(layers: Sequence[Any], order: Sequence[int]) -> None:
    """Reorder the coordinates of prompt layers (napari Points or Shapes) drawn on a layer
    that :func:`channels_first` reordered with ``order``; layers of another dimensionality
    are left alone."""
    n = len(order)
    for layer in layers:
        if int(layer.ndim) != n:
            continue
        scale, translate = list(layer.scale), list(layer.translate)
        if hasattr(layer, "nshapes"):  # Shapes: one (vertices, D) array per shape
            data = [np.asarray(d)[:, list(order)] for d in layer.data]
        else:
            data = np.asarray(layer.data)[:, list(order)]
        layer.data = data
        layer.scale = [scale[a] for a in order]
        layer.translate = [translate[a] for a in order]


def _moved(data: Any, axis: int) -> Any:
    """``data`` with ``axis`` first (a view; see :func:`for_views`)."""
    data = for_views(data)
    if isinstance(data, np.ndarray):
        return np.moveaxis(data, axis, 0)
    import dask.array as da

    return da.moveaxis(data, axis, 0)


def for_views(data: Any) -> Any:
    """``data`` as an array whose indexing and axis moves are views: numpy and dask arrays as
    they are, other array types (zarr) through dask, so that nothing is read."""
    if type(data).__module__.split(".")[0] in ("numpy", "dask"):
        return data
    import dask.array as da

    return da.from_array(data, chunks=getattr(data, "chunks", "auto"))
