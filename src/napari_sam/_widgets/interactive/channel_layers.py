"""The interactive dock's "channels" command.

:func:`use_channels` makes 1-3 channel layers
(:class:`~napari_sam._widgets.channel_layers.ChannelLayers`) SAM's red, green
and blue input of an interactive controller: the first becomes the image segmented, and a
change of any channel's data or contrast limits updates the preview.
"""

from __future__ import annotations

from typing import Any

from napari_sam._widgets.notices import notice_for
from napari_sam.errors import NapariSamError

__all__ = ["use_channels"]


def use_channels(c: Any, layers: Any) -> None:
    """The "channels" command of an interactive controller ``c``: show SAM the 1-3 channel
    ``layers`` as red, green, blue (the first becomes the image segmented), or, with
    None or none, the image alone again; a wrong choice is said in one sentence."""
    layers = list(layers or [])
    c.channels.source = None
    if not layers:
        c.channels.layers = []
        c.changed("channels")
        c.schedule()
        return
    try:
        layers = c.channels.check(layers)
    except NapariSamError as exc:
        c.notify(notice_for(exc))
        return
    c.channels.layers = layers
    if c.image is not layers[0]:
        c.set_image(layers[0])
    for layer in layers[1:]:
        c.connections.disconnect_source(layer)
        for name in ("contrast_limits", "data"):
            c.connections.connect(getattr(layer.events, name), c.schedule)
    c.changed("channels")
    c.info(c.channels.describe() + ".")
    c.schedule()
