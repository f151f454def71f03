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


def describe_stop(stop: Stop, settings: PropagationSettings) -> str:
    """Why an object stopped in one direction, with the slice and the numbers."""
    z = stop.slice
    if stop.reason == "range_end" or z is None:
        return "reached the end of the slice range"
    if stop.reason == "empty":
        return f"the mask vanished at slice {z}"
    if stop.reason == "small":
        area = "" if stop.area is None else f" to {stop.area} pixels"
        return f"the mask shrank{area} at slice {z} (minimum area {settings.min_area})"
    if stop.reason == "low_score":
        score = "" if stop.score is None else f" {stop.score:.2f}"
        return (
            f"SAM's predicted IoU{score} was below the minimum {settings.min_score:.2f} "
            f"at slice {z}"
        )
    if stop.reason == "low_overlap":
        overlap = "" if stop.overlap is None else f" {stop.overlap:.2f}"
        return (
            f"the overlap with the previous slice's mask{overlap} was below the minimum "
            f"{settings.min_overlap:.2f} at slice {z}"
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
) -> str:
    """One paragraph per object (``ids[i]`` is object ``i``'s id, None if nothing was
    written for it), from ``labels`` after the write."""
    lines = []
    data = labels.data
    for obj, oid in zip(result.objects, ids):
        lo, hi = obj.extent
        head = f"Object {oid}" if oid is not None else "An object"
        ends = []
        for name, direction in (("up", 1), ("down", -1)):
            stop = obj.stops.get(direction)
            if stop is not None:
                ends.append(f"{name}: {describe_stop(stop, settings)}")
        line = f"{head}: slices {lo}–{hi}; " + "; ".join(ends) + "."
        if oid is None:
            line += " Nothing was written: it lies on existing objects."
        else:
            blocked = overlapped_objects(data, obj.masks, oid)
            if blocked and not overwrite:
                by_object: dict[int, list[int]] = {}
                for z, other in blocked.items():
                    by_object.setdefault(other, []).append(z)
                parts = [f"object {k} at slice{'s' if len(zs) > 1 else ''} {_ranges(zs)}"
                         for k, zs in by_object.items()]
                line += (
                    " Not written where it would overwrite " + "; ".join(parts)
                    + " (tick “Overwrite existing objects” to replace them)."
                )
        lines.append(line)
    return "\n".join(lines)
