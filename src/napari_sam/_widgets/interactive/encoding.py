"""Embeddings of the planes the user prompts on: where they are kept and how they are made.

:class:`Embeddings` finds the embedding of a plane (the memory store, the
latest plane even if the store had no room for it, the on-disk cache if the
user keeps one) and describes the job that encodes a missing plane. Each plane
is encoded once per model, contrast limits and data
(:class:`~napari_sam.workflows.embeddings.EmbeddingKey`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam._widgets.interactive.planes_layout import PlaneKey
from napari_sam._widgets.jobs import Job
from napari_sam._widgets.notices import Notice
from napari_sam.errors import EmbeddingCacheError
from napari_sam.runtime.files import content_hash
from napari_sam.workflows import interactive as logic
from napari_sam.workflows.embeddings import (
    DiskCache,
    EmbeddingKey,
    EmbeddingStore,
    default_cache_dir,
)
from napari_sam.workflows.image import ImageLayout, get_plane

__all__ = ["Embeddings", "looks_uniform"]


def looks_uniform(plane: np.ndarray, contrast: tuple | None, rgb: bool) -> bool:
    """Whether SAM would see one flat colour: constant values, no finite value, or (for
    grayscale) every value on one side of the contrast limits."""
    if plane.size == 0:
        return False
    values = plane[..., :3] if rgb else plane
    with np.errstate(invalid="ignore"):
        finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size == 0:
        return True
    vmin, vmax = float(finite.min()), float(finite.max())
    if vmin == vmax:
        return True
    if contrast is None or rgb:
        return False
    lo, hi = contrast
    return vmax <= lo or vmin >= hi


class Embeddings:
    """Finds and makes the embeddings of planes.

    Attributes
    ----------
    store : EmbeddingStore
        The memory cache (LRU).
    use_disk : bool
        Keep embeddings in ``folder`` on disk too.
    folder : str
        The on-disk cache folder.
    log : list of (thread id, start, end)
        Every encoding (``time.perf_counter`` seconds).
    """

    def __init__(self, store: EmbeddingStore | None = None) -> None:
        self.store = store if store is not None else EmbeddingStore()
        self.use_disk = False
        self.folder = str(default_cache_dir())
        self.log: list[tuple[int, float, float]] = []
        self._disk: DiskCache | None = None
        self._last: tuple[EmbeddingKey, Any] | None = None  # usable even if the store is full
        self._warned_uniform: set[EmbeddingKey] = set()

    # ------------------------------------------------------------------ disk
    def set_disk(self, use: bool, folder: str | None = None) -> None:
        """Keep embeddings on disk (in ``folder``) or in memory only."""
        self.use_disk = bool(use)
        if folder is not None:
            self.folder = folder
        self._disk = None  # made again, for the folder now chosen, when next needed

    def disk(self) -> tuple[DiskCache | None, Notice | None]:
        """The on-disk cache the user asked for (None: memory only), and a notice if it
        cannot be used (then the disk is switched off)."""
        if not self.use_disk:
            return None, None
        folder = self.folder.strip() or str(default_cache_dir())
        if self._disk is None or str(self._disk.root) != str(Path(folder).expanduser()):
            try:
                self._disk = DiskCache(folder)
            except EmbeddingCacheError as exc:
                return None, self.disk_failed(exc)
        return self._disk, None

    def disk_failed(self, exc: BaseException) -> Notice:
        """Switch the disk cache off after a failure; the sentence for the user."""
        self._disk = None
        self.use_disk = False
        return Notice.warning(f"{exc} Embeddings are kept in memory only.")

    # ------------------------------------------------------------------ lookup
    def key_and_plane(
        self, image: Any, layout: ImageLayout, k: PlaneKey, model_id: str
    ) -> tuple[EmbeddingKey, np.ndarray]:
        """The key of plane ``k`` (None: the 2D image) as the model sees it, and the plane."""
        if isinstance(k, tuple):  # a full leading index (T, Z, ...): read that plane only
            plane = np.asarray(image.data[k])
        else:
            plane = get_plane(image.data, layout, k)
        key = EmbeddingKey(
            data_hash=content_hash(plane),
            slice=k,
            model_id=model_id,
            contrast=tuple(float(c) for c in image.contrast_limits),
        )
        return key, plane

    def find(self, key: EmbeddingKey) -> tuple[Any, list[Notice]]:
        """The embedding of ``key`` if it was made before (memory, then disk), and notices
        (a damaged disk entry, a disk that cannot be used)."""
        notices: list[Notice] = []
        embedding = self.store.get(key)
        if embedding is None and self._last and self._last[0] == key:
            embedding = self._last[1]
        if embedding is not None:
            return embedding, notices
        disk, problem = self.disk()
        if problem is not None:
            notices.append(problem)
        if disk is not None:
            damaged = disk.corrupted
            embedding = disk.get(key)  # e.g. precomputed earlier, or by `napari-sam embed`
            if disk.corrupted > damaged:
                notices.append(Notice.info(
                    "A damaged file in the embedding cache was deleted; this slice is "
                    "encoded again."
                ))
            if embedding is not None:
                self.keep(key, embedding)
        return embedding, notices

    def keep(self, key: EmbeddingKey, embedding: Any) -> None:
        self.store.put(key, embedding)
        self._last = (key, embedding)

    def uniform_warning(
        self, key: EmbeddingKey, plane: np.ndarray, layout: ImageLayout, name: str
    ) -> Notice | None:
        """A warning (once per plane and contrast) if SAM would see one flat colour."""
        if key in self._warned_uniform or not looks_uniform(plane, key.contrast, layout.rgb):
            return None
        self._warned_uniform.add(key)
        if key.slice is None:
            where = f"The image “{name}”"
        else:
            kind = "Plane" if isinstance(key.slice, tuple) else "Slice"
            where = f"{kind} {key.slice} of “{name}”"
        return Notice.warning(
            f"{where} looks uniform to SAM at these contrast limits, so "
            "its masks will be meaningless; adjust the contrast limits or choose another slice."
        )

    # ------------------------------------------------------------------ encoding
    def encode_job(
        self,
        model: Any,
        key: EmbeddingKey,
        plane: np.ndarray,
        rgb: bool,
        text: str,
        done: Callable[[Any], Any],
        failed: Callable[[BaseException], Notice | None],
        finished: Callable[[], Any],
        contrast: tuple | None = None,
    ) -> Job:
        """The job that encodes ``plane`` (in a worker) and saves it on disk if asked.

        ``done`` receives ``(key, embedding, disk notice or None)``. ``contrast``
        (default ``key.contrast``) is what :func:`~napari_sam.workflows.interactive.encode_plane`
        gets: ``(0, 255)`` for a plane already converted to SAM's RGB (channel layers).
        """
        limits = key.contrast if contrast is None else contrast
        disk, _ = self.disk()
        log = self.log

        def run(progress: Any, should_cancel: Callable[[], bool]) -> tuple:
            t0 = time.perf_counter()
            try:
                embedding = logic.encode_plane(
                    model, plane, limits, rgb, should_cancel=should_cancel
                )
            finally:
                log.append((threading.get_ident(), t0, time.perf_counter()))
            problem = None
            if disk is not None:
                try:
                    disk.put(key, embedding)
                except EmbeddingCacheError as exc:
                    problem = exc
            return key, embedding, problem

        return Job("encode", text, run, done=done, failed=failed, finished=finished)
