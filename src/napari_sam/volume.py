"""Per-slice image embeddings, kept so that a stack is encoded once.

Encoding a plane is the expensive step of SAM (seconds on a CPU); predicting a
mask from prompts is cheap. :class:`EmbeddingStore` keeps encoded planes
(:class:`~napari_sam.predictor.ImageEmbedding`) in memory, least recently used
first out, within a budget in megabytes. Entries are keyed by
:class:`EmbeddingKey`: the content hash of the plane, its slice index, the
model and the contrast limits used to convert it to RGB. A changed image, a
different model or new contrast limits therefore never reuse a stale
embedding. The key holds only strings, numbers and tuples, so it can also name
an entry of an on-disk cache (:meth:`EmbeddingKey.digest`).

This module imports neither torch nor napari at import time.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .predictor import ImageEmbedding

__all__ = ["DEFAULT_STORE_MB", "EmbeddingKey", "EmbeddingStore", "hash_plane"]

#: Default memory budget of an :class:`EmbeddingStore`, in megabytes (~250 planes).
DEFAULT_STORE_MB = 1024.0


def hash_plane(plane: np.ndarray) -> str:
    """Content hash (BLAKE2b, 128 bit, hex) of an array, including its shape and dtype."""
    arr = np.ascontiguousarray(plane)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{arr.shape}|{arr.dtype.str}|".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


@dataclass(frozen=True)
class EmbeddingKey:
    """What an embedding was computed from.

    Attributes
    ----------
    data_hash : str
        :func:`hash_plane` of the raw plane that was encoded (before contrast
        conversion): an edited slice gets a new hash.
    slice : int or None
        Index of the plane along Z in its stack; ``None`` for a 2D image.
    model_id : str
        Names the model and its weights (e.g. ``"vit_b"`` for the published
        checkpoint, or a checkpoint file with its size and modification time).
    contrast : (float, float) or None
        Contrast limits given to :func:`napari_sam.image.to_sam_rgb`; ``None``
        for its automatic (robust) limits.
    """

    data_hash: str
    slice: int | None
    model_id: str
    contrast: tuple[float, float] | None

    def __post_init__(self) -> None:
        if self.contrast is not None:
            lo, hi = self.contrast
            object.__setattr__(self, "contrast", (float(lo), float(hi)))
        if self.slice is not None:
            object.__setattr__(self, "slice", int(self.slice))

    def digest(self) -> str:
        """A stable hex name for this key (e.g. a file name in an on-disk cache)."""
        contrast = "auto" if self.contrast is None else f"{self.contrast[0]!r},{self.contrast[1]!r}"
        text = f"{self.data_hash}|{self.slice}|{self.model_id}|{contrast}"
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


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
    :meth:`~napari_sam.predictor.SamPredictor.set_embedding`, which moves them
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
            embedding = type(embedding)(
                features.detach().to("cpu"), embedding.original_size, embedding.input_size
            )
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
