"""Helpers shared by the widget tests (napari under Xvfb)."""

from __future__ import annotations

from types import ModuleType


def capture_notifications(monkeypatch, module: ModuleType) -> dict[str, list[str]]:
    """Record the napari notifications a widget module shows, by kind."""
    seen: dict[str, list[str]] = {"error": [], "warning": [], "info": []}
    for kind in seen:
        monkeypatch.setattr(
            module.notifications, f"show_{kind}", lambda msg, k=kind: seen[k].append(msg)
        )
    return seen


def dock(viewer, widget, model=None, model_name: str = "small-random"):
    """Dock ``widget`` in the viewer and give it ``model`` (no download)."""
    viewer.window.add_dock_widget(widget)
    if model is not None:
        widget.set_model(model, model_name)
    return widget


def wait_idle(qtbot, widget, timeout: int) -> None:
    """Process Qt events until the widget's workers are done (no fixed sleeps)."""
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def interactive_widget(viewer, model=None, model_name: str = "small-random", **kwargs):
    """A docked interactive widget with a short preview debounce, given ``model``."""
    from napari_sam._widgets.interactive import InteractiveSegmentationWidget

    return dock(
        viewer, InteractiveSegmentationWidget(viewer, debounce_ms=10, **kwargs), model, model_name
    )


def automatic_widget(viewer, model=None, model_name: str = "small-random", points: int = 4,
                     **kwargs):
    """A docked automatic widget with thresholds that keep random-weight masks.

    Random weights give noise masks that SAM's default thresholds would drop.
    """
    from napari_sam._widgets.automatic import AutomaticSegmentationWidget

    widget = dock(viewer, AutomaticSegmentationWidget(viewer, **kwargs), model, model_name)
    widget.points_spin.setValue(points)
    widget.iou_spin.setValue(0.0)
    widget.stability_spin.setValue(0.0)
    widget.min_area_spin.setValue(0)
    widget.max_area_spin.setValue(1.0)
    return widget
