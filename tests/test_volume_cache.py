"""On-disk embeddings (DiskCache) and the embeddings of a stack (StackEmbeddings).

Cache logic is tested with ``fast_sam`` (a real Sam whose image encoder is a
fast pooling stand-in); encoding equivalence and the float16 error with the
small random SAM (real ViT encoder).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from napari_sam.errors import Cancelled, CheckpointError, EmbeddingCacheError, InputFileError
from napari_sam.predictors.predictor import ImageEmbedding, SamPredictor
from napari_sam.runtime.loader import model_id_for
from napari_sam.workflows.embeddings import (
    DiskCache,
    EmbeddingKey,
    EmbeddingStore,
    StackEmbeddings,
    default_contrast_limits,
    encode_planes,
)
from napari_sam.workflows.image import to_sam_rgb
from napari_sam.workflows.io import read_stack
from napari_sam.workflows.samples import make_nuclei_3d
from volume_models import EncoderCalls, fast_sam, small_sam


@pytest.fixture(scope="module")
def stack():
    """(5, 48, 80) uint16 nuclei: small non-square planes."""
    return np.ascontiguousarray(make_nuclei_3d()[12:17, 60:108, 40:120])


@pytest.fixture(scope="module")
def fast():
    return fast_sam()


def random_embedding(seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return ImageEmbedding(torch.randn(1, 256, 64, 64, generator=g) * scale, (48, 80), (614, 1024))


KEY = EmbeddingKey("abc", 3, "vit_b", (0.0, 4095.0))


# --------------------------------------------------------------------------- DiskCache
def test_disk_cache_round_trip_is_float16_and_atomic(tmp_path):
    cache = DiskCache(tmp_path / "emb")
    emb = random_embedding()
    path = cache.put(KEY, emb)
    assert path.parent == cache.root and path.name == f"{KEY.digest()}.npz"
    assert [p.name for p in cache.root.iterdir()] == [path.name]  # no temporary file left
    assert 2 * 2**20 < path.stat().st_size < 2 * 2**20 + 4096  # float16: 2 MiB per plane
    back = DiskCache(tmp_path / "emb").get(KEY)  # a "later session"
    assert back.features.dtype == torch.float16
    assert torch.equal(back.features, emb.features.half())
    assert back.original_size == (48, 80) and back.input_size == (614, 1024)
    assert KEY in cache and len(cache) == 1 and cache.nbytes == path.stat().st_size
    # another key (slice, model, contrast, data) is another entry
    for other in (
        EmbeddingKey("abc", 4, "vit_b", (0.0, 4095.0)),
        EmbeddingKey("abc", 3, "vit_t", (0.0, 4095.0)),
        EmbeddingKey("abc", 3, "vit_b", (0.0, 4000.0)),
        EmbeddingKey("abd", 3, "vit_b", (0.0, 4095.0)),
    ):
        assert other not in cache and cache.get(other) is None
    # a file copied under another key's name is refused (the key is stored inside)
    other = EmbeddingKey("abc", 4, "vit_b", (0.0, 4095.0))
    cache.path(other).write_bytes(path.read_bytes())
    assert cache.get(other) is None and cache.corrupted == 1 and other not in cache
    # features that overflow float16 are kept as float32
    big = random_embedding(scale=1e6)
    cache.put(KEY, big)
    assert torch.equal(cache.get(KEY).features, big.features)
    assert cache.clear() == 1 and len(cache) == 0


def test_disk_cache_folder_errors(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(EmbeddingCacheError, match="cannot be created"):
        DiskCache(blocker / "emb")
    with pytest.raises(EmbeddingCacheError, match=r"not a folder|cannot be created"):
        DiskCache(blocker)


def test_disk_cache_write_error_is_one_sentence(tmp_path, monkeypatch):
    import errno

    cache = DiskCache(tmp_path / "emb")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(EmbeddingCacheError, match=r"cannot be written .*No space left"):
        cache.put(KEY, random_embedding())
    assert list(cache.root.iterdir()) == []  # the temporary file is removed, nothing is left


def test_truncated_and_flipped_files_are_detected(tmp_path):
    cache = DiskCache(tmp_path)
    emb = random_embedding(1)
    path = cache.put(KEY, emb)
    good = path.read_bytes()
    expected = emb.features.half()
    # truncated anywhere: detected, and the file is deleted
    for cut in (0, 10, len(good) // 2, len(good) - 1):
        path.write_bytes(good[:cut])
        assert cache.get(KEY) is None and not path.exists()
    # one flipped byte anywhere: detected, or (zip metadata that is never read) harmless
    n_detected = 0
    positions = np.random.default_rng(0).choice(len(good), 40, replace=False).tolist()
    payload = good.index(emb.features.half().numpy().tobytes()[:64])
    positions += [0, 40, payload, payload + 1_000_000, len(good) - 30]
    for pos in positions:
        damaged = bytearray(good)
        damaged[pos] ^= 0x5A
        path.write_bytes(bytes(damaged))
        back = cache.get(KEY)
        if back is None:
            n_detected += 1
            assert not path.exists()
        else:
            assert torch.equal(back.features, expected), pos
    assert n_detected >= len(positions) - 5
    assert cache.corrupted == 4 + n_detected
    for pos in (payload, payload + 1_000_000):  # in the features themselves: always caught
        damaged = bytearray(good)
        damaged[pos] ^= 0x01
        path.write_bytes(bytes(damaged))
        assert cache.get(KEY) is None


# --------------------------------------------------------------------------- StackEmbeddings
def test_precompute_then_a_later_session_reuses_and_invalidates(tmp_path, fast, stack):
    calls = EncoderCalls(fast)
    try:
        first = StackEmbeddings(fast, stack, model_id="m1", disk=tmp_path)
        assert first.contrast == default_contrast_limits(stack)
        assert first.precompute() == 5 and calls.planes == 5 and first.encoded == 5
        assert len(first.disk) == 5

        # a later session: new memory store, same folder -> nothing is encoded
        calls.reset()
        later = StackEmbeddings(fast, stack, model_id="m1", disk=DiskCache(tmp_path))
        assert later.missing() == [] and later.precompute() == 0 and calls.planes == 0
        direct = encode_planes(fast, [stack[2]], first.contrast)[0]
        got = later.get(2)
        assert calls.planes == 1  # (the direct encode above)
        assert got.features.dtype == torch.float16
        assert torch.equal(got.features, direct.features.half())

        # changed data on one slice: only that slice is encoded again
        calls.reset()
        edited = stack.copy()
        edited[3, 10, 10] += 1
        again = StackEmbeddings(fast, edited, model_id="m1", disk=tmp_path)
        assert again.missing() == [3] and again.precompute() == 1 and calls.planes == 1

        # another model or other contrast limits: everything again
        for kwargs in ({"model_id": "m2"}, {"model_id": "m1", "contrast": (0, 1000)}):
            calls.reset()
            other = StackEmbeddings(fast, stack, disk=tmp_path, **kwargs)
            assert other.missing() == list(range(5)) and other.precompute() == 5
            assert calls.planes == 5
        assert len(DiskCache(tmp_path)) == 5 + 1 + 5 + 5
    finally:
        calls.remove()


def test_get_looks_in_memory_then_disk_then_encodes(tmp_path, fast, stack):
    calls = EncoderCalls(fast)
    try:
        store = EmbeddingStore()
        emb = StackEmbeddings(fast, stack, model_id="m", store=store, disk=tmp_path)
        a = emb.get(1)
        assert calls.planes == 1 and a.features.dtype == torch.float32
        assert emb.get(1) is a and calls.planes == 1  # memory
        store.clear()
        b = emb.get(1)  # disk
        assert calls.planes == 1 and b.features.dtype == torch.float16
        assert torch.equal(b.features, a.features.half())
        # memory only: precompute keeps everything in the store
        mem = StackEmbeddings(fast, stack, model_id="m", store=EmbeddingStore())
        assert mem.disk is None and mem.precompute() == 5 and len(mem.store) == 5
        assert mem.precompute() == 0
    finally:
        calls.remove()


def test_entries_encoded_in_memory_are_saved_by_precompute(tmp_path, fast, stack):
    store = EmbeddingStore()
    StackEmbeddings(fast, stack, model_id="m", store=store).get(0)
    calls = EncoderCalls(fast)
    try:
        emb = StackEmbeddings(fast, stack, model_id="m", store=store, disk=tmp_path)
        assert emb.precompute() == 4 and calls.planes == 4
        assert len(emb.disk) == 5  # slice 0 was written from memory, not encoded again
    finally:
        calls.remove()


def test_corrupted_entry_is_recomputed_by_precompute_and_get(tmp_path, fast, stack):
    emb = StackEmbeddings(fast, stack, model_id="m", store=EmbeddingStore(0), disk=tmp_path)
    emb.precompute()
    path1 = emb.disk.path(emb.key(1))
    path1.write_bytes(path1.read_bytes()[:1000])  # truncated
    path3 = emb.disk.path(emb.key(3))
    data = bytearray(path3.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte in the features
    path3.write_bytes(bytes(data))
    calls = EncoderCalls(fast)
    try:
        assert emb.precompute() == 2 and sorted(calls.batches) == [1, 1]
        assert emb.disk.corrupted == 2 and emb.missing() == []
        path1.write_bytes(b"garbage")
        got = emb.get(1)
        assert calls.planes == 3 and emb.disk.corrupted == 3
        assert torch.equal(emb.disk.get(emb.key(1)).features, got.features.half())
    finally:
        calls.remove()


def test_partial_precompute_resumes_with_only_the_missing_slices(tmp_path, fast, stack):
    seen = []

    def progress(event):
        seen.append((event.done, event.total))

    emb = StackEmbeddings(fast, stack, model_id="m", disk=tmp_path, batch_size=2)
    calls = EncoderCalls(fast)
    try:
        with pytest.raises(Cancelled, match="after 2 of 5 slices"):
            emb.precompute(progress=progress, should_cancel=lambda: len(seen) > 1)
        assert calls.batches == [2] and seen == [(0, 5), (2, 5)]
        assert len(emb.disk) == 2
        # a new session resumes: only the three missing slices are encoded
        calls.reset()
        seen.clear()
        resumed = StackEmbeddings(fast, stack, model_id="m", disk=tmp_path, batch_size=2)
        assert resumed.missing() == [2, 3, 4]
        assert resumed.precompute(progress=progress) == 3
        assert calls.batches == [2, 1] and seen == [(0, 3), (2, 3), (3, 3)]
        assert resumed.precompute([0, 4]) == 0 and calls.planes == 3
    finally:
        calls.remove()


def test_batches_equal_single_planes_and_set_image(stack):
    model = small_sam()
    contrast = default_contrast_limits(stack)
    single = encode_planes(model, [stack[0]], contrast)[0]
    predictor = SamPredictor(model)
    predictor.set_image(to_sam_rgb(stack[0], contrast))
    assert torch.equal(single.features, predictor.features)  # exactly set_image
    assert single.original_size == predictor.original_size
    assert single.input_size == predictor.input_size
    pair = encode_planes(model, [stack[0], stack[1]], contrast)
    assert len(pair) == 2 and pair[0].features.shape == (1, 256, 64, 64)
    torch.testing.assert_close(pair[0].features, single.features, atol=1e-4, rtol=1e-4)


def test_stack_embeddings_input_checks(fast, stack):
    with pytest.raises(ValueError, match="3D grayscale stack"):
        StackEmbeddings(fast, stack[0], model_id="m")
    with pytest.raises(ValueError, match="batch_size"):
        StackEmbeddings(fast, stack, model_id="m", batch_size=0)
    emb = StackEmbeddings(fast, stack, model_id="m")
    with pytest.raises(ValueError, match="Slice 7 does not exist"):
        emb.precompute([7])


def test_fp16_storage_error_is_small(stack):
    """The float16 round trip changes embeddings by ~1e-3 relative and masks hardly at all."""
    model = small_sam()
    contrast = default_contrast_limits(stack)
    predictor = SamPredictor(model)
    g = np.random.default_rng(0)
    ious, max_abs, mean_abs = [], [], []
    for z in (0, 3):
        emb = encode_planes(model, [stack[z]], contrast)[0]
        half = ImageEmbedding(emb.features.half(), emb.original_size, emb.input_size)
        err = (half.features.float() - emb.features).abs()
        max_abs.append(float(err.max()))
        mean_abs.append(float(err.mean()))
        assert float(err.max()) <= float(emb.features.abs().max()) * 2**-11
        for _ in range(3):
            x, y = g.uniform(5, 75), g.uniform(5, 43)
            prompt = {"point_coords": np.array([[x, y]]), "point_labels": np.array([1])}
            predictor.set_embedding(emb)
            a = predictor.predict(**prompt, multimask_output=False)[0][0]
            predictor.set_embedding(half)
            b = predictor.predict(**prompt, multimask_output=False)[0][0]
            union = (a | b).sum()
            ious.append(1.0 if union == 0 else (a & b).sum() / union)
    assert np.mean(ious) > 0.995 and min(ious) > 0.98, ious
    assert max(mean_abs) < 1e-3


# --------------------------------------------------------------------------- helpers
def test_default_contrast_limits_match_napari():
    from napari.layers.utils.layer_utils import calc_data_range

    g = np.random.default_rng(0)
    arrays = [
        g.integers(0, 255, (3, 8, 8), dtype=np.uint8),
        g.integers(100, 4000, (4, 16, 16), dtype=np.uint16),
        np.full((2, 4, 4), 7, np.uint16),
        np.where(g.random((3, 5, 5)) > 0.2, g.normal(size=(3, 5, 5)), np.nan),
        g.integers(0, 60000, (12, 1000, 900), dtype=np.uint16),  # > 1e7 voxels: sampled
    ]
    big = arrays[-1]
    big[5, 500, 450] = 65000  # not in a sampled plane: napari ignores it, and so do we
    for a in arrays:
        assert default_contrast_limits(a) == calc_data_range(a), a.shape


def test_read_stack(tmp_path):
    import tifffile

    stack = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    np.testing.assert_array_equal(read_stack(tmp_path / "s.tif"), stack)
    tifffile.imwrite(tmp_path / "c.tif", stack[:, None], imagej=True)  # ZCYX, one channel
    np.testing.assert_array_equal(read_stack(tmp_path / "c.tif"), stack)
    np.save(tmp_path / "s.npy", stack)
    np.testing.assert_array_equal(read_stack(tmp_path / "s.npy"), stack)
    tifffile.imwrite(tmp_path / "2d.tif", stack[0])
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    tifffile.imwrite(
        tmp_path / "4d.tif", np.zeros((2, 3, 4, 5), np.uint8), photometric="minisblack"
    )
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    for name, match in [
        ("missing.tif", "does not exist"),
        ("2d.tif", "2D image"),
        ("rgb.tif", "colour"),
        ("4d.tif", "4D"),
        ("bad.tif", "cannot be read as a TIFF"),
        (".", "folder"),
    ]:
        with pytest.raises(InputFileError, match=match):
            read_stack(tmp_path / name)


def test_model_id_for(tmp_path):
    assert model_id_for("vit_b") == "vit_b" and model_id_for("vit_t", "") == "vit_t"
    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"123")
    a = model_id_for("vit_b", ckpt)
    assert a.startswith(f"file:{ckpt.resolve()}:3:")
    ckpt.write_bytes(b"1234")
    assert model_id_for("vit_b", ckpt) != a
    with pytest.raises(CheckpointError, match="cannot be found"):
        model_id_for("vit_b", tmp_path / "nope.pth")
