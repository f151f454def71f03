"""``--tile-shape H W``, ``--halo H W`` and ``--no-tiling``: the tiling options of the CLI."""

from __future__ import annotations

import argparse
from typing import Any

from napari_sam.errors import SettingsError


def add_tiling_options(parser: Any) -> None:
    """Add the option group "large images (tiling)" to a subcommand's parser."""
    from napari_sam.workflows.tiling import AUTO_TILING_THRESHOLD, DEFAULT_HALO, DEFAULT_TILE_SHAPE

    th, tw = DEFAULT_TILE_SHAPE
    hy, hx = DEFAULT_HALO
    group = parser.add_argument_group(
        "large images (tiling)",
        f"Planes whose longest side exceeds {AUTO_TILING_THRESHOLD} pixels are cut into "
        f"overlapping tiles ({th} x {tw} pixels with a {hy}-pixel halo of context by default), "
        "each shown to SAM at full resolution instead of shrinking the whole plane; objects "
        "on tile borders are kept whole.",
    )
    group.add_argument(
        "--tile-shape",
        nargs=2,
        type=int,
        default=None,
        metavar=("H", "W"),
        help=f"cut every plane into tiles of H x W pixels, whatever its size (an image "
        f"smaller than one tile is an error); default: {th} {tw}, for planes above "
        f"{AUTO_TILING_THRESHOLD} pixels only",
    )
    group.add_argument(
        "--halo",
        nargs=2,
        type=int,
        default=None,
        metavar=("H", "W"),
        help=f"context added on each side of a tile, at least the radius of the largest "
        f"objects and less than half the tile (default: {hy} {hx})",
    )
    group.add_argument(
        "--no-tiling",
        action="store_true",
        help="never tile: SAM sees each plane shrunk to 1024 pixels",
    )


def tiling_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~napari_sam.workflows.tiling.Tiling` the options ask for.

    Raises
    ------
    SettingsError
        For sizes out of range, or ``--no-tiling`` together with a tile shape or halo.
    """
    from napari_sam.workflows.tiling import DEFAULT_HALO, Tiling

    tile_shape = getattr(args, "tile_shape", None)
    halo = getattr(args, "halo", None)
    if getattr(args, "no_tiling", False):
        if tile_shape is not None or halo is not None:
            raise SettingsError(
                "--no-tiling cannot be combined with --tile-shape or --halo; choose one."
            )
        return Tiling.off()
    if tile_shape is not None:
        return Tiling.on(tuple(tile_shape), tuple(halo) if halo is not None else DEFAULT_HALO)
    if halo is not None:
        return Tiling(mode="auto", halo=tuple(halo))  # type: ignore[arg-type]
    return Tiling()


def tiling_options(args: argparse.Namespace) -> tuple[tuple[str, Any], ...]:
    """``segment()`` keywords for the tiling options: ``(("tiling", {...}),)``, or ``()``.

    Empty when the options ask for the default (automatic tiling), so that
    recipes of runs without tiling options stay as they were; the value is
    JSON (:meth:`~napari_sam.workflows.tiling.Tiling.as_dict`) so that it
    goes into a batch recipe and to cluster workers.
    """
    from napari_sam.workflows.tiling import Tiling

    tiling = tiling_from_args(args)
    return () if tiling == Tiling() else (("tiling", tiling.as_dict()),)
