"""The interactive dock's "channel axis" command: channels of ONE image layer (e.g. a
(C, Z, Y, X) TIFF opened without ``channel_axis``) as SAM's red, green and blue.

The channel layers are made by :func:`~napari_sam._widgets.channel_axis.split_channel_layers`
and then used as the dock's channel layers
(:mod:`~napari_sam._widgets.interactive.channel_layers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from napari_sam._widgets.axis_order import move_to_front, permute_prompts
from napari_sam._widgets.channel_axis import split_for
from napari_sam._widgets.interactive.channel_layers import use_channels
from napari_sam._widgets.interactive.commit import LABELS_SUFFIX
from napari_sam._widgets.notices import notice_for
from napari_sam.errors import NapariSamError

__all__ = ["labels_name", "use_channel_axis"]


def use_channel_axis(c: Any, axis: int, channels: Sequence[int] | str | None) -> None:
    """The "channel axis" command of an interactive controller ``c``: show SAM 1-3
    ``channels`` (numbers, typed text, or None: all, at most three) of the dock's image along
    its ``axis`` as red, green, blue, through channel layers made for them; a wrong choice is
    said in one sentence and nothing changes."""
    if c.no_image():
        return
    try:
        source, layers = split_for(c, axis, channels)
    except NapariSamError as exc:
        c.notify(notice_for(exc))
        return
    kept = []
    for prompts in list(c.prompts.layers):
        # empty prompt layers made for the layer with the channel axis: new ones fit the channels
        if prompts.ndim > layers[0].ndim and not len(prompts.data) and prompts in c.viewer.layers:
            c.viewer.layers.remove(prompts)
        elif prompts.ndim == source.ndim:
            kept.append(prompts)
    if axis != 0:  # the layer is now shown channels first: so are the prompts drawn on it
        permute_prompts(kept, move_to_front(int(source.ndim), int(axis)))
    use_channels(c, layers)
    c.channels.source = source
    if c.output.current is None:  # "<source> SAM labels", if there is one
        c.images.select_default_output()
        c.changed("layers")


def labels_name(c: Any, image: Any) -> str:
    """The default output's name for ``image``: "<image> SAM labels", or, for channel layers
    made from one layer's channel axis, "<that layer> SAM labels"."""
    return f"{c.channels.named_after(image).name}{LABELS_SUFFIX}"
