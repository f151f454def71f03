"""``napari-sam segment``: label every object of images and stacks, in one process or on a
Dask cluster (``--workers N`` / ``--scheduler ADDRESS``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from napari_sam.cli import segment_channels
from napari_sam.cli.common import (
    PROG,
    add_speed_options,
    add_subcommand,
    announced_cluster,
    bar_updater,
    check_cluster_options,
    check_writable,
    cluster_model,
)
from napari_sam.cli.tile_options import add_tiling_options, tiling_options
from napari_sam.errors import (
    NapariSamError,
)

_SEGMENT_DESCRIPTION = """\
Find every object (cells, nuclei, ...) in an image and save them as a label
image: a TIFF of the same height and width
(and number of slices) as the input, where the background is 0 and each object
has its own number (1, 2, 3, ...). Fiji, napari and most analysis tools open it.

INPUT is an image file: TIFF, PNG, JPEG, BMP, .npy, or a zarr / OME-Zarr
folder; a 2D grayscale image (Y X), a 2D colour image (Y X RGB), a 3D stack
(Z Y X; also a time series T Y X), a stack of colour images (Z Y X RGB) or a
time-lapse of stacks (T Z Y X), 8/16-bit or float. A stack is segmented slice
by slice (--link-slices links objects through the slices of each time point;
time points keep their own ids). The output keeps the input's pixel size
(voxel size; the frame interval for T).
Several INPUTs, or a folder of images, are written into the OUTPUT folder as
<name>_labels.tif (<name>_labels.zarr for zarr inputs). Files a folder holds
besides images are listed at the end with the reason they were skipped.
An output already finished by an earlier run with the same settings is kept
(skipped); --force segments it again.

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
  napari-sam segment images/ -o labels/ --workers 2          # local Dask cluster
  napari-sam segment volume.ome.zarr -o labels.zarr --scheduler tcp://node1:8786
  napari-sam segment slide.tif -o slide_labels.tif --tile-shape 768 768 --halo 128 128

