"""napari prompt layers -> SAM prompts in the image's data coordinates.

Every napari layer has its own data -> world transform (scale, translate,
rotate, shear, affine); the viewer shows all layers in world coordinates. A
point clicked on a Points layer is stored in *that layer's* data coordinates.
To prompt SAM on a plane of an image, each prompt goes

    prompt-layer data --(prompt layer's affine)--> world
                      --(inverse of the image layer's affine)--> image data

and then from napari's ``(row, col)`` order to SAM's ``(x, y) = (col, row)``,
here and only here (:func:`rows_cols_to_xy`). napari and SAM both put pixel
centres at integer coordinates, so no half-pixel shift is needed.

Layers of different dimensionality are aligned on their trailing axes, as
napari does. A prompt layer with fewer axes than the image (a 2D Points layer
over a 3D stack) lies on whatever slice is shown; its missing axes are taken
from the viewer's current position. A prompt layer with more axes than the
image (a 3D Points layer over a 2D image) counts only the prompts shown at
the viewer's current position along its extra leading axes, as napari shows them.

Boxes narrower or lower than :data:`MIN_BOX_SIZE` image pixels (a click in
rectangle mode, a box squashed to a line) are not used: SAM would read them as
a line. They are counted in :attr:`SlicePrompts.n_degenerate`.

Everything above the "napari edges" section works on plain arrays and
``(D+1, D+1)`` homogeneous affine matrices and is tested without napari; the
helpers at the bottom read napari layers through their public attributes only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "MIN_BOX_SIZE",
    "ObjectPrompt",
    "SlicePrompts",
    "affine_from_scale_translate",
    "apply_affine",
    "boxes_to_image",
    "current_slice",
    "data_to_world",
    "group_objects",
    "labels_from_feature",
    "layer_affine",
    "points_to_image",
    "rows_cols_to_xy",
    "slice_prompts",
    "world_to_data",
]


#: Least width and height, in image pixels, of a box that is used as a prompt.
MIN_BOX_SIZE = 1.0


# --------------------------------------------------------------------------- affines
def affine_from_scale_translate(
    scale: Sequence[float], translate: Sequence[float] | None = None
) -> np.ndarray:
    """The ``(D+1, D+1)`` data -> world matrix of ``world = data * scale + translate``."""
    scale = np.asarray(scale, dtype=float)
    d = scale.size
    matrix = np.eye(d + 1)
    matrix[:d, :d] = np.diag(scale)
    if translate is not None:
        matrix[:d, d] = np.asarray(translate, dtype=float)
    return matrix


def apply_affine(matrix: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Apply a homogeneous ``(D+1, D+1)`` matrix to ``(N, D)`` coordinates."""
    matrix = np.asarray(matrix, dtype=float)
    coords = np.asarray(coords, dtype=float).reshape(-1, matrix.shape[0] - 1)
    return coords @ matrix[:-1, :-1].T + matrix[:-1, -1]


