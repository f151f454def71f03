"""napari layers as the widgets use them (no Qt): geometry, layout, choices, one-step writes.

- :func:`layer_geometry` / :func:`layer_layout`: a new layer's transform, and
  what an image layer's data is (2D, RGB, stack) or why it cannot be used;
- :class:`LayerChoice`: the layer chosen for one role (image, prompts, output)
  among the viewer's layers of a type, following the layer list;
- :func:`write_objects` / :func:`replace_region`: writes into a Labels layer as
  ONE undo step, widening its integer type rather than truncating an id;
- :func:`add_layer_quietly`: add a layer without taking the user's selection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from napari.layers import Image, Labels

from napari_sam.errors import ImageFormatError
from napari_sam.workflows.image import ImageLayout, image_layout
from napari_sam.workflows.labels import dtype_for_ids

__all__ = [
    "LayerChoice",
    "add_layer_quietly",
    "axis_name",
    "layer_geometry",
    "layer_layout",
    "replace_region",
    "write_objects",
]


def layer_geometry(image: Image) -> dict:
    """An image layer's geometry (and physical units), as keyword arguments for new layers."""
    kwargs = {
        "scale": image.scale,
        "translate": image.translate,
        "rotate": image.rotate,
        "shear": image.shear,
        "affine": image.affine,
    }
    units = getattr(image, "units", None)
    if units is not None:
        kwargs["units"] = units
    return kwargs


def layer_layout(image: Image, purpose: str) -> ImageLayout:
    """The layout of an image layer's data; an :class:`ImageFormatError` where ``purpose``
    (e.g. "interactive segmentation") cannot use it, such as a multiscale image."""
    if getattr(image, "multiscale", False):
        raise ImageFormatError(
            f"“{image.name}” is a multiscale (pyramid) image, which {purpose} "
            "does not support; open its full-resolution level as a layer."
        )
    return image_layout(image.data.shape, rgb=image.rgb, dtype=image.data.dtype)


def axis_name(image: Any, layer_axis: int, j: int) -> str:
    """The name of axis ``layer_axis`` of ``image``: napari's axis label ("t", "z"), or
    "axis j" where the label is napari's default number (or missing)."""
    labels = list(getattr(image, "axis_labels", ()) or ())
    label = str(labels[layer_axis]) if layer_axis < len(labels) else ""
    numeric = label.lstrip("-").isdigit() or not label.strip()
    return f"axis {j}" if numeric else label


def add_layer_quietly(viewer: Any, factory: Callable[[], Any]) -> Any:
    """Add a layer (``factory()`` adds it) without taking the selection from the user's layer."""
    active = viewer.layers.selection.active
    layer = factory()
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active
    return layer


class LayerChoice:
    """The layer chosen for one role among the viewer's layers of one type.

    With ``create_text`` (e.g. "new layer “SAM points”") choosing None means
    "make one when needed"; without, the first candidate is chosen whenever
    the current one goes. :meth:`choices` is what a picker shows.
    """

    def __init__(
        self,
        layers: Any,
        layer_type: type,
        create_text: str | None = None,
        exclude: Callable[[Any], bool] | None = None,
    ) -> None:
        self.layers = layers
        self.layer_type = layer_type
        self.create_text = create_text
        self.exclude = exclude or (lambda layer: False)
        self._current: Any = None
        self.refresh()

    def candidates(self) -> list[Any]:
        return [
            lyr
            for lyr in self.layers
            if isinstance(lyr, self.layer_type) and not self.exclude(lyr)
        ]

    def choices(self) -> list[tuple[str, Any]]:
        """``(text, layer)`` pairs for a picker; the create entry has layer None."""
        head = [(self.create_text, None)] if self.create_text is not None else []
        return head + [(lyr.name, lyr) for lyr in self.candidates()]

    @property
    def current(self) -> Any:
        return self._current

    def select(self, layer: Any) -> bool:
        """Choose ``layer`` (a candidate, or None); returns whether the choice changed."""
        if layer is not None and layer not in self.candidates():
            raise ValueError(f"“{getattr(layer, 'name', layer)}” cannot be chosen here.")
        if layer is None and self.create_text is None and self.candidates():
            layer = self.candidates()[0]
        changed = layer is not self._current
        self._current = layer
        return changed

    def refresh(self) -> bool:
        """Follow the layer list: keep the choice while it is there; returns whether it changed."""
        candidates = self.candidates()
        if self._current in candidates:
            return False
        new = None if self.create_text is not None or not candidates else candidates[0]
        changed = new is not self._current
        self._current = new
        return changed


def _widen(layer: Labels, max_id: int) -> str | None:
    """Give ``layer`` an integer type that holds ``max_id`` (values unchanged); say so."""
    old = np.dtype(layer.data.dtype)
    new = dtype_for_ids(old, int(max_id))
    if new == old:
        return None
    # not itself an undo step: the values stay the same, only the type widens
    layer.data = np.asarray(layer.data).astype(new)
    return (
        f"The labels layer “{layer.name}” was {old}, too small for object id {max_id}; "
        f"it now uses {new} (no id was changed)."
    )


def write_objects(layer: Labels, plan: Sequence[tuple[int, tuple]]) -> str | None:
    """Write ``(id, index)`` pairs into a Labels layer as ONE undo step.

    If the layer's integer type cannot hold the largest id (e.g. object 256 in
    a uint8 layer), its data is first promoted to a wider type
    (:func:`napari_sam.workflows.labels.dtype_for_ids`), so no id is ever truncated; the
    returned sentence says so (None if no promotion was needed).
    """
    if not plan:
        return None
    note = _widen(layer, max(int(oid) for oid, _ in plan))
    with layer.block_history():
        for oid, index in plan:
            layer.data_setitem(index, int(oid), refresh=False)
    layer.refresh()
    return note


def replace_region(layer: Labels, index: tuple, values: np.ndarray) -> str | None:
    """Set ``layer.data[index] = values`` as ONE undo step (only the pixels that change).

    ``index`` selects leading axes (``()`` for all, ``(k,)`` for slice ``k``).
    Returns the widening sentence of :func:`write_objects`, if any.
    """
    current = np.asarray(layer.data[index] if index else layer.data)
    changed = np.nonzero(current != values)
    if changed[0].size == 0:
        return None
    note = _widen(layer, int(values.max()))
    full = tuple(np.full(changed[0].shape, i) for i in index) + changed
    with layer.block_history():
        layer.data_setitem(full, values[changed], refresh=False)
    layer.refresh()
    return note