exit status: 0 done; 1 failed (one line says why; --debug shows the details;
with several inputs: some input failed, the others were segmented); 2 wrong
command line; 130 interrupted (Ctrl+C). A failed or interrupted run leaves no
half-written output.
"""


def add(subparsers: Any) -> None:
    from napari_sam.runtime.settings import field_help
    from napari_sam.runtime.weights import CHECKPOINTS
    from napari_sam.workflows.ais import AISSettings
    from napari_sam.workflows.segment import MODES, AutoSettings

    d = AutoSettings()
    a = AISSettings()
    micro_sam = [name for name, info in CHECKPOINTS.items() if info.decoder is not None]
    parser = add_subcommand(
        subparsers,
        "segment",
        help="label every object in 2D images or 3D stacks (label TIFF or OME-Zarr out)",
        description=_SEGMENT_DESCRIPTION,
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image file(s) (TIFF, PNG, JPEG, BMP, .npy, zarr), or a folder of them",
    )
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUTPUT",
        help="label file to write (.tif, or .zarr for OME-Zarr) for one INPUT, or a folder "
        "(several INPUTs or a folder)",
    )
    parser.add_argument(
        "--output-format",
        default="auto",
        choices=["auto", "tif", "zarr"],
        help="label files written into an OUTPUT folder: tif, zarr (OME-Zarr), or auto "
        "(default: zarr for zarr inputs, tif otherwise)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="segment again inputs whose output an earlier run finished with the same "
        "settings (default: keep those outputs and skip them)",
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
        default=None,
        metavar="N",
        help=field_help(AutoSettings, "min_area", default=True)
        + f"; for AIS the default is {a.min_size} (micro-sam's) and holes are kept",
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

    group = parser.add_argument_group(
        "Dask cluster (many files, huge stacks)",
        "Without these options everything runs in this process. Inputs and outputs must\n"
        "be on a file system the workers see under the same paths.",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="start a Dask cluster of N worker processes on this machine (each loads the "
        "model once; the CPU cores are shared among them)",
    )
    group.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run on an existing Dask cluster: its scheduler's address (tcp://host:8786) or "
        "scheduler file (.json); see docs/distributed.md for SLURM",
    )
    add_tiling_options(parser)
    parser.set_defaults(handler=_run_segment)


def _may_use_ais(args: argparse.Namespace) -> bool:
    """Whether this run may segment with AIS (before the model is loaded)."""
    from napari_sam.runtime.weights import CHECKPOINTS

    if args.mode != "auto":
        return args.mode == "ais"
    if args.decoder or args.checkpoint:  # a local file may bring its decoder
        return True
    info = CHECKPOINTS.get(args.model)
    return info is not None and info.decoder is not None


def _recipe(args: argparse.Namespace) -> Any:
    from napari_sam.workflows.ais import AISSettings
    from napari_sam.workflows.batch import Recipe, model_identity
    from napari_sam.workflows.segment import AutoSettings

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
    extra = segment_channels.check_options(args)  # --channels, --contrast, --table
    # options of other segmentation modes (e.g. --mode) go to segment() as keywords
    options = tuple(
        (name, getattr(args, name))
        for name in ("mode",)
        if getattr(args, name, None) is not None
    )
    if _may_use_ais(args):  # AIS thresholds are part of the recipe only where AIS can run
        options += (("ais_settings", ais_settings.as_dict()),)
    options += tiling_options(args)  # --tile-shape, --halo, --no-tiling
    model = model_identity(args.model, args.checkpoint)
    if args.decoder:
        model += " decoder=" + model_identity("decoder", args.decoder)
    return Recipe(
        settings=settings,
        contrast=extra.single_contrast if extra.channels is None else None,
        channels=extra.channels,
        channel_contrast=extra.contrast if extra.channels is not None else None,
        others=extra.others,
        others_by_input=extra.others_by_input,
        options=options,
        model=model,
        precision=args.precision,
    )


class _Report:
    """The lines of a run: one per finished input, and the summary at the end."""

    def __init__(self, plan: Any) -> None:
        self.plan = plan
        self.new_folders = {Path(p) for p in plan.new_folders}
        self.announced: set[Path] = set()
        self.done: list[Any] = []
        self.kept: list[Any] = []
        self.failed: list[tuple[Any, str]] = []

    def _write(self, line: str) -> None:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)

    def finished(
        self, job: Any, n_objects: int, n_slices: int | None, seconds: float, mode: str = "",
        n_frames: int | None = None, recipe: Any = None,
    ) -> None:
        """One input's line; with ``recipe`` of a run that paired INPUTs with channel files
        (--with), the line names the input's files."""
        self.done.append(job)
        paired = ""
        if recipe is not None and recipe.others_by_input is not None:
            files = recipe.for_input(job.source).others
            paired = f" (with {', '.join(Path(f).name for f in files)})"
        planes = "" if n_slices is None else f" in {n_slices} slices"
        if n_frames is not None:
            planes = f" in {n_frames} time points of {n_slices} slices"
        folder = job.output.parent
        note = ""
        if folder in self.new_folders and folder not in self.announced:
            self.announced.add(folder)
            note = f"; created the folder {folder}"
        self._write(
            f"{job.name}{paired}: {n_objects} object{'s' if n_objects != 1 else ''}{planes}"
            f"{f' ({mode.upper()})' if mode else ''} -> "
            f"{job.output} ({seconds:.1f} s{note})"
        )
        print(job.output, flush=True)

    def kept_before(self, job: Any, n_objects: int) -> None:
        self.kept.append(job)
        objects = f"{n_objects} object{'s' if n_objects != 1 else ''}, "
        self._write(
            f"{job.name}: already segmented with these settings -> {job.output} ({objects}"
            "kept; --force segments it again)"
        )
        print(job.output, flush=True)

    def fail(self, job: Any, reason: str) -> None:
        self.failed.append((job, reason))
        if len(self.plan.jobs) > 1:  # one input: its error is the run's last line
            self._write(f"{PROG}: error: {reason}")

    def summary(self) -> None:
        """The end summary: counts, every input that failed and every entry skipped."""
        n_jobs = len(self.plan.jobs)
        skipped = self.plan.skipped
        if n_jobs == 1 and not skipped and not self.kept:
            return
        parts = [f"{len(self.done)} segmented"]
        if self.kept:
            parts.append(f"{len(self.kept)} kept from an earlier run")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        if skipped:
            parts.append(f"{len(skipped)} skipped")
        lines = [f"{PROG}: {n_jobs} input{'s' if n_jobs != 1 else ''}: {', '.join(parts)}."]
        lines += [f"  failed:  {job.source}: {reason}" for job, reason in self.failed]
        lines += [f"  skipped: {path}: {reason}." for path, reason in skipped]
        for line in lines:
            print(line, file=sys.stderr)


def _run_segment(args: argparse.Namespace) -> int:
    from napari_sam.workflows import coco, io
    from napari_sam.workflows.batch import plan_jobs

    recipe = _recipe(args)
    check_cluster_options(args)
    table_path = Path(args.table).expanduser() if args.table else None
    plan = plan_jobs(args.inputs, args.output, output_format=args.output_format)
    coco_path = Path(args.coco).expanduser() if args.coco else None
    if coco_path is not None and coco_path.is_dir():
        raise io.OutputFileError(f"--coco {coco_path} is a folder; give a .json file name.")
    jobs = plan.jobs
    folders = {job.output.parent for job in jobs} | ({coco_path.parent} if coco_path else set())
    folders |= {table_path.parent} if table_path else set()
    for folder in folders:
        check_writable(folder)
    report = _Report(plan)
    coco = coco.CocoWriter() if coco_path is not None else None
    tables = segment_channels.TableWriter(table_path) if table_path else None
    planes: dict[int, Any] = {}
    try:
        if args.workers is not None or args.scheduler:
            _run_on_cluster(args, plan, recipe, report, planes, coco is not None, tables)
        else:
            _run_here(args, plan, recipe, report, planes, coco is not None, tables)
    except KeyboardInterrupt:
        if len(jobs) > 1 or args.workers is not None or args.scheduler:
            print(
                f"{PROG}: {len(report.done)} output(s) finished before the interruption are "
                "kept; the same command continues where this one stopped.",
                file=sys.stderr,
            )
        raise
    if coco is not None and report.done + report.kept:
        for index, _job in enumerate(jobs):
            for z, shape, anns in planes.get(index, []):
                coco.add_plane(jobs[index].name, z, shape, anns)
        coco.write(coco_path)
        print(coco_path)
    if tables is not None and tables.tables:
        print(tables.write())
    report.summary()
    if report.failed:
        if len(jobs) == 1:
            raise NapariSamError(report.failed[0][1])
        names = ", ".join(job.name for job, _ in report.failed)
        raise NapariSamError(
            f"{len(report.failed)} of {len(jobs)} inputs could not be segmented: {names}."
        )
    return 0


