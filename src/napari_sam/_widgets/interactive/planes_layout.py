"""Images with more leading axes than a stack, e.g. (T, Z, Y, X), in the interactive dock.

The dock's own layouts are a 2D image, a 2D RGB image and a (Z, Y, X) stack
(:func:`~napari_sam.workflows.image.image_layout`). An image with two or more
leading axes (a time-lapse of stacks; an RGB stack) is described here by a
:class:`PlanesLayout`: its :class:`~napari_sam.workflows.planes.PlaneGeometry`
says which axes are leading axes and which the plane. The dock then segments
the plane the viewer shows, named by its **full leading index** ``(t, z)``:
that tuple is the "slice" of the preview, the commit, the embedding key
(:class:`~napari_sam.workflows.embeddings.EmbeddingKey` ``slice``) and the
prompts (:func:`~napari_sam.workflows.planes.plane_prompts`). The preview and
the output labels have the image's full shape, scale and translate.
Propagation follows one chosen leading axis through the plane shown
(:mod:`~napari_sam._widgets.interactive.stack_line`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_sam._widgets.layers import layer_layout
from napari_sam.errors import ImageFormatError
from napari_sam.workflows.image import ImageLayout
from napari_sam.workflows.planes import PlaneGeometry, plane_geometry, plane_prompts
from napari_sam.workflows.prompts import SlicePrompts, layer_affine, point_labels_of_layer

__all__ = [
    "PlaneKey",
    "PlanesLayout",
    "dock_layout",
    "is_planes",
    "plane_index",
    "plane_prompts_from_layers",
    "plane_write_index",
    "where",
]


#: A plane of the dock's image: None (a 2D image), a stack slice, or a full leading index.
PlaneKey = int | tuple[int, ...] | None


@dataclass(frozen=True)
class PlanesLayout(ImageLayout):
    """An image with two or more leading axes: ``kind`` "nD", ``spatial_shape`` the label
    shape ``(*leading, H, W)``, and the :class:`PlaneGeometry` behind it."""

    geometry: PlaneGeometry | None = None


def is_planes(layout: ImageLayout | None) -> bool:
    return isinstance(layout, PlanesLayout)


def dock_layout(image: Any) -> ImageLayout:
    """The layout of an image layer for the interactive dock.

    2D, 2D RGB and 3D stacks as :func:`~napari_sam._widgets.layers.layer_layout`
    says; an image with more leading axes (e.g. ``(T, Z, Y, X)``, or an RGB
    stack) as a :class:`PlanesLayout`.

    Raises
    ------
    ImageFormatError
        One sentence for an image neither can segment (e.g. a 5D array whose last
        axis looks like channels, a multiscale image).
    """
    try:
        return layer_layout(image, "interactive segmentation")
    except ImageFormatError:
        shape = tuple(image.data.shape)
        n_axes = len(shape) - (1 if image.rgb else 0)  # the colour axis is not a layer axis
        if getattr(image, "multiscale", False) or n_axes < (3 if image.rgb else 4):
            raise
    geometry = plane_geometry(shape, rgb=bool(image.rgb), dtype=image.data.dtype)
    return PlanesLayout(kind="nD", spatial_shape=geometry.shape, rgb=bool(image.rgb),
                        geometry=geometry)


def plane_index(layout: PlanesLayout, image: Any, world_point: Any) -> tuple[int, ...] | None:
    """The full leading index of the plane the viewer shows (None: outside the image)."""
    return layout.geometry.index_at(layer_affine(image), world_point)


def plane_prompts_from_layers(
    layout: PlanesLayout,
    image: Any,
    index: tuple[int, ...],
    world_point: Any,
    points_layer: Any = None,
    shapes_layer: Any = None,
) -> SlicePrompts:
    """The prompts of plane ``index`` from napari's Points and Shapes layers (rectangles only)."""
    kwargs: dict[str, Any] = {}
    if points_layer is not None and len(points_layer.data):
        kwargs.update(
            points=np.asarray(points_layer.data, dtype=float),
            points_matrix=layer_affine(points_layer),
            point_labels=point_labels_of_layer(points_layer),
        )
    if shapes_layer is not None and len(shapes_layer.data):
        kwargs.update(
            shapes=[
                np.asarray(v, dtype=float) if t == "rectangle" else None
                for v, t in zip(shapes_layer.data, shapes_layer.shape_type)
            ],
            shapes_matrix=layer_affine(shapes_layer),
        )
    return plane_prompts(layout.geometry, index, layer_affine(image), world_point, **kwargs)


def plane_write_index(k: Any, rows: np.ndarray, cols: np.ndarray) -> tuple:
    """The index into a label array of pixels ``(rows, cols)`` of plane ``k``
    (None: a 2D image; an int: a stack slice; a tuple: a full leading index)."""
    if k is None:
        return (rows, cols)
    lead = k if isinstance(k, tuple) else (k,)
    return (*(np.full(rows.shape, int(i)) for i in lead), rows, cols)


def where(k: Any) -> str:
    """How the status line names plane ``k``: "the image", "slice 3", "plane (1, 2)"."""
    if k is None:
        return "the image"
    if isinstance(k, tuple):
        return f"plane {k}"
    return f"slice {k}"
