"""EmbeddingStore: an LRU of per-slice embeddings bounded in megabytes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from napari_sam.predictors.predictor import ImageEmbedding
from napari_sam.runtime.files import content_hash as hash_plane
from napari_sam.workflows.embeddings import EmbeddingKey, EmbeddingStore

MB = 1024 * 1024


def emb(mb: float = 1.0, fill: float = 0.0) -> ImageEmbedding:
    n = int(mb * MB / 4)
    return ImageEmbedding(
        torch.full((1, 1, 1, n), float(fill), dtype=torch.float32), (10, 20), (512, 1024)
    )


def key(i: int, model: str = "vit_b", contrast=(0, 100), data: str = "h") -> EmbeddingKey:
    return EmbeddingKey(data_hash=data, slice=i, model_id=model, contrast=contrast)


def test_lru_eviction_within_budget():
    store = EmbeddingStore(max_mb=3)
    for i in range(3):
        assert store.put(key(i), emb(1, i))
    assert len(store) == 3 and store.nbytes == 3 * MB
    assert store.get(key(0)) is not None  # 0 is now the most recently used
    store.put(key(3), emb(1, 3))  # evicts 1, the least recently used
    assert key(1) not in store and key(0) in store and key(3) in store
    assert store.nbytes <= store.max_bytes
    assert store.keys() == [key(2), key(0), key(3)]
    assert float(store.get(key(3)).features.flatten()[0]) == 3.0
    assert store.hits == 2 and store.misses == 0
    assert store.get(key(1)) is None and store.misses == 1


def test_replace_and_too_large_and_discard():
    store = EmbeddingStore(max_mb=2)
    store.put(key(0), emb(1))
    store.put(key(0), emb(1, 5))
    assert len(store) == 1 and store.nbytes == MB
    assert not store.put(key(1), emb(3))  # larger than the budget: not stored
    assert key(1) not in store and len(store) == 1
    store.put(key(2, contrast=(0, 50)), emb(0.5))
    assert store.discard(lambda k: k.contrast != (0.0, 100.0)) == 1
    assert store.keys() == [key(0)]
    store.clear()
    assert len(store) == 0 and store.nbytes == 0
    with pytest.raises(ValueError):
        EmbeddingStore(max_mb=-1)


def test_key_distinguishes_everything_and_is_persistable():
    base = key(3)
    variants = [
        key(4),
        key(3, model="vit_t"),
        key(3, contrast=(0, 101)),
        key(3, data="g"),
        key(3, contrast=None),
    ]
    assert all(v != base for v in variants)
    assert len({v.digest() for v in [base, *variants]}) == 6
    # ints and floats of the same value are the same key (contrast limits come as either)
    assert key(3, contrast=(0.0, 100.0)) == base and hash(key(3, contrast=(0.0, 100.0))) == hash(
        base
    )
    assert pickle.loads(pickle.dumps(base)) == base
    assert base.digest() == EmbeddingKey("h", 3, "vit_b", (0.0, 100.0)).digest()


def test_hash_plane_tracks_content_shape_and_dtype():
    a = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert hash_plane(a) == hash_plane(a.copy())
    b = a.copy()
    b[1, 1] += 1
    assert hash_plane(b) != hash_plane(a)
    assert hash_plane(a.reshape(4, 3)) != hash_plane(a)
    assert hash_plane(a.astype(np.int16)) != hash_plane(a)
    assert hash_plane(a.T) == hash_plane(np.ascontiguousarray(a.T))
    assert len(hash_plane(np.zeros((2, 2), bool))) == 32
