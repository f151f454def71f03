"""What a propagation did, object by object, in words: why each one stopped, and where.

:func:`propagation_summary` is the text the dock keeps visible until the next
run and shows as one notification: for each object its id, the slices written,
the true reason it stopped going up and going down (the end of the slice
range; SAM's predicted IoU below the minimum; the mask vanished or shrank; too
little overlap with the previous slice) with the slice, and the slices where it
would have overwritten another object.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_sam.workflows.propagation import PropagationResult, PropagationSettings, Stop

__all__ = ["describe_stop", "overlapped_objects", "propagation_summary"]


def _at(z: int, axis: str | None) -> str:
    """``"slice 4"`` along a stack's slices, ``"t=4"`` along axis ``"t"`` of an nD image."""
    return f"slice {z}" if axis is None else f"{axis}={z}"


def describe_stop(stop: Stop, settings: PropagationSettings, axis: str | None = None) -> str:
    """Why an object stopped in one direction, with the position and the numbers.

    ``axis``: the name of the axis followed in an nD image (e.g. ``"t"``); None for
    the slices of a stack."""
    z = stop.slice
    if stop.reason == "range_end" or z is None:
        return "reached the end of the slice range" if axis is None else (
            f"reached the end of the {axis} range")
    where = _at(z, axis)
    if stop.reason == "empty":
        return f"the mask vanished at {where}"
    if stop.reason == "small":
        area = "" if stop.area is None else f" to {stop.area} pixels"
        return f"the mask shrank{area} at {where} (minimum area {settings.min_area})"
    if stop.reason == "low_score":
        score = "" if stop.score is None else f" {stop.score:.2f}"
        return (
            f"SAM's predicted IoU{score} was below the minimum {settings.min_score:.2f} "
            f"at {where}"
        )
    if stop.reason == "low_overlap":
        overlap = "" if stop.overlap is None else f" {stop.overlap:.2f}"
        previous = "the previous slice's mask" if axis is None else "the previous mask"
        return (
            f"the overlap with {previous}{overlap} was below the minimum "
            f"{settings.min_overlap:.2f} at {where}"
        )
    return f"{stop.describe()}"


def overlapped_objects(
    labels: np.ndarray, masks: dict[int, np.ndarray], oid: int
) -> dict[int, int]:
    """Slice -> the other object most under ``oid``'s mask there (after writing), where any."""
    found = {}
    for z in sorted(masks):
        under = np.asarray(labels[z])[masks[z]]
        others = under[(under != 0) & (under != oid)]
        if others.size:
            values, counts = np.unique(others, return_counts=True)
            found[z] = int(values[int(np.argmax(counts))])
    return found


def _unit(n: int, axis: str | None) -> str:
    """``"slice"``/``"slices"`` for ``n`` slices of a stack, the axis name of an nD image."""
    return f"slice{'s' if n > 1 else ''}" if axis is None else axis


def _ranges(zs: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1–3, 7"``."""
    parts, start = [], None
    for i, z in enumerate(zs):
        if start is None:
            start = z
        if i + 1 == len(zs) or zs[i + 1] != z + 1:
            parts.append(str(start) if start == z else f"{start}–{z}")
            start = None
    return ", ".join(parts)


def propagation_summary(
    result: PropagationResult,
    ids: Sequence[int | None],
    labels: Any,
    settings: PropagationSettings,
    overwrite: bool,
    axis: str | None = None,
) -> str:
    """One paragraph per object (``ids[i]`` is object ``i``'s id, None if nothing was
    written for it), from ``labels`` after the write (positions along the followed
    line: slices, or axis ``axis`` of an nD image, e.g. ``"t"``)."""
    lines = []
    data = labels.data
    for obj, oid in zip(result.objects, ids):
        lo, hi = obj.extent
        head = f"Object {oid}" if oid is not None else "An object"
        ends = []
        for name, direction in (("up", 1), ("down", -1)):
            stop = obj.stops.get(direction)
            if stop is not None:
                ends.append(f"{name}: {describe_stop(stop, settings, axis)}")
        span = f"slices {lo}–{hi}" if axis is None else f"{axis} {lo}–{hi}"
        line = f"{head}: {span}; " + "; ".join(ends) + "."
        if oid is None:
            line += " Nothing was written: it lies on existing objects."
        else:
            blocked = overlapped_objects(data, obj.masks, oid)
            if blocked and not overwrite:
                by_object: dict[int, list[int]] = {}
                for z, other in blocked.items():
                    by_object.setdefault(other, []).append(z)
                parts = [f"object {k} at {_unit(len(zs), axis)} {_ranges(zs)}"
                         for k, zs in by_object.items()]
                line += (
                    " Not written where it would overwrite " + "; ".join(parts)
                    + " (tick “Overwrite existing objects” to replace them)."
                )
        lines.append(line)
    return "\n".join(lines)
