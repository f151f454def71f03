"""Following objects through one stack with SAM 2's memory, on a Dask cluster.

The walk from slice to slice cannot be split: each slice is segmented from
SAM 2's memory of the slices before it. Its cost, though, is mostly the image
encoder, one pass per slice, and those passes are independent. So
:func:`run_propagation` runs:

1. one task per slice of the range (:func:`embed_slice_task`), on any worker:
   the slice's embedding goes into an embedding folder on the shared file
   system. By default that is ``<output folder>/.napari-sam/work/<output
   name>.propagate/embeddings``, kept as float32 (``DiskCache(exact=True)``),
   so that the labels are those of one process; with ``cache_dir`` it is the
   user's embedding cache (float16, shared with ``napari-sam embed`` and the
   napari widget);
2. one task (:func:`propagate_task`) that follows the objects as
   :func:`~napari_sam.workflows.memory_propagation.propagate_memory` does,
   reading embeddings instead of encoding, and writes the label TIFF into the
   work folder;
3. on the client, one rename of that file to the output.

A rerun after Ctrl+C, a crash or a failure finds the slices encoded before
and encodes only the others (a slice's file is written atomically, and a
damaged one is encoded again). A worker killed mid-task has its task retried
elsewhere by Dask; every task is deterministic, so the output is the same.
The work folder is deleted once the output is written.

Slices are encoded in the whole range (``z_range``, default the stack), also
those an object would not reach: narrow the range to spare them.

What is followed, and how SAM sees it, travels to each task as a
:class:`~napari_sam.workflows.followed.FollowedPlanes` with the contrast
limits resolved once on the client: a grayscale stack or movie, a stack of
colour planes, 1-3 channels of a ``(C, Z, Y, X)`` stack, or one line of a
time-lapse of stacks ``(T, Z, Y, X)``
(:class:`~napari_sam.workflows.timelapse.TimelapseLine`: through the slices of
one time point, or through the time points at one slice). Each task reads only
its planes of the file, and the output has the image's shape (without colours
or channels).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_sam.distributed.worker import ModelSpec, register_model, worker_model
from napari_sam.errors import Cancelled
from napari_sam.runtime.progress import CancelCheck, ProgressCallback, notify
from napari_sam.workflows import io
from napari_sam.workflows.batch import WORK_FOLDER, tidy
from napari_sam.workflows.embeddings import DiskCache, EmbeddingStore, StackEmbeddings
from napari_sam.workflows.followed import FollowedPlanes
from napari_sam.workflows.memory_propagation import (
    MemoryPropagationSettings,
    TrackPrompt,
    check_prompts,
    propagate_memory,
)
from napari_sam.workflows.timelapse import TimelapseLine

__all__ = ["PropagationOutcome", "embed_slice_task", "propagate_task", "run_propagation"]


@dataclass
class PropagationOutcome:
    """What :func:`run_propagation` did.

    Attributes
    ----------
    output : Path
        The label TIFF written (``(Z, Y, X)``, object ids as prompted).
    n_objects : int
    summary : str
        Per object, the slices it was followed through and why it stopped.
    encoded : int
        Slices encoded by this run.
    reused : int
        Slices whose embedding was there already (an earlier, interrupted run, or the cache).
    seconds : float
    """

    output: Path
    n_objects: int
    summary: str
    encoded: int
    reused: int
    seconds: float


def work_folder(output: Path) -> Path:
    """The work folder of a propagation writing ``output`` (see the module docstring)."""
    output = Path(output)
    return output.parent / WORK_FOLDER / "work" / f"{output.name}.propagate"


def _embeddings(
    model: Any, stack: str, followed: FollowedPlanes, cache: str, exact: bool,
    resize: str | None,
) -> tuple[Any, StackEmbeddings]:
    """The image file ``stack`` (read lazily) as SAM sees it, and the embeddings of the
    planes followed in it as both kinds of task see them: the same keys, disk only."""
    image = followed.read(stack, lazy=True)
    planes = followed.planes(image)
    embeddings = followed.embeddings(
        model.sam,
        planes,
        model_id=model.model_id,
        store=EmbeddingStore(0),
        disk=DiskCache(cache, exact=exact),
        batch_size=1,  # one slice per pass, as a single-process propagation encodes them
        resize=resize,
    )
    return image, embeddings


def embed_slice_task(
    spec: ModelSpec,
    stack: str,
    z: int,
    followed: FollowedPlanes,
    cache: str,
    exact: bool,
    resize: str | None,
) -> int:
    """Encode slice ``z`` of the planes ``followed`` in the stack file into the embedding
    folder ``cache``.

    Returns 1 if it was encoded, 0 if an intact embedding was there already.
    """
    _, embeddings = _embeddings(worker_model(spec), stack, followed, cache, exact, resize)
    return embeddings.precompute([z])


def propagate_task(
    spec: ModelSpec,
    stack: str,
    prompts: Sequence[TrackPrompt],
    followed: FollowedPlanes,
    cache: str,
    exact: bool,
    settings: MemoryPropagationSettings,
    z_range: Sequence[int] | None,
    output: str,
) -> tuple[int, str]:
    """Follow the objects (embeddings read from ``cache``) and write the label TIFF ``output``
    (of the whole time-lapse's shape on a line of one).

    Returns the number of objects and the propagation's summary.
    """
    model = worker_model(spec)
    image, embeddings = _embeddings(model, stack, followed, cache, exact, settings.resize)
    result = propagate_memory(model, embeddings, prompts, z_range=z_range, settings=settings)
    labels = followed.place(result.label_volume(), embeddings.planes)
    io.write_labels_tiff(output, labels, scale=image.scale, unit=image.unit)
    line = followed.line
    return len(result.objects), result.summary(unit="slice" if line is None else line.unit)


def run_propagation(
    client: Any,
    spec: ModelSpec,
    stack: str | os.PathLike[str],
    prompts: Sequence[TrackPrompt],
    output: str | os.PathLike[str],
    *,
    settings: MemoryPropagationSettings | None = None,
    z_range: Sequence[int] | None = None,
    contrast: Sequence[float] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    torch_threads: int | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    line: TimelapseLine | None = None,
    channels: Sequence[int] | None = None,
    others: Sequence[str | os.PathLike[str]] | None = None,
) -> PropagationOutcome:
    """Follow objects through the stack file ``stack`` on the cluster of ``client``.

    Parameters
    ----------
    client : distributed.Client
    spec : ModelSpec
        A SAM 2.1 model; every worker loads it once.
    stack : path
        A grayscale ``(Z, Y, X)`` stack or ``(T, Y, X)`` movie, or one of colour planes
        ``(Z, Y, X, 3|4)`` (TIFF, ``.npy`` or zarr), on the file system the workers see
        under the same path.
    prompts : sequence of TrackPrompt
        Clicks, boxes or masks per object and slice (SAM's ``(x, y)`` pixels).
    output : path
        The label TIFF to write.
    settings, z_range, contrast
        As for :func:`~napari_sam.workflows.memory_propagation.propagate_memory`
        (``contrast`` default: the stack's minimum and maximum).
    cache_dir : path, optional
        Keep the embeddings in this cache folder (see the module docstring).
    torch_threads : int, optional
        Torch threads per worker (a local cluster splits the cores).
    progress : callable, optional
        Called with a :class:`~napari_sam.runtime.progress.Progress` of tasks done.
    should_cancel : callable, optional
        Polled after each finished task; True cancels the run (:class:`Cancelled`).
    line : TimelapseLine, optional
        For a time-lapse of stacks ``(T, Z, Y, X)``: the line of planes to follow the
        objects through (the output has the whole time-lapse's shape).
    channels : sequence of int, optional
        1-3 channels of a multichannel stack ``(C, Z, Y, X)`` as SAM's red, green and blue
        (``contrast``: then one pair per channel).
    others : sequence of path, optional
        Channels saved one per file: ``stack`` is SAM's red input and these files its green
        (and blue), each grayscale and of ``stack``'s shape, seen by the workers under the
        same paths (``contrast``: then one pair per file).

    Raises
    ------
    PropagationError, PromptError
        Bad prompts or range (checked before anything runs), or a stack that
        is not a stack or movie.
    Cancelled, KeyboardInterrupt
        The run's tasks are cancelled on the cluster and no output is written;
        the slices encoded so far are kept for the next run.
    """
    from distributed import as_completed

    t0 = time.perf_counter()
    stack = Path(stack).expanduser().resolve()
    output = Path(output).expanduser().resolve()
    settings = settings or MemoryPropagationSettings()
    followed = FollowedPlanes(
        None if channels is None else tuple(int(c) for c in channels), contrast, line,
        None if others is None else tuple(str(Path(p).expanduser().resolve()) for p in others),
    )
    # read whole only to find the contrast one process takes (the whole file's range)
    planes = followed.planes(followed.read(stack, lazy=contrast is not None), stack.name)
    followed = followed.resolved(planes)
    n_slices = followed.n_planes(planes)
    prompts = list(prompts)
    check_prompts(prompts, n_slices, planes.geometry.plane_shape, z_range)
    lo, hi = (0, n_slices - 1) if z_range is None else (int(v) for v in z_range)
    del planes
    work = work_folder(output)
    exact = cache_dir is None
    cache = Path(cache_dir).expanduser() if cache_dir is not None else work / "embeddings"
    register_model(client, spec, torch_threads)
    common = (str(cache), exact)
    token = uuid.uuid4().hex[:8]
    futures = [
        client.submit(
            embed_slice_task, spec, str(stack), z, followed, *common, settings.resize,
            key=f"napari-sam-embed-{token}-{z}", pure=False,
        )
        for z in range(lo, hi + 1)
    ]  # fmt: skip
    total = len(futures) + 1
    encoded = 0
    part = work / f"{token}-{output.name}"
    try:
        notify(progress, 0, total, "encoding slices", "tasks")
        for done, future in enumerate(as_completed(futures), start=1):
            encoded += int(future.result())
            notify(progress, done, total, "encoding slices", "tasks")
            _check(should_cancel)
        work.mkdir(parents=True, exist_ok=True)
        follow = client.submit(
            propagate_task, spec, str(stack), prompts, followed, *common, settings,
            None if z_range is None else (lo, hi), str(part),
            key=f"napari-sam-propagate-{token}", pure=False,
        )  # fmt: skip
        futures.append(follow)
        while not follow.done():
            _check(should_cancel)
            time.sleep(0.1)
        n_objects, summary = follow.result()
        notify(progress, total, total, "following objects", "tasks")
        os.replace(part, output)
    except BaseException:
        with contextlib.suppress(Exception):
            client.cancel(futures, force=True)
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    shutil.rmtree(work, ignore_errors=True)
    tidy(output.parent, False)
    return PropagationOutcome(
        output, n_objects, summary, encoded, len(futures) - 1 - encoded, time.perf_counter() - t0
    )


def _check(should_cancel: CancelCheck | None) -> None:
    if should_cancel is not None and should_cancel():
        raise Cancelled("The propagation was cancelled; the slices encoded so far are kept.")
