"""Slice linking in two steps: overlaps between neighbouring slices, then one id per object.

:func:`~napari_sam.workflows.segment.link_slices` (the rule is described
there) is written on these two pieces so that a cluster can compute the
overlaps of every pair of slices in parallel (:func:`overlap_pairs`, pixels in,
a short table out) and run only the cheap, sequential id assignment
(:class:`SliceLinker`) in one place, with exactly the same result.

Ids within a slice may be any positive integers ("raw" ids: each slice's own
numbering); a ``(slice, raw id)`` is one object.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["Pair", "SliceLinker", "offset_luts", "overlap_pairs", "plane_areas"]

#: An overlap worth linking: ``(IoU, raw id in the previous slice, raw id in this slice)``.
Pair = tuple[float, int, int]


def plane_areas(plane: np.ndarray) -> dict[int, int]:
    """Pixels per object id (0 = background is left out) of a 2D label plane."""
    ids, counts = np.unique(plane[plane > 0], return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts)}


def overlap_pairs(
    prev: np.ndarray,
    cur: np.ndarray,
    iou_threshold: float,
    prev_areas: Mapping[int, int] | None = None,
    cur_areas: Mapping[int, int] | None = None,
) -> list[Pair]:
    """Every pair of objects of two slices whose IoU is at least ``iou_threshold``.

    Parameters
    ----------
    prev, cur : ndarray ``(H, W)`` of non-negative integers
        Label planes of the previous and of this slice (any id numbering).
    iou_threshold : float in (0, 1]
    prev_areas, cur_areas : dict, optional
        :func:`plane_areas` of the planes, if already known.

    Returns
    -------
    list of (iou, prev id, cur id)
    """
    prev_areas = plane_areas(prev) if prev_areas is None else prev_areas
    cur_areas = plane_areas(cur) if cur_areas is None else cur_areas
    if not prev_areas or not cur_areas:
        return []
    both = (prev > 0) & (cur > 0)
    if not both.any():
        return []
    aa = prev[both].astype(np.int64)
    bb = cur[both].astype(np.int64)
    base = int(bb.max()) + 1
    codes, counts = np.unique(aa * base + bb, return_counts=True)
    pairs: list[Pair] = []
    for p, c, n in zip((codes // base).tolist(), (codes % base).tolist(), counts.tolist()):
        iou = n / (prev_areas[p] + cur_areas[c] - n)
        if iou >= iou_threshold:
            pairs.append((iou, p, c))
    return pairs


class SliceLinker:
    """Give linked objects one id, slice after slice (greedy IoU matching, one to one).

    Feed it the slices in order with :meth:`add`: the raw ids of the slice and
    its :func:`overlap_pairs` with the previous slice fed. Pairs are taken from
    the highest IoU down (ties: the smaller final id of the previous object,
    then the smaller raw id of this one) while neither object is matched; the
    others get new ids ``1, 2, ...`` in order of first appearance (slice, then
    raw id).
    """

    def __init__(self) -> None:
        self.next_id = 1
        self._prev: dict[int, int] = {}  # raw id of the previous slice -> final id

    def add(self, ids: Iterable[int], pairs: Sequence[Pair] = ()) -> dict[int, int]:
        """Final ids of one slice's objects: ``raw id -> final id``."""
        new_of: dict[int, int] = {}
        ranked = sorted((-iou, self._prev[p], c) for iou, p, c in pairs)
        taken: set[int] = set()
        for _, p, c in ranked:
            if p in taken or c in new_of:
                continue
            taken.add(p)
            new_of[c] = p
        for c in sorted(int(i) for i in ids):
            if c not in new_of:
                new_of[c] = self.next_id
                self.next_id += 1
        self._prev = new_of
        return new_of

    @property
    def n_objects(self) -> int:
        """Ids given so far."""
        return self.next_id - 1


def offset_luts(counts: Sequence[int]) -> list[int]:
    """Unlinked stacks: the offset of each slice's ids (``1..n`` per slice) in the stack.

    Slice ``i``'s ids become ``id + offsets[i]``, so ids are unique in the stack
    and numbered in slice order.
    """
    offsets, total = [], 0
    for n in counts:
        offsets.append(total)
        total += int(n)
    return offsets
