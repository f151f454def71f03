"""Which image interactive segmentation works on, what it is, and where its objects go.

:class:`ImageSession` follows the chosen Image layer: its layout (2D, RGB,
stack), or the sentence saying why it cannot be segmented (said once per
layer, then kept on the status line), and the output Labels layer
("<image> SAM labels" by default; a new one is made at the first commit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari.layers import Image, Labels

from napari_sam._widgets.interactive.commit import LABELS_SUFFIX
from napari_sam._widgets.interactive.planes_layout import dock_layout
from napari_sam._widgets.layers import LayerChoice
from napari_sam._widgets.notices import Notice
from napari_sam.errors import ImageFormatError
from napari_sam.workflows.image import ImageLayout

__all__ = ["ImageSession"]


class ImageSession:
    """The chosen image, its layout, and the chosen output layer.

    Attributes
    ----------
    image : Image or None
        The image being segmented (None if there is none, or it cannot be used).
    layout : ImageLayout or None
    rejected : Image or None
        The chosen layer, if it cannot be segmented.
    """

    def __init__(self, layers: Any, exclude_output: Any,
                 labels_name: Callable[[Any], str] | None = None) -> None:
        self.layers = layers
        #: The default output's name for an image ("<image> SAM labels").
        self.labels_name = labels_name or (lambda image: f"{image.name}{LABELS_SUFFIX}")
        self.choice = LayerChoice(layers, Image)
        self.output = LayerChoice(layers, Labels, "new layer “<image> SAM labels”",
                                  exclude=exclude_output)
        self.image: Any = None
        self.layout: ImageLayout | None = None
        self.rejected: Any = None
        self._explained: set[tuple] = set()

    @property
    def pending(self) -> bool:
        """The chosen layer is neither the image in use nor a rejected one."""
        current = self.choice.current
        if current is None:
            return self.image is not None or self.rejected is not None
        return current is not self.image and current is not self.rejected

    def take(self) -> tuple[Notice | None, str]:
        """Use the chosen layer: the notice to show (once per unusable layer) and the status."""
        image = self.choice.current
        self.image, self.layout = None, None
        if image is None:
            self.rejected = None
            return None, "Open or choose an image layer."
        try:
            layout = dock_layout(image)  # 2D, RGB, a stack, or more leading axes (T, Z, ...)
        except ImageFormatError as exc:
            self.rejected = image
            explained = (id(image), tuple(image.data.shape), image.rgb)
            notice = None
            if explained not in self._explained:  # once per layer, not at every list change
                self._explained.add(explained)
                notice = Notice.warning(str(exc))
            return notice, str(exc)
        self.rejected = None
        self.image, self.layout = image, layout
        self.select_default_output()
        return None, (
            f"{layout.kind} image “{image.name}” {layout.spatial_shape}: place points or boxes."
        )

    def relayout(self) -> tuple[bool, ImageFormatError | None]:
        """The image's data changed: (whether its layout changed, or the error if unusable)."""
        try:
            layout = dock_layout(self.image)
        except ImageFormatError as exc:
            self.layout = None
            return True, exc
        changed = layout != self.layout
        self.layout = layout
        return changed, None

    def select_default_output(self) -> None:
        """Choose "<image> SAM labels" if it exists, else a new layer at the first commit."""
        name = self.labels_name(self.image)
        existing = [lyr for lyr in self.output.candidates() if lyr.name == name]
        self.output.select(existing[0] if existing else None)
