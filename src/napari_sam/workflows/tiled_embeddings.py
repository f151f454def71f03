"""Embeddings of the tiles of large planes, computed on demand, kept, precomputable.

:class:`TiledEmbeddings` is to a tiled image what
:class:`~napari_sam.workflows.embeddings.StackEmbeddings` is to a stack: it
looks an embedding up in the memory store, then in the disk cache, and encodes
it only when neither has it. The unit is one **window** of one plane: a tile's
outer window (:class:`~napari_sam.workflows.tiling.Tile`), or any other
rectangle (the interactive tools encode a window centred on an object that is
too large for one tile, see :mod:`napari_sam.workflows.tiled_prompts`).

Keys: a window's embedding is stored under an ordinary
:class:`~napari_sam.workflows.embeddings.EmbeddingKey` whose ``data_hash`` is
the :func:`~napari_sam.runtime.files.content_hash` of the window's raw pixels
(halo included), with the slice, model and contrast limits in their usual
fields. An embedding depends only on the pixels SAM sees, so identical pixels
may share one; a changed pixel, model or contrast never reuses a stale one. In
the micro-sam compatible ``"minmax"`` normalization the hash carries the
suffix ``/minmax`` and the contrast is ``None``. A plane that fits in one tile
has one window, the whole plane: its key is exactly the key of the untiled
embedding, so both share cache entries.

Reading: only the window's pixels are read from the image (``data[z, y0:y1,
x0:x1]``), so dask or zarr images are read tile by tile and a huge plane is
never converted to floats as a whole.

This module imports torch only when encoding.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam.errors import Cancelled, ImageFormatError
from napari_sam.runtime.files import content_hash
from napari_sam.runtime.progress import CancelCheck, ProgressCallback, notify
from napari_sam.workflows.embeddings import (
    DiskCache,
    EmbeddingKey,
    EmbeddingStore,
    default_batch_size,
    default_contrast_limits,
)
from napari_sam.workflows.image import image_layout
from napari_sam.workflows.tiling import Tile, TileGrid, Tiling, Window, tile_to_sam_rgb

if TYPE_CHECKING:
    from napari_sam.predictors.predictor import ImageEmbedding

__all__ = ["TiledEmbeddings", "model_tag"]


def model_tag(model: Any, model_id: str) -> str:
    """``model_id``, plus the encoder precision when it is not float32 (as StackEmbeddings)."""
    dtype = getattr(model, "encoder_dtype", None)
    if dtype is None:
        return str(model_id)
    return f"{model_id}@{str(dtype).removeprefix('torch.')}"


class TiledEmbeddings:
    """The tile embeddings of the planes of a 2D image or 3D stack, for one model and contrast.

    Parameters
    ----------
    model : Sam
    data : array ``(H, W)``, ``(H, W, 3|4)`` with ``rgb``, or ``(Z, H, W)``
        numpy, dask or zarr; only the windows needed are read.
    model_id : str
        Names the model and its weights (cache keys; see
        :meth:`~napari_sam.runtime.loader.LoadedModel.model_id`).
    tiling : Tiling, str, TileGrid or None
        How planes are tiled (default ``"auto"``, see
        :class:`~napari_sam.workflows.tiling.Tiling`). A plane that is not
        tiled becomes one tile covering the whole plane (exactly the
        untiled embedding).
    rgb : bool
        The last axis of ``data`` holds colour channels.
    contrast : (low, high), optional
        Contrast limits for the ``"contrast"`` normalization; default
        :func:`~napari_sam.workflows.embeddings.default_contrast_limits` of
        ``data`` (what napari shows). Ignored with ``"minmax"``.
    store : EmbeddingStore, optional
        Memory store (its budget bounds the memory of all tiles); default a new one.
    disk : DiskCache, path or None
        On-disk cache; None keeps embeddings in memory only.
    batch_size : int, optional
        Tiles per forward pass in :meth:`precompute` (default: 1 on a CPU,
        what fits on a CUDA GPU).

    Attributes
    ----------
    grid : TileGrid
        The tiles of every plane.
    encoded : int
        Windows encoded by this object.
    forward_passes : int
        Forward passes of the image encoder run by this object.
    """

    def __init__(
        self,
        model: Any,
        data: Any,
        *,
        model_id: str,
        tiling: Tiling | TileGrid | str | None = "auto",
        rgb: bool = False,
        contrast: Sequence[float] | None = None,
        store: EmbeddingStore | None = None,
        disk: DiskCache | str | os.PathLike[str] | None = None,
        batch_size: int | None = None,
    ) -> None:
        shape = tuple(int(s) for s in getattr(data, "shape", ()))
        self.layout = image_layout(shape, rgb=rgb, dtype=getattr(data, "dtype", None))
        plane_shape = self.layout.plane_shape
        if isinstance(tiling, TileGrid):
            if tuple(tiling.plane_shape) != plane_shape:
                raise ImageFormatError(
                    f"The tile grid is made for planes of {tiling.plane_shape}, but the image's "
                    f"planes are {plane_shape}."
                )
            grid: TileGrid | None = tiling
            self.normalization = "contrast"
        else:
            settings = Tiling.coerce(tiling)
            grid = settings.grid(plane_shape)
            self.normalization = settings.normalization
        self.grid = grid if grid is not None else TileGrid(plane_shape, plane_shape, (0, 0))
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.model = model
        self.data = data
        self.rgb = bool(rgb)
        self.model_id = str(model_id)
        if self.normalization == "minmax":
            self.contrast: tuple[float, float] | None = None
        else:
            if contrast is None:
                contrast = default_contrast_limits(data)
            self.contrast = (float(contrast[0]), float(contrast[1]))
        self.store = store if store is not None else EmbeddingStore()
        self.disk = disk if isinstance(disk, DiskCache) or disk is None else DiskCache(disk)
        self.batch_size = int(batch_size) if batch_size else default_batch_size(model.device, model)
        self.encoded = 0
        self.forward_passes = 0

    # ------------------------------------------------------------------ geometry
    @property
    def is_tiled(self) -> bool:
        """Whether a plane has more than one tile."""
        return len(self.grid) > 1

    @property
    def plane_shape(self) -> tuple[int, int]:
        return self.layout.plane_shape

    @property
    def slices(self) -> list[int | None]:
        """The plane indices: ``[0 .. Z-1]`` for a stack, ``[None]`` for a 2D image."""
        return list(range(self.layout.n_slices)) if self.layout.is_stack else [None]

    def _check_slice(self, z: int | None) -> int | None:
        if self.layout.is_stack:
            if z is None or not 0 <= int(z) < self.layout.n_slices:
                raise ImageFormatError(
                    f"Slice {z} does not exist; the stack has {self.layout.n_slices} slices."
                )
            return int(z)
        return None

    def pixels(self, z: int | None, window: Window | Tile) -> np.ndarray:
        """The raw pixels of ``window`` of plane ``z`` (only these are read)."""
        if isinstance(window, Tile):
            window = window.outer
        z = self._check_slice(z)
        ys, xs = window.slices
        index = (ys, xs) if z is None else (z, ys, xs)
        return np.asarray(self.data[index])

    def sam_input(self, z: int | None, window: Window | Tile) -> np.ndarray:
        """``window`` of plane ``z`` as SAM's ``(h, w, 3)`` uint8 input."""
        return tile_to_sam_rgb(self.pixels(z, window), self.contrast, self.rgb, self.normalization)

    # ------------------------------------------------------------------ keys and lookups
    def key(
        self, z: int | None, window: Window | Tile, pixels: np.ndarray | None = None
    ) -> EmbeddingKey:
        """The cache key of ``window`` of plane ``z`` (hashes its current pixels)."""
        if pixels is None:
            pixels = self.pixels(z, window)
        digest = content_hash(pixels)
        if self.normalization == "minmax":
            digest = f"{digest}/minmax"
        return EmbeddingKey(
            digest, self._check_slice(z), model_tag(self.model, self.model_id), self.contrast
        )

    def cached(
        self, z: int | None, window: Window | Tile, key: EmbeddingKey | None = None
    ) -> ImageEmbedding | None:
        """The embedding of ``window`` from memory or disk, or None (nothing is encoded)."""
        key = key or self.key(z, window)
        emb = self.store.get(key)
        if emb is None and self.disk is not None:
            emb = self.disk.get(key)
            if emb is not None:
                self.store.put(key, emb)
        return emb

    def is_cached(self, z: int | None, window: Window | Tile) -> bool:
        """Whether ``window`` needs no encoding (in memory, or a file on disk)."""
        key = self.key(z, window)
        return key in self.store or (self.disk is not None and key in self.disk)

    def get(
        self,
        z: int | None,
        window: Window | Tile,
        should_cancel: CancelCheck | None = None,
    ) -> ImageEmbedding:
        """The embedding of ``window`` of plane ``z``: cached, or encoded now (and cached).

        With ``should_cancel`` (and
        :func:`~napari_sam.workflows.interactive.install_cancel_hooks` done on
        the model) an encoding stops between encoder blocks with
        :class:`~napari_sam.errors.Cancelled`; nothing is stored then.
        """
        from napari_sam.workflows.interactive import encode_plane

        pixels = self.pixels(z, window)
        key = self.key(z, window, pixels)
        emb = self.cached(z, window, key)
        if emb is None:
            image = tile_to_sam_rgb(pixels, self.contrast, self.rgb, self.normalization)
            emb = encode_plane(self.model, image, (0.0, 255.0), True, should_cancel)
            self.encoded += 1
            self.forward_passes += 1
            self._keep(key, emb)
        return emb

    def tiles(self, tiles: Iterable[int | Tile] | None = None) -> list[Tile]:
        """Tiles by index (all without ``tiles``)."""
        if tiles is None:
            return self.grid.tiles
        return [t if isinstance(t, Tile) else self.grid.tile(int(t)) for t in tiles]

    def missing(
        self,
        slices: Iterable[int | None] | None = None,
        tiles: Iterable[int | Tile] | None = None,
    ) -> list[tuple[int | None, Tile]]:
        """The ``(slice, tile)`` pairs neither in memory nor intact on disk.

        Disk entries are read and checked; damaged ones are deleted and counted missing.
        """
        out = []
        for z in self._slices(slices):
            for tile in self.tiles(tiles):
                key = self.key(z, tile)
                if key in self.store:
                    continue
                if self.disk is not None and self.disk.verify(key):
                    continue
                out.append((z, tile))
        return out

    def precompute(
        self,
        slices: Iterable[int | None] | None = None,
        tiles: Iterable[int | Tile] | None = None,
        *,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> int:
        """Encode every tile of every plane (or of those given) that is not cached yet.

        Each batch of tiles is stored as soon as it is encoded (each disk file
        written whole or not at all), so tiles finished before a cancellation
        or a crash are kept and a later call resumes with the others.

        Parameters
        ----------
        slices : iterable, optional
            Planes (default all; ``None`` is the plane of a 2D image).
        tiles : iterable of int or Tile, optional
            Default all tiles.
        progress : callable, optional
            Called with a :class:`~napari_sam.runtime.progress.Progress` (unit
            ``"tiles"``) after each batch and once at the start.
        should_cancel : callable, optional
            Polled before each batch.

        Returns
        -------
        int
            Tiles encoded.

        Raises
        ------
        Cancelled
            If ``should_cancel`` returned True (the tiles done so far are kept).
        """
        todo: list[tuple[int | None, Tile]] = []
        for z in self._slices(slices):
            for tile in self.tiles(tiles):
                key = self.key(z, tile)
                in_memory = self.store.get(key) if key in self.store else None
                if self.disk is None:
                    if in_memory is None:
                        todo.append((z, tile))
                elif not self.disk.verify(key):
                    if in_memory is None:
                        todo.append((z, tile))
                    else:  # encoded earlier in this session: keep it on disk too
                        self.disk.put(key, in_memory)
        total = len(todo)
        stage = "encoding tiles"
        notify(progress, 0, total, stage, "tiles")

        def encode_and_keep(batch: Sequence[tuple[int | None, Tile]]) -> list[None]:
            from napari_sam.predictors.predictor import embed_images

            pixels = [self.pixels(z, tile) for z, tile in batch]
            keys = [self.key(z, tile, p) for (z, tile), p in zip(batch, pixels)]
            images = [
                tile_to_sam_rgb(p, self.contrast, self.rgb, self.normalization) for p in pixels
            ]
            embeddings = embed_images(self.model, images, batch_size=len(images), fallback=False)
            self.encoded += len(batch)
            self.forward_passes += 1
            for key, emb in zip(keys, embeddings):
                self._keep(key, emb, memory=self.disk is None)
            return [None] * len(batch)

        def on_batch(done: int, total: int) -> None:
            notify(progress, done, total, stage, "tiles")

        done = len(
            self._run(todo, encode_and_keep, on_batch=on_batch, should_cancel=should_cancel)
        )
        if done < total:
            raise Cancelled(
                f"Precomputing tile embeddings was cancelled after {done} of {total} tiles; "
                "the tiles done so far are kept."
            )
        return total

    # ------------------------------------------------------------------ internals
    def _slices(self, slices: Iterable[int | None] | None) -> list[int | None]:
        if slices is None:
            return self.slices
        return [self._check_slice(z) for z in slices]

    def _run(self, items: Sequence[Any], process: Callable[[Sequence[Any]], Any], **kw: Any):
        from napari_sam.runtime.memory import run_batches

        def shrink(size: int) -> None:
            self.batch_size = size

        return run_batches(
            items,
            process,
            self.batch_size,
            what="tiles",
            to_cpu=lambda: self.model.to("cpu"),
            device=lambda: self.model.device,
            on_shrink=shrink,
            **kw,
        )

    def _keep(self, key: EmbeddingKey, emb: ImageEmbedding, memory: bool = True) -> None:
        if memory:
            self.store.put(key, emb)
        if self.disk is not None:
            self.disk.put(key, emb)
