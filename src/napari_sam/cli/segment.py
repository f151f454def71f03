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
Find every object (cells, nuclei, ...) in an image and save them as a label
image: a TIFF of the same height and width
(and number of slices) as the input, where the background is 0 and each object
has its own number (1, 2, 3, ...). Fiji, napari and most analysis tools open it.

INPUT is a TIFF file: a 2D grayscale image (Y X), a 2D colour image (Y X RGB)
or a 3D stack (Z Y X; also a time series T Y X), 8/16-bit or float. A stack is
segmented slice by slice. The output keeps the input's pixel size (voxel size).
Several INPUTs, or a folder of TIFFs, are written into the OUTPUT folder as
<name>_labels.tif.

SAM sees the image with the contrast napari shows for a newly opened image
(its minimum to its maximum) unless --contrast is given.

Two ways to find objects (--mode): "ais", micro-sam's automatic instance
segmentation (a decoder on SAM's image features, then a watershed: one pass per
image, seconds on a CPU; needs a model with a decoder, e.g. --model vit_b_lm),
or "amg", SAM's automatic mask generator (a grid of point prompts; any model).
The default "auto" takes AIS when the model has a decoder, the grid otherwise.

examples:
  napari-sam segment cells.tif -o cells_labels.tif
  napari-sam segment cells.tif -o cells_labels.tif --model vit_b_lm      (AIS)
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
    from napari_sam.runtime.weights import CHECKPOINTS
    from napari_sam.workflows.ais import AISSettings
    from napari_sam.workflows.segment import MODES, AutoSettings

    d = AutoSettings()
    a = AISSettings()
    micro_sam = [name for name, info in CHECKPOINTS.items() if info.decoder is not None]
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
        choices=["auto", "vit_t", "vit_b", "vit_l", "vit_h", *micro_sam],
        metavar="MODEL",
        help="SAM model: vit_t (MobileSAM, fastest), vit_b, vit_l, vit_h (largest, most "
        "accurate); auto (default) = vit_t on a CPU, vit_b on a GPU; or one of micro-sam's "
        f"models for microscopy, which have an AIS decoder: {', '.join(micro_sam)}",
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
    group.add_argument(
        "--mode",
        default="auto",
        choices=list(MODES),
        help="ais: micro-sam's instance decoder + watershed (needs a model with a decoder); "
        "amg: SAM's grid of point prompts; auto (default): ais if the model has a decoder",
    )
    group.add_argument(
        "--decoder",
        metavar="PATH",
        default=None,
        help="an AIS decoder file (micro-sam's *_decoder.pt) for a model of the same size",
    )

    group = parser.add_argument_group(
        "AIS (--mode ais)",
        "micro-sam's defaults; lower distance thresholds split touching objects less often.",
    )
    group.add_argument(
        "--center-distance-thresh",
        type=float,
        default=a.center_distance_threshold,
        metavar="X",
        help=f"seeds where the predicted distance to the object centre is below X "
        f"(0-1, default {a.center_distance_threshold})",
    )
    group.add_argument(
        "--boundary-distance-thresh",
        type=float,
        default=a.boundary_distance_threshold,
        metavar="X",
        help=f"... and the predicted distance map to the boundary is below X "
        f"(0-1, default {a.boundary_distance_threshold})",
    )
    group.add_argument(
        "--foreground-thresh",
        type=float,
        default=a.foreground_threshold,
        metavar="X",
        help=f"pixels with a foreground probability above X belong to objects "
        f"(0-1, default {a.foreground_threshold})",
    )

    group = parser.add_argument_group(
        "what counts as an object (grid mode)",
        "Lower thresholds give more (and poorer) objects; higher ones fewer, cleaner ones.",
    )
    group.add_argument(
        "--points-per-side",
        type=int,
        default=d.points_per_side,
        metavar="N",
        help=f"SAM is prompted with an N x N grid of points; objects smaller than the grid "
        f"spacing can be missed, time grows with N squared (default {d.points_per_side})",
    )
    group.add_argument(
        "--pred-iou-thresh",
        type=float,
        default=d.pred_iou_thresh,
        metavar="X",
        help=f"keep masks whose quality as estimated by SAM is above X, 0-1 "
        f"(default {d.pred_iou_thresh})",
    )
    group.add_argument(
        "--stability-score-thresh",
        type=float,
        default=d.stability_score_thresh,
        metavar="X",
        help=f"keep masks whose outline is stable (score at least X, 0-1; default "
        f"{d.stability_score_thresh})",
    )
    group.add_argument(
        "--box-nms-thresh",
        type=float,
        default=d.box_nms_thresh,
        metavar="X",
        help=f"of two masks whose boxes overlap more than X (0-1), keep the better one "
        f"(default {d.box_nms_thresh})",
    )
    group.add_argument(
        "--crop-layers",
        type=int,
        default=d.crop_n_layers,
        metavar="N",
        help=f"also look at N levels of zoomed-in crops: finds smaller objects, takes "
        f"several times longer (default {d.crop_n_layers})",
    )
    group.add_argument(
        "--min-area",
        type=int,
        default=None,
        metavar="N",
        help=f"drop objects smaller than N pixels (grid mode: also fill holes smaller than "
        f"that); default {d.min_area} for the grid, {a.min_size} for AIS (micro-sam's)",
    )
    group.add_argument(
        "--max-area",
        type=float,
        default=d.max_area_fraction,
        metavar="X",
        help=f"drop masks covering more than the fraction X of the image, such as the "
        f"background (default {d.max_area_fraction}; 1 keeps all)",
    )

    group = parser.add_argument_group("3D stacks")
    group.add_argument(
        "--link-slices",
        action="store_true",
        help="give an object the same number in every slice it spans (matched by overlap "
        "with the previous slice); otherwise each slice's objects get their own numbers",
    )
    group.add_argument(
        "--link-iou",
        type=float,
        default=d.link_iou,
        metavar="X",
        help=f"with --link-slices: the overlap (intersection over union, 0-1) an object "
        f"needs with one in the previous slice to keep its number (default {d.link_iou})",
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
    from napari_sam.workflows.ais import AISSettings
    from napari_sam.workflows.segment import AutoSettings, resolve_mode, segment

    ais_settings = AISSettings(
        center_distance_threshold=args.center_distance_thresh,
        boundary_distance_threshold=args.boundary_distance_thresh,
        foreground_threshold=args.foreground_thresh,
        min_size=AISSettings().min_size if args.min_area is None else args.min_area,
    )
    ais_settings.check()
    settings = AutoSettings(
        points_per_side=args.points_per_side,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        box_nms_thresh=args.box_nms_thresh,
        crop_n_layers=args.crop_layers,
        min_area=AutoSettings().min_area if args.min_area is None else args.min_area,
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
    model = None
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
        if model is None:  # after the first input was read: a bad input fails fast
            model = load(
                args.model,
                args.checkpoint,
                device=device,
                progress=not args.quiet,
                precision=args.precision,
                compile=args.compile or None,
                decoder=args.decoder,
            )
            resolve_mode(args.mode, model)  # AIS without a decoder: fail before any work
        bar = tqdm(
            total=0, desc=src.name, unit="step", file=sys.stderr, disable=args.quiet, leave=False
        )

        try:
            if extra.channels is not None:
                result = segment_channels.segment_input(
                    model, image, extra, settings, bar_updater(bar),
                    mode=args.mode, ais_settings=ais_settings,
                )
            else:
                result = segment(
                    model,
                    image.data,
                    rgb=image.rgb,
                    contrast_limits=contrast,
                    settings=settings,
                    progress=bar_updater(bar),
                    mode=args.mode,
                    ais_settings=ais_settings,
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
            f"{planes} ({result.mode.upper()}) -> {dst} ({time.perf_counter() - t0:.1f} s)",
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
