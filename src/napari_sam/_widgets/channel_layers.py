"""napari's channel layers as SAM's RGB input (both docks).

``viewer.add_image(data, channel_axis=0)`` shows each channel of a
multichannel image as its own Image layer with its own contrast limits.
:class:`ChannelLayers` holds the 1–3 of them the user chose, in slot order
(red, green, blue; :func:`~napari_sam.workflows.channels.channels_to_rgb`):
SAM sees each channel scaled by **that layer's** contrast limits, i.e. what
the user sees. The first chosen layer is the image the dock segments (its
shape, scale and translate give the prompts', preview's and labels'
geometry); the channels apply while it is the dock's image.

The interactive dock encodes a plane with :meth:`ChannelLayers.key_and_plane`:
the embedding key holds the chosen channels' raw planes (hash), every layer's
contrast limits and the slot count, so changing any channel's contrast encodes
the plane again. The automatic dock reads the channels through
:meth:`ChannelLayers.planes`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image

from napari_sam._widgets.channel_axis import CHANNEL_KEY
from napari_sam.errors import ImageFormatError
from napari_sam.runtime.files import content_hash
from napari_sam.workflows.channels import MAX_CHANNELS, channels_to_rgb, flat_contrast
from napari_sam.workflows.embeddings import EmbeddingKey
from napari_sam.workflows.planes import ImagePlanes

__all__ = ["SLOTS", "ChannelLayers"]

SLOTS = ("red", "green", "blue")


def _plane(layer: Any, k: Any) -> np.ndarray:
    """Plane ``k`` (None: a 2D layer) of one channel layer, read alone (lazy data too)."""
    return np.asarray(layer.data if k is None else layer.data[k])


class ChannelLayers:
    """The chosen channel layers (empty: the image is used as it is)."""

    def __init__(self) -> None:
        self.layers: list[Any] = []
        #: The one layer the channel layers were made from (its channel axis), if they were.
        self.source: Any = None

    def check(self, layers: list[Any]) -> list[Any]:
        """The layers as a channel choice, or one sentence saying why they cannot be one."""
        layers = list(layers)
        if not 1 <= len(layers) <= MAX_CHANNELS:
            raise ImageFormatError(
                f"Choose 1 to {MAX_CHANNELS} channel layers for SAM's red, green and blue "
                f"inputs; {len(layers)} were chosen."
            )
        for layer in layers:
            if not isinstance(layer, Image) or layer.rgb:
                raise ImageFormatError(
                    f"“{layer.name}” is not a single-channel image layer; choose the layers "
                    "napari made for each channel (channel_axis)."
                )
            if getattr(layer, "multiscale", False):
                raise ImageFormatError(
                    f"“{layer.name}” is a multiscale (pyramid) image; open its "
                    "full-resolution level as a layer."
                )
        shape = tuple(layers[0].data.shape)
        for layer in layers[1:]:
            if tuple(layer.data.shape) != shape:
                raise ImageFormatError(
                    f"The channel layer “{layer.name}” has shape {tuple(layer.data.shape)} but "
                    f"“{layers[0].name}” has {shape}; all channels must have the same shape."
                )
        return layers

    def choose(self, layers: Any) -> list[Any]:
        """Use ``layers`` (1-3 channel layers; None or none: the image alone); returns them.

        Raises
        ------
        ImageFormatError
            A wrong choice (nothing changes), in one sentence.
        """
        layers = list(layers or [])
        self.layers = self.check(layers) if layers else []
        return self.layers

    def copy(self) -> ChannelLayers:
        """The same choice, kept apart from later changes (e.g. for a run's object table)."""
        other = ChannelLayers()
        other.layers, other.source = list(self.layers), self.source
        return other

    def active_for(self, image: Any) -> bool:
        """The channels apply: ``image`` (the dock's image) is the first chosen layer."""
        return bool(self.layers) and self.layers[0] is image

    def named_after(self, image: Any) -> Any:
        """The layer that names a result on ``image``: for channel layers made from one
        layer's channel axis, that layer; else ``image``."""
        source = self.source
        return source if source is not None and self.active_for(image) else image

    def numbers(self) -> list[int] | None:
        """The chosen channels' numbers in :attr:`source` (from 0, slot order), when the
        layers were made from its channel axis; else None."""
        if self.source is None:
            return None
        found = [layer.metadata.get(CHANNEL_KEY) for layer in self.layers]
        return None if any(k is None for k in found) else [int(k) for k in found]

    def forget(self, layer: Any) -> bool:
        """A layer left the viewer; True if it was a channel (the choice is dropped)."""
        if layer is self.source:
            self.source = None
        if any(layer is lyr for lyr in self.layers):
            self.layers = []
            self.source = None
            return True
        return False

    def contrasts(self) -> list[tuple[float, float]]:
        return [tuple(float(v) for v in layer.contrast_limits) for layer in self.layers]

    def key_and_plane(self, k: Any, model_id: str) -> tuple[EmbeddingKey, np.ndarray]:
        """The key of plane ``k`` as SAM sees the channels, and SAM's ``(H, W, 3)`` uint8 input."""
        raws = [_plane(layer, k) for layer in self.layers]
        contrasts = self.contrasts()
        key = EmbeddingKey(
            data_hash=content_hash(np.stack(raws)),
            slice=k,
            model_id=model_id,
            contrast=flat_contrast(contrasts),
            channels=tuple(range(len(raws))),
        )
        return key, channels_to_rgb(raws, contrasts)

    def describe(self) -> str:
        """E.g. "SAM sees “nuclei” as red, “membranes” as green"."""
        if len(self.layers) == 1:
            return f"SAM sees “{self.layers[0].name}” (its contrast limits) in all three inputs"
        parts = [f"“{layer.name}” as {slot}" for layer, slot in zip(self.layers, SLOTS)]
        return "SAM sees " + ", ".join(parts)

    def planes(self, displayed: Any = None) -> ImagePlanes:
        """The chosen layers as one :class:`~napari_sam.workflows.planes.ImagePlanes`, each
        channel with its layer's contrast limits (``displayed``: the layer axes shown)."""
        return ImagePlanes([layer.data for layer in self.layers], contrast=self.contrasts(),
                           displayed=displayed)

    def intensity(self) -> tuple[list[Any], list[str]]:
        """Each channel's data and name, for the object table's mean intensities."""
        return [layer.data for layer in self.layers], [layer.name for layer in self.layers]
