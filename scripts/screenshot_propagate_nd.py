"""Take docs/images/propagate_nd.png: propagation along t of a (T, Z, Y, X) image.

Run headless with a virtual X server::

    xvfb-run -a -s "-screen 0 1500x1000x24" \
        .venv/bin/python scripts/screenshot_propagate_nd.py OUT.png

A (4, 5, 192, 192) movie made from the synthetic nuclei sample
one click committed at
t=1, z=2, "Propagate along" set to t, propagated, shown at t=3. MobileSAM's architecture
with random weights (its IoU head biased positive so that the propagation is not stopped).
"""
import sys

import numpy as np
from shot_common import settle


def main():
    import napari
    import torch
    from qtpy.QtWidgets import QApplication
    from superqt import QCollapsible

    from napari_sam.predictors.build_sam import sam_model_registry
    from napari_sam.workflows.samples import make_nuclei_3d
    stack = make_nuclei_3d()
    movie = np.ascontiguousarray(np.stack([stack[10 + 2 * t:15 + 2 * t] for t in range(4)]))
    torch.manual_seed(1)
    sam = sam_model_registry["vit_t"]().eval()
    with torch.no_grad():  # random weights; a positive IoU head so that propagation goes on
        sam.mask_decoder.iou_prediction_head.layers[-1].bias.add_(1.0)
    viewer = napari.Viewer(title="napari-sam: propagation along t of a (T, Z, Y, X) image")
    viewer.window.resize(1500, 1000)
    viewer.add_image(movie, name="movie", axis_labels=("t", "z", "y", "x"))
    _, widget = viewer.window.add_plugin_dock_widget(
        "napari-sam-microscopy", "Interactive segmentation (SAM)"
    )
    widget.set_model(sam, "vit_t-random", "vit_t (MobileSAM), random weights")
    app = QApplication.instance()
    c = widget.controller
    c.stack.settings = c.stack.settings.__class__(min_score=0.0, min_overlap=0.0, min_area=1)
    viewer.dims.set_point(0, 1)
    viewer.dims.set_point(1, 2)
    widget.points_layer.add([1, 2, 96.0, 96.0])
    settle(app, widget)
    c.commit()
    settle(app, widget)
    combo = widget.stack_controls.axis_combo
    combo.setCurrentIndex(combo.findText("t"))
    settle(app, widget)
    widget.stack_controls.propagate_button.click()
    settle(app, widget)
    for col in widget.findChildren(QCollapsible):
        if any(k in col.text() for k in ("Model", "Image and", "Output")):
            col.collapse(animate=False)
    for _ in range(10):
        app.processEvents()
    viewer.dims.set_point(0, 3)
    settle(app, widget)
    lab = widget.labels_layer.data
    print("labelled (t, z):", sorted(set(zip(*np.nonzero(lab.any(axis=(2, 3)))))))
    print("summary:", widget.stack_controls.summary_label.text())
    viewer.screenshot(sys.argv[1], canvas_only=False)
    viewer.close()


main()
