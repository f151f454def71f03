"""The ``napari-sam`` command: headless tools around the bundled SAM.

Usage::

    napari-sam info                 # versions, devices, cache folder, checkpoints
    napari-sam download vit_b       # fetch weights into the cache (progress bar)
    napari-sam download all
    napari-sam embed stack.tif -o CACHE_DIR   # precompute a 3D stack's embeddings
    napari-sam segment cells.tif -o cells_labels.tif   # label every object (TIFF in/out)

Adding a subcommand
-------------------
Write ``_add_<name>(subparsers)`` that calls :func:`add_subcommand` and sets
``handler=<function(args) -> int>`` with ``set_defaults``, then append it to
:data:`SUBCOMMANDS`. Handlers import heavy modules (torch, the model) inside
the function so that ``import napari_sam.cli`` and ``napari-sam --help`` stay
fast. Expected failures are raised as :class:`~napari_sam.errors.NapariSamError`;
:func:`main` prints them as one line on stderr and returns 1 (the traceback is
shown only with ``--debug``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from napari_sam.errors import (
    DeviceFallbackWarning,
    ImageFormatError,
    InputFileError,
    NapariSamError,
    OutputFileError,
)

__all__ = ["SUBCOMMANDS", "add_subcommand", "build_parser", "main"]

PROG = "napari-sam"

Handler = Callable[[argparse.Namespace], int]

# Options every subcommand accepts. SUPPRESS keeps a subparser from overwriting
# a value given before the subcommand name (``napari-sam --debug info``).
_COMMON = argparse.ArgumentParser(add_help=False)
_COMMON.add_argument(
    "--debug",
    action="store_true",
    default=argparse.SUPPRESS,
    help="show the full Python traceback when something fails",
)


def _add_speed_options(parser: Any) -> None:
    """``--precision`` and ``--compile`` (the GPU fast path) on a parser or group."""
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="image-encoder precision: auto (default) = bf16 on a CUDA GPU, fp32 elsewhere; "
        "masks are always computed in fp32",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the image encoder with torch.compile (GPU; the first slice takes "
        "minutes longer, later ones are faster)",
    )


def package_version() -> str:
    """Installed version of napari-sam (``"unknown"`` when running from a source tree)."""
    from importlib import metadata

    try:
        return metadata.version("napari-sam")
    except metadata.PackageNotFoundError:
        package = sys.modules.get("napari_sam")
        return str(getattr(package, "__version__", "unknown"))


def add_subcommand(
    subparsers: Any, name: str, *, help: str, description: str | None = None
) -> argparse.ArgumentParser:
    """Add a subcommand parser that also accepts the common options (``--debug``).

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The object returned by ``parser.add_subparsers()``.
    name : str
        Name of the subcommand.
    help : str
        One line for ``napari-sam --help``.
    description : str, optional
        Longer text for ``napari-sam <name> --help``; defaults to ``help``.

    Returns
    -------
    argparse.ArgumentParser
        The new parser; call ``set_defaults(handler=...)`` on it.
    """
    return subparsers.add_parser(
        name,
        help=help,
        description=description or help,
        parents=[_COMMON],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


# --------------------------------------------------------------------------- info


def _add_info(subparsers: Any) -> None:
    parser = add_subcommand(
        subparsers,
        "info",
        help="show versions, compute devices, the cache folder and the known checkpoints",
    )
    parser.set_defaults(handler=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    import platform

    from napari_sam.runtime import config, weights
    from napari_sam.runtime.device import describe_devices
    from napari_sam.runtime.loader import resolve_model_type

    devices = describe_devices()
    lines = [
        f"napari-sam {package_version()}",
        f"Python {platform.python_version()} ({sys.executable})",
        f"PyTorch {devices['torch_version']}",
    ]
    if devices["cuda_available"]:
        gpus = ", ".join(
            f"cuda:{index} {name}" for index, name in enumerate(devices["cuda_devices"])
        )
        lines.append(f"CUDA: available (built for CUDA {devices['cuda_version']}): {gpus}")
    else:
        built = devices["cuda_version"]
        note = f"PyTorch built for CUDA {built}, no usable GPU" if built else "CPU-only PyTorch"
        lines.append(f"CUDA: not available ({note})")
    lines.append(f"MPS (Apple GPU): {'available' if devices['mps_available'] else 'not available'}")
    lines.append(f"Auto device: {devices['auto']}")
    try:
        auto_model = resolve_model_type("auto", devices["auto"])
    except Exception as exc:  # diagnostics must not fail because the model code is broken
        auto_model = f"unknown (the model code cannot be imported: {exc})"
    lines.append(f"Auto model type: {auto_model}")
    try:
        from napari_sam.model.precision import autocast_dtype

        dtype = autocast_dtype("auto", devices["auto"])
        precision = "float32" if dtype is None else str(dtype).removeprefix("torch.")
        lines.append(f"Image-encoder precision (auto): {precision}; masks in float32")
    except Exception as exc:
        lines.append(f"Image-encoder precision: unknown ({exc})")

    folder = config.cache_dir(create=False)
    origin = config.cache_dir_origin()
    exists = "" if folder.is_dir() else "does not exist yet"
    notes = "; ".join(note for note in (origin, exists) if note)
    lines.append(f"Cache folder: {folder}" + (f" ({notes})" if notes else ""))
    lines.append("Checkpoints:")
    for key, info in weights.CHECKPOINTS.items():
        lines.append(
            f"  {key:<6} {info.filename:<22} {_format_mb(info.size_bytes):>10}  "
            f"{_cache_state(folder / info.filename, info)}"
        )
    print("\n".join(lines))
    return 0


def _format_mb(size: int | None) -> str:
    return "size ?" if size is None else f"{size / 1e6:.1f} MB"


def _cache_state(path: Any, info: Any) -> str:
    try:
        size = path.stat().st_size
    except OSError:
        return "not cached"
    if info.size_bytes is None or size == info.size_bytes:
        return "cached"
    return f"incomplete ({size} of {info.size_bytes} bytes; will be downloaded again)"


# --------------------------------------------------------------------------- download


def _add_download(subparsers: Any) -> None:
    from napari_sam.runtime.weights import CHECKPOINTS, MODEL_TYPE_ALIASES

    choices = [*CHECKPOINTS, *MODEL_TYPE_ALIASES, "all"]
    parser = add_subcommand(
        subparsers,
        "download",
        help="download SAM weights into the cache",
        description=(
            "Download published SAM checkpoints into the napari-sam cache folder\n"
            "(see `napari-sam info`), check their size and checksum, and print\n"
            "their paths. Files already downloaded are kept unless --force is given."
        ),
    )
    parser.add_argument(
        "model_types",
        nargs="+",
        choices=choices,
        metavar="MODEL_TYPE",
        help=f"one or more of: {', '.join(choices)}",
    )
    parser.add_argument(
        "--force", action="store_true", help="download again even if the file is cached"
    )
    parser.add_argument("--quiet", action="store_true", help="do not show a progress bar")
    parser.set_defaults(handler=_run_download)


def _run_download(args: argparse.Namespace) -> int:
    from napari_sam.runtime import config, weights

    wanted: list[str] = []
    for name in args.model_types:
        names = list(weights.CHECKPOINTS) if name == "all" else [name]
        for item in names:
            key = weights.checkpoint_info(item).model_type
            if key not in wanted:
                wanted.append(key)

    for key in wanted:
        info = weights.checkpoint_info(key)
        if weights.is_cached(key) and not args.force:
            path = weights.checkpoint_path(key, download=False)
            print(f"{key}: already downloaded", file=sys.stderr)
        else:
            path = weights.download(
                info.url,
                config.cache_dir() / info.filename,
                expected_size=info.size_bytes,
                md5=info.md5,
                sha256=info.sha256,
                progress=not args.quiet,
            )
        print(path)
    return 0


# --------------------------------------------------------------------------- embed


def _add_embed(subparsers: Any) -> None:
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
            "and maximum, which napari shows for a newly opened stack)."
        ),
    )
    parser.add_argument("input", metavar="INPUT", help="3D TIFF stack (Z, Y, X); .npy also works")
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
    _add_speed_options(parser)
    parser.add_argument(
        "--contrast",
        nargs=2,
        type=float,
        default=None,
        metavar=("LOW", "HIGH"),
        help="contrast limits for SAM's 8-bit input (default: the stack's min and max)",
    )
    parser.add_argument(
        "--slices", default=None, metavar="START:STOP", help="only these slices (e.g. 10:20)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="slices per forward pass (default: 4 on a CUDA GPU, 1 otherwise)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not show a progress bar")
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
    import math
    import time

    from tqdm import tqdm

    from napari_sam.runtime.device import resolve_device
    from napari_sam.runtime.loader import load
    from napari_sam.workflows import embeddings as volume
    from napari_sam.workflows import io

    t0 = time.perf_counter()
    stack = io.read_stack(args.input)
    slices = _parse_slices(args.slices, stack.shape[0])
    if args.contrast is not None:
        low, high = args.contrast
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ImageFormatError(
                f"--contrast needs two finite numbers LOW <= HIGH, got {low:g} {high:g}."
            )
        contrast = (low, high)
    else:
        contrast = volume.default_contrast_limits(stack)
    if args.batch_size is not None and args.batch_size < 1:
        raise ImageFormatError(f"--batch-size must be at least 1, got {args.batch_size}.")
    folder = args.output if args.output else volume.default_cache_dir()
    disk = volume.DiskCache(folder)
    device = resolve_device(args.device)
    loaded = load(
        args.model,
        args.checkpoint,
        device=device,
        progress=not args.quiet,
        precision=args.precision,
        compile=args.compile or None,
    )
    sam = loaded.sam
    embeddings = volume.StackEmbeddings(
        sam,
        stack,
        model_id=loaded.model_id,
        contrast=contrast,
        store=volume.EmbeddingStore(max_mb=0),
        disk=disk,
        batch_size=args.batch_size,
    )
    bar = tqdm(
        total=0, unit="slice", desc="encoding", file=sys.stderr, disable=args.quiet, leave=False
    )

    try:
        encoded = embeddings.precompute(slices, progress=_bar_updater(bar))
    finally:
        bar.close()
    n = stack.shape[0] if slices is None else len(slices)
    print(
        f"{Path(args.input).name}: {n} slice{'s' if n != 1 else ''}, {encoded} encoded, "
        f"{n - encoded} already cached; model {embeddings.model_id} on {sam.device} "
        f"({_precision_name(sam)} encoder), contrast "
        f"{contrast[0]:g}–{contrast[1]:g}; {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    print(disk.root)
    return 0


# --------------------------------------------------------------------------- segment

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

exit status: 0 done; 1 failed (one line says why; --debug shows the details);
2 wrong command line; 130 interrupted (Ctrl+C). A failed or interrupted run
leaves no half-written output file.
"""


