"""``napari-sam propagate``: follow clicked objects through a stack with SAM 2's memory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from napari_sam.cli.common import (
    add_speed_options,
    add_subcommand,
    announced_cluster,
    bar_updater,
    check_cluster_options,
    check_writable,
    cluster_model,
)
from napari_sam.errors import ImageFormatError, OutputFileError

_DESCRIPTION = """\
Follow objects through the slices of a 3D stack (Z Y X), or the frames of a
time-lapse (T Y X), from a few clicks, with SAM 2's memory: each slice is
segmented from what the model remembers of the object on the clicked slices
and on the last slices it saw. Objects are followed up and down from their
clicked slices and stop where SAM 2 says they are gone.

STACK is a TIFF (or .npy) grayscale stack. PROMPTS is a CSV file with one
click per row, z,y,x,label,object (a header line is optional):

  z,y,x,label,object
  8,120.5,64,1,1        # slice 8, row 120.5, column 64: object 1
  8,30,200,1,2          # object 2 ...
  8,35,190,0,2          # ... and a background click that belongs to it

label 1 = on the object, 0 = background. The output is a label TIFF of the
stack's shape (object ids as given; 0 = background) with the input's voxel size.

A time-lapse of stacks (T Z Y X) is followed along one axis: --along z --at T
through the slices of time point T, or --along t --at Z through the time points
at slice Z; z in PROMPTS is then the position along that axis (the slice, or
the time point), as the napari dock exports it. The output has the whole
time-lapse's shape, with the objects on that line.

examples:
  napari-sam propagate stack.tif --prompts clicks.csv -o labels.tif
  napari-sam propagate movie.tif --prompts clicks.csv -o labels.tif --model sam2_base_plus
  napari-sam propagate stack.tif --prompts clicks.csv -o labels.tif --keep-going
  napari-sam propagate movie.tif --prompts clicks.csv -o labels.tif --along t --at 12

