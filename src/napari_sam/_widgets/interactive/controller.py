"""The state and decisions of interactive segmentation, without Qt.

:class:`InteractiveController` works on a napari ``ViewerModel`` and its
layers: it follows the chosen image, keeps the prompt layers ("SAM points",
"SAM boxes") ready, predicts the current slice's objects from their prompts
into "SAM preview" (encoding each plane once, as a job), commits the preview
into the output labels and, on a stack, precomputes and propagates
(:class:`~napari_sam._widgets.interactive.stack.StackController`). It tells the
user what happens through ``events`` (notices, status; see
:class:`~napari_sam._widgets.base.ControllerBase`). The Qt dock
(``napari_sam._widgets._qt.interactive``) only shows it.
"""

from __future__ import annotations

from typing import Any

from napari_sam._widgets.base import Connections, ControllerBase
from napari_sam._widgets.interactive import predict
from napari_sam._widgets.interactive.channel_layers import ChannelLayers
from napari_sam._widgets.interactive.commit import commit_current
from napari_sam._widgets.interactive.encoding import Embeddings
from napari_sam._widgets.interactive.keys import KeyBindings
from napari_sam._widgets.interactive.objects_table import save_table
from napari_sam._widgets.interactive.preview import Preview
from napari_sam._widgets.interactive.prompt_layers import PromptLayers
from napari_sam._widgets.interactive.series import DockSeries
from napari_sam._widgets.interactive.session import ImageSession
from napari_sam._widgets.interactive.stack import StackController
from napari_sam._widgets.interactive.tiles import DockTiling
from napari_sam._widgets.jobs import JobRunner
from napari_sam._widgets.model_session import ModelSession, session_for
from napari_sam._widgets.notices import notice_for
from napari_sam.errors import NapariSamError
from napari_sam.runtime.loader import LoadedModel
from napari_sam.workflows.embeddings import EmbeddingStore
from napari_sam.workflows.interactive import PredictionCache
from napari_sam.workflows.prompts import SlicePrompts, current_slice, layer_affine

__all__ = ["NOT_LOADED", "InteractiveController"]

NOT_LOADED = "Model: not loaded (loads with the first prompt)"
_IMAGE_EVENTS = ("contrast_limits", "data", "scale", "translate", "rotate", "shear", "affine")