def _add_segment(subparsers: Any) -> None:
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
    _add_speed_options(group)

    group = parser.add_argument_group(
        "what counts as an object",
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
        default=d.min_area,
        metavar="N",
        help=f"drop objects smaller than N pixels, and fill holes smaller than that "
        f"(default {d.min_area})",
    )
    group.add_argument(
        "--max-area",
        type=float,
        default=d.max_area_fraction,
        metavar="X",
        help=f"drop masks covering more than the fraction X of the image, such as the "
        f"background (default {d.max_area_fraction}; 1 keeps all)",
    )
    group.add_argument(
        "--contrast",
        nargs=2,
        type=float,
        default=None,
        metavar=("LOW", "HIGH"),
        help="show SAM the intensities LOW (black) to HIGH (white) (default: the image's "
        "minimum and maximum)",
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
        jobs = []
        for path in unique:
            stem = path.name[: -len(path.suffix)] if path.suffix else path.name
            stem = stem[:-4] if stem.lower().endswith(".ome") else stem
            jobs.append((path, out / f"{stem}_labels.tif"))
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


def _check_writable(folder: Path) -> None:
    """Fail early (before minutes of work) if no file can be created in ``folder``.

    A folder that does not exist yet is not created here (a failed run leaves
    nothing behind); its nearest existing parent is tested instead.
    """
    import tempfile


    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, f"{existing} is a file")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise OutputFileError(
            f"The output folder {folder} is not writable ({exc.strerror or exc})."
        ) from exc


