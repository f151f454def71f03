"""Masks -> labels without losing data, and bad image layouts explained (no napari here).

Property-based tests of the writer the widgets use to put new objects into a
label image (:func:`napari_sam.workflows.labels.plan_new_objects`, :func:`apply_plan`,
:func:`dtype_for_ids`): every new object gets an id no other object has, no
pixel of an existing object changes unless overwriting was asked for, and an
integer type too small for the new ids is widened, never wrapped around.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_sam.errors import ImageFormatError
from napari_sam.workflows.image import image_layout
from napari_sam.workflows.labels import MaskRecordError, apply_plan, dtype_for_ids, plan_new_objects

DTYPES = [np.uint8, np.uint16, np.uint32, np.int8, np.int16, np.int32, np.int64, np.uint64]


@st.composite
def labels_and_objects(draw):
    """An existing label plane (ids possibly near its dtype's max) and a plane of new objects."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    top = int(np.iinfo(dtype).max)
    if dtype.itemsize == 8:
        top -= 10  # leave room for the new ids: nothing is wider than 64 bits
    ids = draw(
        st.lists(
            st.one_of(st.integers(1, min(top, 40)), st.integers(max(1, top - 3), top)),
            min_size=1,
            max_size=4,
        )
    )
    choice = draw(hnp.arrays(np.int64, (h, w), elements=st.integers(0, len(ids))))
    labels = np.array([0, *ids], dtype=dtype)[choice]
    objects = draw(hnp.arrays(np.uint8, (h, w), elements=st.integers(0, 4)))
    return labels, objects


@settings(max_examples=150, deadline=None)
@given(case=labels_and_objects(), overwrite=st.booleans())
def test_new_objects_get_unique_ids_never_overwrite_and_promote(case, overwrite):
    labels, objects = case
    next_id = int(labels.max()) + 1
    plan = plan_new_objects(labels, objects, next_id, overwrite=overwrite)
    out = apply_plan(labels, plan)

    new_ids = [oid for oid, _ in plan]
    # ids: consecutive from next_id, unique, none already used in the labels
    assert new_ids == list(range(next_id, next_id + len(plan)))
    assert not set(new_ids) & {int(v) for v in np.unique(labels)}
    # every id is stored exactly: the type was widened where needed, never wrapped
    assert out.dtype.kind == labels.dtype.kind
    assert out.dtype.itemsize >= labels.dtype.itemsize
    for oid, index in plan:
        assert (out[index].astype(object) == oid).all()
    if new_ids and new_ids[-1] > np.iinfo(labels.dtype).max:
        assert out.dtype != labels.dtype
    else:
        assert out.dtype == labels.dtype
    # no overwrite unless asked: every pixel of an existing object keeps its id
    kept = labels != 0
    if not overwrite:
        np.testing.assert_array_equal(out[kept].astype(object), labels[kept].astype(object))
    # background stays background where there is no new object
    untouched = objects == 0
    np.testing.assert_array_equal(out[untouched].astype(object), labels[untouched].astype(object))
    # each new object covers exactly its mask (minus existing objects unless overwriting)
    free = np.ones_like(kept) if overwrite else ~kept
    ids = iter(new_ids)
    for obj in (v for v in np.unique(objects) if v):
        target = (objects == obj) & free
        if target.any():  # an object left without pixels uses no id
            oid = next(ids)
            np.testing.assert_array_equal(out.astype(object) == oid, target)
    assert next(ids, None) is None
    painted = np.zeros(labels.shape, bool)
    for _, index in plan:
        assert not painted[index].any()  # objects never share a pixel
        painted[index] = True


@settings(max_examples=100, deadline=None)
@given(dtype=st.sampled_from([*DTYPES, np.bool_]), max_id=st.integers(0, 2**64 - 1))
def test_dtype_for_ids_is_the_smallest_wide_enough_type(dtype, max_id):
    dt = np.dtype(dtype)
    signed = dt.kind == "i"
    if signed and max_id > np.iinfo(np.int64).max:
        with pytest.raises(MaskRecordError):
            dtype_for_ids(dt, max_id)
        return
    out = dtype_for_ids(dt, max_id)
    assert max_id <= np.iinfo(out).max
    assert out.kind == ("i" if signed else "u")
    if dt.kind in "ui" and max_id <= np.iinfo(dt).max:
        assert out == dt
    else:  # no narrower type of the family that is at least as wide as dt would do
        family = [np.dtype(t) for t in (
            (np.int8, np.int16, np.int32, np.int64) if signed
            else (np.uint8, np.uint16, np.uint32, np.uint64)
        )]
        for t in family:
            if dt.itemsize <= t.itemsize < out.itemsize:
                assert max_id > np.iinfo(t).max


def test_a_uint8_layer_with_255_objects_takes_object_256_as_uint16():
    labels = np.arange(256, dtype=np.uint8).reshape(16, 16)  # ids 1..255 and one free pixel
    labels[0, 0] = 0
    objects = np.zeros((16, 16), np.uint8)
    objects[0, 0] = 1
    plan = plan_new_objects(labels, objects, int(labels.max()) + 1)
    out = apply_plan(labels, plan)
    assert out.dtype == np.uint16 and out[0, 0] == 256
    np.testing.assert_array_equal(out[1:], labels[1:])
    with pytest.raises(MaskRecordError, match="64-bit"):
        dtype_for_ids(np.uint64, 2**64)
    with pytest.raises(MaskRecordError, match="shape"):
        plan_new_objects(labels, objects[:4], 1)


@pytest.mark.parametrize(
    "shape",
    [(512, 512, 2), (64, 80, 1), (40, 40, 3), (40, 40, 4)],
)
def test_channels_last_images_are_explained_not_taken_for_stacks(shape):
    with pytest.raises(ImageFormatError, match="channels") as info:
        image_layout(shape, rgb=False, dtype=np.uint16)
    message = str(info.value)
    assert message.count(". ") == 0 and message.endswith(".")  # one sentence
    assert ("RGB" in message) == (shape[-1] in (3, 4))


@pytest.mark.parametrize("shape", [(3, 64, 80), (5, 10, 3), (40, 10, 4), (2, 2, 2)])
def test_small_stacks_are_still_stacks(shape):
    assert image_layout(shape).kind == "3D"
