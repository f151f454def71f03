"""Several fluorescence channels -> the one RGB image SAM sees.

SAM takes one 8-bit RGB image. A multichannel microscopy image (nuclei in one
channel, membranes in another, ...) is shown to SAM by choosing **one to three
channels** and putting them into SAM's input slots in order:

==========  =======  =======  =======
channels    red      green    blue
==========  =======  =======  =======
``[a]``     a        a        a        (grayscale, as a single-channel image)
``[a, b]``  a        b        0        (blue slot black)
``[a, b, c]`` a      b        c
==========  =======  =======  =======

Each chosen channel is scaled to 0–255 with **its own contrast limits**, as
napari shows it in its own channel layer (``channel_axis``): values at or below
the channel's lower limit become 0, at or above its upper limit 255
(:func:`~napari_sam.workflows.image.to_sam_rgb`). So what the user sees in each
channel layer is what SAM gets in that channel's slot.

Channels come either from one array with a channel axis (``(C, ...)``, or
any ``channel_axis``) or from a list of per-channel arrays (the layers napari
creates with ``channel_axis``), which must then all have the same shape.

No torch and no napari here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_sam.errors import ImageFormatError
from napari_sam.workflows.image import to_sam_rgb

__all__ = [
    "MAX_CHANNELS",
    "channels_to_rgb",
    "check_channel_arrays",
    "check_channels",
    "check_contrasts",
    "flat_contrast",
]

#: SAM's input has three colour slots.
MAX_CHANNELS = 3


def check_channels(channels: Sequence[int] | int, n_channels: int) -> tuple[int, ...]:
    """The chosen channels as a tuple of non-negative ints, checked against ``n_channels``.

    Channels are counted from 0 (napari's channel slider). Negative numbers
    count from the end, as in Python (``-1`` is the last channel).

    Raises
    ------
    ImageFormatError
        For no channel, more than :data:`MAX_CHANNELS`, a channel that does not
        exist, or one chosen twice.
    """
    if isinstance(channels, (int, np.integer)):
        channels = [int(channels)]
    chosen = list(channels)
    if not 1 <= len(chosen) <= MAX_CHANNELS:
        raise ImageFormatError(
            f"Choose 1 to {MAX_CHANNELS} channels for SAM's red, green and blue inputs; "
            f"{len(chosen)} were chosen."
        )
    out = []
    for c in chosen:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
            raise ImageFormatError(f"Channels are given by number (0, 1, ...); got {c!r}.")
        k = int(c) + n_channels if int(c) < 0 else int(c)
        if not 0 <= k < n_channels:
            raise ImageFormatError(
                f"Channel {int(c)} does not exist: the image has {n_channels} channel"
                f"{'s' if n_channels != 1 else ''}, numbered 0 to {n_channels - 1}."
            )
        out.append(k)
    if len(set(out)) != len(out):
        raise ImageFormatError(
            f"Each channel can be chosen once; got {', '.join(str(c) for c in chosen)}."
        )
    return tuple(out)


def check_contrasts(
    contrasts: Sequence[Sequence[float] | None] | None, n: int
) -> tuple[tuple[float, float] | None, ...]:
    """One ``(low, high)`` per chosen channel (``None`` entries: automatic), checked.

    ``contrasts`` may be ``None`` (all automatic), one pair per channel, or a
    flat sequence of ``2 * n`` numbers.

    Raises
    ------
    ImageFormatError
        For a count that does not match the channels, or limits that are not
        two finite numbers with low <= high.
    """
    if contrasts is None:
        return (None,) * n
    items = list(contrasts)
    if (
        len(items) == 2 * n
        and all(isinstance(v, (int, float, np.integer, np.floating)) for v in items)
    ):
        items = [items[2 * i : 2 * i + 2] for i in range(n)]
    if len(items) != n:
        raise ImageFormatError(
            f"Give one pair of contrast limits (low, high) per chosen channel: {n} channel"
            f"{'s' if n != 1 else ''}, {len(items)} pair{'s' if len(items) != 1 else ''}."
        )
    out: list[tuple[float, float] | None] = []
    for i, pair in enumerate(items):
        if pair is None:
            out.append(None)
            continue
        values = np.asarray(pair, dtype=float).ravel()
        if values.size != 2 or not np.isfinite(values).all() or values[0] > values[1]:
            raise ImageFormatError(
                f"The contrast limits of channel slot {i + 1} must be two finite numbers "
                f"low <= high, got {list(np.asarray(pair).ravel())}."
            )
        out.append((float(values[0]), float(values[1])))
    return tuple(out)


def check_channel_arrays(arrays: Sequence[Any]) -> tuple[int, ...]:
    """The common shape of per-channel arrays (napari's channel layers).

    Raises
    ------
    ImageFormatError
        If there is no array or the arrays differ in shape.
    """
    arrays = list(arrays)
    if not arrays:
        raise ImageFormatError("No channel was given; give at least one channel image.")
    shapes = [tuple(int(s) for s in getattr(a, "shape", np.shape(a))) for a in arrays]
    for i, shape in enumerate(shapes[1:], start=1):
        if shape != shapes[0]:
            raise ImageFormatError(
                f"Channel {i} has shape {shape} but channel 0 has shape {shapes[0]}; "
                "all channels of an image must have the same shape."
            )
    return shapes[0]


def channels_to_rgb(
    planes: Sequence[np.ndarray], contrasts: Sequence[Sequence[float] | None]
) -> np.ndarray:
    """Put 1–3 channel planes into SAM's RGB input, each with its own contrast limits.

    Parameters
    ----------
    planes : sequence of ndarray ``(H, W)``
        The chosen channels' planes in slot order (red, green, blue), any real dtype.
    contrasts : sequence of (low, high) or None
        One per plane; ``None`` uses the robust automatic limits of
        :func:`~napari_sam.workflows.image.to_sam_rgb`.

    Returns
    -------
    ndarray ``(H, W, 3)`` uint8
        One channel: that channel in all three slots (exactly what
        :func:`~napari_sam.workflows.image.to_sam_rgb` gives for it alone);
        two: red and green, blue 0; three: red, green, blue.
    """
    planes = [np.asarray(p) for p in planes]
    if not 1 <= len(planes) <= MAX_CHANNELS:
        raise ImageFormatError(
            f"Choose 1 to {MAX_CHANNELS} channels for SAM's input; got {len(planes)}."
        )
    limits = check_contrasts(list(contrasts), len(planes))
    shape = planes[0].shape
    for i, p in enumerate(planes):
        if p.ndim != 2:
            raise ImageFormatError(
                f"Each channel plane must be 2D (H, W); channel slot {i + 1} has shape {p.shape}."
            )
        if p.shape != shape:
            raise ImageFormatError(
                f"The channel planes differ in shape ({shape} and {p.shape}); all channels "
                "of an image must have the same shape."
            )
    if len(planes) == 1:
        return to_sam_rgb(planes[0], limits[0])
    out = np.zeros((*shape, 3), dtype=np.uint8)
    for slot, (plane, lim) in enumerate(zip(planes, limits)):
        out[:, :, slot] = to_sam_rgb(plane, lim)[:, :, 0]
    return out


def flat_contrast(contrasts: Sequence[tuple[float, float]]) -> tuple[float, ...]:
    """``[(lo0, hi0), (lo1, hi1)]`` -> ``(lo0, hi0, lo1, hi1)`` (an embedding key's contrast)."""
    out: list[float] = []
    for lo, hi in contrasts:
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ImageFormatError(f"Contrast limits must be finite, got ({lo}, {hi}).")
        out += [float(lo), float(hi)]
    return tuple(out)