def data_to_world(data: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Layer data coordinates ``(N, D)`` -> world coordinates of the layer's ``D`` axes."""
    return apply_affine(matrix, data)


def world_to_data(
    world: np.ndarray, matrix: np.ndarray, world_point: Sequence[float] | None = None
) -> np.ndarray:
    """World coordinates ``(N, W)`` -> data coordinates ``(N, D)`` of a layer.

    Axes are aligned on the right, as in napari: the layer's ``D`` axes are the
    last ``D`` world axes. If ``W < D``, the missing leading world axes are
    taken from ``world_point`` (the viewer's current position, length >= D),
    or are NaN without it.
    """
    matrix = np.asarray(matrix, dtype=float)
    d = matrix.shape[0] - 1
    world = np.asarray(world, dtype=float)
    world = world.reshape(-1, world.shape[-1]) if world.size else world.reshape(0, d)
    w = world.shape[1]
    if w >= d:
        full = world[:, w - d :]
    else:
        full = np.empty((world.shape[0], d))
        if world_point is None:
            full[:, : d - w] = np.nan
        else:
            point = np.asarray(world_point, dtype=float)
            if point.size < d:
                raise ValueError(f"world_point has {point.size} axes, the layer {d}.")
            full[:, : d - w] = point[point.size - d : point.size - w]
        full[:, d - w :] = world
    return apply_affine(np.linalg.inv(matrix), full)


def rows_cols_to_xy(rows_cols: np.ndarray) -> np.ndarray:
    """napari's ``(row, col)`` -> SAM's ``(x, y)``: the one place the axes are swapped."""
    rows_cols = np.asarray(rows_cols, dtype=float).reshape(-1, 2)
    return rows_cols[:, ::-1].copy()


def current_slice(
    image_matrix: np.ndarray,
    spatial_shape: Sequence[int],
    world_point: Sequence[float],
) -> int | None:
    """Index of the image plane shown at ``world_point`` (a 3D image), or None.

    ``None`` means the viewer is outside the stack; a 2D image has no slice
    either (callers check the layout first). Rounded like napari's slicing.
    """
    if len(spatial_shape) != 3:
        return None
    z = world_to_data(np.asarray(world_point, dtype=float)[None], image_matrix)[0, 0]
    if not np.isfinite(z):
        return None
    k = int(np.round(z))
    return k if 0 <= k < spatial_shape[0] else None


# --------------------------------------------------------------------------- prompts
def _inside_plane(rc: np.ndarray, plane_shape: Sequence[int]) -> np.ndarray:
    h, w = plane_shape
    return (
        np.isfinite(rc).all(axis=1)
        & (rc[:, 0] >= -0.5)
        & (rc[:, 0] <= h - 0.5)
        & (rc[:, 1] >= -0.5)
        & (rc[:, 1] <= w - 0.5)
    )


def points_to_image(
    image_data: np.ndarray,
    spatial_shape: Sequence[int],
    slice_index: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Classify points given in image data coordinates.

    Parameters
    ----------
    image_data : ndarray ``(N, D)``
        Points in the image's data coordinates (``D`` = 2 or 3 spatial axes).
    spatial_shape : sequence of int
        ``(H, W)`` or ``(Z, H, W)``.
    slice_index : int or None
        The current plane of a stack.

    Returns
    -------
    xy : ndarray ``(N, 2)``
        SAM coordinates (x = column, y = row) of every point.
    on_slice : ndarray ``(N,)`` bool
        The point is on the current plane (always True for 2D images), whether
        or not it is inside the image.
    usable : ndarray ``(N,)`` bool
        On the current plane and inside the image.
    """
    image_data = np.asarray(image_data, dtype=float).reshape(-1, len(spatial_shape))
    xy = rows_cols_to_xy(image_data[:, -2:])
    if len(spatial_shape) == 3:
        z = image_data[:, 0]
        with np.errstate(invalid="ignore"):
            rounded = np.round(z)
        on_slice = (
            np.isfinite(z) & (rounded == slice_index)
            if slice_index is not None
            else np.zeros(len(z), dtype=bool)
        )
    else:
        on_slice = np.ones(len(image_data), dtype=bool)
    usable = on_slice & _inside_plane(image_data[:, -2:], spatial_shape[-2:])
    return xy, on_slice, usable


def boxes_to_image(
    vertices: Sequence[np.ndarray | None],
    spatial_shape: Sequence[int],
    slice_index: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn shapes (vertices in image data coordinates) into SAM boxes.

    ``None`` entries (shapes that are not boxes) are skipped: never on the
    slice, never usable.

    A box is the bounding rectangle of a shape's vertices in the plane,
    clipped to the image (``-0.5 .. size - 0.5``, the outer pixel edges). On a
    stack, a shape is on the current plane if all its vertices round to it.

    Returns
    -------
    boxes : ndarray ``(K, 4)``
        ``x0, y0, x1, y1`` of each shape, clipped.
    on_slice : ndarray ``(K,)`` bool
    usable : ndarray ``(K,)`` bool
        On the current plane and overlapping the image.
    """
    ndim = len(spatial_shape)
    h, w = spatial_shape[-2:]
    k_total = len(vertices)
    boxes = np.zeros((k_total, 4))
    on_slice = np.zeros(k_total, dtype=bool)
    usable = np.zeros(k_total, dtype=bool)
    for i, v in enumerate(vertices):
        if v is None:
            continue
        v = np.asarray(v, dtype=float).reshape(-1, ndim)
        if v.size == 0 or not np.isfinite(v).all():
            continue
        if ndim == 3:
            on_slice[i] = slice_index is not None and bool(np.all(np.round(v[:, 0]) == slice_index))
        else:
            on_slice[i] = True
        r0, c0 = v[:, -2].min(), v[:, -1].min()
        r1, c1 = v[:, -2].max(), v[:, -1].max()
        overlaps = r1 >= -0.5 and r0 <= h - 0.5 and c1 >= -0.5 and c0 <= w - 0.5
        boxes[i] = [
            np.clip(c0, -0.5, w - 0.5),
            np.clip(r0, -0.5, h - 0.5),
            np.clip(c1, -0.5, w - 0.5),
            np.clip(r1, -0.5, h - 0.5),
        ]
        usable[i] = on_slice[i] and overlaps
    return boxes, on_slice, usable


@dataclass
class SlicePrompts:
    """The prompts that apply to one plane, in SAM coordinates.

    Attributes
    ----------
    points_xy : ndarray ``(N, 2)``
        Usable points as SAM ``(x, y)``.
    point_labels : ndarray ``(N,)`` int
        1 = positive (object), 0 = negative (background).
    boxes : ndarray ``(K, 4)``
        Usable boxes as ``x0, y0, x1, y1``.
    point_index, box_index : ndarray of int
        Indices of the used points / shapes in their layers.
    slice_point_index, slice_box_index : ndarray of int
        Indices of all points / shapes on this plane, inside the image or not
        (what "clear the prompts of this slice" removes).
    n_outside : int
        Prompts on this plane that lie outside the image (ignored).
    n_degenerate : int
        Boxes on this plane without area (narrower or lower than
        :data:`MIN_BOX_SIZE` pixels inside the image; ignored).
    """

    points_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    point_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    point_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    box_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    slice_point_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    slice_box_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    n_outside: int = 0
    n_degenerate: int = 0

    @property
    def empty(self) -> bool:
        """No usable prompt."""
        return len(self.points_xy) == 0 and len(self.boxes) == 0


def slice_prompts(
    spatial_shape: Sequence[int],
    image_matrix: np.ndarray,
    slice_index: int | None,
    world_point: Sequence[float],
    points: np.ndarray | None = None,
    points_matrix: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    shapes: Sequence[np.ndarray] | None = None,
    shapes_matrix: np.ndarray | None = None,
) -> SlicePrompts:
    """Collect the prompts of one image plane from point and shape coordinates.

    Parameters
    ----------
    spatial_shape : sequence of int
        ``(H, W)`` or ``(Z, H, W)`` of the image.
    image_matrix : ndarray ``(D+1, D+1)``
        The image layer's data -> world matrix.
    slice_index : int or None
        The plane (see :func:`current_slice`); ignored for 2D images.
    world_point : sequence of float
        The viewer's current world position (``viewer.dims.point``).
    points : ndarray ``(N, Dp)``, optional
        Points in their layer's data coordinates, with ``points_matrix`` its
        data -> world matrix and ``point_labels`` 1/0 per point (default all 1).
    shapes : sequence of (ndarray ``(V, Ds)`` or None), optional
        Vertices of each shape in its layer's data coordinates, with
        ``shapes_matrix`` that layer's data -> world matrix; ``None`` for a
        shape that is not a box (it is skipped but keeps its index).
    """
    out = SlicePrompts()
    n_outside = 0
    d_image = len(spatial_shape)
    if points is not None and len(points):
        points = np.asarray(points, dtype=float)
        world = data_to_world(points, points_matrix)
        data = world_to_data(world, image_matrix, world_point)
        xy, on_slice, usable = points_to_image(data, spatial_shape, slice_index)
        here = _at_current_position(points, points_matrix, world_point, d_image)
        on_slice &= here
        usable &= here
        labels = (
            np.ones(len(points), dtype=int)
            if point_labels is None
            else np.asarray(point_labels, dtype=int).reshape(-1)
        )
        out.points_xy = xy[usable]
        out.point_labels = labels[usable]
        out.point_index = np.flatnonzero(usable)
        out.slice_point_index = np.flatnonzero(on_slice)
        n_outside += int((on_slice & ~usable).sum())
    if shapes is not None and len(shapes):
        data = [
            None
            if v is None
            else world_to_data(
                data_to_world(np.asarray(v, dtype=float), shapes_matrix), image_matrix, world_point
            )
            for v in shapes
        ]
        boxes, on_slice, usable = boxes_to_image(data, spatial_shape, slice_index)
        here = np.array(
            [
                v is not None
                and bool(
                    _at_current_position(
                        np.asarray(v, dtype=float), shapes_matrix, world_point, d_image
                    ).all()
                )
                for v in shapes
            ],
            dtype=bool,
        )
        on_slice &= here
        usable &= here
        degenerate = usable & (
            (boxes[:, 2] - boxes[:, 0] < MIN_BOX_SIZE) | (boxes[:, 3] - boxes[:, 1] < MIN_BOX_SIZE)
        )
        usable &= ~degenerate
        out.boxes = boxes[usable]
        out.box_index = np.flatnonzero(usable)
        out.slice_box_index = np.flatnonzero(on_slice)
        out.n_degenerate = int(degenerate.sum())
        n_outside += int((on_slice & ~usable & ~degenerate).sum())
    out.n_outside = n_outside
    return out


def _at_current_position(
    coords: np.ndarray,
    matrix: np.ndarray | None,
    world_point: Sequence[float],
    d_image: int,
) -> np.ndarray:
    """Which prompts (``(N, Dp)`` layer data coordinates) are shown at the viewer's position.

    Only a layer with more axes than the image (``Dp > d_image``) has prompts
    that can be elsewhere: on its extra leading axes, a prompt is shown where
    its rounded data coordinate equals that of the viewer's position, as napari
    slices points. All True otherwise.
    """
    coords = np.asarray(coords, dtype=float).reshape(len(coords), -1)
    extra = coords.shape[1] - d_image
    if extra <= 0 or matrix is None or len(world_point) < coords.shape[1]:
        return np.ones(len(coords), dtype=bool)
    current = world_to_data(np.asarray(world_point, dtype=float)[None], matrix)[0]
    with np.errstate(invalid="ignore"):
        return np.all(np.round(coords[:, :extra]) == np.round(current[:extra]), axis=1)


@dataclass
class ObjectPrompt:
    """The prompts of one object: SAM's ``predict`` arguments."""

    point_coords: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box: np.ndarray | None = None


def group_objects(
    points_xy: np.ndarray, point_labels: np.ndarray, boxes: np.ndarray
) -> list[ObjectPrompt]:
    """Split the prompts of a plane into objects, one SAM prediction each.

    - Every box is one object. A point inside a box (on its edge included)
      belongs to the smallest box that contains it.
    - The points inside no box form one more object if at least one of them is
      positive (negative points alone describe no object).

    Objects are returned boxes first, in the order of the boxes.
    """
    points_xy = np.asarray(points_xy, dtype=float).reshape(-1, 2)
    point_labels = np.asarray(point_labels, dtype=int).reshape(-1)
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    owner = np.full(len(points_xy), -1)
    if len(boxes) and len(points_xy):
        x, y = points_xy[:, 0:1], points_xy[:, 1:2]
        inside = (
            (x >= boxes[None, :, 0])
            & (x <= boxes[None, :, 2])
            & (y >= boxes[None, :, 1])
            & (y <= boxes[None, :, 3])
        )
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        masked_area = np.where(inside, area[None, :], np.inf)
        owner = np.where(inside.any(axis=1), np.argmin(masked_area, axis=1), -1)
    objects = []
    for b, box in enumerate(boxes):
        sel = owner == b
        obj = ObjectPrompt(box=box.copy())
        if sel.any():
            obj.point_coords = points_xy[sel]
            obj.point_labels = point_labels[sel]
        objects.append(obj)
    free = owner == -1
    if free.any() and (point_labels[free] == 1).any():
        objects.append(ObjectPrompt(point_coords=points_xy[free], point_labels=point_labels[free]))
    return objects


def labels_from_feature(values: Any, n: int) -> np.ndarray:
    """Point labels (1 positive, 0 negative) from a Points layer's ``label`` feature.

    Accepts strings (``"positive"``/``"negative"``, ``"pos"``/``"neg"``,
    ``"+"``/``"-"``, ``"1"``/``"0"``, ``"true"``/``"false"``, ``"foreground"``/
    ``"background"``), booleans and numbers (> 0 is positive). Without the
    feature (``values is None``) every point is positive.
    """
    if values is None:
        return np.ones(n, dtype=int)
    arr = np.asarray(values, dtype=object).reshape(-1)
    out = np.ones(len(arr), dtype=int)
    negative_words = {"negative", "neg", "-", "0", "false", "background", "bg", "no"}
    for i, v in enumerate(arr):
        if isinstance(v, str):
            out[i] = 0 if v.strip().lower() in negative_words else 1
        elif v is None or (isinstance(v, float) and np.isnan(v)):
            out[i] = 1
        else:
            try:
                out[i] = 1 if float(v) > 0 else 0
            except (TypeError, ValueError):
                out[i] = 1
    return out


# --------------------------------------------------------------------------- napari edges
def layer_affine(layer: Any) -> np.ndarray:
    """The ``(D+1, D+1)`` data -> world matrix of a napari layer.

    Built from the layer's public ``data_to_world`` (so it includes scale,
    translate, rotate, shear and affine exactly as napari applies them), by
    mapping the origin and the unit vectors.
    """
    d = int(layer.ndim)
    origin = np.asarray(layer.data_to_world(np.zeros(d)), dtype=float)
    matrix = np.eye(d + 1)
    matrix[:d, d] = origin
    for j in range(d):
        e = np.zeros(d)
        e[j] = 1.0
        matrix[:d, j] = np.asarray(layer.data_to_world(e), dtype=float) - origin
    return matrix


def point_labels_of_layer(points_layer: Any) -> np.ndarray:
    """Labels (1/0) of the points of a napari Points layer, from its ``label`` feature."""
    features = points_layer.features
    values = features["label"].to_numpy() if "label" in features else None
    return labels_from_feature(values, len(points_layer.data))


def slice_prompts_from_layers(
    spatial_shape: Sequence[int],
    image_layer: Any,
    slice_index: int | None,
    world_point: Sequence[float],
    points_layer: Any = None,
    shapes_layer: Any = None,
) -> SlicePrompts:
    """:func:`slice_prompts` for napari layers (Points, Shapes; either may be None).

    Only the rectangles of the Shapes layer are boxes; its other shapes are ignored.
    """
    kwargs: dict[str, Any] = {}
    if points_layer is not None and len(points_layer.data):
        kwargs.update(
            points=np.asarray(points_layer.data, dtype=float),
            points_matrix=layer_affine(points_layer),
            point_labels=point_labels_of_layer(points_layer),
        )
    if shapes_layer is not None and len(shapes_layer.data):
        kwargs.update(
            shapes=[
                np.asarray(v, dtype=float) if t == "rectangle" else None
                for v, t in zip(shapes_layer.data, shapes_layer.shape_type)
            ],
            shapes_matrix=layer_affine(shapes_layer),
        )
    return slice_prompts(
        spatial_shape, layer_affine(image_layer), slice_index, world_point, **kwargs
    )
