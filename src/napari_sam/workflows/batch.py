"""Batch segmentation of many files: the jobs, what decides a result, resume records, one file.

``napari-sam segment`` uses these pieces in one process, and
:mod:`napari_sam.distributed` uses the same ones on the workers of a Dask
cluster, so both write the same labels for the same inputs:

- :func:`plan_jobs`: input paths and the ``-o`` argument -> one
  :class:`SegmentJob` (input file, output file) per image, plus every folder
  entry that is skipped and why (:class:`JobPlan`);
- :class:`Recipe`: everything that decides an output (settings, contrast,
  model, extra segmentation options such as a mode) and its
  :meth:`~Recipe.identity`, a hash;
- :class:`Manifest`: which outputs of a folder are finished and with which
  recipe, so that a rerun skips them (``<output folder>/.napari-sam/``);
- :func:`segment_file`: read one input, segment it, write its labels (TIFF or
  OME-Zarr, atomically);
- :func:`segment_slice`: one slice of a stack, with ids ``1..n`` (a cluster
  links or offsets them afterwards, see :mod:`~napari_sam.workflows.linking`).

No napari, no dask here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.errors import InputFileError, OutputFileError
from napari_sam.runtime.files import atomic_write
from napari_sam.runtime.progress import CancelCheck, ProgressCallback
from napari_sam.workflows import coco, io, zarr_io
from napari_sam.workflows.segment import AutoSettings, segment
from napari_sam.workflows.spill import labels_on_disk

__all__ = [
    "OUTPUT_FORMATS",
    "WORK_FOLDER",
    "FileResult",
    "JobPlan",
    "Manifest",
    "Recipe",
    "SegmentJob",
    "SliceResult",
    "coco_planes",
    "file_stamp",
    "model_identity",
    "plan_jobs",
    "segment_file",
    "segment_slice",
    "tidy",
]

#: Choices of ``--output-format``: ``auto`` writes zarr for zarr inputs, TIFF otherwise.
OUTPUT_FORMATS = ("auto", "tif", "zarr")
#: Hidden folder (in an output folder) holding resume records and unfinished work.
WORK_FOLDER = ".napari-sam"
#: Files larger than this are read plane by plane, never whole.
LAZY_BYTES = 1 << 30
#: Bumped when the same recipe would give different labels (invalidates resume records).
_FORMAT = 1


# ============================================================================= jobs
@dataclass(frozen=True)
class SegmentJob:
    """One input image and the label file to write for it."""

    source: Path
    output: Path

    @property
    def name(self) -> str:
        """The input's file name, as messages name it."""
        return self.source.name

    @property
    def is_zarr(self) -> bool:
        """Whether the output is an OME-Zarr folder (else a TIFF file)."""
        return self.output.suffix.lower() in zarr_io.ZARR_SUFFIXES


@dataclass
class JobPlan:
    """What :func:`plan_jobs` found to do.

    Attributes
    ----------
    jobs : list of SegmentJob
    skipped : list of (Path, str)
        Entries of input folders that are not segmented, with the reason.
    new_folders : list of Path
        Output folders that do not exist yet (created when the first output is written).
    """

    jobs: list[SegmentJob]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    new_folders: list[Path] = field(default_factory=list)


def _stem(path: Path) -> str:
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return stem[:-4] if stem.lower().endswith(".ome") else stem


