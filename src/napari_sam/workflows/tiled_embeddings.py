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
from napari_sam.workflows.channels import channels_to_rgb
from napari_sam.workflows.embeddings import (
    DiskCache,
    EmbeddingKey,
    EmbeddingStore,
    default_batch_size,
    keep_embedding,
    model_tag,
    run_encoder_batches,
)
from napari_sam.workflows.planes import ImagePlanes
from napari_sam.workflows.tiling import (
    Tile,
    TileGrid,
    Tiling,
    Window,
    minmax_to_uint8,
    tile_to_sam_rgb,
)

if TYPE_CHECKING:
    from napari_sam.predictors.predictor import ImageEmbedding

__all__ = ["TiledEmbeddings"]


class TiledEmbeddings:
    """The tile embeddings of the planes of a 2D image or 3D stack, for one model and contrast.

    Parameters
    ----------
    model : Sam
    data : array or ImagePlanes
        ``(H, W)``, ``(H, W, 3|4)`` with ``rgb``, ``(Z, H, W)``, any number of
        leading axes (T, Z, ...), numpy, dask or zarr; only the windows needed
        are read. An :class:`~napari_sam.workflows.planes.ImagePlanes` brings
        its own channels and contrast limits (then ``rgb``, ``contrast``,
        ``channel_axis`` and ``channels`` are not given).
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
    contrast : (low, high), or one pair per chosen channel, optional
        Contrast limits for the ``"contrast"`` normalization; default
        :func:`~napari_sam.workflows.embeddings.default_contrast_limits` of
        ``data`` (what napari shows). Not used with ``"minmax"``.
    channel_axis, channels : optional
        A multichannel image's channel axis and the 1–3 channels shown to SAM
        (:class:`~napari_sam.workflows.planes.ImagePlanes`).
    store : EmbeddingStore, optional
        Memory store (its budget bounds the memory of all tiles); default a new one.
    disk : DiskCache, path or None
        On-disk cache; None keeps embeddings in memory only.
    batch_size : int, optional
        Tiles per forward pass in :meth:`precompute` (default: 1 on a CPU,
        what fits on a CUDA GPU).

    Planes are named as in :class:`~napari_sam.workflows.planes.ImagePlanes`:
    ``None`` (or ``()``) for a 2D image, ``z`` for a stack, the full leading
    index ``(t, z)`` for more leading axes.

    Attributes
    ----------
    planes : ImagePlanes
        The image as SAM sees it (channels, contrast limits).
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
        contrast: Any = None,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        store: EmbeddingStore | None = None,
        disk: DiskCache | str | os.PathLike[str] | None = None,
        batch_size: int | None = None,
    ) -> None:
        if isinstance(data, ImagePlanes):
            if rgb or contrast is not None or channel_axis is not None or channels is not None:
                raise ImageFormatError(
                    "An ImagePlanes brings its own channels and contrast limits; do not give "
                    "rgb, contrast, channel_axis or channels with it."
                )
            self.planes = data
        else:
            self.planes = ImagePlanes(
                data, rgb=rgb, contrast=contrast, channel_axis=channel_axis, channels=channels
            )
        plane_shape = self.planes.geometry.plane_shape
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
        self.model_id = str(model_id)
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
    def shape(self) -> tuple[int, ...]:
        """The label shape ``(*leading, H, W)``."""
        return self.planes.geometry.shape

    @property
    def plane_shape(self) -> tuple[int, int]:
        return self.planes.geometry.plane_shape

    @property
    def is_stack(self) -> bool:
        """One leading axis (a 3D stack or a time series)."""
        return self.planes.geometry.n_leading == 1

    @property
    def contrast(self) -> tuple[float, ...] | None:
        """The contrast limits in the cache keys (None with ``"minmax"``)."""
        return None if self.normalization == "minmax" else self.planes.contrast

    @property
    def slices(self) -> list[Any]:
        """Every plane: ``[None]`` for a 2D image, ``[0 .. Z-1]`` for a stack, else index tuples."""
        return [_plain(index) for index in self.planes.geometry.indices()]

    def _index(self, z: Any) -> tuple[int, ...]:
        return self.planes.geometry.check_index(z)

    def pixels(self, z: Any, window: Window | Tile) -> np.ndarray:
        """The raw pixels of ``window`` of plane ``z`` (only these are read).

        ``(h, w)`` (grayscale), ``(h, w, 3|4)`` (RGB) or ``(k, h, w)`` (the
        chosen channels, in slot order).
        """
        if isinstance(window, Tile):
            window = window.outer
        index = (*self._index(z), *window.slices)
        planes = self.planes
        if planes.channels is None:
            return np.asarray(planes.data[index])
        return np.stack([planes.channel_values(c, index) for c in planes.channels])

    def sam_input(self, z: Any, window: Window | Tile) -> np.ndarray:
        """``window`` of plane ``z`` as SAM's ``(h, w, 3)`` uint8 input."""
        return self._to_rgb(self.pixels(z, window))

    def _to_rgb(self, raw: np.ndarray) -> np.ndarray:
        planes = self.planes
        if planes.channels is None:
            return tile_to_sam_rgb(raw, planes.contrasts[0], planes.rgb, self.normalization)
        if self.normalization == "minmax":
            return minmax_to_uint8(np.moveaxis(raw, 0, -1), rgb=True)
        return channels_to_rgb(list(raw), planes.contrasts)

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
            digest,
            self._index(z),
            model_tag(self.model, self.model_id),
            self.contrast,
            self.planes.key_channels,
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
            image = self._to_rgb(pixels)
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
            images = [self._to_rgb(p) for p in pixels]
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
    def _slices(self, slices: Iterable[Any] | None) -> list[Any]:
        if slices is None:
            return self.slices
        return [_plain(self._index(z)) for z in slices]

    def _run(self, items: Sequence[Any], process: Callable[[Sequence[Any]], Any], **kw: Any):
        return run_encoder_batches(self, items, process, "tiles", **kw)

    def _keep(self, key: EmbeddingKey, emb: ImageEmbedding, memory: bool = True) -> None:
        keep_embedding(self, key, emb, memory)


def _plain(index: tuple[int, ...]) -> Any:
    """A plane index as users write it: None (2D), z (a stack) or the tuple."""
    if not index:
        return None
    return index[0] if len(index) == 1 else index