def _run_segment(args: argparse.Namespace) -> int:
    import math
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
    contrast = None
    if args.contrast is not None:
        low, high = args.contrast
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ImageFormatError(
                f"--contrast needs two finite numbers LOW <= HIGH, got {low:g} {high:g}."
            )
        contrast = (low, high)
    jobs = _segment_jobs(args.inputs, args.output)
    coco_path = Path(args.coco).expanduser() if args.coco else None
    if coco_path is not None and coco_path.is_dir():
        raise io.OutputFileError(f"--coco {coco_path} is a folder; give a .json file name.")
    for folder in {dst.parent for _, dst in jobs} | ({coco_path.parent} if coco_path else set()):
        _check_writable(folder)
    device = resolve_device(args.device)

    single = len(jobs) == 1
    sam = None
    coco = io.CocoWriter() if coco_path is not None else None
    failed: list[str] = []

    def fail(src: Path, exc: NapariSamError) -> None:
        if single:
            raise exc
        failed.append(src.name)
        print(f"{PROG}: error: {exc}", file=sys.stderr)

    for src, dst in jobs:
        t0 = time.perf_counter()
        try:
            image = io.read_tiff(src)
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
            result = segment(
                sam,
                image.data,
                rgb=image.rgb,
                contrast_limits=contrast,
                settings=settings,
                progress=_bar_updater(bar),
            )
            io.write_labels_tiff(dst, result.labels, scale=image.scale, unit=image.unit)
        except NapariSamError as exc:
            fail(src, exc)
            continue
        finally:
            bar.close()
        if coco is not None:
            coco.add(result.labels, src.name, stack=result.slices is not None, scores=result.scores)
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
    if failed:
        raise NapariSamError(
            f"{len(failed)} of {len(jobs)} inputs could not be segmented: {', '.join(failed)}."
        )
    return 0


