"""Channels of ONE image layer, e.g. a (C, Z, Y, X) TIFF opened without ``channel_axis``
(both docks).

napari's reader opens a multichannel file as one layer whose channel axis is a
slider. The docks' channel choice works on napari's channel layers
(:mod:`~napari_sam._widgets.channel_layers`), so choosing channels of one layer
(its channel **axis**, a leading axis of the layer, and 1-3 channel numbers,
counted from 0 as on napari's slider) makes those layers
(:func:`split_channel_layers`): one Image layer per chosen channel, a view of
the layer's data without the channel axis (lazy data stays lazy), named
``"<image> channel <k>"``, coloured as SAM's slot (red, green, blue; gray for
one channel) and blended additively, with its own contrast limits. The
original layer is hidden, not removed, so what the user sees is what SAM sees;
when its channel axis is not its first, it is shown channels first
(:mod:`~napari_sam._widgets.axis_order`), so that the channel layers line up
with it. Choosing again reuses those layers.

Axes here are the layer's own axes (``layer.data`` order), not the viewer's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from napari.layers import Image

from napari_sam._widgets.axis_order import channels_first, for_views
from napari_sam.errors import ImageFormatError
from napari_sam.workflows.channels import check_channels

__all__ = [
    "CHANNEL_KEY",
    "MAX_OFFERED",
    "channel_axes",
    "channel_source",
    "channels_likely",
    "guess_channel_axis",
    "named_channel_axis",
    "offered_axes",
    "parse_channels",
    "split_channel_layers",
    "split_for",
]

_CHANNEL_LABELS = ("c", "ch", "channel", "channels")
#: Unnamed axes with at most this many entries are offered as channel axes.
MAX_OFFERED = 16
_SLOT_COLOURS = ("red", "green", "blue")
#: The metadata entry of a channel layer made here: its channel number in the source layer.
CHANNEL_KEY = "napari_sam_channel"


def channel_axes(layer: Any) -> list[tuple[int, str, int]]:
    """The axes of ``layer`` that can hold channels: ``(axis, label, size)`` of each axis
    before the plane's two (none for an RGB or 2D layer, or a multiscale one)."""
    if not isinstance(layer, Image) or layer.rgb or getattr(layer, "multiscale", False):
        return []
    shape = tuple(layer.data.shape)
    labels = list(getattr(layer, "axis_labels", ()) or ())
    if len(labels) != len(shape):
        labels = [str(i) for i in range(len(shape))]
    # napari's default labels count from the end ("-3"); a user's label names the axis
    named = [str(v) if not str(v).lstrip("-").isdigit() else str(i) for i, v in enumerate(labels)]
    return [(axis, named[axis], int(shape[axis])) for axis in range(len(shape) - 2)]


def _named_channels(label: str) -> bool:
    return label.strip().lower() in _CHANNEL_LABELS


def offered_axes(layer: Any) -> list[tuple[int, str, int]]:
    """The axes of :func:`channel_axes` the dock offers as channel axes: those named c / ch /
    channel(s), and those of at most :data:`MAX_OFFERED` entries (a 60-slice z-stack is not
    offered; its channels would be a guess)."""
    return [a for a in channel_axes(layer) if _named_channels(a[1]) or a[2] <= MAX_OFFERED]


def named_channel_axis(layer: Any) -> int | None:
    """The first axis of ``layer`` labelled c / ch / channel(s) (e.g. by a reader that knows
    the file's axes), else None."""
    for axis, label, _ in channel_axes(layer):
        if _named_channels(label):
            return axis
    return None


#: A first axis of at most this many entries, before a stack's three, may well hold channels.
FEW_CHANNELS = 4


def channels_likely(layer: Any) -> bool:
    """Whether ``layer`` probably holds channels on an axis of its own: one labelled c /
    channel, or a first axis of at most :data:`FEW_CHANNELS` entries before a stack's
    (e.g. a (2, Z, Y, X) TIFF opened as it is, which napari shows as time points)."""
    if named_channel_axis(layer) is not None:
        return True
    axes = channel_axes(layer)
    return len(axes) >= 2 and axes[0][2] <= FEW_CHANNELS


def guess_channel_axis(layer: Any) -> int | None:
    """The offered axis labelled c / ch / channel(s), else the shortest offered axis (None:
    none offered)."""
    axes = offered_axes(layer)
    if not axes:
        return None
    named = named_channel_axis(layer)
    return named if named is not None else min(axes, key=lambda a: (a[2], a[0]))[0]