def plan_jobs(
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    output_format: str = "auto",
) -> JobPlan:
    """Turn input paths and an output path into jobs.

    One input file (not a folder) and an ``output`` that is not an existing
    folder (nor ends in ``/``) -> ``output`` is the label file (``.tif``,
    ``.tiff`` or ``.zarr``). Otherwise ``output`` is a folder receiving
    ``<name>_labels.tif`` (or ``.zarr``: with ``output_format="zarr"``, or
    ``"auto"`` for a zarr input) for every input. Folders given as inputs
    contribute their images (:func:`~napari_sam.workflows.io.find_images`);
    what they hold besides is listed in :attr:`JobPlan.skipped`, as is an input
    that is the output of another job (a rerun into the input folder).

    Raises
    ------
    InputFileError
        If an input does not exist or a folder holds no image.
    OutputFileError
        If the output name does not fit, or two inputs would share an output.
    """
    if output_format not in OUTPUT_FORMATS:
        raise OutputFileError(
            f"The output format must be one of {', '.join(OUTPUT_FORMATS)}, not {output_format!r}."
        )
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    folder_given = False
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir() and not zarr_io.is_zarr(path):
            folder_given = True
            found = io.find_images(path)
            if not found.images:
                raise InputFileError(
                    f"The folder {path} holds no image napari-sam reads "
                    f"({', '.join(io.IMAGE_SUFFIXES)})."
                )
            files.extend(found.images)
            skipped.extend(found.skipped)
        elif not path.exists():
            raise InputFileError(f"The input file {path} does not exist.")
        else:
            files.append(path)
    unique: list[Path] = []
    seen_sources: set[Path] = set()
    for path in files:
        if path.resolve() not in seen_sources:
            seen_sources.add(path.resolve())
            unique.append(path)
    out_text = str(output)
    out = Path(output).expanduser()
    is_folder = out.is_dir() and not zarr_io.is_zarr(out)  # an earlier zarr output is a file
    if (
        len(unique) == 1
        and not folder_given
        and not is_folder
        and not out_text.endswith(("/", "\\"))
    ):
        if out.suffix.lower() not in io.LABEL_SUFFIXES:
            raise OutputFileError(
                f"The output {out} must be a .tif file name or a .zarr folder name (or an "
                "existing folder)."
            )
        jobs = [SegmentJob(unique[0], out)]
    else:
        if out.exists() and not is_folder:
            raise OutputFileError(
                f"{len(unique)} inputs need an output folder, but {out} is a file."
            )
        jobs = []
        for path in unique:
            zarr_out = output_format == "zarr" or (
                output_format == "auto" and zarr_io.is_zarr(path)
            )
            target = (
                out / f"{_stem(path)}_labels.zarr" if zarr_out else io.labels_path_for(path, out)
            )
            jobs.append(SegmentJob(path, target))
    outputs = {job.output.resolve(): job for job in jobs}
    kept: list[SegmentJob] = []
    for job in jobs:
        other = outputs.get(job.source.resolve())
        if other is not None and other is not job and len(jobs) > 1:
            skipped.append((job.source, f"the output of {other.name} in this run"))
        else:
            kept.append(job)
    jobs = kept
    seen: dict[Path, Path] = {}
    for job in jobs:
        key = job.output.resolve()
        if key == job.source.resolve():
            raise OutputFileError(
                f"The output {job.output} is the input file; choose another name."
            )
        if key in seen:
            raise OutputFileError(
                f"{seen[key].name} and {job.name} would both be written to {job.output}; "
                "segment them into different folders."
            )
        seen[key] = job.source
    new_folders = sorted({job.output.parent for job in jobs if not job.output.parent.exists()})
    return JobPlan(jobs, skipped, new_folders)