#: Functions that each add one subcommand; extend this list to add commands.
SUBCOMMANDS: list[Callable[[Any], None]] = [_add_info, _add_download, _add_embed, _add_segment]


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """Build the ``napari-sam`` argument parser with all :data:`SUBCOMMANDS`.

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Segment Anything (SAM) for microscopy: command-line tools.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False,
        help="show the full Python traceback when something fails",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def _bar_updater(bar: Any) -> Callable[[Any], None]:
    """A progress callback (:class:`~napari_sam.runtime.progress.Progress`) driving a tqdm bar."""

    def update(event: Any) -> None:
        if event.total is not None and bar.total != event.total:
            bar.total = event.total
            bar.refresh()
        bar.update(event.done - bar.n)

    return update


def _precision_name(sam: Any) -> str:
    """``"float32"``, ``"bfloat16"`` or ``"float16"``: the encoder precision in use."""
    dtype = getattr(sam, "encoder_dtype", None)
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


@contextlib.contextmanager
def _plain_warnings() -> Iterator[None]:
    """Show napari-sam's own warnings (e.g. a GPU out-of-memory fallback) as one line."""

    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, DeviceFallbackWarning):
            print(f"{PROG}: warning: {message}", file=sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``napari-sam`` command.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit code: 0 on success, 1 when the command failed (the reason is
        printed as one line on stderr), 2 for a usage error, 130 after Ctrl+C.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    debug = bool(getattr(args, "debug", False))
    try:
        with _plain_warnings():
            return int(handler(args) or 0)
    except NapariSamError as exc:
        if debug:
            traceback.print_exc()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