def parse_channels(text: str) -> list[int] | None:
    """Channel numbers typed by the user ("1 2", "1, 2"); None for an empty field (all).

    Raises
    ------
    ImageFormatError
        For anything but whole numbers.
    """
    words = [w for w in re.split(r"[\s,;]+", text.strip()) if w]
    if not words:
        return None
    try:
        return [int(w) for w in words]
    except ValueError:
        raise ImageFormatError(
            f"“{text.strip()}” is not a list of channel numbers; type them separated by "
            "spaces, counted from 0 as on napari's slider, e.g. 1 2."
        ) from None


def _without(values: Sequence[Any], axis: int) -> list[Any]:
    return [v for i, v in enumerate(values) if i != axis]


def _view(data: Any, axis: int, channel: int) -> Any:
    """Channel ``channel`` of ``data`` along ``axis``: a numpy view, lazy for dask; other
    array types (zarr) go through dask so that nothing is read yet."""
    return for_views(data)[(slice(None),) * axis + (int(channel),)]


def split_channel_layers(
    viewer: Any, layer: Any, axis: int, channels: Sequence[int] | None
) -> list[Any]:
    """Channel layers of ``layer`` along its ``axis``: the chosen ``channels`` (None: all of
    them, when there are at most three), added to ``viewer`` after ``layer`` (or reused when
    already there) in slot order; ``layer`` is hidden.

    Raises
    ------
    ImageFormatError
        One sentence, and nothing changed, for a layer without such an axis, an axis that is
        not before the plane's two, or a wrong channel choice.
    """
    axes = {a: (label, size) for a, label, size in channel_axes(layer)}
    if not axes:
        raise ImageFormatError(
            f"“{getattr(layer, 'name', layer)}” has no axis to take channels from (it is 2D, "
            "RGB or multiscale); choose channel layers in the layer list instead."
        )
    if axis not in axes:
        raise ImageFormatError(
            f"Axis {axis} of “{layer.name}” cannot hold channels: it is one of the two axes "
            "of the plane; choose one of the axes with a slider."
        )
    label, n_channels = axes[axis]
    if channels is None:
        if n_channels > 3:
            raise ImageFormatError(
                f"“{layer.name}” has {n_channels} channels on axis {label}; type 1 to 3 of "
                f"them (0 to {n_channels - 1}), e.g. 1 2."
            )
        channels = list(range(n_channels))
    try:
        chosen = check_channels(list(channels), n_channels)
    except ImageFormatError as exc:
        raise ImageFormatError(f"“{layer.name}”, axis {label}: {exc}") from None
    if channels_first(layer, axis) is not None:  # so that the channel layers line up with it
        axis = 0
    scale = _without(layer.scale, axis)
    translate = _without(layer.translate, axis)
    named = [str(v) for v in _without(list(layer.axis_labels), axis)]
    # the user's axis names go with the data; napari's defaults ("-3", ...) are napari's to give
    labels = None if any(v.lstrip("-").isdigit() for v in named) else named
    made = []
    for slot, k in enumerate(chosen):
        name = f"{layer.name} channel {k}"
        data = _view(layer.data, axis, k)
        old = viewer.layers[name] if name in viewer.layers else None
        if isinstance(old, Image) and tuple(old.data.shape) == tuple(data.shape):
            old.metadata[CHANNEL_KEY] = int(k)
            made.append(old)
            continue
        colour = "gray" if len(chosen) == 1 else _SLOT_COLOURS[slot]
        new = Image(data, name=name, scale=scale, translate=translate, colormap=colour,
                    blending="additive", axis_labels=labels, metadata={CHANNEL_KEY: int(k)})
        viewer.layers.insert(viewer.layers.index(layer) + 1 + slot, new)
        made.append(new)
    layer.visible = False
    return made


def channel_source(c: Any) -> Any:
    """The layer whose channel axis a dock's controller ``c`` (with ``viewer``, ``image`` and
    ``channels``, a :class:`~napari_sam._widgets.channel_layers.ChannelLayers`) offers: the
    layer the channels in use were made from, else the dock's image (None: no image)."""
    source = c.channels.source
    if source is not None and c.channels.active_for(c.image) and source in c.viewer.layers:
        return source
    return c.image


def split_for(c: Any, axis: int, channels: Sequence[int] | str | None) -> tuple[Any, list[Any]]:
    """The "channel axis" command of a dock's controller ``c`` (see :func:`channel_source`):
    the layer whose ``axis`` holds the channels, and the channel layers made (or reused) for
    ``channels`` (numbers, typed text such as "1 2", or None: all, at most three).

    Raises
    ------
    ImageFormatError
        No image, or a wrong axis or channel choice (one sentence; nothing changed).
    """
    source = channel_source(c)
    if source is None:
        raise ImageFormatError("Open or choose an image layer first, then choose its channels.")
    if isinstance(channels, str):
        channels = parse_channels(channels)
    return source, split_channel_layers(c.viewer, source, int(axis), channels)
