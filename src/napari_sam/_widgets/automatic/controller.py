"""The state and decisions of automatic segmentation, without Qt.

:class:`AutomaticController` segments the chosen image — a 2D image, or the
current slice or all slices of a stack, optionally linking objects through the
slices; in an image with more leading axes, e.g. ``(T, Z, Y, X)``, the slice or
the slices of the time point shown (:mod:`~napari_sam._widgets.automatic.lines`)
— with :func:`napari_sam.workflows.segment.segment_iter` as a job (progress
with its real stage, time remaining, Cancel) and writes the result
into "<image> SAM auto" as ONE undo step
(:class:`~napari_sam._widgets.automatic.output.AutoOutput`). A cancelled or
failed run, or one whose image changed meanwhile, changes no layer.

The run's mode (:mod:`napari_sam._widgets.automatic.modes`): the instance
decoder (AIS) when the model has one, or the point grid; the user may force
either. AIS on a model without a decoder, or any automatic run with a SAM 2.1
model, is refused in one sentence before any work. Large planes are tiled
(``"auto"`` above :data:`~napari_sam.workflows.tiling.AUTO_TILING_THRESHOLD`
pixels, or ``"on"``/``"off"`` with the tile size and halo chosen in the dock).
Embeddings are kept in the viewer's shared store
(:attr:`~napari_sam._widgets.model_session.ModelSession.store`), so a plane
encoded once is not encoded again by the next run.

Its settings (grid, AIS, mode and tiling) are remembered between sessions; its
model is the viewer's, shared with the interactive dock
(:mod:`napari_sam._widgets.model_session`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from napari.layers import Image

from napari_sam._widgets.automatic import coco_export, wording
from napari_sam._widgets.automatic.channel_choice import choose_channel_axis, choose_channels
from napari_sam._widgets.automatic.estimate import estimate_text
from napari_sam._widgets.automatic.lines import (
    image_kind,
    is_nd,
    label_shape,
    n_lines,
    position_text,
    run_layout,
    run_target,
    shown_layout,
)
from napari_sam._widgets.automatic.modes import RunChoices
from napari_sam._widgets.automatic.output import AutoOutput
from napari_sam._widgets.automatic.remembered import DOCK_DEFAULTS, RememberedSettings
from napari_sam._widgets.automatic.work import run_work
from napari_sam._widgets.base import ControllerBase
from napari_sam._widgets.channel_layers import ChannelLayers
from napari_sam._widgets.jobs import Job, JobRunner
from napari_sam._widgets.layers import LayerChoice
from napari_sam._widgets.model_session import ModelSession, session_for
from napari_sam._widgets.notices import notice_for
from napari_sam._widgets.objects_table import table_job
from napari_sam.errors import NapariSamError
from napari_sam.runtime.loader import LoadedModel
from napari_sam.workflows.ais import AISSettings
from napari_sam.workflows.image import ImageLayout
from napari_sam.workflows.segment import AutoSettings, SegmentationResult
from napari_sam.workflows.tiling import TileGrid

__all__ = [
    "ALL_SLICES",
    "ALL_TIME_POINTS",
    "CURRENT_SLICE",
    "DOCK_DEFAULTS",
    "NOT_LOADED",
    "SCOPES",
    "AutomaticController",
]

CURRENT_SLICE, ALL_SLICES, ALL_TIME_POINTS = "current slice", "all slices", "all time points"
#: What to segment in a stack (all time points: every stack of an nD image; a stack's slices
#: otherwise).
SCOPES = (CURRENT_SLICE, ALL_SLICES, ALL_TIME_POINTS)
NOT_LOADED = "Model: not loaded (loads when you run)"


def _checked_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, not {scope!r}")
    return scope


@dataclass
class _Run:
    """What one run was asked to do (kept to write its result)."""

    image: Image
    data: Any  # the image layer's data when the run started
    layout: ImageLayout
    slice: int | None  # the slice of a current-slice run on a stack
    settings: AutoSettings
    label_shape: tuple[int, ...]  # the output layer's (an nD image's full shape, no colours)
    tiles: int = 1  # tiles per plane
    outer: tuple[int, ...] | None = None  # nD images: the position of the line segmented
    whole: tuple[int, ...] | None = None  # nD images segmented whole: their leading shape
    channels: ChannelLayers | None = None  # the channel layers SAM saw (for the object table)


class AutomaticController(ControllerBase):
    """Label every object of a 2D image, or of one or all slices of a stack, with SAM.

    Parameters
    ----------
    viewer : napari.Viewer or ViewerModel
    runner : JobRunner, optional
        Where loading and segmentation run (default: in this thread).
    session : ModelSession, optional
        The model (default: the viewer's, shared with its other napari-sam docks).
    remember : bool
        Read and save the settings in the user's settings file.
    """

    def __init__(self, viewer: Any, runner: JobRunner | None = None,
                 session: ModelSession | None = None, remember: bool = True) -> None:
        super().__init__(viewer, runner)
        self.session = session if session is not None else session_for(self.viewer)
        self.session.add_runner(self.runner)  # background work waits for either dock's jobs
        self.images = LayerChoice(self.viewer.layers, Image)
        self.channels = ChannelLayers()  # 1-3 channel layers as SAM's RGB (empty: the image)
        self.output = AutoOutput(self.viewer, self.channels)
        self.remembered = RememberedSettings(remember)
        self.scope = CURRENT_SLICE
        self.waiting: str | None = None  # the scope of a run waiting for the model
        self._run: _Run | None = None
        for text in [self.session.problem, *self.remembered.restore()]:
            if self.session.once(text):  # one warning per problem for the viewer's docks
                self.warn(text)
        layers = self.viewer.layers.events
        for emitter in (layers.inserted, layers.removed, layers.moved):
            self.connections.connect(emitter, self._on_layers)
        self.connections.connect(self.session.events.model, self._on_model)
        self.connections.connect(self.session.events.request, self._on_model)
        self._on_layers()

    # ------------------------------------------------------------------ state
    image = property(lambda self: self.images.current, doc="The image to segment.")

    @property
    def output_layer(self) -> Any:
        """The Labels layer the last run wrote to (if it is still in the viewer)."""
        return self.output.layer

    @property
    def model(self) -> LoadedModel | None:
        return self.session.model

    @property
    def busy(self) -> bool:
        """A run (or the model load it waits for) is in progress."""
        return self.runner.running() or self.waiting is not None

    def layout(self) -> ImageLayout | None:
        """The chosen image's layout (for an nD image, that of the stack of slices shown),
        or None if there is none or it cannot be segmented."""
        image = self.images.current
        return None if image is None else shown_layout(image)

    @property
    def settings(self) -> AutoSettings:
        """The point grid's settings."""
        return self.remembered.settings

    @property
    def ais_settings(self) -> AISSettings:
        """The AIS post-processing settings."""
        return self.remembered.ais_settings

    @property
    def choices(self) -> RunChoices:
        """The mode and the tiling."""
        return self.remembered.choices

    def _update(self, attr: str, value: Any, changes: dict[str, Any], *aspects: str) -> None:
        changed, problem = self.remembered.update(attr, value, changes)
        if problem:
            self.warn(problem)
        for aspect in aspects if changed else ():
            self.changed(aspect)

    def set_settings(self, settings: AutoSettings | None = None, **changes: Any) -> None:
        """Use these point-grid settings (remembered for the next session)."""
        self._update("settings", settings, changes, "estimate")

    def set_ais_settings(self, settings: AISSettings | None = None, **changes: Any) -> None:
        """Use these AIS post-processing settings (remembered for the next session)."""
        self._update("ais_settings", settings, changes)

    def set_choices(self, choices: RunChoices | None = None, **changes: Any) -> None:
        """Use this mode and tiling (remembered for the next session).

        Raises
        ------
        SettingsError
            For a mode or tiling that does not exist or does not fit (nothing changes).
        """
        self._update("choices", choices, changes, "mode", "estimate")

    def planned_mode(self) -> str:
        """``"ais"`` or ``"amg"``: what the next run will do (:func:`wording.planned_mode`)."""
        return wording.planned_mode(self.choices, self.model, self.session.request)

    def mode_text(self) -> str:
        """One sentence on what the next run does with which model (for the dock)."""
        return wording.mode_text(self.choices, self.model, self.session.request)

    def tile_grid(self) -> TileGrid | None:
        """The tiles of one plane of the chosen image (None: not tiled; raises
        :class:`SettingsError` if the tiling does not fit the image)."""
        layout = self.layout()
        if layout is None:
            return None
        return self.choices.to_tiling().grid(layout.plane_shape)

    def set_scope(self, scope: str) -> None:
        self.scope = _checked_scope(scope)
        self.changed("estimate")

    def set_image(self, layer: Any) -> None:
        self.images.select(layer)
        self._on_layers()

    def set_channels(self, layers: Any) -> None:
        """Show SAM 1-3 channel layers (napari's ``channel_axis`` layers) as its red, green and
        blue inputs, each with its own contrast limits; the first becomes the image segmented.
        None or none: the image alone again. A wrong choice is said in one sentence."""
        try:
            choose_channels(self, layers)
        except NapariSamError as exc:
            self._report(exc)

    def set_channel_axis(self, axis: int, channels: Any = None) -> None:
        """Show SAM 1-3 channels of the image's own channel ``axis`` (a layer axis before the
        plane's two, e.g. of a (C, Z, Y, X) TIFF opened as one layer) as red, green and blue:
        ``channels`` are numbers from 0 (napari's slider), typed text such as "1 2", or None
        for all (at most three); the output is named after the image."""
        try:
            choose_channel_axis(self, axis, channels)
        except NapariSamError as exc:
            self._report(exc)

    def scopes(self) -> tuple[str, ...]:
        """The scopes the chosen image offers: all time points only for an nD image."""
        image = self.images.current
        return SCOPES if image is not None and is_nd(image) else SCOPES[:2]

    def estimate(self) -> str:
        """The work of the next run in numbers, and a hint for small images (may be "")."""
        layout = self.layout()
        lines = n_lines(self.images.current, layout) if self.scope == ALL_TIME_POINTS else 1
        return estimate_text(layout, self.settings, self.choices,
                             self.scope != CURRENT_SLICE, self.planned_mode() == "ais", lines)

    # ------------------------------------------------------------------ events
    def _on_layers(self, event: Any = None) -> None:
        kind = getattr(event, "type", None) if event is not None else None
        if kind == "inserted":
            self.connections.connect(event.value.events.name, self._on_layers)
        if kind == "removed" and self.channels.forget(event.value):
            self.changed("channels")
        self.images.refresh()
        self.changed("image")
        self.changed("estimate")
        if not self.busy:
            image, layout = self.images.current, self.layout()
            if image is None:
                self.set_status("Open or choose an image layer.")
            else:
                seen = self.channels.describe() if self.channels.active_for(image) else ""
                self.set_status(wording.ready_text(image_kind(image, layout), image.name, seen))

    def _on_model(self, event: Any = None) -> None:
        self.changed("model")

    # ------------------------------------------------------------------ run
    def run(self, scope: str | None = None) -> None:
        """Segment the chosen image (``scope``: "current slice" or "all slices" of a stack;
        default: :attr:`scope`), as a job; the model is loaded first if needed."""
        if self.busy:
            self.info("Automatic segmentation is already running.")
            return
        scope = _checked_scope(scope or self.scope)
        image = self.images.current
        if image is None:
            self.warn("Open or choose an image layer to segment.")
            return
        try:
            layout_ = run_layout(image)
            self.settings.check()
            self.ais_settings.check()
            self.choices.check()
            self.session.request.check()
            wording.refusal_before_loading(self.choices, self.model, self.session.request)
        except NapariSamError as exc:
            self._report(exc)
            return
        self.waiting = scope  # before: the load may finish at once (in this thread)
        model = self.session.ensure(self.runner, self._model_ready, force=True)
        if model is None:
            if self.session.loading:
                self.set_status("Loading the model first…")
            return
        self.waiting = None
        self._start(model, image, layout_, scope)

    def _model_ready(self, model: LoadedModel | None) -> None:
        scope, self.waiting = self.waiting, None
        if self.closed or scope is None:
            return
        if model is None:
            self.set_status("The model could not be loaded; nothing was segmented.")
            return
        self.changed("model")
        self.run(scope)

    def _start(self, model: LoadedModel, image: Image, layout: ImageLayout, scope: str) -> None:
        target = run_target(image, layout, scope == CURRENT_SLICE, self.viewer.dims.point,
                            every_line=scope == ALL_TIME_POINTS)
        if isinstance(target, str):
            self.warn(target)
            return
        settings = self.settings  # one slice: nothing to link
        settings = replace(settings, link_slices=False) if target.k is not None else settings
        chosen = self.channels.active_for(image)
        try:  # input errors and refusals are raised here, before any work
            grid = self.choices.to_tiling().grid(layout.plane_shape)
            work = run_work(model, image, layout, target, settings, self.choices,
                            self.ais_settings, self.channels if chosen else None,
                            self.session.store)
        except NapariSamError as exc:
            self._report(exc)
            return
        tiles = len(grid) if grid else 1
        self._run = _Run(image, image.data, layout, target.k, settings,
                         label_shape(image, layout), tiles, target.outer, target.whole,
                         self.channels.copy() if chosen else None)
        text = wording.run_text(image.name, layout, target.k, self.planned_mode() == "ais",
                                tiles, position_text(image, target.outer), target.whole)
        self.set_status(text)
        self.runner.start(Job("segment", text, work, done=self._write, failed=self._failed,
                              finished=self._finished, unit="steps"))
        self.changed("busy")

    def cancel(self) -> None:
        """Stop the run; the output layer is left as it was."""
        if self.waiting is not None:
            self.waiting = None
            self.runner.cancel("load")
        if self.runner.running("segment"):
            self.runner.cancel("segment")
            self.set_status("Cancelling…")

    def _report(self, exc: BaseException) -> None:
        self.notify(notice_for(exc))
        self.set_status(str(exc))

    def _failed(self, exc: BaseException) -> None:
        self.set_status(str(exc))

    def _finished(self) -> None:
        self._run = None
        self.changed("busy")

    def _write(self, result: SegmentationResult) -> None:
        run = self._run
        if self.closed or run is None:
            return
        image, shape = run.image, run.label_shape
        gone = self.output.gone(image, run.data, shape)
        if gone:
            self.warn(gone)
            return
        layer, note = self.output.write(image, shape, run.slice, result, run.outer)
        if note:
            self.info(note)
        # the object table in a job of its own (a large stack takes seconds)
        self.runner.start(table_job(layer, image, self.output.scores(layer),
                                    finished=lambda: self.changed("busy"),
                                    channels=run.channels))
        self.set_status(wording.result_text(result, layer.name, run.layout, run.slice,
                                            run.settings.link_slices, run.tiles,
                                            position_text(image, run.outer), run.whole))

    # ------------------------------------------------------------------ COCO
    def export_target(self) -> Any:
        """The layer :meth:`export_coco` would save (None: nothing to export yet; said so)."""
        return coco_export.export_target(self)

    def export_coco(self, path: str | Path) -> Path | None:
        """Save the objects of the output layer as COCO JSON (SAM's scores while the layer is
        unchanged since the run). Returns the written path."""
        return coco_export.export_coco(self, path)

    def close(self) -> None:
        """Disconnect from the viewer and stop a run (on dock close)."""
        self.waiting = None
        self.session.cancel_waiters(self)
        super().close()
