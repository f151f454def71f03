"""Interactive prompts on tiled planes: which tile answers, and objects larger than a tile.

The rule
--------
Each object (its points and box, :class:`~napari_sam.workflows.prompts.ObjectPrompt`,
in SAM's ``(x, y)`` pixel coordinates of the whole plane) is predicted in one
**window** of the plane, whose embedding comes from
:class:`~napari_sam.workflows.tiled_embeddings.TiledEmbeddings`:

1. **Points only**: among the tiles whose outer window (tile + halo) holds all
   the positive points, the one whose *inner* region holds most of the
   object's points; ties go to the tile whose inner centre is nearest to the
   positive points' centroid. A click near a tile border thus goes to the tile
   it falls in, and the halo shows SAM the other side of the border.
2. **A box** (with or without points): among the tiles whose outer window
   holds the whole box (and the positive points), the one whose inner region
   overlaps the box most (ties: nearest inner centre). A box that no outer
   window holds, because it spans tiles, gets a **window of its own** around
   it (the box plus a halo of margin, at least one tile's outer size,
   snapped to a 32-pixel grid so that small edits reuse it). We chose a window
   over cutting the box into per-tile pieces because a box prompt tells SAM
   the extent of *one* object; pieces of it would describe pieces of the
   object, each segmented without seeing the rest, and the seams would not
   match.
3. Points of the object outside the chosen window (negative points far away)
   cannot be shown to SAM there and are left out of that prediction.

Objects crossing a tile border: an object whose centre lies in a tile's inner
region and whose radius is at most the halo lies wholly inside that tile's
outer window and is predicted whole, from one embedding, with no seam. When a
predicted mask touches the edge of its window where that edge is not the
image border, the object is larger than the window shows: it is predicted
again in a window **centred on the object** (its mask's bounding box, widened
on the cut sides by half its size and by the halo), encoded on demand and
cached like a tile; this repeats at most ``max_grow`` (2) times. A mask that
fills nearly all of its window (90 %) is SAM finding no boundary at all and is
not grown. We chose a window around the object over merging predictions from
each tile the object touches: a click in one tile is not a prompt for the
decoder of its neighbour unless it lies in the neighbour's halo, and masks of
the same object predicted from different contexts disagree along their
overlap, which would leave seams or notches exactly at tile borders. One
window, one prediction, no seam; the cost is one extra encoding, only for
objects larger than the halo. A window of an object's own spans at most four
tiles' outer windows along each axis (4096 pixels with the default tiles; SAM
sees it shrunk fourfold), and only the mask shown is brought to the window's
full resolution
(:func:`~napari_sam.workflows.interactive.predict_objects_batched`).

Masks are returned as :class:`TiledMask` (the window's mask and where the
window lies, in image row/column coordinates); :func:`compose_tiled_preview`
paints them into one label plane at full resolution. No other full-plane copy
is made.

:class:`TiledSlicePredictor` is the slice predictor of
:func:`~napari_sam.workflows.propagation.propagate_masks` on a tiled stack
(:func:`propagate_tiled`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_sam.errors import Cancelled, PropagationError
from napari_sam.runtime.progress import CancelCheck, ProgressCallback, notify
from napari_sam.workflows.embeddings import DiskCache, EmbeddingStore
from napari_sam.workflows.interactive import ObjectMask, PredictionCache, predict_objects_batched
from napari_sam.workflows.prompts import ObjectPrompt
from napari_sam.workflows.propagation import (
    MaskPrompt,
    PropagationResult,
    PropagationSettings,
    propagate_masks,
)
from napari_sam.workflows.tiled_embeddings import TiledEmbeddings
from napari_sam.workflows.tiling import Tile, TileGrid, Tiling, Window

__all__ = [
    "MAX_GROW",
    "Route",
    "TiledMask",
    "TiledPromptPredictor",
    "TiledSlicePredictor",
    "compose_tiled_preview",
    "cut_sides",
    "propagate_tiled",
    "route_object",
    "window_around",
]

#: How many times a cut object's window may be grown.
MAX_GROW = 2
#: Window corners are snapped to multiples of this many pixels (cache reuse).
SNAP = 32
#: A window of an object's own is at most this many tiles' outer windows along each axis
#: (SAM then sees it shrunk this much; an object larger than that stays cut).
MAX_WINDOW_FACTOR = 4
#: A mask filling this fraction of its window is not grown (SAM found no boundary).
FULL_WINDOW_FRACTION = 0.9


# --------------------------------------------------------------------------- routing
@dataclass(frozen=True)
class Route:
    """Where an object is predicted: a tile's outer window, or a window of its own."""

    window: Window
    tile: Tile | None = None


