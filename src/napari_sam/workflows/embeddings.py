"""Per-slice image embeddings of 2D images and 3D stacks, computed once and kept.

Encoding a plane is the expensive step of SAM (seconds on a CPU); predicting a
mask from prompts is cheap. This module keeps encoded planes
(:class:`~napari_sam.predictors.predictor.ImageEmbedding`) so that a stack is encoded once:

- :class:`EmbeddingStore`: in memory, least recently used first out, within a
  budget in megabytes.
- :class:`DiskCache`: optionally on disk, one ``.npz`` file per plane (float16
  features, a checksum, written atomically), so that a later session, the
  ``napari-sam embed`` command and an interrupted precomputation all reuse
  what was already computed.
- :class:`StackEmbeddings`: the embeddings of the planes of one 3D stack for
  one model and contrast setting: looked up in memory, then on disk, then
  encoded on demand, or precomputed for the whole stack (several planes per
  forward pass on a CUDA GPU).

Entries are keyed by :class:`EmbeddingKey`: the content hash of the plane, its
slice index, the model and the contrast limits used to convert it to RGB. A
changed image, a different model or new contrast limits therefore never reuse a
stale embedding. Objects are propagated through a stack by
:mod:`napari_sam.workflows.propagation`, which uses this module.

This module imports neither torch nor napari at import time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam.errors import (
    Cancelled,
    EmbeddingCacheError,
    ImageFormatError,
)
from napari_sam.runtime.config import cache_dir
from napari_sam.runtime.files import atomic_write, content_hash
from napari_sam.runtime.progress import CancelCheck, ProgressCallback, notify

if TYPE_CHECKING:
    from napari_sam.predictors.predictor import ImageEmbedding

__all__ = [
    "BATCH_SIZE_RULE",
    "DEFAULT_STORE_MB",
    "MAX_AUTO_BATCH",
    "DiskCache",
    "EmbeddingKey",
    "EmbeddingStore",
    "StackEmbeddings",
    "default_batch_size",
    "default_cache_dir",
    "default_contrast_limits",
    "encode_planes",
    "model_tag",
]

log = logging.getLogger(__name__)



#: Default memory budget of an :class:`EmbeddingStore`, in megabytes (~250 planes).
DEFAULT_STORE_MB = 1024.0


@dataclass(frozen=True)
class EmbeddingKey:
    """What an embedding was computed from.

    Attributes
    ----------
    data_hash : str
        :func:`~napari_sam.runtime.files.content_hash` of the raw plane that was encoded
        (before contrast conversion; for a channel choice, of the chosen channels'
        planes stacked in order): an edited plane gets a new hash.
    slice : int, tuple of int, or None
        Where the plane lies in its image: ``None`` for a 2D image, the index
        along Z for a 3D stack (an int, as in format 1 of :class:`DiskCache`),
        and the full leading index (e.g. ``(t, z)``) for images with two or
        more leading axes. A tuple is normalised: ``()`` becomes ``None`` and
        ``(z,)`` becomes ``z``, so a stack plane has one key however its index
        was written. :attr:`index` gives it back as a tuple.
    model_id : str
        Names the model and its weights (e.g. ``"vit_b"`` for the published
        checkpoint, or a checkpoint file with its size and modification time).
    contrast : tuple of float or None
        Contrast limits given to :func:`napari_sam.workflows.image.to_sam_rgb`:
        ``(low, high)``, or with :attr:`channels` one pair per chosen channel,
        flattened ``(low0, high0, low1, high1, ...)``; ``None`` for automatic
        (robust) limits.
    channels : tuple of int or None
        SAM's red, green and blue inputs filled from channels
        (:mod:`napari_sam.workflows.channels`), ``(0, ..., k - 1)`` for ``k``
        chosen channels (which channels they were is in :attr:`data_hash`, so
        channels taken from a channel axis and the same channels as separate
        layers share a key); ``None`` for a grayscale or RGB image. Keys
        without channels are written exactly as before this field existed, so
        existing cache files stay valid.
    """

    data_hash: str
    slice: int | tuple[int, ...] | None
    model_id: str
    contrast: tuple[float, ...] | None
    channels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.contrast is not None:
            values = tuple(float(v) for v in np.asarray(self.contrast, dtype=float).ravel())
            if len(values) < 2 or len(values) % 2:
                raise ValueError(
                    f"contrast must hold (low, high) pairs, got {len(values)} numbers."
                )
            object.__setattr__(self, "contrast", values)
        object.__setattr__(self, "slice", _normalise_index(self.slice))
        if self.channels is not None:
            channels = tuple(int(c) for c in self.channels)
            if self.contrast is not None and len(self.contrast) != 2 * len(channels):
                raise ValueError(
                    f"contrast must hold one (low, high) pair per channel: {len(channels)} "
                    f"channels, {len(self.contrast)} numbers."
                )
            object.__setattr__(self, "channels", channels)

    @property
    def index(self) -> tuple[int, ...]:
        """:attr:`slice` as a tuple: ``()`` for a 2D image, ``(z,)``, ``(t, z)``, ..."""
        if self.slice is None:
            return ()
        if isinstance(self.slice, tuple):
            return self.slice
        return (self.slice,)

    def digest(self) -> str:
        """A stable hex name for this key (e.g. a file name in an on-disk cache)."""
        contrast = "auto" if self.contrast is None else ",".join(repr(v) for v in self.contrast)
        text = f"{self.data_hash}|{self.slice}|{self.model_id}|{contrast}"
        if self.channels is not None:
            text += f"|channels={','.join(str(c) for c in self.channels)}"
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _normalise_index(value: Any) -> int | tuple[int, ...] | None:
    """``None``/``()`` -> None, ``z``/``(z,)`` -> int, longer sequences -> tuple of int."""
    if value is None:
        return None
    if isinstance(value, (tuple, list, np.ndarray)):
        items = tuple(int(v) for v in np.asarray(value).ravel())
        if not items:
            return None
        return items[0] if len(items) == 1 else items
    return int(value)


class EmbeddingStore:
    """An LRU store of image embeddings, bounded in megabytes; thread-safe.

    Parameters
    ----------
    max_mb : float
        Memory budget. When a new embedding does not fit, the least recently
        used ones are dropped. An embedding larger than the whole budget is not
        stored. ``0`` disables storing.

    Notes
    -----
    Features are kept on the CPU (a GPU model gets them back through
    :meth:`~napari_sam.predictors.predictor.SamPredictor.set_embedding`, which moves them
    to its device), so the budget is host memory.
    """

    def __init__(self, max_mb: float = DEFAULT_STORE_MB) -> None:
        if max_mb < 0:
            raise ValueError(f"max_mb must be >= 0, got {max_mb}.")
        self._max_bytes = int(max_mb * 1024 * 1024)
        self._entries: OrderedDict[EmbeddingKey, ImageEmbedding] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def max_bytes(self) -> int:
        """The memory budget in bytes."""
        return self._max_bytes

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored features."""
        return self._nbytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> list[EmbeddingKey]:
        """Stored keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def __iter__(self) -> Iterator[EmbeddingKey]:
        return iter(self.keys())

    def get(self, key: EmbeddingKey) -> ImageEmbedding | None:
        """The embedding stored under ``key`` (now the most recently used), or None."""
        with self._lock:
            emb = self._entries.get(key)
            if emb is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return emb

    def put(self, key: EmbeddingKey, embedding: ImageEmbedding) -> bool:
        """Store an embedding (features moved to the CPU); return whether it was kept."""
        features = embedding.features
        if getattr(features, "device", None) is not None and features.device.type != "cpu":
            embedding = embedding.to("cpu")
        size = int(embedding.nbytes)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._nbytes -= int(old.nbytes)
            if size > self._max_bytes:
                return False
            while self._entries and self._nbytes + size > self._max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._nbytes -= int(dropped.nbytes)
            self._entries[key] = embedding
            self._nbytes += size
            return True

    def discard(self, predicate: Callable[[EmbeddingKey], bool]) -> int:
        """Drop every entry whose key satisfies ``predicate``; return how many."""
        with self._lock:
            doomed = [k for k in self._entries if predicate(k)]
            for k in doomed:
                self._nbytes -= int(self._entries.pop(k).nbytes)
            return len(doomed)

    def clear(self) -> None:
        """Drop everything."""
        with self._lock:
            self._entries.clear()
            self._nbytes = 0


# --------------------------------------------------------------------------- identities
def default_contrast_limits(data: Any) -> tuple[float, float]:
    """The contrast limits napari gives a new image layer of ``data``.

    uint8 data gets ``(0, 255)``; arrays of up to 10 million values their
    minimum and maximum; larger ones the minimum and maximum of their first,
    middle and last planes (of a central 62 × 62 patch when a plane is itself
    larger than 10 million pixels). NaN is ignored; a constant array gets
    limits widened to include 0 and 1. The same rule as napari's, written here
    so that embeddings made without napari (``napari-sam embed``) carry the
    same key as those the widget makes for a freshly opened stack.
    """
    if np.dtype(data.dtype) == np.uint8:
        return (0.0, 255.0)
    shape = tuple(int(s) for s in data.shape)
    size = int(np.prod(shape)) if shape else 1
    if size > 1e7 and len(shape) >= 3:
        lead = shape[:-2]
        planes = [
            tuple(0 for _ in lead),
            tuple(s // 2 for s in lead),
            tuple(s - 1 for s in lead),
        ]
        patch: tuple[slice, ...] = ()
        if shape[-2] * shape[-1] > 1e7 and shape[-2] > 64 and shape[-1] > 64:
            cy, cx = shape[-2] // 2, shape[-1] // 2
            patch = (slice(cy - 31, cy + 31), slice(cx - 31, cx + 31))
        parts = [np.asarray(data[idx + patch]) for idx in planes]
        values = np.concatenate([p.ravel() for p in parts])
    else:
        values = np.asarray(data).ravel()
    with np.errstate(invalid="ignore"):
        finite = (
            values if not np.issubdtype(values.dtype, np.floating) else values[~np.isnan(values)]
        )
    if finite.size == 0:
        return (0.0, 1.0)
    lo, hi = float(np.min(finite)), float(np.max(finite))
    if lo == hi:
        lo, hi = min(lo, 0.0), max(hi, 1.0)
    return (lo, hi)


def default_cache_dir() -> Path:
    """Where embeddings are kept on disk unless told otherwise.

    ``embeddings/`` in the napari-sam cache folder (``$NAPARI_SAM_CACHE``, or
    the user's cache folder; see ``napari-sam info``). Not created here.
    """
    return cache_dir(create=False) / "embeddings"


#: Most planes encoded in one forward pass on a GPU when the batch is sized automatically.
MAX_AUTO_BATCH = 8
#: The rule of :func:`default_batch_size` in words: the one text that ``napari-sam embed
#: --help`` and the docs give (a test checks that they agree).
BATCH_SIZE_RULE = (
    f"as many slices as fit in the GPU's free memory, up to {MAX_AUTO_BATCH}, on a CUDA GPU; "
    "1 otherwise"
)


def default_batch_size(device: Any, model: Any = None) -> int:
    """Planes encoded per forward pass: as many as fit on a CUDA GPU (up to 8), else 1.

    On a CPU a batch is no faster per plane than single planes, and needs
    more memory; a GPU is used better with several planes at once. With
    ``model`` the GPU batch is bounded by the free memory
    (:func:`napari_sam.runtime.memory.auto_batch_size`); without it, 4.
    """
    if not getattr(device, "type", str(device)).startswith("cuda"):
        return 1
    if model is None:
        return 4
    from napari_sam.runtime.memory import auto_batch_size, encoder_bytes_per_image

    return auto_batch_size(device, encoder_bytes_per_image(model), maximum=MAX_AUTO_BATCH)


def model_tag(model: Any, model_id: str) -> str:
    """The model name in embedding keys: ``model_id``, plus ``@<dtype>`` when the encoder
    does not run in float32 (e.g. ``"vit_b@bfloat16"``).

    Embeddings computed under bf16/fp16 autocast differ slightly from the
    float32 ones, so the caches keep them apart.
    """
    dtype = getattr(model, "encoder_dtype", None)
    if dtype is None:
        return str(model_id)
    return f"{model_id}@{str(dtype).removeprefix('torch.')}"


# --------------------------------------------------------------------------- encoding
def encode_planes(
    model: Any,
    planes: Sequence[np.ndarray],
    contrast: Sequence[float] | None,
    rgb: bool = False,
    resize: str | None = None,
) -> list[ImageEmbedding]:
    """Encode several planes in one forward pass of the image encoder.

    Each plane is converted with :func:`napari_sam.workflows.image.to_sam_rgb` (the
    given contrast limits; ``None`` for its robust automatic limits) and
    resized as ``SamPredictor.set_image`` does; one plane gives exactly the
    embedding ``set_image`` gives. A SAM 2 model (``model.family == "sam2"``)
    gives embeddings with its high-resolution maps, its input resized with
    ``resize`` (``"bilinear"``, the default, as ``Sam2ImagePredictor`` does, or
    ``"bicubic"``; see :data:`napari_sam.predictors.sam2_predictor.RESIZE_METHODS`).

    Parameters
    ----------
    model : Sam
    planes : sequence of ndarray
        2D planes (``(H, W)``, or ``(H, W, C)`` with ``rgb``), of any sizes.
    contrast : (low, high) or None
    rgb : bool

    Returns
    -------
    list of ImageEmbedding
        float32 features on the model's device, one ``(1, 256, 64, 64)`` per plane.

    Notes
    -----
    The encoder runs in the model's precision (``model.precision``: bfloat16
    autocast on a CUDA GPU by default, see :mod:`napari_sam.model.precision`).
    An out-of-memory error propagates: :class:`StackEmbeddings` retries it
    with fewer planes (:func:`napari_sam.runtime.memory.run_batches`).
    """
    from napari_sam.predictors.predictor import embed_images
    from napari_sam.workflows.image import to_sam_rgb

    if not planes:
        return []
    images = [to_sam_rgb(plane, contrast, rgb=rgb) for plane in planes]
    if getattr(model, "family", "sam") == "sam2":
        from napari_sam.predictors.sam2_predictor import embed_images_sam2

        return embed_images_sam2(model, images, resize or "bilinear")
    return embed_images(model, images, batch_size=len(images), fallback=False)


# --------------------------------------------------------------------------- disk cache
class DiskCache:
    """Embeddings on disk: one ``<key digest>.npz`` file per plane in a folder.

    Each file holds the features as float16 (2 MiB per plane instead of 4 MiB
    as float32; features that would overflow float16 are kept as float32),
    SAM 2's two high-resolution maps the same way (``high_res_0``,
    ``high_res_1``; 6 MiB more), the image sizes, the full key (as JSON) and a
    BLAKE2b checksum of all of them. A file is written to a temporary name in
    the same folder and then renamed (``os.replace``), so a crash or a full disk never leaves a file
    that looks complete. A file that cannot be read, belongs to another key or
    fails its checksum (truncated, bytes flipped) is counted in
    :attr:`corrupted`, deleted, and treated as missing, so the plane is encoded
    again.

    Parameters
    ----------
    root : path
        The folder (created if needed).
    exact : bool
        Keep the features as float32 (twice the size): what is read back is
        exactly what was encoded, so work split between processes (a Dask
        cluster's workers encoding, one worker propagating) gives the result
        of one process. Readers accept both kinds of file.

    Raises
    ------
    EmbeddingCacheError
        If the folder cannot be created.
    """

    SUFFIX = ".npz"
    FORMAT = 1

    def __init__(self, root: str | os.PathLike[str], *, exact: bool = False) -> None:
        self.exact = bool(exact)
        self.root = Path(root).expanduser()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddingCacheError(
                f"The embedding cache folder {self.root} cannot be created "
                f"({exc.strerror or exc}); choose a folder you can write to."
            ) from exc
        if not self.root.is_dir():
            raise EmbeddingCacheError(f"The embedding cache path {self.root} is not a folder.")
        self.corrupted = 0
        self.reads = 0
        self.writes = 0

    def __repr__(self) -> str:
        return f"DiskCache({str(self.root)!r}{', exact=True' if self.exact else ''})"

    def path(self, key: EmbeddingKey) -> Path:
        """The file of ``key`` (which may not exist)."""
        return self.root / f"{key.digest()}{self.SUFFIX}"

    def __contains__(self, key: object) -> bool:
        """Whether a file exists for ``key`` (not whether it is intact: see :meth:`get`)."""
        return isinstance(key, EmbeddingKey) and self.path(key).is_file()

    def files(self) -> list[Path]:
        """The entry files in the folder."""
        return sorted(p for p in self.root.glob(f"*{self.SUFFIX}") if not p.name.startswith("."))

    def __len__(self) -> int:
        return len(self.files())

    @property
    def nbytes(self) -> int:
        """Bytes taken by the entry files."""
        return sum(p.stat().st_size for p in self.files())

    def get(self, key: EmbeddingKey) -> ImageEmbedding | None:
        """The embedding stored for ``key`` (float16 features on the CPU), or None.

        None if there is no file, or if the file is damaged (it is then deleted).
        """
        path = self.path(key)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except FileNotFoundError:
            return None
        except Exception as exc:  # any damage (zip CRC, short read, bad header) means "recompute"
            self._corrupt(path, f"unreadable ({type(exc).__name__}: {exc})")
            return None
        problem = _check_entry(arrays, key)
        if problem:
            self._corrupt(path, problem)
            return None
        import torch

        from napari_sam.predictors.predictor import ImageEmbedding

        self.reads += 1
        features = torch.from_numpy(np.ascontiguousarray(arrays["features"]))
        high_res = tuple(
            torch.from_numpy(np.ascontiguousarray(arrays[name])) for name in _high_res_names(arrays)
        )
        return ImageEmbedding(
            features,
            tuple(int(s) for s in arrays["original_size"]),
            tuple(int(s) for s in arrays["input_size"]),
            high_res,
        )

    def verify(self, key: EmbeddingKey) -> bool:
        """Whether an intact file exists for ``key`` (a damaged one is deleted)."""
        return key in self and self.get(key) is not None

    def put(self, key: EmbeddingKey, embedding: ImageEmbedding) -> Path:
        """Write an embedding (atomically); return its file.

        Raises
        ------
        EmbeddingCacheError
            If the file cannot be written (e.g. the disk is full).
        """
        arrays = {
            "format": np.asarray(self.FORMAT, dtype=np.int64),
            "key": np.asarray(_key_json(key)),
            "features": _compact(embedding.features, self.exact),
            "original_size": np.asarray(embedding.original_size, dtype=np.int64),
            "input_size": np.asarray(embedding.input_size, dtype=np.int64),
        }
        for i, extra in enumerate(getattr(embedding, "high_res", ())):
            arrays[f"high_res_{i}"] = _compact(extra, self.exact)
        arrays["checksum"] = np.asarray(_checksum(arrays))
        path = self.path(key)
        what = f"The embedding cache file {path.name} in {self.root}"
        try:
            with atomic_write(path, error=EmbeddingCacheError, what=what) as tmp, open(
                tmp, "wb"
            ) as f:
                np.savez(f, **arrays)
        except OSError as exc:  # e.g. the disk is full while writing
            raise EmbeddingCacheError(f"{what} cannot be written ({exc.strerror or exc}).") from exc
        self.writes += 1
        return path

    def discard(self, key: EmbeddingKey) -> bool:
        """Delete the file of ``key``; return whether there was one."""
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def clear(self) -> int:
        """Delete every entry (and leftover temporary files); return how many entries."""
        n = 0
        for p in self.root.glob(f"*{self.SUFFIX}"):
            with contextlib.suppress(OSError):
                p.unlink()
                n += not p.name.startswith(".")
        return n

    def _corrupt(self, path: Path, reason: str) -> None:
        self.corrupted += 1
        log.warning("napari-sam: damaged embedding cache file %s (%s); recomputing", path, reason)
        with contextlib.suppress(OSError):
            path.unlink()


def _key_json(key: EmbeddingKey) -> str:
    fields: dict[str, Any] = {
        "data_hash": key.data_hash,
        "slice": list(key.slice) if isinstance(key.slice, tuple) else key.slice,
        "model_id": key.model_id,
        "contrast": None if key.contrast is None else list(key.contrast),
    }
    if key.channels is not None:  # absent for grayscale/RGB keys: format-1 files stay valid
        fields["channels"] = list(key.channels)
    return json.dumps(fields, sort_keys=True)


def _compact(tensor: Any, exact: bool = False) -> np.ndarray:
    """A tensor as a float16 array, or float32 where float16 would overflow (or if ``exact``)."""
    values = tensor.detach().to("cpu").float().numpy()
    if exact:
        return np.ascontiguousarray(values)
    with np.errstate(over="ignore"):
        half = values.astype(np.float16)
    if np.isfinite(half).all() or not np.isfinite(values).all():
        values = half
    return np.ascontiguousarray(values)


def _high_res_names(arrays: dict[str, np.ndarray]) -> list[str]:
    """``high_res_0``, ``high_res_1``, … present in an entry, in order."""
    names = []
    while f"high_res_{len(names)}" in arrays:
        names.append(f"high_res_{len(names)}")
    return names


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.blake2b(digest_size=16)
    names = ("format", "key", "original_size", "input_size", "features")
    for name in (*names, *_high_res_names(arrays)):
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        if arr.dtype.kind == "U":
            h.update(str(arr).encode())
        else:
            h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def _check_entry(arrays: dict[str, np.ndarray], key: EmbeddingKey) -> str | None:
    """Why a loaded entry cannot be used for ``key``, or None if it is intact."""
    needed = ("format", "key", "features", "original_size", "input_size", "checksum")
    missing = [n for n in needed if n not in arrays]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        if int(arrays["format"]) != DiskCache.FORMAT:
            return f"format {int(arrays['format'])}, expected {DiskCache.FORMAT}"
        if str(arrays["checksum"]) != _checksum(arrays):
            return "checksum mismatch"
    except (TypeError, ValueError) as exc:
        return f"malformed ({exc})"
    if str(arrays["key"]) != _key_json(key):
        return "written for another key"
    for name in ("features", *_high_res_names(arrays)):
        features = arrays[name]
        if features.ndim != 4 or features.shape[0] != 1 or features.dtype.kind != "f":
            return f"{name} of shape {features.shape} and type {features.dtype}"
    if arrays["original_size"].shape != (2,) or arrays["input_size"].shape != (2,):
        return "malformed image sizes"
    return None


# --------------------------------------------------------------------------- a stack
class StackEmbeddings:
    """The embeddings of the planes of one 3D stack, for one model and contrast setting.

    :meth:`get` looks a plane up in the memory store, then in the disk cache,
    and encodes it if neither has it (storing the result in both).
    :meth:`precompute` encodes every plane that is not cached yet, several per
    forward pass on a CUDA GPU; run it again after an interruption and it
    encodes only what is missing.

    Parameters
    ----------
    model : Sam
    stack : array ``(Z, H, W)``
        Grayscale planes (numpy, or lazy: each plane is read when needed).
    model_id : str
        Names the model and its weights (see :func:`model_id_for`).
    contrast : (low, high), optional
        Contrast limits for :func:`~napari_sam.workflows.image.to_sam_rgb`; default
        :func:`default_contrast_limits` of the stack (what napari shows).
    store : EmbeddingStore, optional
        Memory store; default a new one of :data:`DEFAULT_STORE_MB`.
    disk : DiskCache, path or None
        On-disk cache (a folder path makes one); None keeps embeddings in memory only.
    batch_size : int, optional
        Planes per forward pass; default :func:`default_batch_size` of the model's device.
    resize : {"bilinear", "bicubic"}, optional
        SAM 2 only: how planes are resized to the model input (see
        :func:`encode_planes`); a non-default method is part of the cache key.

    Attributes
    ----------
    encoded : int
        Planes encoded by this object.
    forward_passes : int
        Forward passes of the image encoder run by this object.
    """

    def __init__(
        self,
        model: Any,
        stack: Any,
        *,
        model_id: str,
        contrast: Sequence[float] | None = None,
        store: EmbeddingStore | None = None,
        disk: DiskCache | str | os.PathLike[str] | None = None,
        batch_size: int | None = None,
        resize: str | None = None,
    ) -> None:
        from napari_sam.workflows.image import image_layout

        shape = tuple(int(s) for s in getattr(stack, "shape", ()))
        layout = image_layout(shape, dtype=getattr(stack, "dtype", None))
        if not layout.is_stack:
            raise ImageFormatError(
                f"A 3D grayscale stack (Z, Y, X) is needed; got an array of shape {shape}."
            )
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.model = model
        self.stack = stack
        self.layout = layout
        self.model_id = str(model_id)
        if contrast is None:
            contrast = default_contrast_limits(stack)
        self.contrast = (float(contrast[0]), float(contrast[1]))
        self.store = store if store is not None else EmbeddingStore()
        self.disk = disk if isinstance(disk, DiskCache) or disk is None else DiskCache(disk)
        self.batch_size = (
            int(batch_size) if batch_size else default_batch_size(model.device, model)
        )
        self.resize = resize
        self.encoded = 0
        self.forward_passes = 0

    @property
    def n_slices(self) -> int:
        return self.layout.n_slices

    def plane(self, z: int) -> np.ndarray:
        """Plane ``z`` as a numpy array."""
        from napari_sam.workflows.image import get_plane

        return get_plane(self.stack, self.layout, z)

    def key(self, z: int, plane: np.ndarray | None = None) -> EmbeddingKey:
        """The key of plane ``z`` (hashes its current pixels)."""
        if plane is None:
            plane = self.plane(z)
        return EmbeddingKey(content_hash(plane), int(z), self._model_tag(), self.contrast)

    def _model_tag(self) -> str:
        """``model_id`` (with a SAM 2 resize other than bilinear), plus the encoder precision
        when it is not float32 (:func:`model_tag`): the caches keep them apart."""
        tag = self.model_id
        if self.resize not in (None, "bilinear") and getattr(self.model, "family", "") == "sam2":
            tag = f"{tag}~{self.resize}"
        return model_tag(self.model, tag)

    def cached(self, z: int, key: EmbeddingKey | None = None) -> ImageEmbedding | None:
        """The embedding of plane ``z`` from memory or disk, or None (nothing is encoded)."""
        key = key or self.key(z)
        emb = self.store.get(key)
        if emb is None and self.disk is not None:
            emb = self.disk.get(key)
            if emb is not None:
                self.store.put(key, emb)
        return emb

    def get(self, z: int) -> ImageEmbedding:
        """The embedding of plane ``z``: cached, or encoded now (and cached)."""
        plane = self.plane(z)
        key = self.key(z, plane)
        emb = self.cached(z, key)
        if emb is None:
            (emb,) = self._encode([plane])
            self._keep(key, emb)
        return emb

    def missing(self, slices: Iterable[int] | None = None) -> list[int]:
        """The slices that are neither in memory nor intact on disk.

        Disk entries are read and checked; damaged ones are deleted and counted missing.
        """
        out = []
        for z in self._slices(slices):
            key = self.key(z)
            if key in self.store:
                continue
            if self.disk is not None and self.disk.verify(key):
                continue
            out.append(z)
        return out

    def precompute(
        self,
        slices: Iterable[int] | None = None,
        *,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> int:
        """Encode every slice (or those in ``slices``) that is not cached yet.

        Each batch is stored as soon as it is encoded, so work done before a
        cancellation or a crash is kept and a later call resumes.

        Parameters
        ----------
        slices : iterable of int, optional
            Default: all slices.
        progress : callable, optional
            called with a :class:`~napari_sam.runtime.progress.Progress` after each batch
            (and once with 0 at the start);
            ``total`` counts the slices to encode.
        should_cancel : callable, optional
            Checked before each batch; when it returns True the work stops.

        Returns
        -------
        int
            The number of slices encoded.

        Raises
        ------
        Cancelled
            If ``should_cancel`` returned True (the slices done so far are kept).
        """
        todo = []
        for z in self._slices(slices):
            key = self.key(z)
            in_memory = self.store.get(key) if key in self.store else None
            if self.disk is None:
                if in_memory is None:
                    todo.append(z)
            elif not self.disk.verify(key):
                if in_memory is None:
                    todo.append(z)
                else:  # encoded earlier in this session: keep it on disk too
                    self.disk.put(key, in_memory)
        total = len(todo)
        notify(progress, 0, total, "encoding slices", "slices")

        def encode_and_keep(batch: Sequence[int]) -> list[None]:
            planes = [self.plane(z) for z in batch]
            keys = [self.key(z, p) for z, p in zip(batch, planes)]
            for key, emb in zip(keys, self._encode_once(planes)):
                self._keep(key, emb, memory=self.disk is None)
            return [None] * len(batch)

        def on_batch(done: int, total: int) -> None:
            notify(progress, done, total, "encoding slices", "slices")

        done = len(self._run(todo, encode_and_keep, on_batch=on_batch, should_cancel=should_cancel))
        if done < total:
            raise Cancelled(
                f"Precomputing embeddings was cancelled after {done} of {total} slices; "
                "the slices done so far are kept."
            )
        return total

    def _slices(self, slices: Iterable[int] | None) -> list[int]:
        if slices is None:
            return list(range(self.n_slices))
        out = []
        for z in slices:
            z = int(z)
            if not 0 <= z < self.n_slices:
                raise ImageFormatError(
                    f"Slice {z} does not exist; the stack has {self.n_slices} slices."
                )
            out.append(z)
        return out

    def _encode(self, planes: list[np.ndarray]) -> list[ImageEmbedding]:
        """Encode planes in batches; smaller batches, then the CPU, if memory runs out."""
        return self._run(planes, self._encode_once)

    def _encode_once(self, planes: Sequence[np.ndarray]) -> list[ImageEmbedding]:
        embs = encode_planes(self.model, list(planes), self.contrast, resize=self.resize)
        self.encoded += len(planes)
        self.forward_passes += 1
        return embs

    def _run(self, items: Sequence[Any], process: Callable[[Sequence[Any]], Any], **kw: Any):
        return run_encoder_batches(self, items, process, "slices", **kw)

    def _keep(self, key: EmbeddingKey, emb: ImageEmbedding, memory: bool = True) -> None:
        keep_embedding(self, key, emb, memory)


def run_encoder_batches(
    owner: Any, items: Sequence[Any], process: Callable[[Sequence[Any]], Any], what: str,
    **kw: Any,
) -> Any:
    """``run_batches`` for an embeddings holder (``model``, ``batch_size``): its model
    moves to the CPU on out-of-memory and a shrunken batch size is remembered on it."""
    from napari_sam.runtime.memory import run_batches

    def shrink(size: int) -> None:
        owner.batch_size = size

    return run_batches(
        items, process, owner.batch_size, what=what,
        to_cpu=lambda: owner.model.to("cpu"), device=lambda: owner.model.device,
        on_shrink=shrink, **kw,
    )  # fmt: skip


def keep_embedding(owner: Any, key: EmbeddingKey, emb: ImageEmbedding, memory: bool) -> None:
    """Keep ``emb`` in the holder's memory store (if ``memory``) and its disk cache."""
    if memory:
        owner.store.put(key, emb)
    if owner.disk is not None:
        owner.disk.put(key, emb)
