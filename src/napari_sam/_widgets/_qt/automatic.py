"""The "Automatic segmentation (SAM)" dock: small Qt parts over an AutomaticController.

The image picker, the shared model controls, the channel layers SAM sees as
red, green and blue (selected in the layer list), the mode (auto / instance decoder
(AIS) / point grid) with the settings of the mode that will run (forms made from
``AISSettings`` and ``AutoSettings``: tooltips from their help, remembered
between sessions), tiling for large planes, the stack scope, the estimate of the
next run, Run / Cancel through the job runner (the bar shows the real stage and
the time remaining), and COCO export. All decisions are the controller's
(:mod:`napari_sam._widgets.automatic.controller`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox
from napari.layers import Image
from qtpy.QtWidgets import QFileDialog, QPushButton, QVBoxLayout, QWidget

from napari_sam._widgets._qt.channel_controls import ChannelControls
from napari_sam._widgets._qt.dock import DockFrame, section, wrapped_label
from napari_sam._widgets._qt.forms import (
    LayerPicker,
    compact,
    labelled,
    row,
    settings_form,
    sync_form,
)
from napari_sam._widgets._qt.jobs import JobPanel, QtJobRunner
from napari_sam._widgets._qt.model_controls import ModelControls
from napari_sam._widgets._qt.notify import show_notice
from napari_sam._widgets.automatic.controller import NOT_LOADED, SCOPES, AutomaticController
from napari_sam._widgets.automatic.modes import RunChoices
from napari_sam._widgets.model_session import ModelFactory, session_for
from napari_sam.errors import SettingsError
from napari_sam.workflows.ais import AISSettings
from napari_sam.workflows.segment import AutoSettings

if TYPE_CHECKING:
    import napari

__all__ = ["AutomaticSegmentationWidget"]

#: The settings shown under "What counts as an object", and under "3D stacks".
OBJECT_FIELDS = ("points_per_side", "pred_iou_thresh", "stability_score_thresh",
                 "box_nms_thresh", "crop_n_layers", "min_area", "max_area_fraction")
STACK_FIELDS = ("link_slices", "link_iou")
#: The AIS post-processing shown under "Instance decoder (AIS)" (smoothing: API and CLI).
AIS_FIELDS = ("center_distance_threshold", "boundary_distance_threshold",
              "foreground_threshold", "min_size")
TILING_FIELDS = ("tiling", "tile_size", "halo")


class AutomaticSegmentationWidget(DockFrame):
    """Label every object of a 2D image, or of one or all slices of a stack, with SAM.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    model_factory : callable, optional
        The viewer's model loader (see :class:`InteractiveSegmentationWidget`).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer,
                 model_factory: ModelFactory | None = None) -> None:
        super().__init__(on_close=self.close_session)
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self.jobs = JobPanel()
        self.runner = QtJobRunner(self.jobs)
        session = session_for(self.viewer, model_factory)
        c = self.controller = AutomaticController(self.viewer, self.runner, session)
        self.image_picker = LayerPicker("Image", c.images, Image, c.set_image,
                                        "The image or stack to segment.")
        self.model_controls = ModelControls(session, NOT_LOADED)
        self.channel_controls = ChannelControls(c)
        self.objects_form = settings_form(AutoSettings, c.settings, OBJECT_FIELDS, self._edit)
        self.mode_form = settings_form(RunChoices, c.choices, ("mode",), self._choose)
        self.mode_label = wrapped_label()
        self.ais_form = settings_form(AISSettings, c.ais_settings, AIS_FIELDS, self._edit_ais)
        self.tiling_form = settings_form(RunChoices, c.choices, TILING_FIELDS, self._choose)
        for form in (self.mode_form, self.tiling_form):
            for widget in form:
                compact(widget)
        self.stack_form = settings_form(AutoSettings, c.settings, STACK_FIELDS, self._edit)
        self.scope_combo = ComboBox(
            label="Segment", choices=SCOPES, value=c.scope,
            tooltip="The slice shown in the viewer, every slice (of the time point shown), or "
            "every slice of every time point (images with time and z).")
        compact(self.scope_combo)
        self.scope_combo.changed.connect(c.set_scope)
        self.stack_form.insert(0, self.scope_combo)
        self.estimate_label = wrapped_label()
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(lambda: c.run())
        self.coco_button = QPushButton("Export COCO JSON…")
        self.coco_button.setToolTip(
            "Save the objects of the output layer as COCO JSON (run-length encoded masks, "
            "one COCO image per slice)."
        )
        self.coco_button.clicked.connect(lambda: self.export_coco())
        image = QWidget()
        box = QVBoxLayout(image)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(labelled(self.image_picker))
        box.addWidget(self.model_controls)
        self.add(section("Image and model", image))
        self.channels_section = section("Channels (SAM's red, green, blue)",
                                        self.channel_controls, expanded=False)
        self.add(self.channels_section)
        self.add(section("Mode", self.mode_form.native, self.mode_label))
        self.add(self.estimate_label)
        self.stack_section = section("3D stacks", self.stack_form.native)
        self.add(self.stack_section)
        self.ais_section = section("Instance decoder (AIS)", self.ais_form.native,
                                   expanded=False)
        self.add(self.ais_section)
        self.objects_section = section("What counts as an object (point grid)",
                                       self.objects_form.native, expanded=False)
        self.add(self.objects_section)
        self.add(section("Large images (tiling)", self.tiling_form.native, expanded=False))
        self.add(wrapped_label(
            "The result goes to the Labels layer “<image> SAM auto” (Ctrl+Z undoes a run). "
            "Save it with File > Save Selected Layers… as .tif."
        ))
        self.finish()
        self._image_seen: Any = None  # the image the Channels section was last shown for
        self.status_label = wrapped_label()
        self.footer_layout.addWidget(row(self.run_button, self.coco_button))
        self.footer_layout.addWidget(self.jobs)
        self.footer_layout.addWidget(self.status_label)
        c.listen(notice=show_notice, status=self.status_label.setText, changed=self._changed)
        self._changed("image")

    def _edit(self, changes: dict) -> None:
        try:
            settings = AutoSettings(**{**self.controller.settings.as_dict(), **changes})
            settings.check()
        except SettingsError as exc:
            self.controller.error(str(exc))
            self._changed("settings")
            return
        self.controller.set_settings(settings)

    def _edit_ais(self, changes: dict) -> None:
        try:
            settings = AISSettings(**{**self.controller.ais_settings.as_dict(), **changes})
            settings.check()
        except SettingsError as exc:
            self.controller.error(str(exc))
            sync_form(self.ais_form, self.controller.ais_settings)
            return
        self.controller.set_ais_settings(settings)

    def _choose(self, changes: dict) -> None:
        try:
            self.controller.set_choices(**changes)
        except SettingsError as exc:
            self.controller.error(str(exc))
            sync_form(self.mode_form, self.controller.choices)
            sync_form(self.tiling_form, self.controller.choices)

    def _show_mode(self) -> None:
        c = self.controller
        self.mode_label.setText(c.mode_text())
        ais = c.planned_mode() == "ais"
        self.ais_section.setVisible(ais)
        self.objects_section.setVisible(not ais)

    def _changed(self, what: str) -> None:
        c = self.controller
        if what in ("image", "channels"):
            self.channel_controls.sync()
        if what == "image" and c.image is not self._image_seen:
            self._image_seen = c.image
            if self.channel_controls.channels_likely():  # a new (C, ...) image: show the row
                self.channels_section.expand(animate=False)
        if what == "image":
            self.image_picker.sync()
            if tuple(self.scope_combo.choices) != c.scopes():  # all time points: nD only
                self.scope_combo.choices = c.scopes()
            layout = c.layout()
            self.stack_form.enabled = layout is not None and layout.is_stack
        if what == "model":
            self.model_controls.sync()
        if what in ("model", "mode", "image"):
            self._show_mode()
        if what in ("settings", "image"):
            sync_form(self.objects_form, c.settings)
            sync_form(self.stack_form, c.settings)
        if what in ("mode", "image"):
            sync_form(self.mode_form, c.choices)
            sync_form(self.tiling_form, c.choices)
            sync_form(self.ais_form, c.ais_settings)
        if what in ("estimate", "image", "settings", "model"):
            text = c.estimate()
            self.estimate_label.setText(text)
            self.estimate_label.setVisible(bool(text))
        if what == "busy":
            self.run_button.setEnabled(not c.busy)

    def export_coco(self, path: str | Path | None = None) -> Path | None:
        """Save the output layer's objects as COCO JSON (asks for a file without ``path``)."""
        if path is None:
            layer = self.controller.export_target()
            if layer is None:
                return None
            path, _ = QFileDialog.getSaveFileName(
                self, "Export COCO JSON", f"{layer.name}.json", "COCO JSON (*.json)"
            )
            if not path:
                return None
        return self.controller.export_coco(path)

    # ------------------------------------------------------------------ for scripts and tests
    @property
    def busy(self) -> bool:
        return self.controller.busy

    def set_model(self, sam: Any, model_id: str | None = None, name: str | None = None) -> None:
        self.controller.session.set_model(sam, model_id, name)

    def close_session(self) -> None:
        """Disconnect from the viewer and stop a run (on dock close)."""
        self.model_controls.close_session()
        self.controller.close()
