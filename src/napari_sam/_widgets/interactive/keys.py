"""Key bindings of interactive segmentation, and giving back what they replaced.

The plugin's keys are bound on the viewer, and were chosen among keys that
napari's own layers do not use (napari's Shapes layer starts its polygon
lasso with Shift+P and its polyline with Shift+L, its Labels layer swaps
labels with X, napari's viewer selects all points with Shift+A and hides the
other layers with Shift+V, ...), so they work
whichever layer is selected and never shadow one of napari's tools. Ctrl+Z
is bound on the plugin's prompt and preview layers (where napari would undo
the edit of that layer, or do nothing): there it undoes the last change of the
output labels, like the dock's Undo button (on the output Labels layer itself
napari's own undo does exactly that). :meth:`KeyBindings.restore` puts back
every binding the plugin replaced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["KEYS", "UNDO_KEY", "KeyBindings", "keys_help"]

#: The plugin's keys (napari key names) and what they do.
KEYS = {
    "N": "switch new points between positive and negative",
    "Shift+C": "commit the preview as new object(s)",
    "Shift+X": "clear the prompts and preview of this slice",
    "Shift+M": "show the next of SAM's three candidate masks",
    "Shift+F": "follow the preview (or this slice's objects) through the stack",
    "Shift+O": "one click = one cell, on or off",
    "Shift+N": "next image of the series (saves this one's labels)",
    "Shift+B": "previous image of the series (saves this one's labels)",
}
#: Undo, on the plugin's prompt and preview layers.
UNDO_KEY = "Ctrl+Z"


def keys_help() -> list[tuple[str, str]]:
    """Every key of the plugin and what it does (for the dock and the docs)."""
    return [*KEYS.items(), (UNDO_KEY, "undo the last change of the output labels")]


def _callback(action: Callable[[], Any], name: str) -> Callable[[Any], None]:
    def callback(provider: Any) -> None:
        action()

    callback.__name__ = f"napari_sam_{name.lower().replace('+', '_')}"
    callback.__doc__ = action.__doc__
    return callback


class KeyBindings:
    """Binds the plugin's keys and remembers what they replaced.

    Parameters
    ----------
    viewer : ViewerModel
    actions : dict
        Key name -> function without arguments, for every key of :data:`KEYS`.
    undo : callable
        What Ctrl+Z does on the plugin's layers.
    """

    def __init__(self, viewer: Any, actions: dict[str, Callable[[], Any]],
                 undo: Callable[[], Any]) -> None:
        self.viewer = viewer
        self.actions = actions
        self.undo = _callback(undo, "undo")
        self._viewer_saved: dict[str, Any] = {}
        self._layer_saved: dict[int, tuple[Any, Any]] = {}  # id -> (layer, replaced binding)

    def bind(self) -> None:
        """Bind the action keys on the viewer (each calls ``actions[key]`` when pressed)."""
        for key, action in self.actions.items():
            def run(key: str = key) -> None:
                self.actions[key]()

            run.__doc__ = action.__doc__
            previous = self.viewer.bind_key(key, _callback(run, key), overwrite=True)
            self._viewer_saved.setdefault(key, previous)

    def bind_layer(self, layer: Any) -> None:
        """Make Ctrl+Z on ``layer`` (a plugin layer) the plugin's undo."""
        if id(layer) in self._layer_saved:
            return
        previous = layer.bind_key(UNDO_KEY, self.undo, overwrite=True)
        self._layer_saved[id(layer)] = (layer, previous)

    def release_layer(self, layer: Any) -> None:
        """Give ``layer`` back its own Ctrl+Z."""
        saved = self._layer_saved.pop(id(layer), None)
        if saved is not None:
            layer.bind_key(UNDO_KEY, saved[1], overwrite=True)

    def bound_layers(self) -> list[Any]:
        return [layer for layer, _ in self._layer_saved.values()]

    def restore(self) -> None:
        """Put back every binding the plugin replaced (on the viewer and its layers)."""
        for key, previous in self._viewer_saved.items():
            self.viewer.bind_key(key, previous, overwrite=True)
        self._viewer_saved = {}
        for layer, _ in list(self._layer_saved.values()):
            self.release_layer(layer)
