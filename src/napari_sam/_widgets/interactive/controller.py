"""The state and decisions of interactive segmentation, without Qt.

:class:`InteractiveController` works on a napari ``ViewerModel`` and its
layers: it follows the chosen image, keeps the prompt layers ("SAM points",
"SAM boxes") ready, predicts the current slice's objects from their prompts
into "SAM preview" (encoding each plane once, as a job), commits the preview
into the output labels and, on a stack, precomputes and propagates
(:class:`~napari_sam._widgets.interactive.stack.StackController`). It tells the
user what happens through ``events`` (notices, status; see
:class:`~napari_sam._widgets.base.ControllerBase`). Its parts: the layer list
(:mod:`.follow`), prompt layers, preview, prediction (:mod:`.predict`),
embeddings, encoding the plane in view ahead (:mod:`.ahead`), commit, tiles,
channel layers, keys, the stack and an image series (:mod:`.series`). The Qt dock
(``napari_sam._widgets._qt.interactive``) only shows it.
"""

from __future__ import annotations

from typing import Any

from napari_sam._widgets.base import ControllerBase
from napari_sam._widgets.channel_layers import ChannelLayers
from napari_sam._widgets.interactive import predict
from napari_sam._widgets.interactive.ahead import AHEAD, EncodeAhead
from napari_sam._widgets.interactive.channel_axis import labels_name, use_channel_axis
from napari_sam._widgets.interactive.channel_layers import use_channels
from napari_sam._widgets.interactive.commit import commit_current, save_output_table
from napari_sam._widgets.interactive.encoding import Embeddings
from napari_sam._widgets.interactive.follow import LayerFollower
from napari_sam._widgets.interactive.keys import KeyBindings
from napari_sam._widgets.interactive.preview import Preview
from napari_sam._widgets.interactive.prompt_layers import PromptLayers
from napari_sam._widgets.interactive.series import DockSeries
from napari_sam._widgets.interactive.session import ImageSession
from napari_sam._widgets.interactive.stack import StackController
from napari_sam._widgets.interactive.tiles import DockTiling
from napari_sam._widgets.jobs import JobRunner
from napari_sam._widgets.model_session import LOAD_FAILED, ModelSession, session_for
from napari_sam._widgets.objects_table import undo_labels
from napari_sam.runtime.loader import LoadedModel
from napari_sam.workflows.embeddings import EmbeddingStore
from napari_sam.workflows.interactive import PredictionCache
from napari_sam.workflows.prompts import SlicePrompts, current_slice, layer_affine

__all__ = ["NOT_LOADED", "InteractiveController"]

