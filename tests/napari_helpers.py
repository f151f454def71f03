"""Helpers of the controller tests (no display) and the dock tests (napari under Xvfb).

Geometry of the test stacks (anisotropic, translated: the code must map world
coordinates to data coordinates exactly once), the expected masks computed by
calling ``SamPredictor`` directly, controllers with a runner of their own, and
the notices they raise.
"""

from __future__ import annotations

import time

import numpy as np

from napari_sam.predictors.predictor import SamPredictor
from napari_sam.workflows.image import to_sam_rgb
from napari_sam.workflows.propagation import PropagationSettings

SCALE = (2.0, 0.5, 0.7)
TRANSLATE = (10.0, -3.0, 5.0)
#: Propagation thresholds that let random-weight masks through.
LAX = PropagationSettings(min_score=0.0, min_overlap=0.0, min_area=1)


def cut(nuclei, z, y=(40, 136), x=(16, 176)) -> np.ndarray:
    """A writable crop ``nuclei[z0:z1, y0:y1, x0:x1]`` (``z`` an int gives one plane)."""
    zs = z if isinstance(z, int) else slice(*z)
    return np.array(nuclei[zs, slice(*y), slice(*x)])


def colour_stack(nuclei, slices=(10, 14, 18)) -> np.ndarray:
    """``(len(slices), 64, 80, 3)`` uint8: per slice z, nuclei planes z, z + 2 and z + 4 as
    red, green and blue (scaled by the stack's maximum)."""
    top = float(nuclei.max())
    planes = []
    for z in slices:
        colours = [cut(nuclei, z + 2 * c, (40, 104), (16, 96)) for c in range(3)]
        planes.append(np.stack([(255.0 * p / top).astype(np.uint8) for p in colours], -1))
    return np.stack(planes)


def world_of(zrc, scale=SCALE, translate=TRANSLATE) -> np.ndarray:
    """Data (z, row, col) of the test stack -> world coordinates."""
    return np.asarray(zrc, float) * np.asarray(scale) + np.asarray(translate)


def to_layer(layer, world_points) -> np.ndarray:
    """World coordinates -> a layer's data coordinates (where napari stores a click)."""
    return np.array([layer.world_to_data(w) for w in np.atleast_2d(world_points)])


def rectangle(k, box, scale=SCALE, translate=TRANSLATE) -> np.ndarray:
    """World corners of the box (x0, y0, x1, y1 in image pixels) on slice k."""
    x0, y0, x1, y1 = box
    return world_of([[k, y0, x0], [k, y0, x1], [k, y1, x1], [k, y1, x0]], scale, translate)


def goto_slice(viewer, k, scale=SCALE, translate=TRANSLATE) -> None:
    viewer.dims.set_point(0, translate[0] + scale[0] * k)


def slow_encoder(model, seconds: float) -> None:
    """Make every forward pass of the image encoder take at least ``seconds``."""
    forward = model.image_encoder.forward

    def slow(x):
        time.sleep(seconds)
        return forward(x)

    model.image_encoder.forward = slow


def best_mask(model, plane, contrast, xy, rgb=False) -> np.ndarray:
    """SAM's best-scoring mask for one positive point at ``xy`` (x, y)."""
    predictor = SamPredictor(model)
    predictor.set_image(to_sam_rgb(plane, contrast, rgb=rgb))
    masks, scores, _ = predictor.predict(
        point_coords=np.array([xy], float), point_labels=np.array([1])
    )
    return masks[int(np.argmax(scores))]


class Reference:
    """SamPredictor called directly, one encoded plane per (plane, contrast)."""

    def __init__(self, model):
        self.predictor = SamPredictor(model)
        self.embeddings = {}

    def predict(self, plane, contrast, multimask=True, **prompts) -> np.ndarray:
        key = (plane.tobytes(), tuple(contrast))
        if key not in self.embeddings:
            self.predictor.set_image(to_sam_rgb(plane, contrast))
            self.embeddings[key] = self.predictor.get_embedding()
        self.predictor.set_embedding(self.embeddings[key])
        masks, scores, _ = self.predictor.predict(multimask_output=multimask, **prompts)
        return masks[int(np.argmax(scores))]


