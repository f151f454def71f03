"""The "Interactive segmentation (SAM)" dock: small Qt parts over an InteractiveController.

Click positive/negative points in "SAM points" or draw rectangles in "SAM
boxes"; the mask appears in "SAM preview"; commit it into the output labels as
a new object; on a stack, precompute the embeddings and propagate objects
through the slices; open a folder of images and annotate them one after
another (Image series). All decisions are the controller's
(:mod:`napari_sam._widgets.interactive.controller`); this module composes the
controls, the job runner (model loading, encoding, precompute, propagation run
in napari thread workers) and the dock's lifetime, and debounces predictions.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox

from napari_sam._widgets._qt.dock import DockFrame, section, wrapped_label
from napari_sam._widgets._qt.jobs import JobPanel, QtJobRunner
from napari_sam._widgets._qt.model_controls import ModelControls
from napari_sam._widgets._qt.notify import show_notice
from napari_sam._widgets._qt.prompt_controls import OutputControls, PromptControls
from napari_sam._widgets._qt.series_controls import SeriesControls
from napari_sam._widgets._qt.stack_controls import StackControls
from napari_sam._widgets.interactive.controller import NOT_LOADED, InteractiveController
from napari_sam._widgets.interactive.keys import keys_help
from napari_sam._widgets.model_session import ModelFactory, session_for
from napari_sam.workflows.embeddings import EmbeddingStore

if TYPE_CHECKING:
    import napari

__all__ = ["InteractiveSegmentationWidget", "keys_html"]

#: The widest the help text gets (pixels): QLabel's word-wrap size hint grows with the text.
HELP_WIDTH = 340


def keys_html() -> str:
    """The dock's help line: how to prompt, and every key."""
    keys = "<br>".join(f"<b>{k}</b>: {v}" for k, v in keys_help())
    return (
        "Click points in “SAM points” (positive/negative), or pick Box and drag rectangles "
        "in “SAM boxes” (one object per box). With “One click = one cell” each positive "
        "point is its own object. Only prompts on the current slice count. "
        "The keys work whichever napari-sam layer is selected:<br>" + keys
    )


