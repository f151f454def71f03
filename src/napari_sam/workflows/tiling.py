"""Tiling of large planes: tile geometry, when tiling turns on, and how a tile becomes SAM input.

SAM encodes an image at 1024 × 1024 pixels; a larger plane is shrunk to fit, so
a 4096 × 4096 plane loses three pixels in four along each axis and small
objects vanish. A tiled plane is instead cut into overlapping tiles, each
encoded on its own at (nearly) full resolution:

- the plane is divided into a regular grid of **inner tiles** of ``tile_shape``
  ``(rows, columns)`` pixels, starting at the top-left corner (the last row
  and column of tiles may be smaller);
- each tile is encoded with a **halo** of ``halo`` pixels of context added on
  every side (clipped at the image border): the tile's **outer window**.

Inner tiles cover the plane exactly once; outer windows overlap their
neighbours by twice the halo. This is the geometry of micro-sam
(``micro_sam.util.precompute_image_embeddings(..., tile_shape, halo)``), tile
for tile and in the same order (row-major), so both cut a plane identically.

Defaults (:data:`DEFAULT_TILE_SHAPE`, :data:`DEFAULT_HALO`): 768 × 768 inner
tiles with a 128-pixel halo, so that an interior tile's outer window is exactly
1024 × 1024: SAM sees every pixel at its native resolution, and any object
whose centre lies in a tile and whose radius is at most 128 pixels is seen
whole. micro-sam itself has no default (tiling is off unless asked for); its
FAQ suggests ``tile_shape=(1024, 1024), halo=(256, 256)``, whose 1536-pixel
outer windows SAM shrinks by 1.5.

When tiling turns on (:class:`Tiling`, mode ``"auto"``): for a plane whose
longest side exceeds :data:`AUTO_TILING_THRESHOLD` pixels (2048: SAM would
shrink it more than twofold) and that does not fit in one tile. Smaller planes
are encoded whole, as before. Mode ``"on"`` tiles any plane larger than one
tile; ``"off"`` never tiles.

How a tile's pixels become SAM's 8-bit RGB input (``normalization``):

- ``"contrast"`` (default): the contrast limits of the whole image (what
  napari shows) are applied to every tile
  (:func:`~napari_sam.workflows.image.to_sam_rgb`), so an object looks the
  same to SAM in whichever tile it is seen, and a plane that fits one tile
  gives exactly the untiled embedding;
- ``"minmax"`` (micro-sam compatible): each outer window is min–max normalised
  on its own, per channel, as micro-sam does (``x -= min; x /= max + 1e-7;
  uint8(x * 255)``, truncating). Embeddings then equal micro-sam's, but a
  tile's brightness depends on what else it holds.

No torch, no napari here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_sam.errors import SettingsError
from napari_sam.workflows.image import to_sam_rgb

__all__ = [
    "AUTO_TILING_THRESHOLD",
    "DEFAULT_HALO",
    "DEFAULT_TILE_SHAPE",
    "MIN_TILE_SIZE",
    "NORMALIZATIONS",
    "Tile",
    "TileGrid",
    "Tiling",
    "Window",
    "minmax_to_uint8",
    "tile_to_sam_rgb",
]

#: Inner tile ``(rows, columns)`` used unless another is given.
DEFAULT_TILE_SHAPE = (768, 768)
#: Context added on each side of a tile, ``(rows, columns)``.
DEFAULT_HALO = (128, 128)
#: In mode ``"auto"``, planes whose longest side exceeds this many pixels are tiled.
AUTO_TILING_THRESHOLD = 2048
#: Smallest tile side accepted (a smaller tile holds less than SAM's 16-pixel patches
#: can describe and makes thousands of tiles).
MIN_TILE_SIZE = 64
#: How a tile's pixels are mapped to SAM's 8-bit input (see the module docstring).
NORMALIZATIONS = ("contrast", "minmax")
_MODES = ("auto", "on", "off")


# --------------------------------------------------------------------------- geometry
@dataclass(frozen=True, order=True)
class Window:
    """A rectangle of a plane: rows ``y0:y1``, columns ``x0:x1`` (half-open, pixels)."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)``."""
        return (self.y1 - self.y0, self.x1 - self.x0)

    @property
    def area(self) -> int:
        return max(0, self.y1 - self.y0) * max(0, self.x1 - self.x0)

    @property
    def slices(self) -> tuple[slice, slice]:
        """Index of the window in a ``(H, W, ...)`` array."""
        return (slice(self.y0, self.y1), slice(self.x0, self.x1))

    @property
    def centre(self) -> tuple[float, float]:
        """``(y, x)`` of the window's centre in pixel coordinates (centres at integers)."""
        return ((self.y0 + self.y1 - 1) / 2.0, (self.x0 + self.x1 - 1) / 2.0)

    def contains_xy(self, xy: np.ndarray) -> np.ndarray:
        """Which of the ``(N, 2)`` points ``(x, y)`` lie in the window (pixel areas included).

        A pixel's area reaches half a pixel around its centre, as in napari.
        """
        xy = np.asarray(xy, dtype=float).reshape(-1, 2)
        return (
            (xy[:, 0] >= self.x0 - 0.5)
            & (xy[:, 0] < self.x1 - 0.5)
            & (xy[:, 1] >= self.y0 - 0.5)
            & (xy[:, 1] < self.y1 - 0.5)
        )

    def contains_box(self, box: np.ndarray) -> bool:
        """Whether the box ``(x0, y0, x1, y1)`` lies inside the window."""
        x0, y0, x1, y1 = (float(v) for v in np.asarray(box).reshape(4))
        return bool(self.contains_xy(np.array([[x0, y0], [x1, y1]])).all())

    def box_overlap(self, box: np.ndarray) -> float:
        """Area of the box ``(x0, y0, x1, y1)`` (pixel areas) inside the window."""
        x0, y0, x1, y1 = (float(v) for v in np.asarray(box).reshape(4))
        w = min(x1 + 0.5, self.x1 - 0.5) - max(x0 - 0.5, self.x0 - 0.5)
        h = min(y1 + 0.5, self.y1 - 0.5) - max(y0 - 0.5, self.y0 - 0.5)
        return max(0.0, w) * max(0.0, h)

    def distance_to_centre(self, y: float, x: float) -> float:
        cy, cx = self.centre
        return math.hypot(y - cy, x - cx)

    def clip(self, plane_shape: Sequence[int]) -> Window:
        h, w = int(plane_shape[0]), int(plane_shape[1])
        return Window(max(0, self.y0), max(0, self.x0), min(h, self.y1), min(w, self.x1))


@dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TileGrid`.

    Attributes
    ----------
    index : int
        Position in the grid, row-major (micro-sam's tile id).
    row, col : int
        Position in the grid.
    inner : Window
        The pixels this tile is responsible for (inner tiles partition the plane).
    outer : Window
        The pixels encoded: ``inner`` with the halo, clipped to the plane.
    """

    index: int
    row: int
    col: int
    inner: Window
    outer: Window

    @property
    def inner_local(self) -> Window:
        """``inner`` in the coordinates of ``outer`` (where to read a tile's output)."""
        o = self.outer
        i = self.inner
        return Window(i.y0 - o.y0, i.x0 - o.x0, i.y1 - o.y0, i.x1 - o.x0)


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one plane: inner tiles of ``tile_shape`` and a ``halo``.

    Parameters
    ----------
    plane_shape : (int, int)
        ``(H, W)`` of the plane.
    tile_shape : (int, int)
        Inner tile ``(rows, columns)``.
    halo : (int, int)
        Context added above/below and left/right of each tile.

    Use :meth:`Tiling.grid` to make one from user settings (with checks).
    """

    plane_shape: tuple[int, int]
    tile_shape: tuple[int, int]
    halo: tuple[int, int]

    @property
    def n_rows(self) -> int:
        return -(-self.plane_shape[0] // self.tile_shape[0])

    @property
    def n_cols(self) -> int:
        return -(-self.plane_shape[1] // self.tile_shape[1])

    def __len__(self) -> int:
        return self.n_rows * self.n_cols

    def __iter__(self) -> Iterator[Tile]:
        return (self.tile(i) for i in range(len(self)))

    @property
    def tiles(self) -> list[Tile]:
        return list(self)

    def tile(self, index: int) -> Tile:
        """Tile number ``index`` (row-major)."""
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"Tile {index} does not exist; the grid has {len(self)} tiles.")
        r, c = divmod(index, self.n_cols)
        (h, w), (th, tw), (hy, hx) = self.plane_shape, self.tile_shape, self.halo
        inner = Window(r * th, c * tw, min((r + 1) * th, h), min((c + 1) * tw, w))
        outer = Window(inner.y0 - hy, inner.x0 - hx, inner.y1 + hy, inner.x1 + hx).clip((h, w))
        return Tile(index, r, c, inner, outer)

    def tile_at(self, y: float, x: float) -> Tile:
        """The tile whose inner region holds the pixel nearest to ``(y, x)``."""
        h, w = self.plane_shape
        row = min(max(int(np.floor(y + 0.5)), 0), h - 1)
        col = min(max(int(np.floor(x + 0.5)), 0), w - 1)
        return self.tile((row // self.tile_shape[0]) * self.n_cols + col // self.tile_shape[1])

    def tiles_overlapping(self, window: Window) -> list[Tile]:
        """Tiles whose inner region shares pixels with ``window``."""
        w = window.clip(self.plane_shape)
        if w.area == 0:
            return []
        th, tw = self.tile_shape
        rows = range(w.y0 // th, (w.y1 - 1) // th + 1)
        cols = range(w.x0 // tw, (w.x1 - 1) // tw + 1)
        return [self.tile(r * self.n_cols + c) for r in rows for c in cols]

    @property
    def max_outer_shape(self) -> tuple[int, int]:
        """The largest outer window (what the biggest tile costs to encode)."""
        (h, w), (th, tw), (hy, hx) = self.plane_shape, self.tile_shape, self.halo
        return (min(h, th + 2 * hy), min(w, tw + 2 * hx))


# --------------------------------------------------------------------------- settings
def _pair(name: str, value: Any, minimum: int) -> tuple[int, int]:
    """Two whole numbers ``>= minimum`` from an int or a pair; SettingsError otherwise."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    try:
        items = list(value)
    except TypeError:
        items = []
    if len(items) != 2 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items
    ):
        raise SettingsError(
            f"The {name} must be two whole numbers (rows, columns) of pixels, not {value!r}."
        )
    pair = (int(items[0]), int(items[1]))
    if min(pair) < minimum:
        what = "positive" if minimum <= 1 else f"at least {minimum} pixels"
        if minimum == 0:
            what = "zero or more pixels"
        raise SettingsError(
            f"The {name} must be {what} along both axes, not {pair[0]} x {pair[1]}."
        )
    return pair


@dataclass(frozen=True)
class Tiling:
    """When and how planes are tiled.

    Attributes
    ----------
    mode : {"auto", "on", "off"}
        ``"auto"``: tile planes whose longest side exceeds ``threshold`` (and
        that are larger than one tile); ``"on"``: tile every plane larger than
        one tile; ``"off"``: never tile.
    tile_shape : (int, int)
        Inner tile ``(rows, columns)``, at least :data:`MIN_TILE_SIZE`.
    halo : (int, int)
        Context on each side, ``0 <= halo < tile_shape / 2``. Choose it at
        least as large as the radius of the largest objects, so that an object
        centred in a tile is seen whole.
    threshold : int
        Longest side (pixels) above which mode ``"auto"`` tiles.
    normalization : {"contrast", "minmax"}
        See the module docstring (``"minmax"`` = micro-sam compatible).

    Raises
    ------
    SettingsError
        For any value out of range (one sentence naming it).
    """

    mode: str = "auto"
    tile_shape: tuple[int, int] = DEFAULT_TILE_SHAPE
    halo: tuple[int, int] = DEFAULT_HALO
    threshold: int = AUTO_TILING_THRESHOLD
    normalization: str = "contrast"

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise SettingsError(
                f"The tiling mode must be 'auto', 'on' or 'off', not {self.mode!r}."
            )
        if self.normalization not in NORMALIZATIONS:
            raise SettingsError(
                "The tile normalization must be 'contrast' or 'minmax' (micro-sam compatible), "
                f"not {self.normalization!r}."
            )
        tile = _pair("tile shape", self.tile_shape, MIN_TILE_SIZE)
        halo = _pair("halo", self.halo, 0)
        if halo[0] * 2 >= tile[0] or halo[1] * 2 >= tile[1]:
            raise SettingsError(
                f"The halo ({halo[0]} x {halo[1]}) must be less than half the tile shape "
                f"({tile[0]} x {tile[1]}); use a smaller halo or larger tiles."
            )
        if (
            not isinstance(self.threshold, (int, np.integer))
            or isinstance(self.threshold, bool)
            or self.threshold < 1
        ):
            raise SettingsError(
                f"The tiling threshold must be a positive whole number of pixels, not "
                f"{self.threshold!r}."
            )
        object.__setattr__(self, "tile_shape", tile)
        object.__setattr__(self, "halo", halo)
        object.__setattr__(self, "threshold", int(self.threshold))

    @classmethod
    def off(cls) -> Tiling:
        return cls(mode="off")

    @classmethod
    def on(
        cls,
        tile_shape: Sequence[int] | int = DEFAULT_TILE_SHAPE,
        halo: Sequence[int] | int = DEFAULT_HALO,
        normalization: str = "contrast",
    ) -> Tiling:
        """Tiling with this geometry for every plane larger than one tile."""
        return cls(mode="on", tile_shape=tile_shape, halo=halo,  # type: ignore[arg-type]
                   normalization=normalization)

    def as_dict(self) -> dict[str, Any]:
        """The settings as JSON-friendly values (:meth:`coerce` reads them back)."""
        return {
            "mode": self.mode,
            "tile_shape": list(self.tile_shape),
            "halo": list(self.halo),
            "threshold": self.threshold,
            "normalization": self.normalization,
        }

    @classmethod
    def coerce(cls, value: Tiling | Mapping[str, Any] | str | bool | None) -> Tiling:
        """A :class:`Tiling` from ``None``/``False``/``"off"``, ``True``/``"on"``, ``"auto"``,
        or the mapping of :meth:`as_dict`."""
        if isinstance(value, Tiling):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {"mode", "tile_shape", "halo", "threshold", "normalization"}
            if unknown:
                raise SettingsError(
                    f"Unknown tiling setting{'s' if len(unknown) > 1 else ''}: "
                    f"{', '.join(sorted(unknown))}."
                )
            return cls(**dict(value))
        if value is None or value is False:
            return cls.off()
        if value is True:
            return cls(mode="on")
        if isinstance(value, str):
            return cls(mode=value)
        raise SettingsError(
            f"tiling must be 'auto', 'on', 'off' or a Tiling, not {value!r}."
        )

    def grid(self, plane_shape: Sequence[int]) -> TileGrid | None:
        """The tiles of a plane of ``plane_shape`` ``(H, W)``, or None if it is not tiled.

        Raises
        ------
        SettingsError
            In mode ``"on"``, if the tile is larger than the plane along both
            axes (there is nothing to tile).
        """
        h, w = int(plane_shape[0]), int(plane_shape[1])
        th, tw = self.tile_shape
        if self.mode == "off":
            return None
        if self.mode == "auto":
            if max(h, w) <= self.threshold or (h <= th and w <= tw):
                return None
        elif th > h and tw > w:
            raise SettingsError(
                f"The tile shape ({th} x {tw}) is larger than the image ({h} x {w}); "
                "use smaller tiles or turn tiling off."
            )
        return TileGrid((h, w), (th, tw), self.halo)

    def describe(self) -> str:
        """One line for logs and summaries."""
        if self.mode == "off":
            return "tiling off"
        geometry = (
            f"tiles {self.tile_shape[0]}x{self.tile_shape[1]}, halo "
            f"{self.halo[0]}x{self.halo[1]}"
            + (", micro-sam (min-max) normalization" if self.normalization == "minmax" else "")
        )
        if self.mode == "on":
            return f"tiling on ({geometry})"
        return f"tiling above {self.threshold} px ({geometry})"


# --------------------------------------------------------------------------- tile -> SAM input
#: Rows converted at once for large windows (bounds the float copies to a strip).
_STRIP_ROWS = 256


def minmax_to_uint8(pixels: np.ndarray, rgb: bool = False) -> np.ndarray:
    """micro-sam's conversion of one tile to SAM's ``(h, w, 3)`` uint8 input.

    Each channel is min–max normalised on its own in float32
    (``x -= min; x /= max + 1e-7; uint8(x * 255)``, truncated), grayscale
    repeated into three channels, an RGBA tile's alpha dropped; with ``rgb``,
    ``(h, w, k)`` channels-last pixels of 1 (repeated) or 2 (blue left 0)
    channels are accepted too. Values that are not finite become 0. Large
    windows are converted in strips of rows (the same values; float copies
    never exceed one strip).
    """
    arr = np.asarray(pixels)
    arr = arr[..., :3] if rgb else arr[..., None]
    k = arr.shape[-1]
    lo = arr.min(axis=(0, 1)).astype(np.float32)
    # max over pixels of float32(x - lo) is float32(max - lo): rounding is monotonic
    span = arr.max(axis=(0, 1)).astype(np.float32) - lo + np.float32(1e-7)
    out = np.zeros((*arr.shape[:2], 3), dtype=np.uint8)
    for r in range(0, arr.shape[0], _STRIP_ROWS):
        x = arr[r : r + _STRIP_ROWS].astype(np.float32)
        x -= lo
        x /= span
        x *= np.float32(255)
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        # one channel fills all three slots; two leave blue at 0 (micro-sam's rule)
        out[r : r + _STRIP_ROWS, :, : 2 if k == 2 else 3] = x.astype(np.uint8)
    return out


def tile_to_sam_rgb(
    pixels: np.ndarray,
    contrast: Sequence[float] | None,
    rgb: bool = False,
    normalization: str = "contrast",
) -> np.ndarray:
    """One tile (or window) of a plane as SAM's ``(h, w, 3)`` uint8 RGB input.

    ``"contrast"``: :func:`~napari_sam.workflows.image.to_sam_rgb` with the
    image's contrast limits (strip by strip, so a large window is never
    converted to floats as a whole); ``"minmax"``: :func:`minmax_to_uint8`.
    """
    if normalization == "minmax":
        return minmax_to_uint8(pixels, rgb=rgb)
    arr = np.asarray(pixels)
    if arr.shape[0] <= _STRIP_ROWS or contrast is None:
        return to_sam_rgb(arr, contrast, rgb=rgb)
    out = np.empty((*arr.shape[:2], 3), dtype=np.uint8)
    for r in range(0, arr.shape[0], _STRIP_ROWS):
        out[r : r + _STRIP_ROWS] = to_sam_rgb(arr[r : r + _STRIP_ROWS], contrast, rgb=rgb)
    return out
