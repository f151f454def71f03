"""Batch sizes from free memory and recovery from out-of-memory errors.

No GPU here: out-of-memory errors are raised by stand-ins exactly where a GPU
would raise them (``torch.OutOfMemoryError`` from inside the batch), and the
"GPU" device is a name the fallback logic reads.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from napari_sam.errors import DeviceFallbackWarning, OutOfMemoryError
from napari_sam.predictors.predictor import SamPredictor
from napari_sam.runtime import memory
from napari_sam.runtime.memory import (
    auto_batch_size,
    encoder_bytes_per_image,
    is_out_of_memory,
    run_batches,
)
from napari_sam.workflows.embeddings import EmbeddingStore, StackEmbeddings, encode_planes
from volume_models import fast_sam

OOM = torch.OutOfMemoryError


def _oom_above(limit: int, calls: list[int]):
    def process(batch):
        calls.append(len(batch))
        if len(batch) > limit:
            raise OOM("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [x * 10 for x in batch]

    return process


def test_is_out_of_memory():
    assert is_out_of_memory(OOM("CUDA out of memory."))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: "
                                         "can't allocate memory: you tried to allocate 8 GB"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_batches_shrink_until_they_fit():
    calls: list[int] = []
    shrunk: list[int] = []
    done: list[tuple[int, int]] = []
    with pytest.warns(DeviceFallbackWarning, match="Not enough memory for 8 slices") as rec:
        out = run_batches(
            list(range(11)),
            _oom_above(3, calls),
            8,
            what="slices",
            on_shrink=shrunk.append,
            on_batch=lambda d, t: done.append((d, t)),
        )
    assert out == [x * 10 for x in range(11)]  # every item once, in order
    assert calls[:3] == [8, 4, 2]  # halved until it fits, then kept small
    assert set(calls[3:]) <= {2, 1}
    assert shrunk == [4, 2]
    assert done[-1] == (11, 11)
    # pytest.warns records every category; a stray warning from elsewhere
    # (garbage collection, a library) must not count as a third halving.
    halvings = [w for w in rec if issubclass(w.category, DeviceFallbackWarning)]
    assert [str(w.message).split(";")[0] for w in halvings] == [
        "Not enough memory for 8 slices at once",
        "Not enough memory for 4 slices at once",
    ]


def test_single_item_oom_moves_to_cpu_once():
    state = {"device": torch.device("cuda"), "moved": 0}

    def to_cpu():
        state["moved"] += 1
        state["device"] = torch.device("cpu")

    def process(batch):
        if state["device"].type == "cuda":
            raise OOM("CUDA out of memory.")
        return list(batch)

    with pytest.warns(DeviceFallbackWarning) as rec:
        out = run_batches([1, 2, 3], process, 2, what="images", to_cpu=to_cpu,
                          device=lambda: state["device"])
    assert out == [1, 2, 3]
    assert state["moved"] == 1
    messages = [str(w.message) for w in rec]
    assert any("continues on the CPU" in m for m in messages)


def test_nothing_fits_raises_a_plain_error():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeviceFallbackWarning)
        with pytest.raises(OutOfMemoryError, match="not enough GPU memory to process even one"):
            run_batches([1, 2], _oom_above(0, []), 2, what="prompts",
                        to_cpu=None, device=lambda: torch.device("cuda"))
        with pytest.raises(OutOfMemoryError, match="not enough memory"):
            run_batches([1], _oom_above(0, []), 1, device=lambda: torch.device("cpu"))


def test_other_errors_pass_through_and_cancel_stops():
    def bad(batch):
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError, match="not a memory problem"):
        run_batches([1, 2], bad, 1)
    seen = []
    out = run_batches([1, 2, 3, 4], lambda b: seen.extend(b) or list(b), 1,
                      should_cancel=lambda: len(seen) >= 2)
    assert out == [1, 2]
    with pytest.raises(ValueError):
        run_batches([1], lambda b: b, 0)


def test_auto_batch_size(monkeypatch):
    assert auto_batch_size("cpu", 10, maximum=8) == 1
    assert auto_batch_size("cpu", 10, maximum=8, cpu_default=4) == 4
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: 10 * 2**30)
    assert auto_batch_size("cuda", 2**30, maximum=64) == 7  # 70 % of 10 GiB
    assert auto_batch_size("cuda", 2**30, maximum=4) == 4
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: 2**20)
    assert auto_batch_size("cuda", 2**30, maximum=4) == 1
    with pytest.raises(ValueError):
        auto_batch_size("cuda", 1, maximum=0)


def test_encoder_memory_estimate_grows_with_the_model():
    from napari_sam.model.build import CONFIGS, build_model

    with torch.device("meta"):
        sizes = {k: encoder_bytes_per_image(build_model(CONFIGS[k])) for k in ("vit_b", "vit_h")}
    assert 2**30 < sizes["vit_b"] < sizes["vit_h"] < 4 * 2**30


# ------------------------------------------------------------------ wired into the pipeline
class _OomAboveEncoder(torch.nn.Module):
    """Wraps an encoder; batches larger than ``limit`` raise a CUDA-style OOM."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner = inner
        self.limit = limit
        self.img_size = inner.img_size
        self.batches: list[int] = []

    def forward(self, x):
        self.batches.append(int(x.shape[0]))
        if x.shape[0] > self.limit:
            raise OOM("CUDA out of memory. Tried to allocate 1.50 GiB")
        return self.inner(x)