def _xy_bounds(xy: np.ndarray) -> Window:
    """The pixels spanned by points ``(x, y)`` (rounded to the nearest pixel)."""
    rc = np.rint(np.asarray(xy, dtype=float)[:, ::-1]).astype(int)
    return Window(int(rc[:, 0].min()), int(rc[:, 1].min()),
                  int(rc[:, 0].max()) + 1, int(rc[:, 1].max()) + 1)


def _union(a: Window | None, b: Window | None) -> Window | None:
    if a is None:
        return b
    if b is None:
        return a
    return Window(min(a.y0, b.y0), min(a.x0, b.x0), max(a.y1, b.y1), max(a.x1, b.x1))


def _positive(obj: ObjectPrompt) -> np.ndarray:
    if obj.point_coords is None:
        return np.zeros((0, 2))
    xy = np.asarray(obj.point_coords, dtype=float).reshape(-1, 2)
    labels = np.asarray(obj.point_labels).reshape(-1)
    pos = xy[labels == 1]
    return pos if len(pos) else xy


def object_extent(obj: ObjectPrompt) -> Window:
    """The pixels spanned by an object's box and positive points."""
    region = None
    pos = _positive(obj)
    if len(pos):
        region = _xy_bounds(pos)
    if obj.box is not None:
        x0, y0, x1, y1 = np.asarray(obj.box, dtype=float).reshape(4)
        region = _union(region, _xy_bounds(np.array([[x0, y0], [x1, y1]])))
    if region is None:
        raise ValueError("An object needs a box or at least one point.")
    return region