# ============================================================================= recipe
@dataclass(frozen=True)
class Recipe:
    """Everything that decides the labels of an input.

    Attributes
    ----------
    settings : AutoSettings
    contrast : (low, high) or None
        Contrast limits given by the user (None: each image's own default).
    options : tuple of (name, value)
        Further keyword arguments of :func:`~napari_sam.workflows.segment.segment`
        (e.g. ``(("mode", "ais"),)``), JSON-serialisable values.
    model : str
        The model's identity (type, or checkpoint path with its size and date).
    precision : str
        Image-encoder precision asked for.
    channels : tuple of int, optional
        Channels of a multichannel input given to SAM as red, green, blue (the
        input is read channels first; see :mod:`napari_sam.workflows.channels`).
    channel_contrast : tuple of (low, high), optional
        One contrast pair per chosen channel.
    others : tuple of str, optional
        Files holding the input's other channels (channels saved one per file): the
        input is channel 0 and these 1, 2 (:func:`~napari_sam.workflows.io.read_channel_files`);
        ``channels`` then numbers them. A changed file changes the identity.
    others_by_input : tuple of (str, tuple of str), optional
        For a run of several inputs with their channels one per file: each input's resolved
        path with its files. :meth:`for_input` gives one input's recipe (its ``others``).
    """

    settings: AutoSettings = field(default_factory=AutoSettings)
    contrast: tuple[float, float] | None = None
    options: tuple[tuple[str, Any], ...] = ()
    model: str = ""
    precision: str = "auto"
    channels: tuple[int, ...] | None = None
    channel_contrast: tuple[tuple[float, float], ...] | None = None
    others: tuple[str, ...] | None = None
    others_by_input: tuple[tuple[str, tuple[str, ...]], ...] | None = None

    def kwargs(self) -> dict[str, Any]:
        """The extra keyword arguments for ``segment()``."""
        return dict(self.options)

    def for_input(self, source: str | os.PathLike[str]) -> Recipe:
        """The recipe of the input ``source``: with ``others_by_input``, that input's
        channel files as ``others``; otherwise this recipe.

        Raises
        ------
        SettingsError
            If ``source`` was not paired with channel files.
        """
        if self.others_by_input is None:
            return self
        key = str(Path(source).expanduser().resolve())
        for path, files in self.others_by_input:
            if path == key:
                return replace(self, others=files, others_by_input=None)
        from napari_sam.errors import SettingsError

        raise SettingsError(f"{Path(source).name} was given no channel files (--with).")

    def identity(self) -> str:
        """A hash of the recipe: equal recipes give equal labels for equal inputs."""
        text = json.dumps(
            {
                "format": _FORMAT,
                "settings": self.settings.as_dict(),
                "contrast": None if self.contrast is None else [float(c) for c in self.contrast],
                "options": [[k, v] for k, v in self.options],
                "model": self.model,
                "precision": self.precision,
                "channels": None if self.channels is None else list(self.channels),
                "channel_contrast": None
                if self.channel_contrast is None
                else [list(map(float, c)) for c in self.channel_contrast],
                # only with --with, so that other recipes keep their identity
                **({} if self.others is None else
                   {"others": [model_identity("channel", p) for p in self.others]}),
                **({} if self.others_by_input is None else
                   {"others_by_input": [[src, [model_identity("channel", p) for p in files]]
                                        for src, files in self.others_by_input]}),
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def model_identity(model: str, checkpoint: str | os.PathLike[str] | None = None) -> str:
    """The model part of a :class:`Recipe`: its name, or the checkpoint file with its size
    and date (never fails: a missing file is reported when the model is loaded)."""
    if not checkpoint:
        return str(model)
    path = Path(checkpoint).expanduser()
    try:
        st = path.stat()
    except OSError:
        return f"{model}:file:{path.resolve()}"
    return f"{model}:file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


# ============================================================================= manifest
def file_stamp(path: Path) -> list[int] | None:
    """(size, modification time) of a file or folder, None if it is missing."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [0 if path.is_dir() else int(st.st_size), int(st.st_mtime_ns)]


class Manifest:
    """Finished outputs of one output folder and the recipes that made them.

    Stored as ``<folder>/.napari-sam/segment-manifest.json``. An output counts
    as finished (and is skipped by a rerun) only if the file is still the one
    written (same modification time), the input is unchanged (same size and
    time) and the recipe is the same.
    """

    NAME = "segment-manifest.json"

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / WORK_FOLDER / self.NAME

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def coco_path(self, job: SegmentJob) -> Path:
        """Where the COCO annotations of ``job``'s output are kept (for a resumed ``--coco``)."""
        return self.folder / WORK_FOLDER / "coco" / f"{job.output.name}.json"

    def finished(self, job: SegmentJob, identity: str, *, coco: bool = False) -> bool:
        """Whether ``job``'s output is finished with this recipe (and its COCO annotations
        kept, with ``coco``)."""
        entry = self._load().get(job.output.name)
        if not isinstance(entry, dict):
            return False
        if coco and not self.coco_path(job).is_file():
            return False
        return (
            entry.get("identity") == identity
            and entry.get("source") == str(job.source.resolve())
            and entry.get("source_stamp") == file_stamp(job.source)
            and entry.get("output_stamp") == file_stamp(job.output)
            and entry.get("output_stamp") is not None
        )

    def record(
        self,
        job: SegmentJob,
        identity: str,
        coco: list[tuple[int | None, tuple[int, int], list[dict]]] | None = None,
        n_objects: int | None = None,
    ) -> None:
        """Note ``job``'s output as finished (best effort: a read-only folder only loses resume).

        ``coco``: the output's COCO annotations per plane, kept for later runs;
        ``n_objects``: how many objects it holds (for messages).
        """
        if coco is not None:
            with contextlib.suppress(OutputFileError, OSError):
                with atomic_write(self.coco_path(job)) as tmp:
                    tmp.write_text(json.dumps([[z, list(shape), anns] for z, shape, anns in coco]))
        data = self._load()
        data[job.output.name] = {
            "identity": identity,
            "source": str(job.source.resolve()),
            "source_stamp": file_stamp(job.source),
            "output_stamp": file_stamp(job.output),
            "n_objects": n_objects,
        }
        with contextlib.suppress(OutputFileError, OSError):
            with atomic_write(self.path) as tmp:
                tmp.write_text(json.dumps(data, indent=1))

    def n_objects(self, job: SegmentJob) -> int | None:
        """The number of objects recorded for ``job``'s output, if known."""
        entry = self._load().get(job.output.name)
        value = entry.get("n_objects") if isinstance(entry, dict) else None
        return value if isinstance(value, int) else None

    def coco(self, job: SegmentJob) -> list[tuple[Any, tuple[int, int], list[dict]]]:
        """The COCO annotations kept by :meth:`record` (empty if there are none)."""
        try:
            planes = json.loads(self.coco_path(job).read_text())
        except (OSError, ValueError):
            return []
        return [  # a time-lapse's (t, z) comes back from JSON as a list
            (tuple(z) if isinstance(z, list) else z, (int(shape[0]), int(shape[1])), anns)
            for z, shape, anns in planes
        ]


# ============================================================================= one file
@dataclass
class FileResult:
    """What :func:`segment_file` did.

    Attributes
    ----------
    n_objects : int
    n_slices : int or None
        Slices of a stack, or of each time point of a time-lapse of stacks
        (None for a 2D image).
    coco : list of (plane, (height, width), annotations) or None
        COCO annotations of every plane (:func:`coco_planes`), when asked for.
    seconds : float
    mode : str
        How the objects were found: ``"ais"`` or ``"amg"`` (see
        :func:`~napari_sam.workflows.segment.resolve_mode`).
    table : pandas.DataFrame, optional
        The output's object table (:func:`~napari_sam.workflows.tables.image_object_table`),
        when asked for (``table_method`` of :func:`segment_file`).
    n_frames : int or None
        Time points of a time-lapse of stacks ``(T, Z, Y, X)`` (None otherwise).
    """

    n_objects: int
    n_slices: int | None
    coco: list[tuple[int | None, tuple[int, int], list[dict]]] | None = None
    seconds: float = 0.0
    mode: str = "amg"
    table: Any = None
    n_frames: int | None = None


def large_file(path: Path) -> bool:
    """Whether ``path`` is a file over :data:`LAZY_BYTES`, to be read one plane at a time."""
    try:
        return path.is_file() and path.stat().st_size > LAZY_BYTES
    except OSError:
        return False


def open_input(path: Path, recipe: Recipe | None = None) -> io.TiffImage:
    """Read an input; zarr folders and files over :data:`LAZY_BYTES` lazily.

    Grayscale time-lapses of stacks ``(T, Z, Y, X)`` are read too
    (:func:`~napari_sam.workflows.io.read_image` with ``frames=True``), and
    stacks of colour planes ``(Z, Y, X, RGB)`` or time-lapses of them. With
    the recipe's ``channels``, a TIFF (or ``.npy``) is read channels first
    (``(C, ...)``, up to ``(C, T, Z, Y, X)``) and the channels are checked
    against it.

    Raises
    ------
    InputFileError
    """
    lazy = large_file(path)
    if recipe is not None and recipe.others is not None:  # one file per channel
        return io.read_channel_files(path, recipe.others, lazy=lazy)
    if recipe is not None and recipe.channels is not None:
        from napari_sam.errors import ImageFormatError
        from napari_sam.workflows.channels import check_channels

        image = io.read_tiff(path, channels=True, frames=True, lazy=lazy)
        try:
            check_channels(recipe.channels, image.data.shape[0])
        except ImageFormatError as exc:
            raise InputFileError(f"{path.name}: {exc}") from exc
        return image
    return io.read_image(path, lazy=lazy, frames=True)


def coco_planes(
    labels: np.ndarray,
    scores: dict[tuple[Any, int], dict[str, float]],
    stack: bool,
) -> list[tuple[Any, tuple[int, int], list[dict]]]:
    """COCO annotations (:func:`~napari_sam.workflows.coco.plane_annotations`) of each plane.

    A plane is named by ``None`` (2D), its slice (a stack) or ``(t, z)`` (a
    ``(T, Z, Y, X)`` time-lapse of stacks), as the keys of ``scores`` name it.
    """
    out = []
    for z, plane in coco.label_planes(labels, stack):
        plane_scores = {lab: v for (zz, lab), v in scores.items() if zz == z}
        out.append((z, tuple(plane.shape), coco.plane_annotations(plane, plane_scores)))
    return out


def segment_file(
    model: Any,
    job: SegmentJob,
    recipe: Recipe,
    *,
    image: io.TiffImage | None = None,
    output: Path | None = None,
    coco: bool = False,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    table_method: str | None = None,
) -> FileResult:
    """Read ``job.source``, segment it, write its labels to ``output`` (default ``job.output``).

    The output is a TIFF or an OME-Zarr folder by its name, written
    atomically with the input's pixel size. ``image``: the input, if already
    read (:func:`open_input`). With ``table_method`` (the table's ``method``
    column), the object table of the labels
    (:func:`~napari_sam.workflows.tables.image_object_table`) is measured
    while they exist and returned as :attr:`FileResult.table`. Labels larger
    than :data:`~napari_sam.workflows.spill.SPILL_BYTES` are made on disk
    (:func:`~napari_sam.workflows.spill.labels_on_disk`).

    Raises
    ------
    InputFileError, ImageFormatError, SettingsError, OutputFileError, Cancelled
    """
    t0 = time.perf_counter()
    image = open_input(job.source, recipe) if image is None else image
    target = output or job.output
    # a time-lapse of stacks (T, Z, Y, X), in colour or of channels too: two leading axes
    colours = image.rgb or image.channel_axis is not None
    frames = image.data.ndim - colours == 4
    lines = None  # (time points, slices) of a time-lapse of stacks
    with contextlib.ExitStack() as held:
        if recipe.channels is not None or frames:
            from napari_sam.workflows.planes import ImagePlanes
            from napari_sam.workflows.segment_planes import segment_planes

            if recipe.channels is None:  # every plane with the whole file's contrast
                planes = ImagePlanes(image.data, rgb=image.rgb, contrast=recipe.contrast)
            else:
                planes = ImagePlanes(
                    image.data, channel_axis=0, channels=recipe.channels,
                    contrast=recipe.channel_contrast,
                )  # fmt: skip
            if frames:
                lines = tuple(int(n) for n in planes.geometry.leading_shape)
            modes = {
                k: v for k, v in recipe.kwargs().items()
                if k in ("mode", "ais_settings", "tiling")
            }  # fmt: skip
            # labels larger than SPILL_BYTES are made on disk
            out = held.enter_context(labels_on_disk(planes.geometry.shape, target))
            result = segment_planes(
                model, planes, settings=recipe.settings, progress=progress,
                should_cancel=should_cancel, out=out, **modes,
            )  # fmt: skip
            del out
        else:
            shape = image.data.shape[:-1] if image.rgb else image.data.shape
            out = held.enter_context(labels_on_disk(shape, target))
            result = segment(
                model,
                image.data,
                rgb=image.rgb,
                contrast_limits=recipe.contrast,
                settings=recipe.settings,
                progress=progress,
                should_cancel=should_cancel,
                out=out,
                **recipe.kwargs(),
            )
            del out
        io.write_labels(target, result.labels, scale=image.scale, unit=image.unit)
        coco_data = None
        if coco:
            coco_data = coco_planes(result.labels, result.scores, stack=result.slices is not None)
        n_objects = result.n_objects
        table = None
        if table_method is not None:
            from napari_sam.workflows.tables import image_object_table

            table = image_object_table(
                result.labels, job.name, image, result.scores, table_method
            )
        result.labels = None  # an array on disk is unmapped before its file is removed
    n_slices = None if result.slices is None else len(result.slices)
    return FileResult(
        n_objects=n_objects,
        n_slices=lines[1] if lines else n_slices,
        n_frames=lines[0] if lines else None,
        coco=coco_data,
        seconds=time.perf_counter() - t0,
        mode=result.mode,
        table=table,
    )


# ============================================================================= one slice
@dataclass
class SliceResult:
    """One slice of a stack segmented on its own (:func:`segment_slice`).

    Attributes
    ----------
    labels : ndarray ``(H, W)`` uint32
        Ids ``1..n``, in the order the whole-stack segmentation gives them.
    scores : dict ``id -> {"predicted_iou", "stability_score"}``
    n : int
        The largest id (the whole-stack segmentation offsets the next slice by it).
    """

    labels: np.ndarray
    scores: dict[int, dict[str, float]]
    n: int


def segment_slice(
    model: Any,
    image: io.TiffImage,
    z: int,
    recipe: Recipe,
    contrast: Sequence[float],
) -> SliceResult:
    """Segment slice ``z`` of a stack as the whole-stack segmentation would.

    ``contrast`` must be the stack's limits (the recipe's, or the stack's
    default computed once), so that every slice sees the same mapping.

    Raises
    ------
    InputFileError
        If ``image`` is not a stack or ``z`` is not one of its slices.
    """
    if image.rgb or image.data.ndim != 3 or not 0 <= z < image.data.shape[0]:
        raise InputFileError(f"Slice {z} is not a slice of the stack {image.data.shape}.")
    plane = np.asarray(image.data[int(z)])
    settings = replace(recipe.settings, link_slices=False)
    result = segment(
        model, plane, contrast_limits=tuple(contrast), settings=settings, **recipe.kwargs()
    )
    labels = np.asarray(result.labels, dtype=np.uint32)
    scores = {int(lab): dict(v) for (_, lab), v in result.scores.items()}
    return SliceResult(labels, scores, int(labels.max()) if labels.size else 0)


def tidy(folder: Path, created: bool) -> None:
    """Remove napari-sam's empty work folders in an output folder, and the output folder
    itself if this run created it and it stayed empty."""
    base = Path(folder) / WORK_FOLDER
    for path in (base / "work", base):
        with contextlib.suppress(OSError):
            path.rmdir()  # only if empty
    if created:
        with contextlib.suppress(OSError):
            Path(folder).rmdir()
