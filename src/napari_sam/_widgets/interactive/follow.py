"""How interactive segmentation follows the viewer's layers (no Qt).

:class:`LayerFollower` listens to the layer list of an interactive
controller's viewer: layers added, removed, moved or renamed refresh the
controller's choices (image, prompt layers, output), its Ctrl+Z on its own
layers, and take up a newly chosen image (its layout, the prompt layers with
its geometry, the prompt tool selected); changes of the image's data or
transform re-lay it out and predict again. napari selects a layer it has just
added after telling listeners about it, so the prompt layer is selected again
then. A click on the canvas that placed no prompt says what to select.
"""

from __future__ import annotations

from typing import Any

from napari_sam._widgets.base import Connections
from napari_sam._widgets.notices import notice_for

__all__ = ["IMAGE_EVENTS", "LayerFollower"]

#: The image layer's events that change what SAM sees or where prompts fall.
IMAGE_EVENTS = ("contrast_limits", "data", "scale", "translate", "rotate", "shear", "affine")


class LayerFollower:
    """The layer-list side of an :class:`~.controller.InteractiveController` ``c``."""

    def __init__(self, c: Any) -> None:
        self.c = c
        self.names = Connections()  # layer name changes (kept when a layer is unwatched)
        self.inserting: Any = None  # the layer napari is adding right now
        self.reactivate: Any = None

    def connect(self) -> None:
        """Listen to the viewer's layer list, selection, position and canvas clicks."""
        c = self.c
        layers = c.viewer.layers.events
        c.connections.connect(layers.inserted, self.on_inserted)
        c.connections.connect(layers.removed, self.on_removed)
        c.connections.connect(layers.moved, self.on_layers_changed)
        c.connections.connect(c.viewer.dims.events.point, c.schedule)
        c.connections.connect(c.viewer.layers.selection.events.active, self.on_active)
        for layer in c.viewer.layers:
            self.names.connect(layer.events.name, self.on_layers_changed)

    def close(self) -> None:
        self.names.disconnect_all()

    # ------------------------------------------------------------------ the layer list
    def on_inserted(self, event: Any) -> None:
        self.names.connect(event.value.events.name, self.on_layers_changed)
        outer = self.inserting  # layers the controller adds meanwhile are nested inserts
        self.inserting = event.value if outer is None else outer
        try:
            self.follow()
        finally:
            self.inserting = outer

    def on_active(self, event: Any) -> None:
        # napari selects a layer it has just added after telling us about it: select the
        # prompt layer again then (see prompt_layers_changed)
        target = self.reactivate
        if target is None or event.value is None:  # napari clears the selection first
            return
        self.reactivate = None
        if event.value is target:
            self.c.prompts.activate()

    def on_removed(self, event: Any) -> None:
        c, layer = self.c, event.value
        c.connections.disconnect_source(layer)
        self.names.disconnect_source(layer)
        c.prompts.forget(layer)
        if c.channels.forget(layer):
            c.info(f"The channel layer “{layer.name}” was removed: SAM sees the image "
                   "alone again; choose the channels again to use several.")
        c.keys.release_layer(layer)
        c.preview.forget(layer)
        self.follow()
        c.schedule()

    def on_layers_changed(self, event: Any = None) -> None:
        self.follow()

    def follow(self) -> None:
        """Refresh the choices after a change of the layer list."""
        c = self.c
        for choice in (c.images.choice, c.images.output):
            choice.refresh()
        c.prompts.refresh()
        for layer in (*c.prompts.layers, c.preview.layer):
            if layer is not None and layer in c.viewer.layers:
                c.keys.bind_layer(layer)  # Ctrl+Z there is the plugin's undo
        c.changed("layers")
        if c.images.pending and not c.closed:
            self.take_image()  # e.g. the first image was opened after the dock

    # ------------------------------------------------------------------ the image
    def take_image(self) -> None:
        """Use the image chosen now: its layout, prompt layers, status."""
        c = self.c
        if c.image is not None:
            c.connections.disconnect_source(c.image)
        c.preview.clear(c.layout)
        notice, status = c.images.take()
        if notice is not None:
            c.notify(notice)
        c.stack.follow_layout()
        c.changed("image")
        c.set_status(status)
        if c.image is None:
            return
        for name in IMAGE_EVENTS:
            c.connections.connect(getattr(c.image.events, name), self.on_image_changed)
        self.prompt_layers_changed(activate=True)

    def on_image_changed(self, event: Any = None) -> None:
        c = self.c
        if getattr(event, "type", None) == "data" and c.image is not None:
            changed, problem = c.images.relayout()
            if problem is not None:
                c.notify(notice_for(problem))
                c.set_status(str(problem))
                c.preview.clear(None)
                return
            if changed:
                c.stack.follow_layout()
                c.changed("image")
                c.preview.reshape(c.layout)
        c.schedule()

    def prompt_layers_changed(self, activate: bool = False) -> None:
        """Make missing prompt layers, watch them; with ``activate``, select the tool's layer."""
        c = self.c
        if c.image is not None:
            c.prompts.ensure(c.image, c.layout)
            for note in c.prompts.axes_notes(c.image, c.layout, c.warned_axes):
                c.info(note)
            if activate and self.inserting is not None:
                self.reactivate = self.inserting  # once napari has selected it
            elif activate:
                c.prompts.activate()
        c.changed("layers")
        c.prompts_changed()

    def on_click(self, viewer: Any, event: Any) -> None:
        """A click on the canvas: if it cannot place a prompt, say what to select."""
        hint = self.c.prompts.click_hint(viewer.layers.selection.active)
        if hint and self.c.image is not None:
            self.c.set_status(hint)
