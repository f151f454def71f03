"""``napari-sam segment``: label every object of images and stacks (TIFF in, TIFF out)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_sam.cli import segment_channels
from napari_sam.cli.common import (
    PROG,
    add_speed_options,
    add_subcommand,
    bar_updater,
    check_writable,
)
from napari_sam.errors import (
    NapariSamError,
)

_SEGMENT_DESCRIPTION = """\
Find every object (cells, nuclei, ...) in an image with SAM's automatic mask
generator and save them as a label image: a TIFF of the same height and width
(and number of slices) as the input, where the background is 0 and each object
has its own number (1, 2, 3, ...). Fiji, napari and most analysis tools open it.

INPUT is a TIFF file: a 2D grayscale image (Y X), a 2D colour image (Y X RGB)
or a 3D stack (Z Y X; also a time series T Y X), 8/16-bit or float. A stack is
segmented slice by slice. The output keeps the input's pixel size (voxel size).
Several INPUTs, or a folder of TIFFs, are written into the OUTPUT folder as
<name>_labels.tif.

SAM sees the image with the contrast napari shows for a newly opened image
(its minimum to its maximum) unless --contrast is given.

examples:
  napari-sam segment cells.tif -o cells_labels.tif
  napari-sam segment stack.tif -o stack_labels.tif --link-slices --coco stack.json
  napari-sam segment images/ -o labels/ --model vit_b --device cuda
  napari-sam segment nuclei.tif -o out.tif --model vit_b --checkpoint my_sam.pth
  napari-sam segment cells.tif -o cells_labels.tif --channels 1 2 --contrast 100 2000 50 900 \
      --table objects.csv