def settle(controller) -> None:
    """What the dock's debounce timer and event loop do: run the scheduled prediction and
    the jobs a deferred runner holds, until nothing is left to do."""
    for _ in range(50):
        runner = controller.runner
        if getattr(runner, "pending", None):
            runner.run_pending()
        elif getattr(controller, "pending", False):
            controller.flush()
        else:
            return
    raise AssertionError("the controller did not settle")


def with_object(viewer, stack, oid: int = 2, z: int = 3):
    """The stack as image "nuclei" and a "nuclei SAM labels" layer holding one committed
    object ``oid`` on slice ``z``; returns (labels layer, its data before)."""
    viewer.add_image(stack, name="nuclei")
    before = np.zeros(stack.shape, np.uint32)
    before[z, 20:50, 30:70] = oid
    viewer.dims.set_point(0, z)
    return viewer.add_labels(before.copy(), name="nuclei SAM labels"), before


def press_on_each(viewer, layers, press, key: str, check) -> None:
    """Select each layer in turn, press ``key`` (``press(viewer, key)``), then ``check()``."""
    for layer in layers:
        viewer.layers.selection.active = layer
        press(viewer, key)
        check()


def collect(*controllers) -> dict[str, list[str]]:
    """The notices the controllers raise, by level ("info", "warning", "error")."""
    seen: dict[str, list[str]] = {"error": [], "warning": [], "info": []}
    for controller in controllers:
        controller.listen(notice=lambda notice: seen[notice.level].append(notice.text))
    return seen


def lax_auto(controller, points: int = 4) -> None:
    """Automatic-segmentation thresholds that keep random-weight masks (SAM's defaults
    would drop the noise masks random weights give)."""
    controller.set_settings(points_per_side=points, pred_iou_thresh=0.0,
                            stability_score_thresh=0.0, min_area=0, max_area_fraction=1.0)


# --------------------------------------------------------------------------- docks (Xvfb)
TIMEOUT = 60_000


def capture_notifications(monkeypatch) -> dict[str, list[str]]:
    """Record the napari notifications the docks show, by kind."""
    from napari_sam._widgets._qt import notify

    seen: dict[str, list[str]] = {"error": [], "warning": [], "info": []}
    for kind in seen:
        monkeypatch.setattr(
            notify.notifications, f"show_{kind}", lambda msg, k=kind: seen[k].append(msg)
        )
    return seen


def use_model(viewer, model, name: str = "fast") -> None:
    """Give the viewer's model session a factory that returns ``model`` (no download)."""
    from napari_sam._widgets.model_session import session_for
    from napari_sam.runtime.loader import LoadedModel

    session_for(viewer, lambda *args, **kwargs: LoadedModel.wrap(model, name))


def open_dock(viewer, name: str, model=None, model_name: str = "fast", **kwargs):
    """Dock a napari-sam widget ("interactive" or "automatic") and give it ``model``."""
    if name == "interactive":
        from napari_sam._widgets._qt.interactive import InteractiveSegmentationWidget as cls

        kwargs.setdefault("debounce_ms", 10)
    else:
        from napari_sam._widgets._qt.automatic import AutomaticSegmentationWidget as cls
    widget = cls(viewer, **kwargs)
    viewer.window.add_dock_widget(widget)
    if model is not None:
        widget.set_model(model, model_name)
    return widget


def wait_idle(qtbot, widget, timeout: int = TIMEOUT) -> None:
    """Process Qt events until the dock's timer and jobs are done (no fixed sleeps)."""
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def canvas_point(viewer, canvas, row: float, col: float):
    """The canvas pixel (a QPoint) showing world (row, col) in napari's 2D view."""
    from qtpy.QtCore import QPoint

    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9
    cy, cx = camera.center[-2:]
    zoom = camera.zoom
    return QPoint(round((col - cx) * zoom + canvas.width() / 2),
                  round((row - cy) * zoom + canvas.height() / 2))


def shown_canvas(qtbot, viewer):
    """napari's canvas widget, once it is on screen."""
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.waitUntil(canvas.isVisible, timeout=TIMEOUT)
    return canvas


def click_canvas(viewer, canvas, row: float, col: float) -> None:
    """A left mouse click on the canvas where it shows world (row, col) (napari's 2D view)."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    QTest.mouseClick(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     canvas_point(viewer, canvas, row, col))
