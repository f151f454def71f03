"""The automatic dock's COCO export: which layer, the file, and what the user is told (no Qt).

:func:`export_target` finds the output layer of the chosen image (warning when
there is nothing to export yet); :func:`export_coco` saves its objects as COCO
JSON with SAM's scores while the layer is unchanged since the run
(:meth:`~napari_sam._widgets.automatic.output.AutoOutput.save_coco`). Both take
the :class:`~napari_sam._widgets.automatic.controller.AutomaticController`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_sam._widgets.automatic.lines import label_shape
from napari_sam._widgets.notices import notice_for
from napari_sam.errors import NapariSamError

__all__ = ["export_coco", "export_target"]


def export_target(c: Any) -> Any:
    """The layer :func:`export_coco` would save (None: nothing to export yet; said so)."""
    image, layout = c.images.current, c.layout()
    shape = label_shape(image, layout) if image is not None and layout else None
    layer = c.output.target(image, shape)
    if layer is None:
        c.warn("There is nothing to export yet: run automatic segmentation first.")
    return layer


def export_coco(c: Any, path: str | Path) -> Path | None:
    """Save the objects of ``c``'s output layer as COCO JSON at ``path``; the written path
    (None: nothing written, said in one sentence)."""
    layer = export_target(c)
    if layer is None:
        return None
    try:
        written, n = c.output.save_coco(layer, c.images.current, path)
    except NapariSamError as exc:
        c.notify(notice_for(exc))
        c.set_status(str(exc))
        return None
    c.info(f"Saved {n} object mask{'s' if n != 1 else ''} to {written}.")
    c.set_status(f"COCO JSON saved: {written}")
    return written