exit status: 0 done; 1 failed (one line says why; --debug shows the details);
2 wrong command line; 130 interrupted (Ctrl+C). A failed or interrupted run
leaves no half-written output file.
"""


def add(subparsers: Any) -> None:
    from napari_sam.runtime.settings import field_help
    from napari_sam.workflows.segment import AutoSettings

    d = AutoSettings()
    parser = add_subcommand(
        subparsers,
        "segment",
        help="label every object in a 2D image or 3D stack (TIFF in, label TIFF out)",
        description=_SEGMENT_DESCRIPTION,
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="TIFF file(s), or a folder of TIFF files"
    )
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUTPUT",
        help="label TIFF to write (one INPUT), or a folder (several INPUTs or a folder)",
    )
    parser.add_argument(
        "--coco",
        metavar="PATH",
        default=None,
        help="also write the objects as COCO JSON (run-length encoded masks; one COCO "
        "image per 2D image or per slice)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")

    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default="auto",
        choices=["auto", "vit_t", "vit_b", "vit_l", "vit_h"],
        help="SAM model: vit_t (MobileSAM, fastest), vit_b, vit_l, vit_h (largest, most "
        "accurate); auto (default) = vit_t on a CPU, vit_b on a GPU",
    )
    group.add_argument(
        "--checkpoint",
        metavar="PATH",
        default=None,
        help="weights file to use instead of the published one (downloaded once, cached); "
        "with --model auto the model type is read from the file",
    )
    group.add_argument(
        "--device",
        default="auto",
        metavar="DEVICE",
        help="auto (default: GPU if there is one), cpu, cuda, cuda:N or mps",
    )
    add_speed_options(group)

    group = parser.add_argument_group(
        "what counts as an object",
        "Lower thresholds give more (and poorer) objects; higher ones fewer, cleaner ones.",
    )
    group.add_argument(
        "--points-per-side",
        type=int,
        default=d.points_per_side,
        metavar="N",
        help=field_help(AutoSettings, "points_per_side", default=True),
    )
    group.add_argument(
        "--pred-iou-thresh",
        type=float,
        default=d.pred_iou_thresh,
        metavar="X",
        help=field_help(AutoSettings, "pred_iou_thresh", default=True),
    )
    group.add_argument(
        "--stability-score-thresh",
        type=float,
        default=d.stability_score_thresh,
        metavar="X",
        help=field_help(AutoSettings, "stability_score_thresh", default=True),
    )
    group.add_argument(
        "--box-nms-thresh",
        type=float,
        default=d.box_nms_thresh,
        metavar="X",
        help=field_help(AutoSettings, "box_nms_thresh", default=True),
    )
    group.add_argument(
        "--crop-layers",
        type=int,
        default=d.crop_n_layers,
        metavar="N",
        help=field_help(AutoSettings, "crop_n_layers", default=True),
    )
    group.add_argument(
        "--min-area",
        type=int,
        default=d.min_area,
        metavar="N",
        help=field_help(AutoSettings, "min_area", default=True),
    )
    group.add_argument(
        "--max-area",
        type=float,
        default=d.max_area_fraction,
        metavar="X",
        help=field_help(AutoSettings, "max_area_fraction", default=True),
    )

    group = parser.add_argument_group("3D stacks")
    group.add_argument(
        "--link-slices",
        action="store_true",
        help=field_help(AutoSettings, "link_slices"),
    )
    group.add_argument(
        "--link-iou",
        type=float,
        default=d.link_iou,
        metavar="X",
        help=field_help(AutoSettings, "link_iou", default=True),
    )
    segment_channels.add_options(parser)  # --channels, --contrast, --table
    parser.set_defaults(handler=_run_segment)


def _segment_jobs(inputs: Sequence[str], output: str) -> list[tuple[Path, Path]]:
    """(input file, output file) pairs; raises for missing inputs and clashing outputs."""
    from napari_sam.workflows import io

    files: list[Path] = []
    folder_given = False
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir():
            folder_given = True
            found = io.find_tiffs(path)
            if not found:
                raise io.InputFileError(f"The folder {path} holds no .tif or .tiff files.")
            files.extend(found)
        elif not path.exists():
            raise io.InputFileError(f"The input file {path} does not exist.")
        else:
            files.append(path)
    unique: list[Path] = []
    for path in files:
        if path.resolve() not in {p.resolve() for p in unique}:
            unique.append(path)
    out = Path(output).expanduser()
    if (
        len(unique) == 1
        and not folder_given
        and not out.is_dir()
        and not output.endswith(("/", "\\"))
    ):
        if out.suffix.lower() not in io.TIFF_SUFFIXES:
            raise io.OutputFileError(
                f"The output {out} must be a .tif file name (or an existing folder)."
            )
        jobs = [(unique[0], out)]
    else:
        if out.exists() and not out.is_dir():
            raise io.OutputFileError(
                f"{len(unique)} inputs need an output folder, but {out} is a file."
            )
        jobs = [(path, io.labels_path_for(path, out)) for path in unique]
    seen: dict[Path, Path] = {}
    for src, dst in jobs:
        key = dst.resolve()
        if key == src.resolve():
            raise io.OutputFileError(f"The output {dst} is the input file; choose another name.")
        if key in seen:
            raise io.OutputFileError(
                f"{seen[key].name} and {src.name} would both be written to {dst}; segment "
                "them into different folders."
            )
        seen[key] = src
    return jobs


def _run_segment(args: argparse.Namespace) -> int:
    import time

    from tqdm import tqdm

    from napari_sam.runtime.device import resolve_device
    from napari_sam.runtime.loader import load
    from napari_sam.workflows import io
    from napari_sam.workflows.segment import AutoSettings, segment

    settings = AutoSettings(
        points_per_side=args.points_per_side,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        box_nms_thresh=args.box_nms_thresh,
        crop_n_layers=args.crop_layers,
        min_area=args.min_area,
        max_area_fraction=args.max_area,
        link_slices=args.link_slices,
        link_iou=args.link_iou,
    )
    settings.check()
    extra = segment_channels.check_options(args)
    contrast = extra.single_contrast
    jobs = _segment_jobs(args.inputs, args.output)
    coco_path = Path(args.coco).expanduser() if args.coco else None
    if coco_path is not None and coco_path.is_dir():
        raise io.OutputFileError(f"--coco {coco_path} is a folder; give a .json file name.")
    extra_folders = {extra.table.parent} if extra.table else set()
    for folder in {dst.parent for _, dst in jobs} | (
        {coco_path.parent} if coco_path else set()
    ) | extra_folders:
        check_writable(folder)
    device = resolve_device(args.device)

    single = len(jobs) == 1
    sam = None
    coco = io.CocoWriter() if coco_path is not None else None
    tables = segment_channels.TableWriter(extra.table) if extra.table else None
    failed: list[str] = []

    def fail(src: Path, exc: NapariSamError) -> None:
        if single:
            raise exc
        failed.append(src.name)
        print(f"{PROG}: error: {exc}", file=sys.stderr)

    for src, dst in jobs:
        t0 = time.perf_counter()
        try:
            image = segment_channels.read_input(src, extra)
        except NapariSamError as exc:
            fail(src, exc)
            continue
        if sam is None:  # after the first input was read: a bad input fails fast
            sam = load(
                args.model,
                args.checkpoint,
                device=device,
                progress=not args.quiet,
                precision=args.precision,
                compile=args.compile or None,
            ).sam
        bar = tqdm(
            total=0, desc=src.name, unit="step", file=sys.stderr, disable=args.quiet, leave=False
        )

        try:
            if extra.channels is not None:
                result = segment_channels.segment_input(
                    sam, image, extra, settings, bar_updater(bar)
                )
            else:
                result = segment(
                    sam,
                    image.data,
                    rgb=image.rgb,
                    contrast_limits=contrast,
                    settings=settings,
                    progress=bar_updater(bar),
                )
            io.write_labels_tiff(dst, result.labels, scale=image.scale, unit=image.unit)
        except NapariSamError as exc:
            fail(src, exc)
            continue
        finally:
            bar.close()
        if coco is not None:
            coco.add(result.labels, src.name, stack=result.slices is not None, scores=result.scores)
        if tables is not None:
            tables.add(result.labels, src.name, image, result.scores, "automatic")
        planes = "" if result.slices is None else f" in {len(result.slices)} slices"
        print(
            f"{src.name}: {result.n_objects} object{'s' if result.n_objects != 1 else ''}"
            f"{planes} -> {dst} ({time.perf_counter() - t0:.1f} s)",
            file=sys.stderr,
        )
        print(dst)
    if coco is not None and len(failed) < len(jobs):
        coco.write(coco_path)
        print(coco_path)
    if tables is not None and tables.tables:
        print(tables.write())
    if failed:
        raise NapariSamError(
            f"{len(failed)} of {len(jobs)} inputs could not be segmented: {', '.join(failed)}."
        )
    return 0


#: Functions that each add one subcommand; extend this list to add commands.
