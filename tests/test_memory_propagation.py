"""SAM 2 memory propagation as a workflow: inputs, stop rule, corrections, caches, bounded memory.

A tiny SAM 2.1 with random weights on 256-pixel inputs keeps these fast; the
agreement with Meta's video predictor is tested in ``test_parity_sam2_video.py``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from napari_sam.errors import Cancelled, PromptError, PropagationError
from napari_sam.predictors.predictor import ImageEmbedding
from napari_sam.workflows.embeddings import DiskCache, EmbeddingKey, EmbeddingStore
from napari_sam.workflows.memory_propagation import (
    MemoryPropagation,
    MemoryPropagationResult,
    MemoryPropagationSettings,
    TrackPrompt,
    propagate_memory,
)
from napari_sam.workflows.propagation import plan_write


@pytest.fixture(scope="module")
def model(sam2_small_input):
    return sam2_small_input[0]


@pytest.fixture(scope="module")
def stack(nuclei_stack):
    """Ten slices of the real nuclei stack (uint16), cropped to 96 × 128 pixels."""
    return np.ascontiguousarray(nuclei_stack[25:35, 40:136, 60:188])


def _with_object_bias(model, bias):
    """A copy of ``model`` whose object-score head says ``bias``: absent (< 0) or present."""
    other = copy.deepcopy(model)
    head = other.sam_mask_decoder.pred_obj_score_head.layers[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(bias)
    return other


def _square(shape, r0, c0, size=20):
    mask = np.zeros(shape, bool)
    mask[r0 : r0 + size, c0 : c0 + size] = True
    return mask


CLICKS = [
    TrackPrompt(1, 4, [[40.0, 30.0]], [1]),
    TrackPrompt(2, 4, [[90.0, 60.0], [85.0, 70.0]], [1, 0], box=[70, 45, 110, 80]),
]


def test_two_objects_both_ways(model, stack):
    events = []
    keep_going = MemoryPropagationSettings(stop_when_absent=False)
    session = MemoryPropagation(model, stack, model_id="t", settings=keep_going)
    result = session.run(CLICKS, progress=events.append)
    assert isinstance(result, MemoryPropagationResult)
    assert result.object_ids == [1, 2] and result.z == 4
    assert result.shape == (10, 96, 128) and result.z_range == (0, 9)
    for obj in result.objects:
        assert obj.prompt_slices == [4]
        assert sorted(obj.object_scores) == list(range(10))
        assert set(obj.masks) <= set(range(10)) and 4 in obj.masks
        assert all(m.shape == (96, 128) and m.dtype == bool for m in obj.masks.values())
        assert obj.stops == {1: obj.stops[1], -1: obj.stops[-1]}
        assert obj.stops[1].reason == obj.stops[-1].reason == "range_end"
    assert events[-1].done == events[-1].total == 9  # 5 slices up, 4 down
    assert [e.done for e in events] == sorted(e.done for e in events)
    volume = result.label_volume()
    assert volume.dtype == np.uint32 and set(np.unique(volume)) <= {0, 1, 2}
    assert result.summary().startswith("object 1: slices")
    plan = plan_write(np.zeros(result.shape, np.uint32), result, result.object_ids)
    assert {oid for oid, _ in plan} <= {1, 2}
    one, two = result.objects
    assert result.changed == {1: sorted(one.masks), 2: sorted(two.masks)}


def test_same_result_from_numpy_dask_and_cached_embeddings(model, stack):
    import dask.array as da

    store = EmbeddingStore()
    first = propagate_memory(model, stack, CLICKS, model_id="t", store=store)
    lazy = da.from_array(stack, chunks=(1, 96, 128))
    session = MemoryPropagation(model, lazy, model_id="t", store=store)
    second = session.run(CLICKS)
    assert session.embeddings.encoded == 0  # every slice came from the shared store
    for a, b in zip(first.objects, second.objects):
        assert a.masks.keys() == b.masks.keys()
        for z in a.masks:
            np.testing.assert_array_equal(a.masks[z], b.masks[z])


def test_stops_where_the_object_is_absent(model, stack):
    absent = _with_object_bias(model, -30.0)  # tracked slices: absent
    seed = TrackPrompt(3, 5, mask=_square((96, 128), 30, 50))  # a mask prompt is present
    result = propagate_memory(absent, stack, [seed], model_id="absent")
    (obj,) = result.objects
    assert sorted(obj.masks) == [5] and obj.masks[5].sum() == 400  # the given mask, exactly
    assert obj.stops[1].slice == 6 and obj.stops[1].reason == "absent"
    assert obj.stops[-1].slice == 4 and "absent" in obj.stops[-1].describe()
    assert sorted(obj.object_scores) == [4, 5, 6]
    # patience: two absent slices in a row before stopping
    patient = MemoryPropagationSettings(absent_slices=2)
    two = propagate_memory(absent, stack, [seed], model_id="absent", settings=patient)
    assert two.objects[0].stops[1].slice == 6
    assert sorted(two.objects[0].object_scores) == [3, 4, 5, 6, 7]
    # off: every slice is visited, absent slices get no mask
    off = propagate_memory(
        absent,
        stack,
        [seed],
        model_id="absent",
        settings=MemoryPropagationSettings(stop_when_absent=False),
    )
    assert sorted(off.objects[0].object_scores) == list(range(10))
    assert sorted(off.objects[0].masks) == [5]
    assert off.objects[0].stops[1].reason == "range_end"


def test_min_area_and_range(model, stack):
    present = _with_object_bias(model, 30.0)
    seed = TrackPrompt(1, 5, mask=_square((96, 128), 30, 50))
    result = propagate_memory(present, stack, [seed], model_id="p", z_range=(3, 7))
    obj = result.objects[0]
    assert set(obj.masks) <= set(range(3, 8)) and result.z_range == (3, 7)
    huge = propagate_memory(
        present, stack, [seed], model_id="p", settings=MemoryPropagationSettings(min_area=10**6)
    )
    assert huge.objects[0].stops[1].reason in ("small", "empty")
    assert sorted(huge.objects[0].masks) == [5]


def test_correction_follows_on_from_the_slice(model, stack):
    session = MemoryPropagation(
        model, stack, model_id="t", settings=MemoryPropagationSettings(stop_when_absent=False)
    )
    before = session.run(CLICKS)
    fix = TrackPrompt(1, 7, [[45.0, 33.0], [20.0, 20.0]], [1, 0])
    after = session.correct([fix])
    assert after.changed == {1: [7, 8, 9]}
    one_before, one_after = before.objects[0], after.objects[0]
    assert one_after.prompt_slices == [4, 7]
    for z in range(0, 7):  # the first prompt's side and the slices before the correction stay
        if z in one_before.masks:
            np.testing.assert_array_equal(one_before.masks[z], one_after.masks[z])
    for z in before.objects[1].masks:  # the other object is untouched
        np.testing.assert_array_equal(before.objects[1].masks[z], after.objects[1].masks[z])
    # the same correction from scratch (a second prompted slice) tracks differently on 7..9:
    # the correction used the memory of slices 4..6
    assert set(one_after.masks) >= {7}
    # a cancelled correction leaves everything as it was
    with pytest.raises(Cancelled):
        session.correct([TrackPrompt(2, 8, [[80.0, 60.0]], [1])], should_cancel=lambda: True)
    kept = session.result
    for a, b in zip(after.objects, kept.objects):
        assert a.masks.keys() == b.masks.keys() and a.prompt_slices == b.prompt_slices
    # a click on a prompted slice recomputes the object from scratch
    again = session.correct([TrackPrompt(2, 4, [[95.0, 62.0]], [1])])
    assert again.changed[2] and again.objects[1].prompt_slices == [4]


def test_correction_keeps_later_prompted_slices(model, stack):
    keep_going = MemoryPropagationSettings(stop_when_absent=False)
    session = MemoryPropagation(model, stack, model_id="t", settings=keep_going)
    first = session.run(
        [TrackPrompt(1, 3, [[40.0, 30.0]], [1]), TrackPrompt(1, 7, [[42.0, 31.0]], [1])]
    )
    after = session.correct([TrackPrompt(1, 5, [[41.0, 30.0], [10.0, 10.0]], [1, 0])])
    assert 5 in after.changed[1] and set(after.changed[1]) <= {5, 6, 8, 9}
    assert after.objects[0].prompt_slices == [3, 5, 7]
    np.testing.assert_array_equal(after.objects[0].masks[7], first.objects[0].masks[7])


def test_cancel_keeps_the_session(model, stack):
    session = MemoryPropagation(model, stack, model_id="t")
    calls = {"n": 0}

    def cancel_later():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled, match="nothing was changed"):
        session.run(CLICKS, should_cancel=cancel_later)
    assert session.object_ids == [] and session.result.objects == []
    done = session.run(CLICKS)
    assert done.object_ids == [1, 2]


def test_memory_stays_bounded(model):
    """The tracker's memory does not grow with the number of slices."""
    rng = np.random.default_rng(0)
    long = rng.integers(0, 255, (40, 64, 64)).astype(np.uint8)
    peaks = {}
    for n in (16, 40):
        session = MemoryPropagation(
            model,
            long[:n],
            model_id="t",
            store=EmbeddingStore(0),
            keep_history=False,
            settings=MemoryPropagationSettings(stop_when_absent=False),
        )
        sizes = []
        session.run(
            [TrackPrompt(1, 0, [[30.0, 30.0]], [1])],
            progress=lambda e, s=session, sizes=sizes: sizes.append(s.tracker.memory_bytes()),
        )
        peaks[n] = max(sizes)
    assert peaks[16] > 0 and peaks[40] == peaks[16]


