"""The prompt and output controls of the interactive dock.

:class:`PromptControls`: the image, points and boxes pickers, the channel choice
(:class:`~napari_sam._widgets._qt.channel_controls.ChannelControls`), the Points / Box
tool (selects that layer, ready to draw), positive/negative points, multimask
and the next candidate. :class:`OutputControls`: the output labels picker,
Overwrite, Commit, Clear and Undo. Both only call the
:class:`~napari_sam._widgets.interactive.controller.InteractiveController` and
show what it says.
"""

from __future__ import annotations

from typing import Any

from napari.layers import Image, Labels, Points, Shapes
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QFileDialog,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_sam._widgets._qt.channel_controls import ChannelControls
from napari_sam._widgets._qt.forms import LayerPicker, labelled, row

__all__ = ["OutputControls", "PromptControls"]


class PromptControls(QWidget):
    """Image and prompt layers, the prompt tool, point label, multimask, candidates."""

    def __init__(self, controller: Any) -> None:
        super().__init__()
        c = self.controller = controller
        self.image_picker = LayerPicker("Image", c.images.choice, Image, c.set_image,
                                        "The image to segment (2D, RGB or a 3D stack).")
        self.points_picker = LayerPicker(
            "Points", c.prompts.points, Points, lambda lyr: c.set_prompt_layer("points", lyr),
            "Positive (object) and negative (background) points.")
        self.boxes_picker = LayerPicker(
            "Boxes", c.prompts.boxes, Shapes, lambda lyr: c.set_prompt_layer("boxes", lyr),
            "Rectangles: one object per box.")
        self.channel_controls = ChannelControls(c)
        # the channel controls' buttons, where tests and users' scripts found them before
        self.channels_button = self.channel_controls.channels_button
        self.image_only_button = self.channel_controls.image_only_button
        self.channels_label = self.channel_controls.channels_label
        self.points_tool = QPushButton("Points")
        self.box_tool = QPushButton("Box")
        self.tools = QButtonGroup(self)
        for button, tool, tip in (
            (self.points_tool, "points", "Click on the canvas to place points (positive or "
             "negative, see below)."),
            (self.box_tool, "box", "Drag on the canvas to draw a box around an object."),
        ):
            button.setCheckable(True)
            button.setToolTip(tip)
            button.clicked.connect(lambda checked=False, tool=tool: c.set_tool(tool))
            self.tools.addButton(button)
        self.negative_check = QCheckBox("Negative points (background)  [N]")
        self.negative_check.setToolTip("New points mark background, not the object.")
        self.negative_check.toggled.connect(c.set_negative)
        self.one_click_check = QCheckBox("One click = one cell  [Shift+O]")
        self.one_click_check.setToolTip(
            "Each positive point outside a box is its own object, all predicted at once; a "
            "negative point refines the nearest one. Commit writes them all in one step.")
        self.one_click_check.setChecked(c.one_click)
        self.one_click_check.toggled.connect(c.set_one_click)
        self.tiling_check = QCheckBox("Tile planes over 2048 px")
        self.tiling_check.setToolTip(
            "Large planes are cut into overlapping tiles, each seen by SAM at full resolution "
            "and encoded when a click needs it; untick to show SAM the whole plane, shrunk.")
        self.tiling_check.setChecked(c.tiles.automatic)
        self.tiling_check.toggled.connect(c.set_tiling)
        self.multimask_check = QCheckBox("Multimask")
        self.multimask_check.setToolTip("SAM proposes three candidate masks per object.")
        self.multimask_check.setChecked(c.multimask)
        self.multimask_check.toggled.connect(c.set_multimask)
        self.next_button = QPushButton("Next mask  [Shift+M]")
        self.next_button.setToolTip("Show the next of SAM's three candidate masks.")
        self.next_button.clicked.connect(c.next_candidate)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for picker in (self.image_picker, self.points_picker, self.boxes_picker):
            layout.addWidget(labelled(picker))
        layout.addWidget(self.channel_controls)
        layout.addWidget(row(self.points_tool, self.box_tool))
        layout.addWidget(self.negative_check)
        layout.addWidget(self.one_click_check)
        layout.addWidget(self.tiling_check)
        layout.addWidget(row(self.multimask_check, self.next_button))
        self.sync()

    def sync(self, what: str = "") -> None:
        c = self.controller
        self.channel_controls.sync(what)
        for picker in (self.image_picker, self.points_picker, self.boxes_picker):
            picker.sync()
        (self.points_tool if c.prompts.tool == "points" else self.box_tool).setChecked(True)
        for check, value in ((self.negative_check, c.prompts.negative),
                             (self.one_click_check, c.one_click)):
            if check.isChecked() != value:
                check.blockSignals(True)
                check.setChecked(value)
                check.blockSignals(False)


class OutputControls(QWidget):
    """Output labels and Overwrite; Commit, Clear, Undo (:attr:`actions`, for the footer)."""

    def __init__(self, controller: Any) -> None:
        super().__init__()
        c = self.controller = controller
        self.labels_picker = LayerPicker("Labels", c.output, Labels, c.set_output,
                                         "Where committed objects go.")
        self.overwrite_check = QCheckBox("Overwrite existing objects")
        self.overwrite_check.toggled.connect(lambda on: setattr(c, "overwrite", bool(on)))
        self.commit_button = QPushButton("Commit  [Shift+C]")
        self.commit_button.clicked.connect(c.commit)
        self.clear_button = QPushButton("Clear  [Shift+X]")
        self.clear_button.clicked.connect(c.clear)
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("Undo the last change of the output Labels layer (Ctrl+Z "
                                    "on any napari-sam layer).")
        self.undo_button.clicked.connect(c.undo)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(labelled(self.labels_picker))
        layout.addWidget(self.overwrite_check)
        self.save_table_button = QPushButton("Save table…")
        self.save_table_button.setToolTip(
            "Save the output labels' object table (one row per object: size, centre, mean "
            "intensity, SAM's scores; napari shows it in Layers > Features table) as CSV.")
        self.save_table_button.clicked.connect(self.save_table)
        layout.addWidget(self.save_table_button)
        #: Commit, Clear, Undo: shown in the dock's footer, always in view.
        self.actions = row(self.commit_button, self.clear_button, self.undo_button)

    def save_table(self) -> None:
        """Ask where, then let the controller write the CSV."""
        labels = self.controller.output.current
        suggested = f"{labels.name}.csv" if labels is not None else "objects.csv"
        path, _ = QFileDialog.getSaveFileName(self, "Save object table", suggested,
                                              "CSV table (*.csv)")
        if path:
            self.controller.save_table(path)

    def sync(self, what: str = "") -> None:
        self.labels_picker.sync()
