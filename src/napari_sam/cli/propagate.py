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
from napari_sam.cli.segment_channels import add_channel_files_option, add_channels_option
from napari_sam.errors import OutputFileError

_DESCRIPTION = """\
Follow objects through the slices of a 3D stack (Z Y X), or the frames of a
time-lapse (T Y X), from a few clicks, with SAM 2's memory: each slice is
segmented from what the model remembers of the object on the clicked slices
and on the last slices it saw. Objects are followed up and down from their
clicked slices and stop where SAM 2 says they are gone.

STACK is a TIFF (or .npy) grayscale stack or movie, or a stack of colour
(RGB) planes (Z Y X RGB: serial sections, a colour movie), which SAM 2 sees in
their colours; with --channels, 1-3 channels of a multichannel stack (C Z Y X)
are SAM's red, green and blue; with --with, STACK is SAM's red and the files
given its green (and blue): channels saved one per file. PROMPTS is a CSV file with one
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
the time point), as the napari dock exports it. A PROMPTS table with a header
t,z,y,x,label,object names the time point of each click instead: every line
with clicks is followed (the time points with --along z, the slices with
--along t; no --at). The output has the whole time-lapse's shape, with the
objects on those lines; it is written plane by plane, never whole in memory.

examples:
  napari-sam propagate stack.tif --prompts clicks.csv -o labels.tif
  napari-sam propagate movie.tif --prompts clicks.csv -o labels.tif --model sam2_base_plus
  napari-sam propagate stack.tif --prompts clicks.csv -o labels.tif --keep-going
  napari-sam propagate movie.tif --prompts clicks.csv -o labels.tif --along t --at 12
  napari-sam propagate movie.tif --prompts cells_tz.csv -o labels.tif --along z
  napari-sam propagate cells_czyx.tif --prompts clicks.csv -o labels.tif --channels 1 0
  napari-sam propagate C1-cells.tif --with C2-cells.tif --prompts clicks.csv -o labels.tif

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
        help="3D TIFF stack (Z, Y, X) or movie (T, Y, X), a stack of colour planes "
        "(Z, Y, X, RGB), or a time-lapse of stacks (T, Z, Y, X)",
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
    add_channels_option(group, "a multichannel stack (C, Z, Y, X)")
    add_channel_files_option(group)
    group.add_argument(
        "--contrast",
        nargs="+",
        type=float,
        default=None,
        metavar="LOW HIGH",
        help="show SAM the intensities LOW (black) to HIGH (white); with --channels one pair "
        "per channel (default: the whole file's, or channel's, minimum and maximum)",
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
        "objects at (not with a t column in PROMPTS)",
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
    import time
    from dataclasses import replace

    from tqdm import tqdm

    from napari_sam.cli.segment_channels import check_channel_files, check_channels_and_contrast
    from napari_sam.runtime.device import resolve_device
    from napari_sam.runtime.loader import load
    from napari_sam.workflows import io
    from napari_sam.workflows.batch import large_file
    from napari_sam.workflows.embeddings import EmbeddingStore
    from napari_sam.workflows.followed import FollowedPlanes
    from napari_sam.workflows.memory_propagation import (
        MemoryPropagationSettings,
        propagate_memory,
    )
    from napari_sam.workflows.timelapse import LineLabels

    t0 = time.perf_counter()
    check_cluster_options(args)
    out = Path(args.output).expanduser()
    if out.suffix.lower() not in io.TIFF_SUFFIXES:
        raise OutputFileError(f"The output {out} must be a .tif file name.")
    others, contrast = check_channel_files(args.channels, args.with_files, args.contrast)
    if others is None:
        channels, contrast = check_channels_and_contrast(args.channels, args.contrast)
        if channels is None and contrast is not None:
            contrast = contrast[0]  # one LOW HIGH pair for the image
    else:
        channels = None
    followed = FollowedPlanes(channels, contrast, others=others)
    settings = MemoryPropagationSettings(
        stop_when_absent=not args.keep_going,
        absent_slices=args.absent_slices,
        min_area=args.min_area,
    )
    # a large file is read one plane at a time (its contrast, unless given, reads it once)
    image = followed.read(args.input, lazy=large_file(Path(args.input).expanduser()))
    planes = followed.planes(image, Path(args.input).name)
    followed = followed.resolved(planes)  # one contrast for every line (the whole file's)
    lines = _lines(args, planes)
    check_writable(out.parent)
    if args.workers is not None or args.scheduler:
        return _propagate_on_cluster(args, lines, followed, settings, out, t0)
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
    labels, n, summaries = None, 0, []
    try:
        for line, prompts in lines:
            on_line = replace(followed, line=line)
            embeddings = on_line.embeddings(loaded.sam, planes, model_id=loaded.model_id,
                                            store=EmbeddingStore(0), disk=args.cache_dir,
                                            resize=settings.resize)  # fmt: skip
            result = propagate_memory(loaded, embeddings, prompts, z_range=args.slices,
                                      settings=settings, progress=bar_updater(bar))
            found = result.label_volume()
            if line is None:
                labels = found
            else:
                if labels is None:  # written plane by plane: never whole in memory
                    labels = LineLabels(planes.shape)
                labels.add(line, found)
            n += len(result.objects)
            summaries.append(result.summary(unit="slice" if line is None else line.unit))
    finally:
        bar.close()
    io.write_labels_tiff(out, labels, scale=image.scale, unit=image.unit)
    _report(args, lines, n, loaded.describe(), out, t0, summaries)
    return 0


def _report(args: argparse.Namespace, lines: list[Any], n: int, model: str, out: Path,
            t0: float, summaries: list[str]) -> None:
    """The run's sentence on stderr (and each line's summary unless ``--quiet``), the
    output's path on stdout."""
    import time

    from napari_sam.workflows.timelapse import describe_lines

    where = "" if lines[0][0] is None else f" {describe_lines([line for line, _ in lines])}"
    print(
        f"{Path(args.input).name}: {n} object{'s' if n != 1 else ''} followed{where} with "
        f"{model} -> {out} ({time.perf_counter() - t0:.1f} s)",
        file=sys.stderr,
    )
    if not args.quiet:
        for (line, _), summary in zip(lines, summaries):
            head = f"{line.name}:\n" if len(lines) > 1 else ""
            body = summary if not head else "\n".join(f"  {s}" for s in summary.splitlines())
            print(head + body, file=sys.stderr)
    print(out)