def _run_here(
    args: argparse.Namespace,
    plan: Any,
    recipe: Any,
    report: _Report,
    planes: dict[int, Any],
    coco: bool,
    tables: Any = None,
) -> None:
    """Today's single-process path: one input after the other, one model in this process.

    With ``tables`` (--table) every input is segmented again: the object table
    needs the labels and the image of each.
    """
    from tqdm import tqdm

    from napari_sam.runtime.device import resolve_device
    from napari_sam.runtime.loader import load
    from napari_sam.workflows.batch import Manifest, open_input, segment_file, tidy
    from napari_sam.workflows.segment import resolve_mode

    device = resolve_device(args.device)
    single = len(plan.jobs) == 1 and not plan.skipped  # its error is the only line
    model = None
    try:
        for index, job in enumerate(plan.jobs):
            job_recipe = recipe.for_input(job.source)  # its own channel files (--with)
            identity = job_recipe.identity()
            manifest = Manifest(job.output.parent)
            redo = args.force or tables is not None
            if not redo and manifest.finished(job, identity, coco=coco):
                report.kept_before(job, manifest.n_objects(job) or 0)
                planes[index] = manifest.coco(job) if coco else []
                continue
            try:
                image = open_input(job.source, job_recipe)
            except NapariSamError as exc:
                if single:
                    raise
                report.fail(job, str(exc))
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
                total=0, desc=job.name, unit="step", file=sys.stderr, disable=args.quiet,
                leave=False,
            )  # fmt: skip
            try:
                result = segment_file(
                    model, job, job_recipe, image=image, coco=coco,
                    table_method=None if tables is None else "automatic",
                    progress=bar_updater(bar),
                )  # fmt: skip
            except NapariSamError as exc:
                if single:
                    raise
                report.fail(job, str(exc))
                continue
            finally:
                bar.close()
            manifest.record(job, identity, result.coco, result.n_objects)
            planes[index] = result.coco or []
            if tables is not None:
                tables.add(result.table)
            report.finished(job, result.n_objects, result.n_slices, result.seconds, result.mode,
                            result.n_frames, recipe)
    finally:
        for folder in {job.output.parent for job in plan.jobs}:
            tidy(folder, folder in report.new_folders)


def _run_on_cluster(
    args: argparse.Namespace,
    plan: Any,
    recipe: Any,
    report: _Report,
    planes: dict[int, Any],
    coco: bool,
    tables: Any = None,
) -> None:
    """The Dask path: a local cluster (``--workers``) or an existing one (``--scheduler``).

    With ``tables`` (--table) the workers make each output's object table, and
    every input is segmented again, as in one process."""
    from tqdm import tqdm

    from napari_sam.distributed import run_batch
    from napari_sam.distributed.cluster import local_torch_threads

    spec = cluster_model(args, args.decoder)
    index_of = {job: i for i, job in enumerate(plan.jobs)}
    objects: dict[int, Any] = {}
    with announced_cluster(args) as client:
        bar = tqdm(total=0, desc="segmenting", unit="task", file=sys.stderr, disable=args.quiet)

        def on_outcome(outcome: Any) -> None:
            job = outcome.job
            if outcome.status == "failed":
                report.fail(job, outcome.reason)
                return
            planes[index_of[job]] = outcome.coco or []
            if outcome.table is not None:
                objects[index_of[job]] = outcome.table
            if outcome.status == "done":
                report.finished(job, outcome.n_objects, outcome.n_slices, outcome.seconds,
                                n_frames=outcome.n_frames, recipe=recipe)
            else:
                report.kept_before(job, outcome.n_objects)

        try:
            run_batch(
                client,
                plan.jobs,
                spec,
                recipe,
                coco=coco,
                table=tables is not None,
                force=args.force or tables is not None,
                torch_threads=local_torch_threads(args.workers) if args.workers else None,
                new_folders=plan.new_folders,
                progress=bar_updater(bar),
                on_outcome=on_outcome,
            )
        finally:
            bar.close()
            if tables is not None:  # in input order, as in one process
                tables.tables.extend(objects[i] for i in sorted(objects))
