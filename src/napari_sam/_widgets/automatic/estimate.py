"""How much work an automatic segmentation run is, said before it starts.

SAM's automatic mask generator encodes each plane (and each crop) once and
decodes one prompt per grid point: ``points_per_side**2`` prompts per crop,
with ``(2**i)**2`` crops on crop layer ``i``. :func:`run_estimate` says this in
numbers for the planes a run covers; :func:`points_hint` suggests fewer points
where the grid is much finer than objects can be (small images), since the time
grows with the square of the points per side.

A tiled plane (:mod:`napari_sam.workflows.tiling`) is encoded tile by tile, and
the grid is per tile. AIS (:func:`ais_estimate`) needs one encoding and one
decoder pass per plane (per tile), then one watershed per plane.
"""

from __future__ import annotations

from typing import Any

from napari_sam.errors import SettingsError
from napari_sam.workflows.image import ImageLayout
from napari_sam.workflows.segment import AutoSettings
from napari_sam.workflows.tiling import TileGrid

__all__ = [
    "ais_estimate",
    "encodings_per_plane",
    "estimate_text",
    "points_hint",
    "prompts_per_plane",
    "run_estimate",
    "tiles_note",
]

#: A grid finer than this (pixels between points) is suggested to be made coarser.
FINE_SPACING = 8
#: The spacing (pixels) suggested instead: a point on every object of about this width.
SUGGESTED_SPACING = 12


def encodings_per_plane(settings: AutoSettings) -> int:
    """Image encodings per plane: the plane itself and every crop."""
    return sum(4**i for i in range(int(settings.crop_n_layers) + 1))


def prompts_per_plane(settings: AutoSettings) -> int:
    """Point prompts decoded per plane (every crop gets the full grid)."""
    return int(settings.points_per_side) ** 2 * encodings_per_plane(settings)


def _what(layout: ImageLayout, n_planes: int) -> str:
    return f"{n_planes} slice{'s' if n_planes != 1 else ''}" if layout.is_stack else "1 image"


def tiles_note(grid: TileGrid | None) -> str:
    """E.g. " Tiled: 4 × 4 tiles of 768 px with a 128 px halo." ("" for an untiled plane)."""
    if grid is None:
        return ""
    (th, tw), (hy, hx) = grid.tile_shape, grid.halo
    size = f"{th}" if th == tw else f"{th} × {tw}"
    halo = f"{hy}" if hy == hx else f"{hy} × {hx}"
    return (f" Tiled: {grid.n_rows} × {grid.n_cols} tiles of {size} px with a {halo} px halo "
            "per plane.")


def ais_estimate(layout: ImageLayout, n_planes: int, n_tiles: int = 1) -> str:
    """E.g. "This run (instance decoder, AIS): 1 image, 1 encoding and decoder pass, ..."."""
    passes = n_planes * n_tiles
    return (
        f"This run (instance decoder, AIS): {_what(layout, n_planes)}, {passes:,} encoding"
        f"{'s' if passes != 1 else ''} and decoder pass{'es' if passes != 1 else ''}, one "
        f"watershed per {'slice' if layout.is_stack else 'image'}."
    )


def run_estimate(layout: ImageLayout, settings: AutoSettings, n_planes: int,
                 n_tiles: int = 1) -> str:
    """E.g. "60 slices × 1,024 prompts = 61,440 prompts to decode, 60 encodings."

    ``n_tiles``: tiles per plane (the grid is per tile; tiling excludes crop layers)."""
    prompts = prompts_per_plane(settings) * n_tiles
    encodings = encodings_per_plane(settings) * n_planes * n_tiles
    what = _what(layout, n_planes)
    return (
        f"This run: {what} × {prompts:,} prompts = {prompts * n_planes:,} prompts to decode, "
        f"{encodings:,} image encoding{'s' if encodings != 1 else ''}."
    )


def points_hint(layout: ImageLayout, settings: AutoSettings) -> str | None:
    """A suggestion of fewer points per side when the grid is finer than useful, or None."""
    side = max(layout.plane_shape)
    pps = int(settings.points_per_side)
    spacing = side / max(pps, 1)
    if spacing >= FINE_SPACING:
        return None
    suggested = max(4, round(side / SUGGESTED_SPACING))
    if suggested >= pps:
        return None
    speedup = (pps / suggested) ** 2
    return (
        f"{pps} points per side puts a prompt every {spacing:.0f} pixels on these "
        f"{layout.plane_shape[0]}×{layout.plane_shape[1]} planes; {suggested} (one every "
        f"~{SUGGESTED_SPACING} pixels) is about {speedup:.0f}× faster and still prompts every "
        f"object wider than {SUGGESTED_SPACING} pixels."
    )


def next_run_estimate(layout: ImageLayout, settings: AutoSettings, n_planes: int,
                      grid: TileGrid | None, ais: bool) -> str:
    """The dock's estimate of the next run: ``n_planes`` planes of ``layout``, tiled by
    ``grid`` (None: whole planes), with AIS or the point grid ``settings`` (plus a hint
    when the grid is too coarse or too fine for small images)."""
    tiles = len(grid) if grid is not None else 1
    if ais:
        return ais_estimate(layout, n_planes, tiles) + tiles_note(grid)
    hint = points_hint(layout, settings) if grid is None else None
    text = run_estimate(layout, settings, n_planes, tiles) + tiles_note(grid)
    return text + (f" {hint}" if hint else "")


def estimate_text(layout: ImageLayout | None, settings: AutoSettings, choices: Any,
                  all_slices: bool, ais: bool, lines: int = 1) -> str:
    """The work of the next run in numbers, and a hint for small images ("" for no image):
    every slice of a stack when ``all_slices`` (of ``lines`` such stacks: the time points
    of a time-lapse), with the tiles of ``choices`` (its tiling; a tiling that does not fit
    the image is said instead)."""
    if layout is None:
        return ""
    n = layout.n_slices * max(1, int(lines)) if layout.is_stack and all_slices else 1
    try:
        grid = choices.to_tiling().grid(layout.plane_shape)
    except SettingsError as exc:
        return str(exc)
    return next_run_estimate(layout, settings, n, grid, ais)
