"""The prompt layers of interactive segmentation: "SAM points" and "SAM boxes".

:class:`PromptLayers` chooses (or makes) the Points layer whose points are the
positive/negative clicks and the Shapes layer whose rectangles are boxes,
keeps the Points layer's categorical ``label`` feature (positive/negative),
selects the layer of the chosen tool in its drawing mode so the first click on
the canvas is a prompt, and removes the prompts of a slice after a commit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from napari.layers import Points, Shapes

from napari_sam._widgets.base import Connections
from napari_sam._widgets.layers import LayerChoice, layer_geometry
from napari_sam.workflows.image import ImageLayout
from napari_sam.workflows.prompts import SlicePrompts, labels_from_feature

__all__ = [
    "BOXES_NAME",
    "NEGATIVE",
    "POINTS_NAME",
    "POINT_COLORS",
    "POSITIVE",
    "TOOLS",
    "PromptLayers",
    "ensure_label_feature",
]

POINTS_NAME = "SAM points"
BOXES_NAME = "SAM boxes"
POSITIVE, NEGATIVE = "positive", "negative"
POINT_COLORS = {POSITIVE: "#00e05a", NEGATIVE: "#ff2e88"}
#: The prompt tools, and the mode their layer is put in.
TOOLS = {"points": "add", "box": "add_rectangle"}
_TRANSFORMS = ("scale", "translate", "rotate", "shear", "affine")


def ensure_label_feature(points: Points) -> None:
    """Give a Points layer the categorical ``label`` feature (positive/negative) if needed."""
    features = points.features
    label = features["label"] if "label" in features else None
    if (
        label is not None
        and isinstance(label.dtype, pd.CategoricalDtype)
        and {POSITIVE, NEGATIVE} <= set(label.cat.categories)
    ):
        return
    values = labels_from_feature(None if label is None else label.to_numpy(), len(points.data))
    points.features = features.assign(
        label=pd.Categorical(
            np.where(values == 1, POSITIVE, NEGATIVE), categories=[POSITIVE, NEGATIVE]
        )
    )
    points.feature_defaults = {"label": POSITIVE}


class PromptLayers:
    """The chosen Points and Shapes layers, made when missing, watched for changes.

    Parameters
    ----------
    viewer : ViewerModel
    connections : Connections
        Where layer callbacks are registered (the controller's).
    on_prompts : callable
        Called when the prompts change (points, their labels, boxes).
    on_geometry : callable
        Called when a prompt layer's transform changes.
    """

    def __init__(
        self,
        viewer: Any,
        connections: Connections,
        on_prompts: Callable[..., Any],
        on_geometry: Callable[..., Any],
    ) -> None:
        self.viewer = viewer
        self.connections = connections
        self.on_prompts = on_prompts
        self.on_geometry = on_geometry
        self.points = LayerChoice(viewer.layers, Points, f"new layer “{POINTS_NAME}”")
        self.boxes = LayerChoice(viewer.layers, Shapes, f"new layer “{BOXES_NAME}”")
        self.negative = False
        self.tool = "points"
        self._watched: list[Any] = []

    @property
    def layers(self) -> list[Any]:
        """The chosen prompt layers (that exist)."""
        return [lyr for lyr in (self.points.current, self.boxes.current) if lyr is not None]

    def refresh(self) -> None:
        self.points.refresh()
        self.boxes.refresh()

    def ensure(self, image: Any, layout: ImageLayout) -> None:
        """Make the prompt layers that are missing, with the image's geometry, and watch them."""
        ndim = len(layout.spatial_shape)
        size = max(4.0, max(layout.plane_shape) / 30.0)
        if self.points.current is None:
            points = self.viewer.add_points(
                np.zeros((0, ndim)),
                ndim=ndim,
                name=POINTS_NAME,
                features=pd.DataFrame(
                    {"label": pd.Categorical([], categories=[POSITIVE, NEGATIVE])}
                ),
                feature_defaults={"label": NEGATIVE if self.negative else POSITIVE},
                face_color="label",
                face_color_cycle=POINT_COLORS,
                border_color="white",
                border_width=0.1,
                size=size,
                **layer_geometry(image),
            )
            self.points.select(points)
        if self.boxes.current is None:
            shapes = self.viewer.add_shapes(
                ndim=ndim,
                name=BOXES_NAME,
                edge_color="#ffd400",
                face_color="transparent",
                edge_width=max(1.0, size / 4),
                **layer_geometry(image),
            )
            self.boxes.select(shapes)
        self.watch()

    def watch(self) -> None:
        """Listen to the chosen prompt layers (and stop listening to the others)."""
        chosen = self.layers
        for layer in self._watched:
            if layer not in chosen:
                self.connections.disconnect_source(layer)
        for layer in chosen:
            if layer in self._watched:
                continue
            self.connections.connect(layer.events.data, self.on_prompts)
            if isinstance(layer, Points):
                ensure_label_feature(layer)
                self.connections.connect(layer.events.features, self.on_prompts)
            for name in _TRANSFORMS:
                self.connections.connect(getattr(layer.events, name), self.on_geometry)
        self._watched = chosen

    def forget(self, layer: Any) -> None:
        """A layer left the viewer."""
        if layer in self._watched:
            self._watched.remove(layer)

    def set_negative(self, negative: bool) -> None:
        """New points are negative (background) or positive."""
        self.negative = bool(negative)
        points = self.points.current
        if points is not None:
            ensure_label_feature(points)
            points.feature_defaults = {"label": NEGATIVE if negative else POSITIVE}

    def activate(self, tool: str | None = None) -> Any:
        """Select the layer of ``tool`` ("points" or "box"; default: the current tool)
        in its drawing mode, so the next click on the canvas places a prompt."""
        if tool is not None:
            if tool not in TOOLS:
                raise ValueError(f"tool must be one of {tuple(TOOLS)}, not {tool!r}")
            self.tool = tool
        layer = self.points.current if self.tool == "points" else self.boxes.current
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.selection.active = layer
            layer.mode = TOOLS[self.tool]
        return layer

    def click_hint(self, active: Any) -> str | None:
        """Why a click with ``active`` selected placed no prompt, and what to select
        (None when the click goes to a prompt layer, or edits the selected layer)."""
        if active in self.layers:
            return None
        if active is not None and getattr(active, "mode", "pan_zoom") != "pan_zoom":
            return None  # the user is editing that layer (painting labels, say)
        where = "no layer is selected" if active is None else f"“{active.name}” is selected"
        target = self.points.current
        name = target.name if target is not None else POINTS_NAME
        return (f"This click placed no prompt because {where}: select “{name}” in the "
                "layer list (or press Points or Box in the dock).")

    def remove_slice_prompts(self, prompts: SlicePrompts | None) -> None:
        """Delete the prompts of one slice (after a commit, or on Clear)."""
        if prompts is None:
            return
        for layer, index in (
            (self.points.current, prompts.slice_point_index),
            (self.boxes.current, prompts.slice_box_index),
        ):
            if layer is not None and len(index):
                index = [int(i) for i in index if i < len(layer.data)]
                layer.selected_data = set(index)
                layer.remove_selected()

    def axes_notes(self, image: Any, layout: ImageLayout, seen: set) -> list[str]:
        """Sentences (once per layer and image) about prompt layers with more axes than the
        image: only the prompts at the current position of the other axes count."""
        d = len(layout.spatial_shape)
        notes = []
        for layer in self.layers:
            key = (id(layer), id(image), layer.ndim, d)
            if layer.ndim <= d or key in seen:
                continue
            seen.add(key)
            what = "points" if isinstance(layer, Points) else "boxes"
            extra = layer.ndim - d
            notes.append(
                f"The layer “{layer.name}” has {layer.ndim} axes and the image “{image.name}” "
                f"{d}: only the {what} shown at the current position of the other "
                f"{extra} ax{'is' if extra == 1 else 'es'} are used."
            )
        return notes
