"""The image series controls of the interactive dock: open a folder, previous / next, save.

Shows the controller's :class:`~napari_sam._widgets.interactive.series.DockSeries`:
which image of the folder is open ("Image 2 of 3: name.tif"), where labels
are saved, and buttons that only call it.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QFileDialog, QPushButton, QVBoxLayout, QWidget

from napari_sam._widgets._qt.dock import wrapped_label
from napari_sam._widgets._qt.forms import row
from napari_sam._widgets.interactive.series import NEXT_KEY, PREVIOUS_KEY

__all__ = ["SeriesControls"]


class SeriesControls(QWidget):
    """Open folder…, the position in the series, Previous, Next, Save labels."""

    def __init__(self, controller: Any) -> None:
        super().__init__()
        c = self.controller = controller
        self.open_button = QPushButton("Open folder…")
        self.open_button.setToolTip(
            "Annotate the images of a folder (TIFF, PNG, JPEG, BMP, .npy) one after another: "
            "each image's labels are saved in its “labels” subfolder as <name>_labels.tif "
            "(the names `napari-sam segment` gives) when you go to another image.")
        self.open_button.clicked.connect(lambda: self.open_folder())
        self.previous_button = QPushButton(f"◀ Previous  [{PREVIOUS_KEY}]")
        self.previous_button.clicked.connect(c.series.previous)
        self.next_button = QPushButton(f"Next ▶  [{NEXT_KEY}]")
        self.next_button.clicked.connect(c.series.next)
        for button in (self.previous_button, self.next_button):
            button.setToolTip("Save this image's labels (if changed), keep its prompts, and "
                              "show the other image; its plane is encoded ahead.")
        self.save_button = QPushButton("Save labels")
        self.save_button.setToolTip("Save this image's labels and object table now.")
        self.save_button.clicked.connect(c.series.save)
        self.position_label = wrapped_label()
        self.output_label = wrapped_label()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.open_button)
        layout.addWidget(self.position_label)
        layout.addWidget(row(self.previous_button, self.next_button))
        layout.addWidget(self.save_button)
        layout.addWidget(self.output_label)
        self.sync()

    def open_folder(self, folder: str | None = None) -> bool:
        """Open a folder of images (asks for one without ``folder``)."""
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Open a folder of images")
            if not folder:
                return False
        return self.controller.series.open_folder(str(folder))

    def sync(self, what: str = "") -> None:
        series = self.controller.series
        s = series.series
        self.position_label.setText(series.describe())
        at = s.position if s is not None else None
        self.previous_button.setEnabled(s is not None)
        self.next_button.setEnabled(s is not None)
        self.save_button.setEnabled(at is not None)
        self.output_label.setText(f"Labels are saved in {s.output}." if s is not None else "")
        self.output_label.setVisible(s is not None)