def _lines(args: argparse.Namespace, planes: Any) -> list[tuple[Any, list[Any]]]:
    """What to follow in the image (``planes``: as SAM sees it): ``(line, prompts)`` pairs;
    the line is None for a stack or movie, one line of a time-lapse of stacks
    (``--along``/``--at``), or one per time point (or slice) of a prompt table with a ``t``
    column."""
    from napari_sam.errors import SettingsError
    from napari_sam.workflows.prompt_table import read_prompt_lines, read_prompt_table
    from napari_sam.workflows.timelapse import TimelapseLine

    name, shape = Path(args.input).name, tuple(planes.shape)
    if len(shape) != 4:
        if args.along is not None or args.at is not None:
            raise SettingsError(
                f"--along and --at are for time-lapses of stacks (T, Z, Y, X); {name} has "
                f"shape {shape}."
            )
        return [(None, read_prompt_table(args.prompts))]
    table = read_prompt_lines(args.prompts, "z" if args.along is None else args.along)
    if table is None:
        line = TimelapseLine.check(args.along, args.at, shape, name)
        return [(line, read_prompt_table(args.prompts))]
    csv_name = Path(args.prompts).name
    if args.at is not None:
        raise SettingsError(
            f"{csv_name} has a t column, which says where each click is: leave --at out (or "
            "drop the column to follow the objects on one line)."
        )
    found = TimelapseLine.from_table(args.along, table, shape, name, csv_name)
    return [(line, table[line.at]) for line in found]


def _propagate_on_cluster(
    args: argparse.Namespace,
    lines: list[tuple[Any, list[Any]]],
    followed: Any,
    settings: Any,
    out: Path,
    t0: float,
) -> int:
    """The Dask path: the planes of each line encoded by all workers, then followed by one;
    several lines are followed one after the other and written into one output."""
    import contextlib

    import numpy as np
    from tqdm import tqdm

    from napari_sam.distributed.cluster import local_torch_threads
    from napari_sam.distributed.propagate import run_propagation
    from napari_sam.workflows import io
    from napari_sam.workflows.planes import plane_geometry
    from napari_sam.workflows.timelapse import LineLabels

    spec = cluster_model(args)
    outcomes, parts = [], []
    with announced_cluster(args) as client:
        bar = tqdm(
            total=0, desc=Path(args.input).name, unit="task", file=sys.stderr,
            disable=args.quiet, leave=False,
        )  # fmt: skip
        try:
            labels = written = None
            for k, (line, prompts) in enumerate(lines):
                target = out if len(lines) == 1 else out.with_name(f".{out.stem}.line{k}.tif")
                parts.append(target)
                outcomes.append(run_propagation(
                    client, spec, args.input, prompts, target,
                    settings=settings, z_range=args.slices, contrast=followed.contrast,
                    channels=followed.channels, others=followed.others,
                    cache_dir=args.cache_dir,
                    torch_threads=local_torch_threads(args.workers) if args.workers else None,
                    progress=bar_updater(bar), line=line,
                ))  # fmt: skip
                if len(lines) > 1:  # each line's TIFF is zero off its line: merge them
                    written = io.read_tiff(target, frames=True, lazy=True)
                    if labels is None:
                        labels = LineLabels(written.data.shape)
                    at = plane_geometry(labels.shape).line_slicer(line.index, line.axis)
                    labels.add(line, np.asarray(written.data[at]))  # reads the line only
            if written is not None:
                io.write_labels_tiff(out, labels, scale=written.scale, unit=written.unit)
        finally:
            bar.close()
            for part in parts if len(lines) > 1 else []:
                with contextlib.suppress(OSError):
                    part.unlink()
    encoded = sum(o.encoded for o in outcomes)
    reused = sum(o.reused for o in outcomes)
    unit = "slice" if lines[0][0] is None else lines[0][0].unit
    model = (f"{args.model} on the cluster ({encoded} {unit}s encoded, {reused} found encoded "
             "before)")
    _report(args, lines, sum(o.n_objects for o in outcomes), model, out, t0,
            [o.summary for o in outcomes])
    return 0