def test_disk_cache_keeps_the_high_resolution_maps(model, stack, tmp_path):
    session = MemoryPropagation(model, stack, model_id="t", disk=tmp_path / "cache")
    session.run([TrackPrompt(1, 2, [[40.0, 30.0]], [1])], objects=None)
    disk = DiskCache(tmp_path / "cache")
    assert len(disk) == 10
    key = session.embeddings.key(3)
    emb = disk.get(key)
    assert isinstance(emb, ImageEmbedding) and len(emb.high_res) == 2
    assert tuple(emb.high_res[0].shape) == (1, 32, 64, 64)
    assert tuple(emb.high_res[1].shape) == (1, 64, 32, 32)
    fresh = session.embeddings.store.get(key)
    torch.testing.assert_close(emb.high_res[1].float(), fresh.high_res[1], atol=1e-2, rtol=1e-2)
    # a damaged high-resolution map is caught by the checksum and recomputed
    path = disk.path(key)
    data = dict(np.load(path))
    data["high_res_1"] = data["high_res_1"] * 2
    np.savez(path, **data)
    assert disk.get(key) is None and disk.corrupted == 1
    assert isinstance(key, EmbeddingKey)


def test_bicubic_resize_has_its_own_cache_key(model, stack):
    store = EmbeddingStore()
    a = MemoryPropagation(model, stack, model_id="t", store=store)
    b = MemoryPropagation(
        model, stack, model_id="t", store=store,
        settings=MemoryPropagationSettings(resize="bicubic"),
    )
    assert a.embeddings.key(0) != b.embeddings.key(0)
    assert "bicubic" in b.embeddings.key(0).model_id