def test_precompute_recovers_from_oom_with_identical_embeddings():
    stack = np.random.default_rng(0).integers(0, 4000, (5, 48, 40), dtype=np.uint16)
    sam = fast_sam()
    expected = [encode_planes(sam, [p], (0, 4000))[0].features for p in stack]
    sam.image_encoder = _OomAboveEncoder(sam.image_encoder, limit=1)
    emb = StackEmbeddings(sam, stack, model_id="m", contrast=(0, 4000),
                          store=EmbeddingStore(), batch_size=4)
    with pytest.warns(DeviceFallbackWarning, match="4 slices at once"):
        assert emb.precompute() == 5
    assert emb.batch_size == 1  # later work starts at the size that fitted
    for z in range(5):
        torch.testing.assert_close(emb.get(z).features, expected[z])


def test_set_image_oom_on_cpu_says_what_to_do():
    sam = fast_sam()
    sam.image_encoder = _OomAboveEncoder(sam.image_encoder, limit=0)
    predictor = SamPredictor(sam)
    with pytest.raises(OutOfMemoryError, match="smaller model"):
        predictor.set_image(np.zeros((32, 32, 3), np.uint8))
    assert not predictor.is_image_set


def test_cli_prints_fallback_warnings_as_one_line(tmp_path, monkeypatch, capsys):
    """``napari-sam embed`` on a "GPU" that fits one slice: a one-line warning, all slices."""
    import tifffile

    from napari_sam import cli
    from napari_sam.runtime import loader

    sam = fast_sam()
    sam.image_encoder = _OomAboveEncoder(sam.image_encoder, limit=1)
    monkeypatch.setattr(loader, "load", lambda *a, **k: loader.LoadedModel.wrap(sam, "vit_t"))
    stack = np.random.default_rng(0).integers(0, 4000, (5, 40, 48), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    out = tmp_path / "emb"
    code = cli.main(["embed", str(tmp_path / "stack.tif"), "-o", str(out), "--batch-size", "2",
                     "--quiet", "--device", "cpu", "--model", "vit_t"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "napari-sam: warning: Not enough memory for 2 slices at once; continuing with 1" in err
    assert "DeviceFallbackWarning" not in err and "warnings.warn" not in err
    assert len(list(out.rglob("*.npz"))) == 5
