"""Take the screenshots of docs/interactive.md from a real napari window.

Run headless with a virtual X server::

    xvfb-run -a .venv/bin/python scripts/screenshot_interactive.py [out.png]
    xvfb-run -a -s "-screen 0 1280x800x24" .venv/bin/python \
        scripts/screenshot_interactive.py --docks [out.png]

It opens the synthetic 3D nuclei sample, docks the interactive dock (with
``--docks``: both docks, in a 1280x800 window), places prompts on one slice the
way a user would (positive and negative points, two boxes), commits one object
and shows the preview of the others, then saves the whole window. The model is
MobileSAM's architecture (``vit_t``) with **random weights** (no weights can be
downloaded here), so the masks show the mechanics, not SAM's segmentation quality.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shot_common import save_png, settle, window_shot

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "images" / "interactive.png"
DOCKS_OUT = ROOT / "docs" / "images" / "docks_1280x800.png"
PLUGIN = "napari-sam-microscopy"


def _nuclei_centres(plane: np.ndarray, n: int) -> list[tuple[float, float]]:
    """(row, col) of the n largest bright blobs of a plane."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(plane.astype(float), 2)
    mask = smooth > np.percentile(smooth, 80)
    lab, count = ndimage.label(mask)
    sizes = ndimage.sum(mask, lab, range(1, count + 1))
    biggest = np.argsort(-sizes)[:n] + 1
    return [tuple(c) for c in ndimage.center_of_mass(mask, lab, biggest)]


def main(out: Path = DEFAULT_OUT, docks: bool = False) -> Path:
    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_sam.predictors.build_sam import sam_model_registry

    torch.manual_seed(1)
    sam = sam_model_registry["vit_t"]().eval()  # random weights

    viewer = napari.Viewer(title="napari-sam: interactive segmentation")
    viewer.window.resize(*((1280, 800) if docks else (1500, 900)))
    viewer.open_sample(PLUGIN, "nuclei_3d")
    image = viewer.layers[0]
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Interactive segmentation (SAM)")
    widget.set_model(sam, "vit_t-random", "vit_t (MobileSAM), random weights")
    if docks:
        viewer.window.add_plugin_dock_widget(PLUGIN, "Automatic segmentation (SAM)")
    app = QApplication.instance()

    k = 15
    viewer.dims.set_point(0, image.data_to_world([k, 0, 0])[0])
    plane = image.data[k]
    centres = _nuclei_centres(plane, 4)
    points, boxes = widget.points_layer, widget.boxes_layer

    def world(r: float, c: float) -> np.ndarray:
        return np.asarray(image.data_to_world([k, r, c]))

    def add_box(r: float, c: float, half: float) -> None:
        corners = [
            world(r - half, c - half),
            world(r - half, c + half),
            world(r + half, c + half),
            world(r + half, c - half),
        ]
        boxes.add_rectangles(np.array([boxes.world_to_data(w) for w in corners]))

    # object 1: a box, committed
    add_box(*centres[0], 22)
    settle(app, widget)
    widget.controller.commit()
    settle(app, widget)
    # then a positive + a negative point on one nucleus and a box on another: the preview
    r, c = centres[1]
    points.add(points.world_to_data(world(r, c)))
    widget.controller.set_negative(True)
    points.add(points.world_to_data(world(r + 14, c + 14)))
    widget.controller.set_negative(False)
    add_box(*centres[2], 22)
    settle(app, widget)
    viewer.layers.selection.active = points
    viewer.reset_view()
    for _ in range(20):
        app.processEvents()

    shot = window_shot(viewer, app)  # toasts (e.g. the PyQt5 deprecation notice) closed
    viewer.close()
    # the 1280x800 shot is kept at its size
    return save_png(shot, out, width=None if docks else 1200)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--docks"]
    with_docks = "--docks" in sys.argv[1:]
    default = DOCKS_OUT if with_docks else DEFAULT_OUT
    main(Path(args[0]) if args else default, docks=with_docks)
