"""A dock's channel choice: what SAM sees as red, green and blue.

Two ways, both ending in napari channel
layers that SAM sees each with its own contrast limits
(:mod:`~napari_sam._widgets.channel_layers`):

- **channel layers** already in the viewer (``channel_axis``): select 1-3 in
  the layer list and press *Selected as channels*;
- **one layer with a channel axis** (a (C, Z, Y, X) TIFF opened as it is;
  the row shows when the image has an axis named c / channel or one of at
  most 16 entries): choose the axis and type the channels (from 0, as on napari's slider; empty:
  all, at most three) and press *Use channels*
  (:mod:`~napari_sam._widgets.channel_axis`).

*Image only* goes back to the image alone. Only calls the controller and shows
what it says.
"""

from __future__ import annotations

from typing import Any

from napari.layers import Image
from qtpy.QtWidgets import QComboBox, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

from napari_sam._widgets._qt.forms import row
from napari_sam._widgets.channel_axis import (
    channel_source,
    channels_likely,
    guess_channel_axis,
    offered_axes,
)

__all__ = ["ChannelControls"]


class ChannelControls(QWidget):
    """Channel layers by selection, or (``axis_choice``) channels of the image's own channel
    axis. ``controller`` has ``viewer``, ``image``, ``channels`` and ``set_channels`` (and
    ``set_channel_axis`` with ``axis_choice``)."""

    def __init__(self, controller: Any, axis_choice: bool = True) -> None:
        super().__init__()
        c = self.controller = controller
        self.axis_choice = axis_choice
        self.channels_button = QPushButton("Selected as channels")
        self.channels_button.setToolTip(
            "Select 1-3 channel layers in the layer list (napari makes one per channel with "
            "channel_axis), then press this: SAM sees them as red, green and blue, each with "
            "its own contrast limits.")
        self.channels_button.clicked.connect(self.use_selected_channels)
        self.image_only_button = QPushButton("Image only")
        self.image_only_button.setToolTip("SAM sees the chosen image alone again.")
        self.image_only_button.clicked.connect(lambda: c.set_channels(None))
        self.axis_combo = QComboBox()
        self.axis_combo.setToolTip(
            "The image's axis that holds the channels (for an image opened as one layer, "
            "e.g. a (C, Z, Y, X) TIFF).")
        self.channels_edit = QLineEdit()
        self.channels_edit.setPlaceholderText("all")
        self.channels_edit.setMaximumWidth(70)
        self.channels_edit.setToolTip(
            "1-3 channel numbers, counted from 0 as on napari's slider, e.g. 1 2 (red, green); "
            "empty: all channels, when there are at most three.")
        self.channels_edit.returnPressed.connect(self.use_axis)
        self.axis_button = QPushButton("Use channels")
        self.axis_button.setToolTip(
            "Make one layer per chosen channel (red, green, blue, each with its own contrast "
            "limits), hide the image, and show SAM those channels.")
        self.axis_button.clicked.connect(self.use_axis)
        self.axis_label = QLabel("Channel axis")
        self.axis_row = row(self.axis_label, self.axis_combo, self.channels_edit,
                            self.axis_button, stretch=1)
        self.channels_label = QLabel()
        self.channels_label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(row(self.channels_button, self.image_only_button))
        layout.addWidget(self.axis_row)
        layout.addWidget(self.channels_label)
        self._axes_of: tuple = ()
        self.sync()

    def use_selected_channels(self) -> None:
        """The Image layers selected in the layer list, in the list's order, as channels."""
        c = self.controller
        chosen = [lyr for lyr in c.viewer.layers if lyr in c.viewer.layers.selection
                  and isinstance(lyr, Image)]
        c.set_channels(chosen)

    def channels_likely(self) -> bool:
        """The dock's image (no channels chosen yet) probably has a channel axis (one labelled
        c / channel, or a short first axis of an nD image): the choice should be seen."""
        c = self.controller
        return (self.axis_choice and c.image is not None and not c.channels.active_for(c.image)
                and channels_likely(c.image))

    def use_axis(self) -> None:
        """The typed channels of the chosen axis."""
        axis = self.axis_combo.currentData()
        if axis is not None:
            self.controller.set_channel_axis(int(axis), self.channels_edit.text())

    def sync(self, what: str = "") -> None:
        c = self.controller
        active = c.channels.active_for(c.image)
        self.channels_label.setText(c.channels.describe() + "." if active else "")
        self.channels_label.setVisible(active)
        self.image_only_button.setEnabled(active)
        source = channel_source(c) if self.axis_choice else None
        axes = offered_axes(source) if source is not None else []
        seen = (id(source), tuple(axes))
        if seen != self._axes_of:  # refill only when the image (or its axes) changed
            self._axes_of = seen
            self.axis_combo.clear()
            for axis, label, size in axes:
                self.axis_combo.addItem(f"{label} ({size})", axis)
            guess = guess_channel_axis(source) if axes else None
            if guess is not None:
                self.axis_combo.setCurrentIndex(self.axis_combo.findData(guess))
        self.axis_row.setVisible(bool(axes))