NOT_LOADED = "Model: not loaded (loads with the first prompt)"


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
        self.session.add_runner(self.runner)  # background work waits for either dock's jobs
        self.preview = Preview(self.viewer)
        self.images = ImageSession(self.viewer.layers, lambda lyr: lyr is self.preview.layer,
                                   labels_name=lambda image: labels_name(self, image))
        self.prompts = PromptLayers(self.viewer, self.connections, self.prompts_changed,
                                    self.schedule)
        # the viewer's store: the automatic dock (AIS) reuses the planes encoded here
        self.embeddings = Embeddings(store if store is not None else self.session.store)
        self.channels = ChannelLayers()  # 1-3 channel layers as SAM's RGB (empty: the image)
        self.tiles = DockTiling()  # large planes: tiled embeddings, prompts routed to tiles
        self.stack = StackController(self)
        self.series = DockSeries(self)  # a folder of images, one after another
        self.ahead = EncodeAhead(self)  # the plane in view encoded before the first click
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
        self.urgent: Any = None  # the Qt side: predict a click now (or debounce a burst)
        self.pending = False
        self.follower = LayerFollower(self)  # the layer list, the image, canvas clicks
        self.keys = KeyBindings(self.viewer, {
            "N": self.toggle_negative, "Shift+C": self.commit, "Shift+X": self.clear,
            "Shift+M": self.next_candidate, "Shift+F": self.stack.propagate,
            "Shift+O": self.toggle_one_click, "Shift+N": self.series.next,
            "Shift+B": self.series.previous,
        }, self.undo)
        self.follower.connect()
        self.connections.connect(self.session.events.model, self._on_model)
        self.connections.connect(self.session.events.request, self._on_model)
        self._on_click = self.follower.on_click
        self.viewer.mouse_drag_callbacks.append(self._on_click)
        self.keys.bind()
        if self.session.once(self.session.problem):
            self.warn(self.session.problem)
        self.follower.follow()
        if self.image is None:
            self.follower.take_image()

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
    def set_image(self, layer: Any) -> None:
        """Segment ``layer`` (an Image layer of the viewer)."""
        self.images.choice.select(layer)
        if self.images.pending or layer is None:
            self.follower.take_image()

    def set_channels(self, layers: Any) -> None:
        """Show SAM 1-3 channel layers (napari's ``channel_axis`` layers) as its red, green and
        blue inputs, each with its own contrast limits; the first is the image segmented.
        None or empty: the image alone again."""
        use_channels(self, layers)

    def set_channel_axis(self, axis: int, channels: Any = None) -> None:
        """Show SAM 1-3 channels of the image's own channel ``axis`` (a layer axis before the
        plane's two) as red, green and blue: ``channels`` are numbers from 0 (napari's slider),
        typed text such as "1 2", or None for all (at most three). Channel layers are made
        for them (:mod:`~napari_sam._widgets.interactive.channel_axis`)."""
        use_channel_axis(self, axis, channels)

    def set_prompt_layer(self, kind: str, layer: Any) -> None:
        """Use ``layer`` (None: a new one) as the "points" or "boxes" prompt layer."""
        (self.prompts.points if kind == "points" else self.prompts.boxes).select(layer)
        self.prompt_layers_changed()

    def prompt_layers_changed(self, activate: bool = False) -> None:
        """Make missing prompt layers, watch them; with ``activate``, select the tool's layer."""
        self.follower.prompt_layers_changed(activate)

    def set_tool(self, tool: str) -> None:
        """Pick the "points" or "box" tool: its layer is selected, ready to draw."""
        if self.image is not None:
            self.prompts.ensure(self.image, self.layout)
        self.prompts.activate(tool)
        self.changed("tool")

    # ------------------------------------------------------------------ prompts and options
    def prompts_changed(self, event: Any = None) -> None:
        action = str(getattr(event, "action", ""))
        if action.endswith("ing"):
            return  # "adding", "removing", "changing": the data changes next
        self.candidate = 0
        points = self.prompts.points.current
        if (self.urgent is not None and action == "added" and points is not None
                and getattr(event, "source", None) is points):
            self.pending = True  # a click: predict now, unless one just ran (the Qt side)
            self.urgent()
            return
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
        """Undo the last change of the output labels (napari's own undo; Ctrl+Z), and
        update its object table."""
        labels = self.output.current
        if labels is not None:
            undo_labels(labels, self.image,
                        self.channels if self.channels.active_for(self.image) else None)

    def save_table(self, path: str) -> Any:
        """Write the output labels' object table (one row per object) as CSV to ``path``;
        the path written, or None (said in one sentence)."""
        return save_output_table(self, path)

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
        elif self.session.loading:  # another model was chosen meanwhile and loads now
            self.set_status(self.session.describe(NOT_LOADED))
        else:  # the status line said "loading…": say that it ended without a model
            self.set_status(LOAD_FAILED)

    def cancel(self) -> None:
        """Stop loading the model (a download) or encoding the current plane."""
        if self.runner.running("load"):
            self.runner.cancel("load")
            self.set_status("Cancelling the download…")
        if self.runner.running("encode"):
            self.runner.cancel("encode")
            self.set_status("Cancelling the encoding…")
        self.runner.cancel(AHEAD)  # the user's Cancel: that plane is not encoded ahead again

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Disconnect from the viewer, give back the keys, stop the jobs (on dock close)."""
        if self.closed:
            return
        self.pending = False
        self.keys.restore()
        if self._on_click in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._on_click)
        self.follower.close()
        self.session.cancel_waiters(self)
        self.series.close()
        super().close()
