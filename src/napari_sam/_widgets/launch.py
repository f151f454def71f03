"""One call from nothing to a clickable image: napari, an image, the dock, the model loading.

:func:`open_gui` is what ``napari-sam gui [IMAGE]`` runs: it opens napari with the
image (default: the plugin's 3D nuclei sample), docks "Interactive segmentation
(SAM)" — whose prompt points layer is then selected in add mode, so the first
click on the canvas is a positive point — and starts loading the model in the
background (the last one used; else one whose weights are on disk; else the
smallest, downloaded with progress in the dock).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_sam._widgets.model_session import default_model_choice
from napari_sam.errors import InputFileError

__all__ = ["AUTOMATIC", "INTERACTIVE", "PLUGIN", "SAMPLE", "open_gui", "run_gui"]

PLUGIN = "napari-sam-microscopy"
INTERACTIVE = "Interactive segmentation (SAM)"
AUTOMATIC = "Automatic segmentation (SAM)"
#: The sample opened when no image is given.
SAMPLE = "nuclei_3d"


def open_gui(
    image: str | Path | None = None,
    model: str | None = None,
    automatic: bool = False,
    viewer: Any = None,
) -> tuple[Any, Any]:
    """Open napari ready to segment; returns ``(viewer, interactive dock)``.

    Parameters
    ----------
    image : path, optional
        A file napari can open; default: the plugin's 3D nuclei sample.
    model : str, optional
        A model choice of the dock ("vit_t", "vit_b", ...); default: the remembered one.
    automatic : bool
        Also open the automatic segmentation dock (as a tab beside the interactive one).
    viewer : napari.Viewer, optional
        Use this viewer instead of a new one (tests).

    Raises
    ------
    InputFileError
        If ``image`` does not exist or napari cannot read it.
    """
    import napari

    if image is not None and not Path(image).expanduser().exists():
        raise InputFileError(f"The image {image} does not exist.")
    viewer = viewer if viewer is not None else napari.Viewer(title="napari-sam")
    if image is None:
        viewer.open_sample(PLUGIN, SAMPLE)
    else:
        try:
            viewer.open(str(Path(image).expanduser()))
        except (ValueError, OSError) as exc:
            raise InputFileError(
                f"napari cannot open {image} ({exc}); open it in napari with a reader "
                "plugin, then use Layers > Segment > Interactive segmentation (SAM)."
            ) from exc
    frame, dock = viewer.window.add_plugin_dock_widget(PLUGIN, INTERACTIVE)
    if automatic:
        viewer.window.add_plugin_dock_widget(PLUGIN, AUTOMATIC, tabify=True)
        frame.raise_()  # the interactive tab in front
    session = dock.controller.session
    if model is not None:
        session.update(choice=model)
    elif not session.remembered:  # a first session: weights on disk, else the smallest
        session.update(choice=default_model_choice())
    dock.controller.load_model()
    return viewer, dock


def run_gui(image: str | Path | None = None, model: str | None = None,
            automatic: bool = False) -> None:
    """:func:`open_gui`, then napari's event loop until the window is closed."""
    import napari

    open_gui(image, model, automatic)
    napari.run()
