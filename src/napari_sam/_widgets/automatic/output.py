"""Where automatic segmentation writes: "<image> SAM auto", never over the user's own work.

:class:`AutoOutput` finds the layer a run writes into (the one the last run on
this image wrote, or one named "<image> SAM auto" of the right shape; channels
made from one layer's channel axis are named after that layer), decides
whether it may be replaced (it is empty, or holds exactly what the last run
left there), writes a result as ONE undo step (a current-slice run keeps the
other slices, with new ids above theirs) and keeps SAM's scores of the objects
while the layer is unchanged (for COCO export).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels

from napari_sam._widgets.channel_layers import ChannelLayers
from napari_sam._widgets.layers import add_layer_quietly, layer_geometry, replace_region
from napari_sam.runtime.files import content_hash
from napari_sam.workflows.segment import SegmentationResult

__all__ = ["OUTPUT_SUFFIX", "AutoOutput"]

OUTPUT_SUFFIX = " SAM auto"


class AutoOutput:
    """The output layer of automatic segmentation and the scores of its objects."""

    def __init__(self, viewer: Any, channels: ChannelLayers | None = None) -> None:
        self.viewer = viewer
        #: The dock's channel choice: channels made from one layer's channel axis name the
        #: output after that layer ("<layer> SAM auto").
        self.channels = channels
        self._layer: Labels | None = None
        self._image: Image | None = None
        # SAM's scores of the objects last written, valid while the layer is unchanged
        self._scores: dict[tuple[int | None, int], dict[str, float]] = {}
        self._digest: tuple[Any, str] | None = None

    @property
    def layer(self) -> Labels | None:
        """The layer the last run wrote to (if it is still in the viewer)."""
        layer = self._layer
        return layer if layer is not None and layer in self.viewer.layers else None

    def find(self, image: Image, shape: tuple[int, ...]) -> Labels | None:
        """The layer a run on ``image`` would write into, if there is one."""
        last = self.layer
        if last is not None and self._image is image and last.data.shape == shape:
            return last
        name = self.name_for(image)
        for layer in self.viewer.layers:
            if isinstance(layer, Labels) and layer.name == name and layer.data.shape == shape:
                return layer
        return None

    def name_for(self, image: Image) -> str:
        """The output layer's name for a run on ``image``: "<image> SAM auto"."""
        base = self.channels.named_after(image) if self.channels is not None else image
        return f"{base.name}{OUTPUT_SUFFIX}"

    def target(self, image: Image | None, shape: tuple[int, ...] | None) -> Labels | None:
        """The layer to export: the last run's, else the one a run on ``image`` (of
        spatial ``shape``) would write into; None if there is none."""
        if self.layer is not None:
            return self.layer
        return self.find(image, shape) if image is not None and shape is not None else None

    def gone(self, image: Image, data: Any, shape: tuple[int, ...]) -> str | None:
        """Why a run's result on ``image`` (its ``data`` then, spatial ``shape``) can no
        longer be written, in one sentence; None if it can."""
        if image not in self.viewer.layers:
            return f"The image “{image.name}” was closed during the run; the result was dropped."
        if image.data is not data or tuple(image.data.shape[: len(shape)]) != shape:
            return f"The image “{image.name}” changed during the run; the result was dropped."
        return None

    def replaceable(self, layer: Labels) -> bool:
        """Whether a run may write into ``layer``: it is empty, or holds exactly what the
        last run left there (not edited since)."""
        last = self._digest
        if last is not None and last[0] is layer and last[1] == content_hash(layer.data):
            return True
        return not np.any(layer.data)

    def scores(self, layer: Labels) -> dict:
        """SAM's scores of ``layer``'s objects, while it is exactly what the last run wrote."""
        if self._digest is None or self._digest[0] is not layer:
            return {}
        if self._digest[1] != content_hash(layer.data):
            return {}  # edited since: the scores may describe other masks
        return self._scores

    def write(self, image: Image, shape: tuple[int, ...], k: int | None,
              result: SegmentationResult,
              outer: tuple[int, ...] | None = None) -> tuple[Labels, str | None]:
        """Write ``result`` (of slice ``k`` of a stack, or of everything) into the layer of
        ``shape``; with ``outer`` the result is the stack at that position of an nD image
        (``layer.data[outer]``). Returns the layer written and, if the user's layer was
        kept, the sentence that says so."""
        note = None
        layer = self.find(image, shape)
        if layer is not None and not self.replaceable(layer):
            note = (
                f"“{layer.name}” holds objects this widget did not write (your edits, or an "
                "earlier session), so the result goes to a new layer; delete or rename layers "
                "to choose what to keep."
            )
            layer = None  # a new layer: the user's work in the old one is not touched
        scores = dict(result.scores)
        if outer is not None:  # scores of an nD image's planes are keyed by the full index
            scores = {((*outer, z), lab): v for (z, lab), v in scores.items()}
        region = (*(outer or ()), *(() if k is None else (k,)))
        if region:  # a part of the layer: keep the rest, new ids above theirs
            plane = result.labels[k] if k is not None else result.labels
            offset = _max_outside(layer.data, region) if layer is not None else 0
            if offset:
                plane = np.where(plane > 0, plane + np.uint32(offset), plane).astype(np.uint32)
                scores = {(z, lab + offset): v for (z, lab), v in scores.items()}
            if layer is not None:
                kept = self.scores(layer)  # before the write changes the layer
                replace_region(layer, region, plane)
                scores = {**{key: v for key, v in kept.items() if not _inside(key[0], region)},
                          **scores}  # fmt: skip
            else:
                data = np.zeros(shape, np.uint32)
                data[region] = plane
                layer = self._add(image, data)
        elif layer is not None:
            replace_region(layer, (), result.labels)
        else:
            layer = self._add(image, result.labels)
        self._layer, self._image = layer, image
        self._scores = scores
        self._digest = (layer, content_hash(layer.data))
        return layer, note

    def _add(self, image: Image, data: np.ndarray) -> Labels:
        return add_layer_quietly(
            self.viewer,
            lambda: self.viewer.add_labels(
                data, name=self.name_for(image), **layer_geometry(image)
            ),
        )

    def save_coco(self, layer: Labels, image: Image | None, path: str | Path) -> tuple[Path, int]:
        """Save the objects of ``layer`` as COCO JSON at ``path``, with SAM's scores while
        the layer is unchanged since the run; the image's file name (else the layer's
        name) is the COCO image. Returns the written path and the number of objects.
        Raises :class:`~napari_sam.errors.NapariSamError` subclasses (said as they are)."""
        from napari_sam.workflows.coco import CocoWriter

        source = getattr(getattr(layer, "source", None), "path", None)
        if image is not None and getattr(image.source, "path", None):
            source = image.source.path
        file_name = Path(source).name if source else layer.name.removesuffix(OUTPUT_SUFFIX)
        writer = CocoWriter()
        writer.add(layer.data, file_name, stack=layer.data.ndim >= 3, scores=self.scores(layer))
        return writer.write(path), len(writer.annotations)


def _max_outside(data: Any, region: tuple[int, ...]) -> int:
    """The largest id of ``data`` outside ``data[region]`` (0 if none), read block by block."""
    largest = 0
    for index in np.ndindex(*np.shape(data)[: len(region)]):
        if index != region:
            block = np.asarray(data[index])
            if block.size:
                largest = max(largest, int(block.max()))
    return largest


def _inside(where: Any, region: tuple[int, ...]) -> bool:
    """Whether the plane ``where`` (a slice, or a full leading index) lies in ``region``."""
    index = tuple(where) if isinstance(where, tuple) else (where,)
    return index[: len(region)] == region