class InteractiveController(ControllerBase):
    """Segment objects with SAM from points and boxes, slice by slice.

    Parameters
    ----------
    viewer : napari.Viewer or ViewerModel
    runner : JobRunner, optional
        Where model loading and encoding run (default: in this thread).
    session : ModelSession, optional
        The model (default: the viewer's, shared with its other napari-sam docks).
    store : EmbeddingStore, optional
        Where encoded planes are kept (default: the viewer's store, shared with the
        automatic dock).
    """

    def __init__(self, viewer: Any, runner: JobRunner | None = None,
                 session: ModelSession | None = None,
                 store: EmbeddingStore | None = None) -> None:
        super().__init__(viewer, runner)
        self.session = session if session is not None else session_for(self.viewer)
        self.preview = Preview(self.viewer)
        self.images = ImageSession(self.viewer.layers, lambda lyr: lyr is self.preview.layer)
        self.prompts = PromptLayers(self.viewer, self.connections, self.prompts_changed,
                                    self.schedule)
        # the viewer's store: the automatic dock (AIS) reuses the planes encoded here
        self.embeddings = Embeddings(store if store is not None else self.session.store)
        self.channels = ChannelLayers()  # 1-3 channel layers as SAM's RGB (empty: the image)
        self.tiles = DockTiling()  # large planes: tiled embeddings, prompts routed to tiles
        self.stack = StackController(self)
        self.series = DockSeries(self)  # a folder of images, one after another
        self.multimask = True
        self.overwrite = False
        self.candidate = 0
        self.one_click = False  # each positive point outside boxes is its own object
        self.click_cache = PredictionCache()  # one-click masks whose prompts did not change
        self.predictor: Any = None
        self.slice_prompts: SlicePrompts | None = None
        self.warned = {"outside": 0, "degenerate": 0}
        self.warned_axes: set[tuple] = set()
        self.scheduler: Any = None  # starts the Qt side's debounce timer
        self.pending = False
        self._names = Connections()  # layer name changes (kept when a layer is unwatched)
        self._inserting: Any = None  # the layer napari is adding right now
        self._reactivate: Any = None
        self.keys = KeyBindings(self.viewer, {
            "N": self.toggle_negative, "Shift+C": self.commit, "Shift+X": self.clear,
            "Shift+M": self.next_candidate, "Shift+F": self.stack.propagate,
            "Shift+O": self.toggle_one_click, "Shift+N": self.series.next,
            "Shift+B": self.series.previous,
        }, self.undo)
        layers = self.viewer.layers.events
        self.connections.connect(layers.inserted, self._on_inserted)
        self.connections.connect(layers.removed, self._on_removed)
        self.connections.connect(layers.moved, self._on_layers_changed)
        self.connections.connect(self.viewer.dims.events.point, self.schedule)
        self.connections.connect(self.viewer.layers.selection.events.active, self._on_active)
        self.connections.connect(self.session.events.model, self._on_model)
        self.connections.connect(self.session.events.request, self._on_model)
        for layer in self.viewer.layers:
            self._names.connect(layer.events.name, self._on_layers_changed)
        self.viewer.mouse_drag_callbacks.append(self._on_click)
        self.keys.bind()
        if self.session.once(self.session.problem):
            self.warn(self.session.problem)
        self._follow_layers()
        if self.image is None:
            self._take_image()

    # ------------------------------------------------------------------ state
    image = property(lambda self: self.images.image, doc="The image being segmented.")
    layout = property(lambda self: self.images.layout, doc="Its layout (2D, RGB, stack).")
    output = property(lambda self: self.images.output, doc="The output labels choice.")

    @property
    def model(self) -> LoadedModel | None:
        return self.session.model

    @property
    def busy(self) -> bool:
        """A prediction is scheduled, or a job (load, encoding, stack work) runs."""
        return self.pending or self.runner.running()

    def computing(self) -> bool:
        """The model is loading or a plane is being encoded."""
        return self.runner.running("load") or self.runner.running("encode")

    def current_slice(self) -> int | None:
        return current_slice(layer_affine(self.image), self.layout.spatial_shape,
                             self.viewer.dims.point)

    def no_image(self) -> bool:
        """Tell the user to choose an image if there is none (True then)."""
        if self.image is not None and self.layout is not None:
            return False
        if self.images.rejected is not None:
            self.warn(f"The image “{self.images.rejected.name}” cannot be segmented (see the "
                      "status line); choose another image layer.")
        else:
            self.warn("Open an image, or choose one in the Image list, first.")
        return True

    # ------------------------------------------------------------------ layers
    def _on_inserted(self, event: Any) -> None:
        self._names.connect(event.value.events.name, self._on_layers_changed)
        outer = self._inserting  # layers the controller adds meanwhile are nested inserts
        self._inserting = event.value if outer is None else outer
        try:
            self._on_layers_changed()
        finally:
            self._inserting = outer

    def _on_active(self, event: Any) -> None:
        # napari selects a layer it has just added after telling us about it: select the
        # prompt layer again then (see prompt_layers_changed)
        target = self._reactivate
        if target is None or event.value is None:  # napari clears the selection first
            return
        self._reactivate = None
        if event.value is target:
            self.prompts.activate()

    def _on_removed(self, event: Any) -> None:
        layer = event.value
        self.connections.disconnect_source(layer)
        self._names.disconnect_source(layer)
        self.prompts.forget(layer)
        if self.channels.forget(layer):
            self.info(f"The channel layer “{layer.name}” was removed: SAM sees the image "
                      "alone again; choose the channels again to use several.")
        self.keys.release_layer(layer)
        self.preview.forget(layer)
        self._follow_layers()
        self.schedule()

    def _on_layers_changed(self, event: Any = None) -> None:
        self._follow_layers()

    def _follow_layers(self) -> None:
        for choice in (self.images.choice, self.images.output):
            choice.refresh()
        self.prompts.refresh()
        for layer in (*self.prompts.layers, self.preview.layer):
            if layer is not None and layer in self.viewer.layers:
                self.keys.bind_layer(layer)  # Ctrl+Z there is the plugin's undo
        self.changed("layers")
        if self.images.pending and not self.closed:
            self._take_image()  # e.g. the first image was opened after the dock

    def set_image(self, layer: Any) -> None:
        """Segment ``layer`` (an Image layer of the viewer)."""
        self.images.choice.select(layer)
        if self.images.pending or layer is None:
            self._take_image()

    def _take_image(self) -> None:
        if self.image is not None:
            self.connections.disconnect_source(self.image)
        self.preview.clear(self.layout)
        notice, status = self.images.take()
        if notice is not None:
            self.notify(notice)
        self.stack.follow_layout()
        self.changed("image")
        self.set_status(status)
        if self.image is None:
            return
        for name in _IMAGE_EVENTS:
            self.connections.connect(getattr(self.image.events, name), self._on_image_changed)
        self.prompt_layers_changed(activate=True)

    def _on_image_changed(self, event: Any = None) -> None:
        if getattr(event, "type", None) == "data" and self.image is not None:
            changed, problem = self.images.relayout()
            if problem is not None:
                self.notify(notice_for(problem))
                self.set_status(str(problem))
                self.preview.clear(None)
                return
            if changed:
                self.stack.follow_layout()
                self.changed("image")
                self.preview.reshape(self.layout)
        self.schedule()

    def set_channels(self, layers: Any) -> None:
        """Show SAM 1-3 channel layers (napari's ``channel_axis`` layers) as its red, green and
        blue inputs, each with its own contrast limits; the first is the image segmented.
        None or empty: the image alone again."""
        layers = list(layers or [])
        if not layers:
            self.channels.layers = []
            self.changed("channels")
            self.schedule()
            return
        try:
            layers = self.channels.check(layers)
        except NapariSamError as exc:
            self.notify(notice_for(exc))
            return
        self.channels.layers = layers
        if self.image is not layers[0]:
            self.set_image(layers[0])
        for layer in layers[1:]:
            self.connections.disconnect_source(layer)
            for name in ("contrast_limits", "data"):
                self.connections.connect(getattr(layer.events, name), self.schedule)
        self.changed("channels")
        self.info(self.channels.describe() + ".")
        self.schedule()

    def set_prompt_layer(self, kind: str, layer: Any) -> None:
        """Use ``layer`` (None: a new one) as the "points" or "boxes" prompt layer."""
        (self.prompts.points if kind == "points" else self.prompts.boxes).select(layer)
        self.prompt_layers_changed()

    def prompt_layers_changed(self, activate: bool = False) -> None:
        """Make missing prompt layers, watch them; with ``activate``, select the tool's layer."""
        if self.image is not None:
            self.prompts.ensure(self.image, self.layout)
            for note in self.prompts.axes_notes(self.image, self.layout, self.warned_axes):
                self.info(note)
            if activate and self._inserting is not None:
                self._reactivate = self._inserting  # once napari has selected it
            elif activate:
                self.prompts.activate()
        self.changed("layers")
        self.prompts_changed()

    def set_tool(self, tool: str) -> None:
        """Pick the "points" or "box" tool: its layer is selected, ready to draw."""
        if self.image is not None:
            self.prompts.ensure(self.image, self.layout)
        self.prompts.activate(tool)
        self.changed("tool")

    def _on_click(self, viewer: Any, event: Any) -> None:
        """A click on the canvas: if it cannot place a prompt, say what to select."""
        hint = self.prompts.click_hint(viewer.layers.selection.active)
        if hint and self.image is not None:
            self.set_status(hint)

    # ------------------------------------------------------------------ prompts and options
    def prompts_changed(self, event: Any = None) -> None:
        if str(getattr(event, "action", "")).endswith("ing"):
            return  # "adding", "removing", "changing": the data changes next
        self.candidate = 0
        self.schedule()

    def set_negative(self, negative: bool) -> None:
        """New points are negative (background)."""
        self.prompts.set_negative(negative)
        self.changed("negative")

    def toggle_negative(self) -> None:
        """Switch new points between positive and negative (key N)."""
        self.set_negative(not self.prompts.negative)

    def set_one_click(self, on: bool) -> None:
        """One click = one cell: each positive point outside any box is its own object
        (negative points refine the nearest one); off: the free points form one object."""
        self.one_click = bool(on)
        self.changed("one_click")
        self.set_status("One click = one cell: each positive point is its own object."
                        if self.one_click else
                        "One object per slice from its points (one click = one cell is off).")
        self.prompts_changed()

    def toggle_one_click(self) -> None:
        """Switch one click = one cell on or off (key Shift+O)."""
        self.set_one_click(not self.one_click)

    def set_tiling(self, on: bool) -> None:
        """Tile planes whose longest side exceeds 2048 pixels (on, the default) or show SAM
        every plane whole, shrunk to its 1024-pixel input (off)."""
        self.tiles.set_automatic(on)
        self.changed("tiling")
        self.prompts_changed()

    def set_multimask(self, multimask: bool) -> None:
        self.multimask = bool(multimask)
        self.prompts_changed()

    def next_candidate(self) -> None:
        """Show the next of the three multimask candidates (key Shift+M)."""
        if not self.multimask:
            self.info("Tick “Multimask” to get three candidate masks per object.")
            return
        self.candidate = (self.candidate + 1) % 3
        self.update_preview()

    # ------------------------------------------------------------------ prediction
    def schedule(self, event: Any = None) -> None:
        """Predict again soon: when the Qt side's debounce timer fires (``scheduler``
        starts it), or at :meth:`flush` (without a scheduler: scripts and tests)."""
        if self.closed:
            return
        self.pending = True
        if self.scheduler is not None:
            self.scheduler()

    def flush(self) -> None:
        """Run a scheduled prediction now."""
        if self.pending:
            self.update_preview()

    def update_preview(self) -> None:
        """Predict the current slice from its prompts and show the preview."""
        self.pending = False
        if not self.closed and self.image is not None and self.layout is not None:
            predict.update(self)

    def clear_slice(self) -> None:
        """Remove the prompts of the preview's slice and the preview."""
        self.prompts.remove_slice_prompts(self.slice_prompts)
        self.slice_prompts = None
        self.warned.update(outside=0, degenerate=0)
        self.preview.clear(self.layout)

    # ------------------------------------------------------------------ commit / clear / undo
    def commit(self) -> None:
        """Write the preview into the output labels as new objects (key Shift+C)."""
        commit_current(self)

    def clear(self) -> None:
        """Remove the prompts of the current slice and the preview (key Shift+X)."""
        if self.no_image():
            return
        self.flush()
        self.clear_slice()

    def undo(self) -> None:
        """Undo the last change of the output labels (napari's own undo; Ctrl+Z)."""
        labels = self.output.current
        if labels is not None:
            labels.undo()

    def save_table(self, path: str) -> Any:
        """Write the output labels' object table (one row per object) as CSV to ``path``;
        the path written, or None (said in one sentence)."""
        labels = self.output.current
        if labels is None:
            self.info("There is no object table yet: commit objects first.")
            return None
        try:
            written = save_table(labels, path, self.image)
        except NapariSamError as exc:
            self.notify(notice_for(exc))
            return None
        n = len(labels.features)
        self.set_status(f"Saved the table of {n} object{'s' if n != 1 else ''} of "
                        f"“{labels.name}” to {written}.")
        return written

    def set_output(self, layer: Any) -> None:
        """Write objects into ``layer`` (None: a new "<image> SAM labels")."""
        self.output.select(layer)
        self.changed("output")

    # ------------------------------------------------------------------ model
    def _on_model(self, event: Any = None) -> None:
        self.predictor = None
        if self.model is None:
            self.preview.clear(self.layout)
        self.changed("model")
        self.schedule()

    def set_model(self, sam: Any, model_id: str | None = None, name: str | None = None) -> None:
        """Use a :class:`LoadedModel`, or an already built model (scripts, tests)."""
        self.session.set_model(sam, model_id, name)

    def load_model(self) -> None:
        """Load the chosen model (again, if it was moved off its device), in a job."""
        model = self.session.ensure(self.runner, self._model_loaded, force=True)
        if model is None and self.session.loading:
            self.set_status(self.session.describe(NOT_LOADED))
        self.changed("model")

    def _model_loaded(self, model: LoadedModel | None) -> None:
        if self.closed:
            return
        self.changed("model")
        if model is not None:
            self.schedule()
            self.stack.model_ready()

    def cancel(self) -> None:
        """Stop loading the model (a download) or encoding the current plane."""
        if self.runner.running("load"):
            self.runner.cancel("load")
            self.set_status("Cancelling the download…")
        if self.runner.running("encode"):
            self.runner.cancel("encode")
            self.set_status("Cancelling the encoding…")

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Disconnect from the viewer, give back the keys, stop the jobs (on dock close)."""
        if self.closed:
            return
        self.pending = False
        self.keys.restore()
        if self._on_click in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._on_click)
        self._names.disconnect_all()
        self.session.cancel_waiters(self)
        self.series.close()
        super().close()
