"""Take docs/images/series.png: the interactive dock's Image series section.

Run headless with a virtual X server::

    xvfb-run -a -s "-screen 0 1500x1000x24" .venv/bin/python scripts/screenshot_series.py OUT.png

Writes three planes of the synthetic nuclei sample to /tmp/shots/cells, opens that folder
in the dock, commits one click on image 1, goes to image 2 (image 1's labels and table are
saved in cells/labels) and clicks there. MobileSAM's architecture with random weights.
"""
import sys
import time
from pathlib import Path

from shot_common import settle


def main():
    import napari
    import tifffile
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_sam.predictors.build_sam import sam_model_registry
    from napari_sam.workflows.samples import make_nuclei_3d
    folder = Path("/tmp/shots/cells")
    folder.mkdir(parents=True, exist_ok=True)
    stack = make_nuclei_3d()
    for i, z in enumerate((8, 15, 22)):
        tifffile.imwrite(folder / f"cells_{i + 1}.tif", stack[z])
    torch.manual_seed(1)
    sam = sam_model_registry["vit_t"]().eval()
    viewer = napari.Viewer(title="napari-sam: image series")
    viewer.window.resize(1500, 1000)
    _, widget = viewer.window.add_plugin_dock_widget(
        "napari-sam-microscopy", "Interactive segmentation (SAM)"
    )
    widget.set_model(sam, "vit_t-random", "vit_t (MobileSAM), random weights")
    app = QApplication.instance()
    c = widget.controller
    if not c.series.open_folder(folder):
        raise SystemExit(c.status)
    settle(app, widget)
    pts = c.prompts.points.current
    pts.add([96.0, 96.0])
    settle(app, widget)
    c.commit()
    settle(app, widget)
    c.series.next()
    settle(app, widget)
    pts = c.prompts.points.current
    pts.add([90.0, 100.0])
    settle(app, widget)
    from qtpy.QtWidgets import QScrollArea

    from napari_sam._widgets._qt.series_controls import SeriesControls
    ctrl = widget.findChildren(SeriesControls)[0]
    from superqt import QCollapsible
    for col in widget.findChildren(QCollapsible):
        if "series" in col.text():
            col.expand(animate=False)
        elif "stack" in col.text() or "Model" in col.text():
            col.collapse(animate=False)
    for _ in range(5):
        app.processEvents()
    for area in widget.findChildren(QScrollArea):
        area.ensureWidgetVisible(ctrl, 0, 0)
    for _ in range(5):
        app.processEvents()
    time.sleep(0.5)
    settle(app, widget)
    print("status:", c.series.describe())
    print("files:", sorted(p.name for p in (folder / "labels").glob("*")))
    out = sys.argv[1]
    viewer.screenshot(out, canvas_only=False)
    print("saved", out)
    viewer.close()


main()
