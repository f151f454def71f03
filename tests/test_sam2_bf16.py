"""SAM 2 memory propagation in bfloat16 on a CPU: the attention to the memory bank.

Where the image encoder runs in bfloat16 on a CPU (``precision="bf16"``, what
"auto" picks on CPUs with fast bf16 matrix products), the attention of each
tracked frame to its memory bank — most of a frame's arithmetic after the
encoder — runs in bfloat16 too. These tests hold it to the accuracy bar of
the bf16 fast path: masks against our float32 with IoU >= 0.98 each and
>= 0.99 on average, on the real nuclei stack with SAM 2.1 tiny on random
weights made decisive (mask logits far from the threshold; 256-pixel inputs,
fast).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from napari_sam.model.sam2.memory import MemoryAttention
from napari_sam.workflows.memory_propagation import (
    MemoryPropagationSettings,
    TrackPrompt,
    propagate_memory,
)

SETTINGS = MemoryPropagationSettings(stop_when_absent=False)


@pytest.fixture(scope="module")
def decisive(sam2_small_input):
    """The tiny SAM 2.1 (256-pixel inputs) with its mask hypernetworks' last layers ×20."""
    sam = copy.deepcopy(sam2_small_input[0])
    with torch.no_grad():
        for mlp in sam.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(20.0)
    yield sam
    sam.precision = "fp32"


def test_memory_attention_in_bf16_stays_close_and_returns_float32():
    torch.manual_seed(0)
    attention = MemoryAttention(num_layers=2).eval()
    curr, pos = torch.randn(1, 256, 256), torch.randn(1, 256, 256)
    memory, memory_pos = torch.randn(2, 3 * 256 + 8, 64), torch.randn(2, 3 * 256 + 8, 64)
    with torch.inference_mode():
        f32 = attention(curr, pos, memory, memory_pos, 8)
        b16 = attention(curr, pos, memory, memory_pos, 8, dtype=torch.bfloat16)
    assert b16.dtype == torch.float32 and b16.shape == f32.shape == (2, 256, 256)
    assert not torch.equal(b16, f32)  # bf16 was applied
    assert float((b16 - f32).abs().max()) <= 0.02 * float(f32.abs().max())


def test_bf16_only_on_a_cpu_with_the_bf16_encoder(decisive):
    decisive.precision = "bf16"
    assert decisive.memory_attention_dtype == torch.bfloat16
    decisive.precision = "fp32"
    assert decisive.memory_attention_dtype is None


def test_bf16_propagation_meets_the_accuracy_bar(decisive, nuclei_stack, monkeypatch):
    stack = np.ascontiguousarray(nuclei_stack[27:35, 40:136, 60:188])  # (8, 96, 128)
    rng = np.random.default_rng(0)
    clicks = zip(rng.integers(5, 123, 6), rng.integers(5, 91, 6))
    prompts = [TrackPrompt(i + 1, 4, [[int(x), int(y)]], [1]) for i, (x, y) in enumerate(clicks)]
    dtypes = []
    narrow = type(decisive.memory_attention.layers[0].cross_attn_image)._narrow_value_attention
    monkeypatch.setattr(
        type(decisive.memory_attention.layers[0].cross_attn_image), "_narrow_value_attention",
        lambda self, q, k, v, dtype=None: dtypes.append(dtype) or narrow(self, q, k, v, dtype))
    runs = {}
    for precision in ("fp32", "bf16"):
        decisive.precision = precision
        result = propagate_memory(decisive, stack, prompts, settings=SETTINGS, model_id="t")
        runs[precision] = {o.obj_id: o for o in result.objects}
    decisive.precision = "fp32"
    assert set(dtypes) == {None, torch.bfloat16}  # float32 in the first run, bf16 in the second
    ious, fractions = [], []
    for obj, f32 in runs["fp32"].items():
        b16 = runs["bf16"][obj]
        assert sorted(b16.masks) == sorted(f32.masks) == list(range(8))
        for z, mask in f32.masks.items():
            fractions.append(float(mask.mean()))
            union = (mask | b16.masks[z]).sum()
            ious.append(float((mask & b16.masks[z]).sum() / union) if union else 1.0)
            s32, s16 = f32.object_scores[z], b16.object_scores[z]
            assert abs(s16 - s32) <= 0.05 * (1.0 + abs(s32)), (obj, z, s32, s16)
    fractions, ious = np.array(fractions), np.array(ious)
    assert np.all((fractions > 0.005) & (fractions < 0.995)), np.sort(fractions)
    assert ious.min() >= 0.98, np.sort(ious)[:10]
    assert ious.mean() >= 0.99, ious.mean()
