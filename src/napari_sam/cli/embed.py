"""``napari-sam embed``: precompute the embeddings of a 3D stack into a disk cache."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from napari_sam.cli.common import (
    add_speed_options,
    add_subcommand,
    bar_updater,
    precision_name,
)
from napari_sam.cli.segment_channels import (
    add_channel_files_option,
    add_channels_option,
    check_channel_files,
    check_channels_and_contrast,
)
from napari_sam.cli.tile_options import add_tiling_options, tiling_from_args
from napari_sam.errors import (
    ImageFormatError,
    InputFileError,
)


def add(subparsers: Any) -> None:
    from napari_sam.workflows.embeddings import BATCH_SIZE_RULE

    parser = add_subcommand(
        subparsers,
        "embed",
        help="precompute the SAM embeddings of a 3D stack into a cache folder",
        description=(
            "Encode every slice of a 3D stack (a TIFF file, Z Y X) with SAM's image encoder\n"
            "and keep the embeddings in a cache folder (float16, one checksummed file per\n"
            "slice). Slices already in the folder are skipped, so an interrupted run resumes.\n"
            "The napari widget finds these embeddings when its disk cache points at the same\n"
            "folder and the model and contrast limits match (by default the stack's minimum\n"
            "and maximum, which napari shows for a newly opened stack).\n"
            "A stack of colour planes (Z Y X RGB: serial sections) is encoded in its colours;\n"
            "a time-lapse of stacks (T Z Y X, or T Z Y X RGB) slice by slice, every time\n"
            "point (--slices: those slices of each).\n"
            "Large planes are tiled (see the tiling options): every tile of every plane is\n"
            "encoded, and a tiled 2D image (Y X or Y X RGB) is accepted too."
        ),
    )
    parser.add_argument(
        "input", metavar="INPUT",
        help="3D TIFF stack (Z, Y, X), stack of colour planes (Z, Y, X, RGB) or time-lapse of "
        "stacks (T, Z, Y, X); .npy also works",
    )  # fmt: skip
    parser.add_argument(
        "-o",
        "--output",
        metavar="CACHE_DIR",
        default=None,
        help="cache folder (default: the embeddings folder of the napari-sam cache)",
    )
    parser.add_argument(
        "--model",
        default="auto",
        metavar="MODEL_TYPE",
        help="auto (default: vit_t on a CPU, vit_b on a GPU), vit_t, vit_b, vit_l or vit_h",
    )
    parser.add_argument(
        "--checkpoint", default=None, metavar="PATH", help="weights file (default: published)"
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N, mps")
    add_speed_options(parser)
    parser.add_argument(
        "--contrast",
        nargs="+",
        type=float,
        default=None,
        metavar="LOW HIGH",
        help="contrast limits for SAM's 8-bit input, one pair per channel with --channels "
        "(default: the stack's, or channel's, min and max)",
    )
    add_channels_option(parser, "a multichannel stack (C, Z, Y, X) or hyperstack (T, Z, C, Y, "
                        "X), its planes not tiled "
                        "(the embeddings napari-sam propagate --channels --cache-dir reads)")
    add_channel_files_option(parser)
    parser.add_argument(
        "--slices", default=None, metavar="START:STOP", help="only these slices (e.g. 10:20)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help=f"slices per forward pass (default: {BATCH_SIZE_RULE})",
    )
    parser.add_argument("--quiet", action="store_true", help="do not show a progress bar")
    add_tiling_options(parser)
    parser.set_defaults(handler=_run_embed)


def _parse_slices(text: str | None, n: int) -> list[int] | None:

    if text is None:
        return None
    parts = text.split(":")
    try:
        values = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        values = []
    if len(parts) == 1 and values and values[0] is not None:
        start, stop = values[0], values[0] + 1
    elif len(parts) == 2 and values:
        start, stop = values
    else:
        raise InputFileError(f"--slices must look like START:STOP (e.g. 10:20), not {text!r}.")
    chosen = list(range(n))[slice(start, stop)]
    if not chosen:
        raise InputFileError(f"--slices {text} selects no slice of a stack of {n} slices.")
    return chosen


def _run_embed(args: argparse.Namespace) -> int:
    import time

    from napari_sam.workflows import embeddings as volume
    from napari_sam.workflows.planes import stack_embeddings

    t0 = time.perf_counter()
    others, pairs = check_channel_files(args.channels, args.with_files, args.contrast)
    channels = None
    if others is None:
        channels, pairs = check_channels_and_contrast(args.channels, args.contrast)
    tiling = tiling_from_args(args)
    if channels is not None or others is not None or _is_timelapse(args.input):
        return _embed_planes(args, t0, channels, pairs, tiling, others)
    stack, rgb, grid = _read_for_embedding(args.input, tiling)
    if stack.ndim - rgb == 2:
        if args.slices is not None:
            raise InputFileError(f"--slices needs a 3D stack; {Path(args.input).name} is 2D.")
        slices = None
    else:
        slices = _parse_slices(args.slices, stack.shape[0])
    contrast = pairs[0] if pairs is not None else volume.default_contrast_limits(stack)
    disk = _disk(args)
    loaded = _load(args)
    sam = loaded.sam
    if grid is not None:
        return _embed_tiled(args, t0, loaded, stack, rgb, tiling, contrast, disk, slices)
    embeddings = stack_embeddings(
        sam,
        stack,
        rgb=rgb,
        model_id=loaded.model_id,
        contrast=contrast,
        store=volume.EmbeddingStore(max_mb=0),
        disk=disk,
        batch_size=args.batch_size,
    )
    return _precompute(args, embeddings, slices, f"{contrast[0]:g}–{contrast[1]:g}", t0)


def _disk(args: argparse.Namespace) -> Any:
    """The cache folder (``-o``, else the default) as a DiskCache; checks --batch-size."""
    from napari_sam.workflows import embeddings as volume

    if args.batch_size is not None and args.batch_size < 1:
        raise ImageFormatError(f"--batch-size must be at least 1, got {args.batch_size}.")
    return volume.DiskCache(args.output if args.output else volume.default_cache_dir())


def _load(args: argparse.Namespace) -> Any:
    from napari_sam.runtime.device import resolve_device
    from napari_sam.runtime.loader import load

    return load(args.model, args.checkpoint, device=resolve_device(args.device),
                progress=not args.quiet, precision=args.precision,
                compile=args.compile or None)  # fmt: skip


def _precompute(args: argparse.Namespace, embeddings: Any, slices: list[int] | None,
                contrast: str, t0: float) -> int:
    """Encode the slices (None: all) that are not cached, with a progress bar; the one-line
    summary on stderr, the cache folder on stdout. ``embeddings``: of a stack, or a list of
    them, one per time point of a time-lapse."""
    import time

    from tqdm import tqdm

    lines = embeddings if isinstance(embeddings, list) else [embeddings]
    bar = tqdm(
        total=0, unit="slice", desc="encoding", file=sys.stderr, disable=args.quiet, leave=False
    )
    encoded = 0
    try:
        for line in lines:
            encoded += line.precompute(slices, progress=bar_updater(bar))
    finally:
        bar.close()
    per_line = lines[0].n_slices if slices is None else len(slices)
    n = per_line * len(lines)
    what = f"{n} slice{'s' if n != 1 else ''}"
    if len(lines) > 1:
        what = f"{len(lines)} time points x {per_line} slices"
    first = lines[0]
    sam = first.model
    print(
        f"{Path(args.input).name}: {what}, {encoded} encoded, "
        f"{n - encoded} already cached; model {first.model_id} on {sam.device} "
        f"({precision_name(sam)} encoder), contrast {contrast}; "
        f"{time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    print(first.disk.root)
    return 0


def _is_timelapse(path: str) -> bool:
    """Whether ``path`` holds a time-lapse of stacks, (T, Z, Y, X) or (T, Z, Y, X, RGB) (read
    lazily: only its layout; any reading error is left to the stack path to say)."""
    from napari_sam.errors import NapariSamError
    from napari_sam.workflows import io

    try:
        image = io.read_image(path, lazy=True, frames=True)
    except NapariSamError:
        return False
    return image.data.ndim - image.rgb == 4


def _embed_planes(args: argparse.Namespace, t0: float, channels: tuple[int, ...] | None,
                  pairs: Any, tiling: Any, others: tuple[str, ...] | None = None) -> int:
    """Planes read as ``napari-sam propagate`` reads them (FollowedPlanes): --channels of a
    stack (C, Z, Y, X) or of a hyperstack (C, T, Z, Y, X), or channels in files of their own
    (--with), not tiled (as propagate reads them), and time-lapses of stacks (T, Z, Y, X, in
    colour too), every slice of every time point (tiled where the dock tiles). Keyed as the
    dock keys the same planes."""
    from dataclasses import replace

    from napari_sam.workflows.batch import large_file
    from napari_sam.workflows.embeddings import EmbeddingStore
    from napari_sam.workflows.followed import FollowedPlanes
    from napari_sam.workflows.timelapse import TimelapseLine

    path = Path(args.input).expanduser()
    several = channels is not None or others is not None
    followed = FollowedPlanes(channels, pairs if several or pairs is None else pairs[0],
                              others=others)  # fmt: skip
    image = followed.read(path, lazy=large_file(path))
    if image.data.ndim - several - image.rgb == 2:
        raise InputFileError(
            f"{path.name} is a 2D image (shape {tuple(image.data.shape)}); embed "
            f"{'--channels' if channels else '--with'} precomputes the slices of a stack or "
            "of a time-lapse of stacks."
        )
    planes = followed.planes(image, path.name)
    followed = followed.resolved(planes)
    leading = planes.geometry.leading_shape
    slices = _parse_slices(args.slices, leading[-1])
    if not several:
        shown = f"{followed.contrast[0]:g}–{followed.contrast[1]:g}"
    else:
        names = ([f"channel {c}" for c in channels] if channels is not None
                 else [Path(p).name for p in (path, *others)])  # fmt: skip
        shown = ", ".join(f"{name} {lo:g}–{hi:g}" for name, (lo, hi) in zip(names,
                                                                           followed.contrast))
    disk, loaded = _disk(args), _load(args)
    if not several and tiling.grid(planes.geometry.plane_shape) is not None:
        chosen = [(t, z) for t in range(leading[0]) for z in (slices or range(leading[1]))]
        return _embed_tiled(args, t0, loaded, image.data, image.rgb, tiling, followed.contrast,
                            disk, chosen)  # fmt: skip
    lines = [None] if len(leading) == 1 else [TimelapseLine("z", t) for t in range(leading[0])]
    embeddings = [replace(followed, line=line).embeddings(
        loaded.sam, planes, model_id=loaded.model_id, store=EmbeddingStore(0), disk=disk,
        batch_size=args.batch_size) for line in lines]  # fmt: skip
    return _precompute(args, embeddings, slices, shown, t0)


def _read_for_embedding(path: str, tiling: Any) -> tuple[Any, bool, Any]:
    """(data, rgb, tile grid or None): a stack (of colour planes with rgb), or a 2D image
    whose planes are tiled."""
    from napari_sam.workflows import io
    from napari_sam.workflows.image import image_layout

    try:
        stack = io.read_stack(path)
    except InputFileError:
        colour = _colour_stack(path)
        if colour is not None:
            return colour, True, tiling.grid(colour.shape[1:3])
        if tiling.mode == "off":
            raise
        image = io.read_tiff(path)
        layout = image_layout(image.data.shape, rgb=image.rgb, dtype=image.data.dtype)
        grid = tiling.grid(layout.plane_shape)
        if grid is None:  # a 2D image that is not tiled: the stack's message stands
            raise
        return image.data, image.rgb, grid
    return stack, False, tiling.grid(stack.shape[1:])


def _colour_stack(path: str) -> Any:
    """The data ``(Z, Y, X, 3|4)`` of a stack of colour planes in ``path``, else None."""
    from napari_sam.workflows import io

    try:
        image = io.read_tiff(path, frames=True)
    except InputFileError:
        return None
    return image.data if image.rgb and image.data.ndim == 4 else None


def _embed_tiled(
    args: argparse.Namespace,
    t0: float,
    loaded: Any,
    data: Any,
    rgb: bool,
    tiling: Any,
    contrast: Any,
    disk: Any,
    slices: list[int] | None,
) -> int:
    import time

    from tqdm import tqdm

    from napari_sam.workflows import embeddings as volume
    from napari_sam.workflows.tiled_embeddings import TiledEmbeddings

    sam = loaded.sam
    tiles = TiledEmbeddings(
        sam,
        data,
        model_id=loaded.model_id,
        tiling=tiling,
        rgb=rgb,
        contrast=contrast,
        store=volume.EmbeddingStore(max_mb=0),
        disk=disk,
        batch_size=args.batch_size,
    )
    bar = tqdm(
        total=0, unit="tile", desc="encoding", file=sys.stderr, disable=args.quiet, leave=False
    )
    try:
        encoded = tiles.precompute(slices, progress=bar_updater(bar))
    finally:
        bar.close()
    chosen = list(tiles.slices) if slices is None else list(slices)
    n_planes = len(chosen)
    n = n_planes * len(tiles.grid)
    (th, tw), (hy, hx) = tiles.grid.tile_shape, tiles.grid.halo
    planes = f"{n_planes} slice{'s' if n_planes != 1 else ''} x " if tiles.is_stack else ""
    if tiles.planes.geometry.n_leading == 2:  # a time-lapse: (t, z) planes
        n_times = len({t for t, _ in chosen})
        planes = f"{n_times} time points x {n_planes // n_times} slices x "
    print(
        f"{Path(args.input).name}: {planes}{len(tiles.grid)} tiles ({th}x{tw}, halo {hy}x{hx}), "
        f"{encoded} encoded, {n - encoded} already cached; model {tiles.model_id} on "
        f"{sam.device} ({precision_name(sam)} encoder), "
        + (
            "min-max per tile"
            if tiles.contrast is None
            else f"contrast {tiles.contrast[0]:g}–{tiles.contrast[1]:g}"
        )
        + f"; {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    print(disk.root)
    return 0


# --------------------------------------------------------------------------- segment