# --------------------------------------------------------------------------- bad input
def test_a_2d_image_cannot_be_propagated(model, stack):
    with pytest.raises(PropagationError, match="this image is 2D") as info:
        propagate_memory(model, stack[0], [TrackPrompt(1, 0, [[5.0, 5.0]], [1])])
    assert "\n" not in str(info.value)
    with pytest.raises(PropagationError, match="2D"):
        MemoryPropagation(model, np.zeros((64, 64, 3), np.uint8))


def test_prompts_outside_the_stack(model, stack):
    session = MemoryPropagation(model, stack, model_id="t")
    with pytest.raises(PropagationError, match=r"slice 12, but the stack has slices 0 to 9"):
        session.run([TrackPrompt(1, 12, [[5.0, 5.0]], [1])])
    with pytest.raises(PropagationError, match="outside the image"):
        session.run([TrackPrompt(1, 2, [[500.0, 5.0]], [1])])
    limited = MemoryPropagation(model, stack, model_id="t", z_range=(2, 5))
    with pytest.raises(PropagationError, match="outside the slice range 2-5"):
        limited.run([TrackPrompt(1, 7, [[5.0, 5.0]], [1])])
    with pytest.raises(PropagationError, match="slice range 3-12"):
        MemoryPropagation(model, stack, z_range=(3, 12))
    with pytest.raises(PropagationError, match="mask of object 1 on slice 2 has shape"):
        session.run([TrackPrompt(1, 2, mask=np.ones((10, 10), bool))])


def test_object_without_prompt(model, stack):
    session = MemoryPropagation(model, stack, model_id="t")
    with pytest.raises(PropagationError, match="Object 5 has no prompt"):
        session.run(CLICKS, objects=[1, 5])
    with pytest.raises(PropagationError, match="nothing to propagate"):
        session.run()
    with pytest.raises(PropagationError, match="at least one prompt"):
        propagate_memory(model, stack, [])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(obj=1, z=2), "has no click, box or mask"),
        (dict(obj=1, z=2, point_coords=[[1.0, 2.0]], point_labels=[0]), "only background clicks"),
        (dict(obj=0, z=2, point_coords=[[1.0, 2.0]], point_labels=[1]), ">= 1"),
        (dict(obj=1, z=2, point_coords=[[np.nan, 2.0]], point_labels=[1]), "NaN"),
        (dict(obj=1, z=2, box=[5, 5, 1, 1]), "x0 <= x1"),
        (
            dict(obj=1, z=2, mask=np.ones((4, 4), bool), box=[0, 0, 2, 2]),
            "mask and clicks or a box",
        ),
        (dict(obj=1, z=2, mask=np.zeros((4, 4), bool)), "mask of object 1 on slice 2 is empty"),
    ],
)
def test_bad_prompts_say_what_is_wrong(kwargs, message):
    with pytest.raises(PromptError, match=message) as info:
        TrackPrompt(**kwargs)
    assert "\n" not in str(info.value)


def test_sam1_model_is_refused(small_model, stack):
    with pytest.raises(PropagationError, match="needs a SAM 2 model"):
        MemoryPropagation(small_model, stack)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_gives_the_cpu_result(model, stack):
    gpu = copy.deepcopy(model).to("cuda")
    gpu.precision = "fp32"
    cpu_result = propagate_memory(model, stack, CLICKS, model_id="t")
    gpu_result = propagate_memory(gpu, stack, CLICKS, model_id="t")
    for a, b in zip(cpu_result.objects, gpu_result.objects):
        for z in set(a.masks) & set(b.masks):
            inter = np.logical_and(a.masks[z], b.masks[z]).sum()
            union = np.logical_or(a.masks[z], b.masks[z]).sum()
            assert union == 0 or inter / union >= 0.98