class InteractiveSegmentationWidget(DockFrame):
    """Segment objects with SAM from points and boxes, slice by slice.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    model_factory : callable, optional
        ``factory(choice, checkpoint, device, precision=, progress_callback=,
        should_cancel=) -> LoadedModel`` for the viewer's model session; default
        :func:`~napari_sam._widgets.model_session.load_sam`.
    store : EmbeddingStore, optional
        Where encoded planes are kept (default: a new store of 1 GB).
    debounce_ms : int
        Prompt changes within this time trigger one prediction; a click (a point added)
        after a quiet spell is predicted at once.
    ahead_ms : int
        How long the view rests on a plane without prompts before that plane is encoded
        ahead (:mod:`napari_sam._widgets.interactive.ahead`).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer,
                 model_factory: ModelFactory | None = None,
                 store: EmbeddingStore | None = None, debounce_ms: int = 150,
                 ahead_ms: int = 700) -> None:
        super().__init__(on_close=self.close_session)
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self.jobs = JobPanel()
        self.runner = QtJobRunner(self.jobs)
        session = session_for(self.viewer, model_factory)
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(int(debounce_ms))
        c = self.controller = InteractiveController(self.viewer, self.runner, session, store)
        self.timer.timeout.connect(self._predict)
        c.scheduler = self.timer.start
        self.click_timer = QTimer(self)  # a click: predict once the click's events are in
        self.click_timer.setSingleShot(True)
        self.click_timer.setInterval(0)
        self.click_timer.timeout.connect(self._predict)
        c.urgent = self._click
        self._debounce_s = max(0, int(debounce_ms)) / 1000
        self._predicted_at = float("-inf")
        self.ahead_timer = QTimer(self)  # the view rested on a plane: encode it ahead
        self.ahead_timer.setSingleShot(True)
        self.ahead_timer.setInterval(int(ahead_ms))
        self.ahead_timer.timeout.connect(c.ahead.start)
        c.ahead.scheduler = self.ahead_timer.start
        self.model_controls = ModelControls(session, NOT_LOADED, on_load=c.load_model)
        self.ahead_box = QCheckBox("Encode the slice in view ahead")
        self.ahead_box.setChecked(c.ahead.enabled)
        self.ahead_box.setToolTip(
            "While you look at a slice without prompts, SAM encodes it in the background, "
            "so your first click there shows its mask at once (encoding takes seconds on a "
            "CPU). It stops as soon as you move on or start other work."
        )
        self.ahead_box.toggled.connect(c.ahead.set_enabled)
        self.model_controls.layout().addWidget(self.ahead_box)
        self.prompt_controls = PromptControls(c)
        self.output_controls = OutputControls(c)
        self.stack_controls = StackControls(c)
        self.series_controls = SeriesControls(c)
        self.add(section("Model", self.model_controls))
        self.add(section("Image and prompts", self.prompt_controls))
        self.add(section("Output", self.output_controls))
        self.stack_section = section("3D stack", self.stack_controls)
        self.add(self.stack_section)
        self.add(section("Image series (a folder)", self.series_controls, expanded=False))
        help_label = wrapped_label(keys_html(), rich=True)
        help_label.setMaximumWidth(HELP_WIDTH)  # a long help text must not widen the dock
        self.add(section("Help and keys", help_label, expanded=False))
        self.finish()
        self.status_label = wrapped_label()
        self.footer_layout.addWidget(self.output_controls.actions)
        self.footer_layout.addWidget(self.jobs)
        self.footer_layout.addWidget(self.status_label)
        c.listen(notice=show_notice, status=self.status_label.setText, changed=self._changed)
        if self.timer.isActive() or c.pending:
            self.timer.start()

    def _predict(self) -> None:
        """Predict now: the debounce timer fired, or a click came after a quiet spell (the
        prediction reads every change so far, so a debounce still waiting is dropped)."""
        self.timer.stop()
        self.click_timer.stop()
        self._predicted_at = time.monotonic()
        self.controller.update_preview()

    def _click(self) -> None:
        """A point was added: predict as soon as the click's events are in (the points'
        data, then their features), without the debounce; but a burst of points (a
        prediction ran within the debounce time, e.g. points added by a script) is
        debounced and predicted once, at its end."""
        if time.monotonic() - self._predicted_at < self._debounce_s:
            self.timer.start()
        else:
            self.click_timer.start()

    def _changed(self, what: str) -> None:
        """Show what the controller changed."""
        if what == "model":
            self.model_controls.sync()
        if what in ("layers", "image", "negative", "tool", "one_click", "channels"):
            self.prompt_controls.sync()
        if what in ("layers", "image", "output"):
            self.output_controls.sync()
        if what in ("image", "stack", "summary", "busy", "disk", "layers", "model"):
            self.stack_controls.sync()
        if what in ("series", "image"):
            self.series_controls.sync()

    # ------------------------------------------------------------------ for scripts and tests
    @property
    def busy(self) -> bool:
        """A prediction or an encoding ahead is scheduled, or a job runs."""
        timers = (self.timer, self.click_timer, self.ahead_timer)
        return any(t.isActive() for t in timers) or self.controller.busy

    def set_model(self, sam: Any, model_id: str | None = None, name: str | None = None) -> None:
        """Use an already built model (scripts, tests), or a LoadedModel."""
        self.controller.set_model(sam, model_id, name)

    @property
    def points_layer(self) -> Any:
        return self.controller.prompts.points.current

    @property
    def boxes_layer(self) -> Any:
        return self.controller.prompts.boxes.current

    @property
    def preview_layer(self) -> Any:
        return self.controller.preview.layer

    @property
    def labels_layer(self) -> Any:
        return self.controller.output.current

    def close_session(self) -> None:
        """Disconnect from the viewer, give back the keys, stop the jobs (on dock close)."""
        for timer in (self.timer, self.click_timer, self.ahead_timer):
            timer.stop()
        self.model_controls.close_session()
        self.controller.close()