def window_around(region: Window, grid: TileGrid, margin: Sequence[int] | None = None) -> Window:
    """A window holding ``region`` plus ``margin`` (default the halo) on each side.

    At least as large as a tile's outer window and at most
    :data:`MAX_WINDOW_FACTOR` times as large along each axis, centred on the
    region, moved inside the plane and snapped outwards to multiples of
    :data:`SNAP` pixels.
    """
    h, w = grid.plane_shape
    my, mx = (max(16, grid.halo[0]), max(16, grid.halo[1])) if margin is None else margin
    min_h, min_w = grid.max_outer_shape
    want_h = min(max(region.y1 - region.y0 + 2 * int(my), min_h), MAX_WINDOW_FACTOR * min_h)
    want_w = min(max(region.x1 - region.x0 + 2 * int(mx), min_w), MAX_WINDOW_FACTOR * min_w)
    cy = (region.y0 + region.y1) / 2.0
    cx = (region.x0 + region.x1) / 2.0
    y0 = int(np.floor(cy - want_h / 2.0))
    x0 = int(np.floor(cx - want_w / 2.0))
    y0 = min(max(0, y0), max(0, h - want_h))
    x0 = min(max(0, x0), max(0, w - want_w))
    y1, x1 = y0 + want_h, x0 + want_w
    y0, x0 = (y0 // SNAP) * SNAP, (x0 // SNAP) * SNAP
    y1, x1 = -(-y1 // SNAP) * SNAP, -(-x1 // SNAP) * SNAP
    return Window(y0, x0, y1, x1).clip((h, w))


def route_object(grid: TileGrid, obj: ObjectPrompt) -> Route:
    """The window an object is predicted in (the rule in the module docstring)."""
    pos = _positive(obj)
    all_xy = (
        np.zeros((0, 2)) if obj.point_coords is None
        else np.asarray(obj.point_coords, dtype=float).reshape(-1, 2)
    )
    box = None if obj.box is None else np.asarray(obj.box, dtype=float).reshape(4)
    if box is not None:
        centre_y, centre_x = (box[1] + box[3]) / 2.0, (box[0] + box[2]) / 2.0
    elif len(pos):
        centre_x, centre_y = pos.mean(axis=0)
    else:
        raise ValueError("An object needs a box or at least one point.")
    extent = object_extent(obj)
    best: tuple[float, float] | None = None
    chosen: Tile | None = None
    for tile in grid.tiles_overlapping(extent):
        outer = tile.outer
        if len(pos) and not outer.contains_xy(pos).all():
            continue
        if box is not None:
            if not outer.contains_box(box):
                continue
            primary = tile.inner.box_overlap(box)
        else:
            primary = float(tile.inner.contains_xy(all_xy).sum())
        score = (primary, -tile.inner.distance_to_centre(centre_y, centre_x))
        if best is None or score > best:
            best, chosen = score, tile
    if chosen is not None:
        return Route(chosen.outer, chosen)
    return Route(window_around(extent, grid), None)


def _in_window(obj: ObjectPrompt, window: Window) -> ObjectPrompt:
    """The object's prompts in the window's coordinates (points outside it left out)."""
    shift = np.array([window.x0, window.y0], dtype=float)
    out = ObjectPrompt()
    if obj.point_coords is not None:
        xy = np.asarray(obj.point_coords, dtype=float).reshape(-1, 2)
        labels = np.asarray(obj.point_labels).reshape(-1)
        inside = window.contains_xy(xy)
        if inside.any():
            out.point_coords = xy[inside] - shift
            out.point_labels = labels[inside]
    if obj.box is not None:
        box = np.asarray(obj.box, dtype=float).reshape(4) - np.tile(shift, 2)
        h, w = window.shape
        out.box = np.clip(box, 0.0, [w - 1, h - 1, w - 1, h - 1])
    return out


# --------------------------------------------------------------------------- masks
@dataclass
class TiledMask:
    """The mask of one object on a tiled plane.

    Attributes
    ----------
    mask : ndarray ``(h, w)`` bool
        The mask inside ``window``.
    window : Window
        Where ``mask`` lies in the plane (rows ``y0:y1``, columns ``x0:x1``).
    score : float
        SAM's predicted IoU of the mask.
    candidate, n_candidates : int
        As in :class:`~napari_sam.workflows.interactive.ObjectMask`.
    tile : int or None
        The tile whose embedding was used, or None for a window of the object's own.
    grown : int
        How many times the window was grown because the mask was cut at its edge.
    stability : float or None
        SAM's stability score of the mask.
    """

    mask: np.ndarray
    window: Window
    score: float
    candidate: int = 0
    n_candidates: int = 1
    tile: int | None = None
    grown: int = 0
    stability: float | None = None

    def full(self, plane_shape: Sequence[int]) -> np.ndarray:
        """The mask as a ``(H, W)`` bool plane (allocates a full plane)."""
        out = np.zeros(tuple(int(s) for s in plane_shape), dtype=bool)
        out[self.window.slices] = self.mask
        return out

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    def bbox(self) -> Window | None:
        """The mask's bounding box in plane coordinates (None if empty)."""
        rows = np.flatnonzero(self.mask.any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(self.mask.any(axis=0))
        w = self.window
        return Window(w.y0 + int(rows[0]), w.x0 + int(cols[0]),
                      w.y0 + int(rows[-1]) + 1, w.x0 + int(cols[-1]) + 1)


def cut_sides(mask: np.ndarray, window: Window, plane_shape: Sequence[int]) -> set[str]:
    """The sides (``"top"``, ``"bottom"``, ``"left"``, ``"right"``) where a mask is cut.

    A mask is cut where it touches an edge of its window that is not the
    image border.
    """
    h, w = int(plane_shape[0]), int(plane_shape[1])
    sides = set()
    if mask.size == 0:
        return sides
    if window.y0 > 0 and mask[0].any():
        sides.add("top")
    if window.y1 < h and mask[-1].any():
        sides.add("bottom")
    if window.x0 > 0 and mask[:, 0].any():
        sides.add("left")
    if window.x1 < w and mask[:, -1].any():
        sides.add("right")
    return sides


def _grown_window(result: TiledMask, obj: ObjectPrompt, sides: set[str], grid: TileGrid) -> Window:
    """A window centred on a cut object, extended past the sides where it was cut."""
    bbox = _union(result.bbox(), object_extent(obj)) or result.window
    bh, bw = bbox.y1 - bbox.y0, bbox.x1 - bbox.x0
    hy, hx = max(16, grid.halo[0]), max(16, grid.halo[1])
    ext_y, ext_x = max(hy, bh // 2), max(hx, bw // 2)
    region = Window(
        bbox.y0 - (ext_y if "top" in sides else 0),
        bbox.x0 - (ext_x if "left" in sides else 0),
        bbox.y1 + (ext_y if "bottom" in sides else 0),
        bbox.x1 + (ext_x if "right" in sides else 0),
    ).clip(grid.plane_shape)
    return window_around(region, grid)


def _extends(new: Window, old: Window, sides: set[str]) -> bool:
    return (
        ("top" in sides and new.y0 < old.y0)
        or ("bottom" in sides and new.y1 > old.y1)
        or ("left" in sides and new.x0 < old.x0)
        or ("right" in sides and new.x1 > old.x1)
    )


def compose_tiled_preview(
    masks: Sequence[TiledMask], plane_shape: Sequence[int], dtype: Any = np.uint8
) -> np.ndarray:
    """Label plane ``(H, W)`` with object ``i + 1`` where ``masks[i]`` is set.

    As :func:`~napari_sam.workflows.interactive.compose_preview`: where masks
    overlap, the earlier object keeps the pixel. Only each mask's window is
    touched.
    """
    out = np.zeros(tuple(int(s) for s in plane_shape), dtype=dtype)
    for i, m in enumerate(masks):
        region = out[m.window.slices]
        region[m.mask & (region == 0)] = i + 1
    return out


# --------------------------------------------------------------------------- prediction
class TiledPromptPredictor:
    """Predict objects from prompts on the tiled planes of an image.

    Parameters
    ----------
    model : Sam or SamPredictor
        The model (a given predictor is used, its current image replaced).
    embeddings : TiledEmbeddings
        The tiles, caches and contrast of the image.
    max_grow : int
        How often a cut object's window may be grown (:data:`MAX_GROW`).
    cache : PredictionCache, optional
        Masks already predicted, by window embedding and prompts: objects whose
        prompts did not change since the last prediction are not decoded again.

    Use :meth:`windows_to_encode` on the main thread to know what a prediction
    will encode (e.g. to say "encoding 2 tiles"), and :meth:`predict` in a
    worker thread.
    """

    def __init__(
        self,
        model: Any,
        embeddings: TiledEmbeddings,
        max_grow: int = MAX_GROW,
        cache: PredictionCache | None = None,
    ) -> None:
        from napari_sam.predictors.predictor import SamPredictor

        self.predictor = model if isinstance(model, SamPredictor) else SamPredictor(model)
        self.embeddings = embeddings
        self.max_grow = int(max_grow)
        self.cache = cache

    @property
    def grid(self) -> TileGrid:
        return self.embeddings.grid

    def routes(self, objects: Sequence[ObjectPrompt]) -> list[Route]:
        """Where each object is predicted first."""
        return [route_object(self.grid, obj) for obj in objects]

    def windows_to_encode(
        self, z: int | None, objects: Sequence[ObjectPrompt]
    ) -> list[Window]:
        """The windows a :meth:`predict` of ``objects`` encodes first (not cached yet).

        Windows grown for objects larger than a tile are found only while predicting.
        """
        out: list[Window] = []
        for route in self.routes(objects):
            if route.window not in out and not self.embeddings.is_cached(z, route.window):
                out.append(route.window)
        return out

    def predict_window(
        self,
        z: int | None,
        window: Window,
        objects: Sequence[ObjectPrompt],
        multimask: bool,
        candidate: int,
        should_cancel: CancelCheck | None = None,
    ) -> list[ObjectMask]:
        """SAM's masks for ``objects`` (prompts in window coordinates) in one window.

        The window's embedding is taken from the caches or encoded now; the
        objects are decoded together
        (:func:`~napari_sam.workflows.interactive.predict_objects_batched`).
        """
        embedding = self.embeddings.get(z, window, should_cancel)
        self.predictor.set_embedding(embedding)
        key = self.embeddings.key(z, window) if self.cache is not None else None
        return predict_objects_batched(
            self.predictor, objects, multimask=multimask, candidate=candidate,
            cache=self.cache, cache_key=key,
        )

    def predict(
        self,
        z: int | None,
        objects: Sequence[ObjectPrompt],
        multimask: bool = True,
        candidate: int = 0,
        *,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> list[TiledMask]:
        """One mask per object on plane ``z`` (``None`` for a 2D image).

        Parameters
        ----------
        z : int or None
        objects : sequence of ObjectPrompt
            Prompts in SAM's ``(x, y)`` pixel coordinates of the whole plane.
        multimask, candidate
            As :func:`~napari_sam.workflows.interactive.predict_objects`.
        progress : callable, optional
            Called with a Progress (unit ``"windows"``) as windows are encoded.
        should_cancel : callable, optional
            Stops an encoding (between encoder blocks, with cancel hooks
            installed) with :class:`Cancelled`; windows encoded before are kept.

        Returns
        -------
        list of TiledMask
        """
        routes = self.routes(objects)
        results: list[TiledMask | None] = [None] * len(objects)
        pending = list(range(len(objects)))
        grown = [0] * len(objects)
        plane_shape = self.embeddings.plane_shape
        done = 0
        for step in range(self.max_grow + 1):
            by_window: dict[Window, list[int]] = {}
            for i in pending:
                by_window.setdefault(routes[i].window, []).append(i)
            for window, idxs in by_window.items():
                if should_cancel is not None and should_cancel():
                    raise Cancelled(
                        "Prediction cancelled; change the prompts or the slice to predict again."
                    )
                notify(progress, done, done + len(by_window), "encoding tiles", "windows")
                local = [_in_window(objects[i], window) for i in idxs]
                masks = self.predict_window(z, window, local, multimask, candidate, should_cancel)
                tile = routes[idxs[0]].tile
                for i, m in zip(idxs, masks):
                    results[i] = TiledMask(
                        mask=m.mask, window=window, score=m.score, candidate=m.candidate,
                        n_candidates=m.n_candidates,
                        tile=None if tile is None else tile.index, grown=grown[i],
                        stability=m.stability,
                    )
                done += 1
            if step == self.max_grow:
                break
            again = []
            for i in pending:
                res = results[i]
                if res is None:
                    continue
                sides = cut_sides(res.mask, res.window, plane_shape)
                if not sides or res.area >= FULL_WINDOW_FRACTION * res.window.area:
                    continue
                new = _grown_window(res, objects[i], sides, self.grid)
                if not _extends(new, res.window, sides):
                    continue
                routes[i] = Route(new, None)
                grown[i] += 1
                again.append(i)
            if not again:
                break
            pending = again
        notify(progress, done, done, "predicting", "windows")
        return [r for r in results if r is not None]


# --------------------------------------------------------------------------- propagation
class TiledSlicePredictor:
    """The slice predictor of :func:`~napari_sam.workflows.propagation.propagate_masks` on tiles.

    Each object's prompts (a box and a point from its mask on the previous
    slice) are routed like interactive prompts (:func:`route_object`, grown
    when cut); one mask per object (no multimask). Low-resolution logits are
    specific to a tile, so none are returned (the ``use_mask`` prompt is not
    available on tiled stacks).

    ``index_of`` maps the walk's slice number to the plane's index in
    ``embeddings`` for images with more leading axes (e.g. ``lambda k: (t, k)``
    to walk along z at time point ``t``); by default the slice number is the index.
    """

    def __init__(
        self,
        model: Any,
        embeddings: TiledEmbeddings,
        max_grow: int = MAX_GROW,
        index_of: Callable[[int], Any] | None = None,
    ) -> None:
        self.tiled = TiledPromptPredictor(model, embeddings, max_grow=max_grow)
        self.index_of = index_of

    def __call__(self, z: int, prompts: list[MaskPrompt]) -> tuple[np.ndarray, np.ndarray, Any]:
        h, w = self.tiled.embeddings.plane_shape
        objects = []
        for pr in prompts:
            obj = ObjectPrompt(box=None if pr.box is None else np.asarray(pr.box, dtype=float))
            if pr.point is not None:
                obj.point_coords = np.asarray(pr.point, dtype=float).reshape(1, 2)
                obj.point_labels = np.ones(1, dtype=int)
            objects.append(obj)
        index = z if self.index_of is None else self.index_of(z)
        results = self.tiled.predict(index, objects, multimask=False)
        masks = np.zeros((len(results), h, w), dtype=bool)
        for j, res in enumerate(results):
            masks[j][res.window.slices] = res.mask
        scores = np.array([r.score for r in results], dtype=np.float32)
        return masks, scores, None


def propagate_tiled(
    model: Any,
    stack: Any,
    masks: Any,
    z: int,
    *,
    model_id: str | None = None,
    tiling: Tiling | str | None = "auto",
    embeddings: TiledEmbeddings | None = None,
    z_range: Sequence[int] | None = None,
    settings: PropagationSettings | None = None,
    contrast: Sequence[float] | None = None,
    store: EmbeddingStore | None = None,
    disk: DiskCache | str | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> PropagationResult:
    """:func:`~napari_sam.workflows.propagation.propagate` on a stack with tiled planes.

    Same rule, settings and result; each slice is predicted from the tiles
    the objects need (encoded on demand and cached). Give ``embeddings`` to
    reuse the tiles (and caches) of the interactive session; otherwise they
    are made from ``tiling``, ``contrast``, ``model_id``, ``store`` and ``disk``.

    Raises
    ------
    PropagationError
        ``settings.use_mask`` (tile logits do not carry over between
        windows), or a disk cache without ``model_id``.
    """
    if settings is not None and settings.use_mask:
        raise PropagationError(
            "The mask prompt (use_mask) is not available on tiled stacks; use the box and "
            "point prompts."
        )
    if embeddings is None:
        if disk is not None and model_id is None:
            raise PropagationError(
                "Name the model with model_id=... to use a disk cache, so that embeddings "
                "of different models are never mixed."
            )
        sam = getattr(model, "model", model)
        embeddings = TiledEmbeddings(
            sam,
            stack,
            model_id=model_id or f"unnamed-model-{id(sam):x}",
            tiling=tiling,
            contrast=contrast,
            store=store,
            disk=disk,
        )
    if not embeddings.is_stack:
        raise PropagationError("Propagation needs a 3D stack (Z, Y, X).")
    seeds = np.asarray(masks)
    if seeds.ndim in (2, 3) and seeds.shape[-2:] != embeddings.plane_shape:
        raise PropagationError(
            f"The masks have planes of shape {seeds.shape[-2:]}, but the stack's planes are "
            f"{embeddings.plane_shape}."
        )
    return propagate_masks(
        TiledSlicePredictor(model, embeddings),
        masks,
        z,
        embeddings.shape[0],
        z_range=z_range,
        settings=settings,
        progress=progress,
        should_cancel=should_cancel,
    )