exit status: 0 done; 1 failed (one line says why; --debug shows the details);
2 wrong command line; 130 interrupted (Ctrl+C). A failed or interrupted run
leaves no half-written output file.
"""

_SAM2_MODELS = ["sam2_tiny", "sam2_small", "sam2_base_plus", "sam2_large"]


def add(subparsers: Any) -> None:
    parser = add_subcommand(
        subparsers,
        "propagate",
        help="follow clicked objects through a stack or time-lapse with SAM 2 (label TIFF out)",
        description=_DESCRIPTION,
    )
    parser.add_argument(
        "input", metavar="STACK",
        help="3D TIFF stack (Z, Y, X) or movie (T, Y, X), or a time-lapse of stacks (T, Z, Y, X)",
    )  # fmt: skip
    parser.add_argument(
        "--prompts", required=True, metavar="CSV", help="clicks as rows z,y,x,label,object"
    )
    parser.add_argument(
        "-o", "--output", required=True, metavar="LABELS.tif", help="label TIFF to write"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default="sam2_tiny",
        choices=_SAM2_MODELS,
        help="SAM 2.1 model (default sam2_tiny, the fastest; sam2_large the most accurate)",
    )
    group.add_argument(
        "--checkpoint", metavar="PATH", default=None, help="weights file instead of the published"
    )
    group.add_argument(
        "--device", default="auto", metavar="DEVICE", help="auto (default), cpu, cuda, cuda:N, mps"
    )
    add_speed_options(group)
    group = parser.add_argument_group("where objects end")
    group.add_argument(
        "--keep-going",
        action="store_true",
        help="do not stop where SAM 2 says an object is gone (visit every slice)",
    )
    group.add_argument(
        "--absent-slices",
        type=int,
        default=1,
        metavar="N",
        help="an object ends after N slices in a row without it (default 1)",
    )
    group.add_argument(
        "--min-area",
        type=int,
        default=0,
        metavar="N",
        help="a mask smaller than N pixels counts as the object being gone (default 0)",
    )
    group.add_argument(
        "--slices",
        nargs=2,
        type=int,
        default=None,
        metavar=("FIRST", "LAST"),
        help="only follow objects within these slices (inclusive; default all)",
    )
    group = parser.add_argument_group("input")
    group.add_argument(
        "--contrast",
        nargs=2,
        type=float,
        default=None,
        metavar=("LOW", "HIGH"),
        help="show SAM the intensities LOW (black) to HIGH (white) (default: the stack's "
        "minimum and maximum)",
    )
    group.add_argument(
        "--along",
        choices=("z", "t"),
        default=None,
        help="time-lapses of stacks (T, Z, Y, X): follow objects through the slices (z, the "
        "default) or through the time points (t)",
    )
    group.add_argument(
        "--at",
        type=int,
        default=None,
        metavar="N",
        help="time-lapses of stacks: the time point (--along z) or slice (--along t) to follow "
        "objects at",
    )
    group.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="keep the slices' embeddings in this folder (reused by later runs and by "
        "napari-sam embed / the napari widget with the same model and contrast)",
    )
    group = parser.add_argument_group(
        "Dask cluster",
        "The walk from slice to slice runs in one worker (each slice needs SAM 2's memory of\n"
        "the slices before it), but the slices are encoded by all workers at once first,\n"
        "into a folder next to the output (or --cache-dir). The stack, the output and that\n"
        "folder must be on a file system the workers see under the same paths.",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="start a Dask cluster of N worker processes on this machine",
    )
    group.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run on an existing Dask cluster: its scheduler's address (tcp://host:8786) or "
        "scheduler file (.json); see docs/distributed.md",
    )
    parser.set_defaults(handler=_run_propagate)


def _run_propagate(args: argparse.Namespace) -> int:
    import math
    import time

    from tqdm import tqdm

    from napari_sam.runtime.device import resolve_device
    from napari_sam.runtime.loader import load
    from napari_sam.workflows import io
    from napari_sam.workflows.embeddings import default_contrast_limits
    from napari_sam.workflows.memory_propagation import (
        MemoryPropagationSettings,
        propagate_memory,
    )
    from napari_sam.workflows.prompt_table import read_prompt_table

    t0 = time.perf_counter()
    check_cluster_options(args)
    out = Path(args.output).expanduser()
    if out.suffix.lower() not in io.TIFF_SUFFIXES:
        raise OutputFileError(f"The output {out} must be a .tif file name.")
    contrast = None
    if args.contrast is not None:
        low, high = args.contrast
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ImageFormatError(
                f"--contrast needs two finite numbers LOW <= HIGH, got {low:g} {high:g}."
            )
        contrast = (low, high)
    settings = MemoryPropagationSettings(
        stop_when_absent=not args.keep_going,
        absent_slices=args.absent_slices,
        min_area=args.min_area,
    )
    image = io.read_tiff(args.input, frames=True)
    if image.rgb:
        raise ImageFormatError(
            f"{Path(args.input).name} is a colour (RGB) image; propagation needs a grayscale "
            "stack (Z, Y, X) or movie (T, Y, X)."
        )
    line = _timelapse_line(args, image)
    prompts = read_prompt_table(args.prompts)
    check_writable(out.parent)
    if line is not None and contrast is None:  # the whole time-lapse's range, as napari shows it
        contrast = default_contrast_limits(image.data)
    if args.workers is not None or args.scheduler:
        return _propagate_on_cluster(args, prompts, settings, contrast, out, t0, line)
    loaded = load(
        args.model,
        args.checkpoint,
        device=resolve_device(args.device),
        progress=not args.quiet,
        precision=args.precision,
        compile=args.compile or None,
    )
    bar = tqdm(
        total=0,
        desc=Path(args.input).name,
        unit="slice",
        file=sys.stderr,
        disable=args.quiet,
        leave=False,
    )
    try:
        result = propagate_memory(
            loaded,
            image.data if line is None else line.view(image.data, contrast),
            prompts,
            z_range=args.slices,
            settings=settings,
            contrast=contrast,
            disk=args.cache_dir,
            progress=bar_updater(bar),
        )
    finally:
        bar.close()
    labels = result.label_volume()
    if line is not None:
        labels = line.place(labels, image.data.shape)
    io.write_labels_tiff(out, labels, scale=image.scale, unit=image.unit)
    n = len(result.objects)
    where = "" if line is None else f" {line.describe()}"
    print(
        f"{Path(args.input).name}: {n} object{'s' if n != 1 else ''} followed{where} with "
        f"{loaded.describe()} -> {out} ({time.perf_counter() - t0:.1f} s)",
        file=sys.stderr,
    )
    if not args.quiet:
        print(result.summary(unit="slice" if line is None else line.unit), file=sys.stderr)
    print(out)
    return 0


def _timelapse_line(args: argparse.Namespace, image: Any) -> Any:
    """The line to follow in a time-lapse of stacks (None for a stack or movie)."""
    from napari_sam.errors import SettingsError
    from napari_sam.workflows.timelapse import TimelapseLine

    name = Path(args.input).name
    if image.data.ndim == 4:
        return TimelapseLine.check(args.along, args.at, image.data.shape, name)
    if args.along is not None or args.at is not None:
        raise SettingsError(
            f"--along and --at are for time-lapses of stacks (T, Z, Y, X); {name} has shape "
            f"{tuple(image.data.shape)}."
        )
    return None


def _propagate_on_cluster(
    args: argparse.Namespace,
    prompts: list[Any],
    settings: Any,
    contrast: tuple[float, float] | None,
    out: Path,
    t0: float,
    line: Any = None,
) -> int:
    """The Dask path: the slices encoded by all workers, then followed by one."""
    import time

    from tqdm import tqdm

    from napari_sam.distributed.cluster import local_torch_threads
    from napari_sam.distributed.propagate import run_propagation

    spec = cluster_model(args)
    with announced_cluster(args) as client:
        bar = tqdm(
            total=0, desc=Path(args.input).name, unit="task", file=sys.stderr,
            disable=args.quiet, leave=False,
        )  # fmt: skip
        try:
            outcome = run_propagation(
                client, spec, args.input, prompts, out,
                settings=settings, z_range=args.slices, contrast=contrast,
                cache_dir=args.cache_dir,
                torch_threads=local_torch_threads(args.workers) if args.workers else None,
                progress=bar_updater(bar), line=line,
            )  # fmt: skip
        finally:
            bar.close()
    n = outcome.n_objects
    where = "" if line is None else f" {line.describe()}"
    print(
        f"{Path(args.input).name}: {n} object{'s' if n != 1 else ''} followed{where} with "
        f"{args.model} "
        f"on the cluster ({outcome.encoded} {'slice' if line is None else line.unit}s encoded, "
        f"{outcome.reused} found encoded "
        f"before) -> {out} ({time.perf_counter() - t0:.1f} s)",
        file=sys.stderr,
    )
    if not args.quiet:
        print(outcome.summary, file=sys.stderr)
    print(out)
    return 0
