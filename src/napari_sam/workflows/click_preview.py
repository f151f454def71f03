"""The preview of one-click-per-cell objects: where masks overlap, the nearest click wins.

In one-click mode every click is its own object
(:func:`~napari_sam.workflows.interactive.group_clicks`), so neighbouring
cells are predicted independently and their masks can overlap. The ordinary
preview (:func:`~napari_sam.workflows.interactive.compose_preview`)
gives a contested pixel to the earlier object, so the order of the clicks
would decide the border between two touching cells and a later click could be
swallowed entirely. :func:`compose_click_preview` instead gives each pixel
claimed by several masks to the object whose **anchor** (its click; a box
object's box centre) is nearest in pixels, like a Voronoi split of the
contested region; at equal distance the earlier object keeps it. A pixel
claimed by one mask goes to that object. Work is done in each mask's bounding
window, so memory stays at two plane-sized arrays whatever the number of objects.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napari_sam.workflows.labels import dtype_for_ids

__all__ = ["anchors_of", "compose_click_preview"]


def anchors_of(objects: Sequence[object]) -> np.ndarray:
    """``(N, 2)`` (row, col) anchor of each :class:`~napari_sam.workflows.prompts.ObjectPrompt`.

    The first positive point (SAM ``(x, y)`` flipped to row, col); for an
    object without a positive point, the centre of its box; NaN if neither.
    """
    out = np.full((len(objects), 2), np.nan)
    for i, obj in enumerate(objects):
        coords = getattr(obj, "point_coords", None)
        labels = getattr(obj, "point_labels", None)
        if coords is not None and labels is not None:
            positive = np.flatnonzero(np.asarray(labels) == 1)
            if positive.size:
                x, y = np.asarray(coords, float)[positive[0]]
                out[i] = (y, x)
                continue
        box = getattr(obj, "box", None)
        if box is not None:
            x0, y0, x1, y1 = np.asarray(box, float).reshape(4)
            out[i] = ((y0 + y1) / 2, (x0 + x1) / 2)
    return out


def compose_click_preview(
    masks: Sequence[np.ndarray],
    anchors_rc: np.ndarray,
    plane_shape: Sequence[int],
    dtype: object = np.uint8,
    offsets: Sequence[tuple[int, int]] | None = None,
) -> np.ndarray:
    """Label plane with object ``i + 1`` on ``masks[i]``; overlaps go to the nearest anchor.

    Parameters
    ----------
    masks : sequence of ndarray ``(H, W)`` bool
    anchors_rc : ndarray ``(N, 2)``
        (row, col) of each object's anchor (:func:`anchors_of`); a NaN anchor
        loses every contested pixel.
    plane_shape : (H, W)
    dtype : dtype-like
        Widened when it cannot hold ``len(masks)`` ids.
    offsets : sequence of (row, col), optional
        Where each mask's top-left pixel lies in the plane, for masks smaller than the
        plane (a tiled plane's window masks); default every mask covers the whole plane.

    Returns
    -------
    ndarray ``(H, W)``
    """
    dtype = dtype_for_ids(dtype, len(masks))
    h, w = int(plane_shape[0]), int(plane_shape[1])
    out = np.zeros((h, w), dtype=dtype)
    best = np.full((h, w), np.inf, dtype=np.float32)
    anchors = np.asarray(anchors_rc, dtype=float).reshape(-1, 2)
    for i, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=bool)
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(mask.any(axis=0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        local = mask[r0:r1, c0:c1]
        if offsets is not None:
            oy, ox = (int(v) for v in offsets[i])
            r0, r1, c0, c1 = r0 + oy, r1 + oy, c0 + ox, c1 + ox
        ar, ac = anchors[i]
        if np.isfinite(ar) and np.isfinite(ac):
            rr = (np.arange(r0, r1, dtype=np.float32) - np.float32(ar))[:, None]
            cc = (np.arange(c0, c1, dtype=np.float32) - np.float32(ac))[None, :]
            dist = rr * rr + cc * cc
        else:
            dist = np.full((r1 - r0, c1 - c0), np.finfo(np.float32).max, np.float32)
        window = (slice(r0, r1), slice(c0, c1))
        win_best, win_out = best[window], out[window]
        take = local & (dist < win_best)
        win_best[take] = dist[take]
        win_out[take] = i + 1
    return out
