"""The automatic dock's channel commands: channel layers chosen in the layer list, or made
from one layer's channel axis, as SAM's red, green and blue.

The choice itself is a :class:`~napari_sam._widgets.channel_layers.ChannelLayers`
(``c.channels``); channel layers are made from a channel axis by
:func:`~napari_sam._widgets.channel_axis.split_for`. A wrong choice raises
(one sentence, which the controller shows) and changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from napari_sam._widgets.channel_axis import split_for

__all__ = ["choose_channel_axis", "choose_channels"]


def choose_channels(c: Any, layers: Any) -> None:
    """Use the 1-3 channel ``layers`` (None or none: the image alone) in the automatic
    controller ``c``; the first becomes the image segmented.

    Raises
    ------
    ImageFormatError
        A wrong choice (nothing changes).
    """
    layers = c.channels.choose(layers)
    c.channels.source = None  # chosen in the layer list (see choose_channel_axis)
    c.changed("channels")
    c.set_image(layers[0] if layers else c.images.current)
    if layers:
        c.info(c.channels.describe() + ".")


def choose_channel_axis(c: Any, axis: int, channels: Sequence[int] | str | None) -> None:
    """Use ``channels`` (numbers, typed text, or None: all, at most three) of the image's own
    ``axis`` through channel layers made for them; the output is named after the image.

    Raises
    ------
    ImageFormatError
        No image, or a wrong axis or channel choice (nothing changes).
    """
    source, layers = split_for(c, axis, channels)
    choose_channels(c, layers)
    c.channels.source = source
