"""The "SAM preview" Labels layer: the masks of the current slice's prompts, before a commit.

:class:`Preview` owns the layer (made with the image's geometry when first
needed, made again for another image), the slice it shows and the objects
predicted there; it paints a slice's masks with
:func:`~napari_sam.workflows.interactive.compose_preview` (object ``i + 1``;
the earlier object keeps overlapping pixels) and clears them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_sam._widgets.interactive.planes_layout import PlaneKey, is_planes, where
from napari_sam._widgets.layers import add_layer_quietly, layer_geometry
from napari_sam.workflows.click_preview import compose_click_preview
from napari_sam.workflows.image import ImageLayout
from napari_sam.workflows.interactive import ObjectMask, compose_preview

__all__ = ["PREVIEW_NAME", "Preview", "describe_preview"]

PREVIEW_NAME = "SAM preview"


def describe_preview(k: PlaneKey, results: list[ObjectMask], commit_key: str) -> str:
    """The status line after a prediction: objects, SAM's scores, the candidate shown
    (beyond 5 objects, the lowest and highest score)."""
    if len(results) > 5:
        low, high = min(r.score for r in results), max(r.score for r in results)
        scores = f"{low:.2f}–{high:.2f}"
    else:
        scores = ", ".join(f"{r.score:.2f}" for r in results)
    place = where(k) if k is not None else "image"
    cand = ""
    if results and results[0].n_candidates > 1:
        cand = f"; candidate {results[0].candidate + 1}/{results[0].n_candidates}"
    n = len(results)
    return (
        f"Preview on {place}: {n} object{'s' if n != 1 else ''} "
        f"(predicted IoU {scores}{cand}). Commit with {commit_key}."
    )


class Preview:
    """The preview layer, the slice it shows and the objects predicted there."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.layer: Any = None
        self.image: Any = None  # the image the layer was made for
        self.slice: int | None = None
        self.objects: list[ObjectMask] = []

    def exists(self) -> bool:
        return self.layer is not None and self.layer in self.viewer.layers

    def forget(self, layer: Any) -> bool:
        """The user removed ``layer``; True if it was the preview."""
        if layer is not self.layer:
            return False
        self.layer, self.slice, self.objects = None, None, []
        return True

    def ensure(self, image: Any, layout: ImageLayout) -> Any:
        """The preview layer for ``image`` (made, or made again, when needed)."""
        shape = layout.spatial_shape
        layer = self.layer
        if layer is not None and self.image is not image:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)  # made for another image: other geometry
            layer = self.layer = None
        if layer is None or layer not in self.viewer.layers:
            self.slice = None
            layer = self.layer = add_layer_quietly(
                self.viewer,
                lambda: self.viewer.add_labels(
                    np.zeros(shape, np.uint8), name=PREVIEW_NAME, opacity=0.55,
                    **layer_geometry(image),
                ),
            )
            self.image = image
        elif layer.data.shape != shape:
            layer.data = np.zeros(shape, np.uint8)
            self.slice = None
        return layer

    def reshape(self, layout: ImageLayout) -> None:
        """The image's data changed shape: start from an empty preview of the new shape."""
        if self.exists():
            self.layer.data = np.zeros(layout.spatial_shape, np.uint8)
        self.slice = None

    def show(self, image: Any, layout: ImageLayout, k: PlaneKey,
             results: list[Any], anchors_rc: np.ndarray | None = None,
             plane: np.ndarray | None = None) -> None:
        """Paint the masks of slice ``k`` (None: a 2D image), clearing the slice shown before.

        Where masks overlap, the earlier object keeps the pixel; with ``anchors_rc``
        (one-click mode: each object's click, ``(N, 2)`` row, col) the nearest click does
        (:func:`~napari_sam.workflows.click_preview.compose_click_preview`). A ``plane``
        already composed (a tiled plane's masks, pasted from their windows) is shown as is;
        ``results`` then only give the objects' scores.
        """
        layer = self.ensure(image, layout)
        dtype = np.uint8 if len(results) < 256 else np.uint16
        if plane is None and anchors_rc is not None:
            plane = compose_click_preview([r.mask for r in results], anchors_rc,
                                          layout.plane_shape, dtype)
        elif plane is None:
            plane = compose_preview([r.mask for r in results], layout.plane_shape, dtype)
        if plane.dtype != layer.data.dtype:
            layer.data = layer.data.astype(plane.dtype)
        data = layer.data
        if k is not None:  # a stack slice, or a full leading index (T, Z, ...)
            if self.slice is not None and self.slice != k:
                data[self.slice] = 0
            data[k] = plane
        else:
            data[...] = plane
        self.slice = k
        self.objects = results
        layer.refresh()

    def clear(self, layout: ImageLayout | None) -> None:
        """Remove the masks shown (the layer stays)."""
        self.objects = []
        layer = self.layer
        if layer is None or layer not in self.viewer.layers:
            self.slice = None
            return
        stack = layout is not None and (layout.is_stack or is_planes(layout))
        if stack and self.slice is not None:
            lead = self.slice if isinstance(self.slice, tuple) else (self.slice,)
            if all(0 <= i < n for i, n in zip(lead, layer.data.shape)):
                layer.data[self.slice] = 0
            layer.refresh()
        elif not stack:
            layer.data[...] = 0
            layer.refresh()
        self.slice = None

    def plane(self, k: PlaneKey) -> np.ndarray:
        """The preview's label plane of slice ``k`` (the whole layer for a 2D image)."""
        return np.asarray(self.layer.data[k] if k is not None else self.layer.data)

    def seeds(self, k: int) -> list[np.ndarray]:
        """The masks of the preview's objects on slice ``k`` (non-empty ones)."""
        plane = self.plane(k)
        masks = [plane == i + 1 for i in range(len(self.objects))]
        return [m for m in masks if m.any()]
