"""Prompt conversion (world <-> data, slices, x/y flip) and the widget's pure logic.

No napari here: the functions take arrays and homogeneous affine matrices.
"""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from napari_sam.workflows.interactive import compose_preview, plan_commit
from napari_sam.workflows.prompts import (
    affine_from_scale_translate,
    apply_affine,
    boxes_to_image,
    current_slice,
    data_to_world,
    group_objects,
    labels_from_feature,
    rows_cols_to_xy,
    slice_prompts,
    world_to_data,
)

scales = st.floats(0.05, 20.0)
translates = st.floats(-500.0, 500.0)


def transform(ndim):
    return st.tuples(
        st.lists(scales, min_size=ndim, max_size=ndim),
        st.lists(translates, min_size=ndim, max_size=ndim),
    ).map(lambda st_: affine_from_scale_translate(*st_))


@settings(max_examples=60, deadline=None)
@given(
    ndim=st.sampled_from([2, 3]),
    data=st.data(),
)
def test_world_data_round_trip(ndim, data):
    matrix = data.draw(transform(ndim))
    coords = np.array(
        data.draw(
            st.lists(
                st.lists(st.floats(-1e3, 1e3), min_size=ndim, max_size=ndim), min_size=1, max_size=5
            )
        )
    )
    world = data_to_world(coords, matrix)
    scale, translate = np.diag(matrix)[:-1], matrix[:-1, -1]
    np.testing.assert_allclose(world, coords * scale + translate, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(world_to_data(world, matrix), coords, rtol=1e-7, atol=1e-6)


def test_rotation_and_trailing_axis_alignment():
    theta = 0.3
    rot = np.eye(3)
    rot[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    coords = np.array([[3.0, 4.0], [-1.0, 2.0]])
    np.testing.assert_allclose(world_to_data(apply_affine(rot, coords), rot), coords, atol=1e-12)
    # a 3D world point for a 2D layer: the leading axis is dropped
    m2 = affine_from_scale_translate([2.0, 3.0], [1.0, 1.0])
    np.testing.assert_allclose(world_to_data([[99.0, 5.0, 7.0]], m2), [[2.0, 2.0]])
    # a 2D world point for a 3D layer: the missing axis comes from the viewer's position
    m3 = affine_from_scale_translate([4.0, 1.0, 1.0], [2.0, 0.0, 0.0])
    np.testing.assert_allclose(
        world_to_data([[5.0, 7.0]], m3, world_point=[10.0, 0, 0]), [[2.0, 5.0, 7.0]]
    )
    assert np.isnan(world_to_data([[5.0, 7.0]], m3)[0, 0])


def test_rows_cols_to_xy_flips_once():
    np.testing.assert_array_equal(rows_cols_to_xy([[10, 20], [1, 2]]), [[20, 10], [2, 1]])


@settings(max_examples=60, deadline=None)
@given(
    image_t=transform(3),
    points_t=transform(3),
    zyx=st.tuples(st.integers(0, 7), st.integers(0, 29), st.integers(0, 39)),
    jitter=st.tuples(st.floats(-0.4, 0.4), st.floats(-0.4, 0.4), st.floats(-0.4, 0.4)),
)
def test_point_lands_on_its_pixel_and_slice(image_t, points_t, zyx, jitter):
    """A prompt placed in world coordinates at image voxel (z, r, c) prompts slice z at x=c, y=r."""
    shape = (8, 30, 40)
    data_pos = np.array(zyx, float) + np.array(jitter)
    world = data_to_world(data_pos[None], image_t)
    in_points_layer = world_to_data(world, points_t)  # how napari stores the click
    z = zyx[0]
    world_point = world[0]
    assert current_slice(image_t, shape, world_point) == z
    sp = slice_prompts(
        shape,
        image_t,
        z,
        world_point,
        points=in_points_layer,
        points_matrix=points_t,
        point_labels=[0],
    )
    np.testing.assert_allclose(sp.points_xy, [[data_pos[2], data_pos[1]]], atol=1e-6)
    assert sp.point_labels.tolist() == [0] and sp.point_index.tolist() == [0]
    assert sp.n_outside == 0
    other = slice_prompts(
        shape, image_t, (z + 1) % 8, world_point, points=in_points_layer, points_matrix=points_t
    )
    assert other.empty and other.n_outside == 0 and other.slice_point_index.size == 0


@settings(max_examples=40, deadline=None)
@given(
    image_t=transform(2),
    points_t=transform(2),
    rc=st.tuples(st.floats(-50, 80), st.floats(-50, 80)),
)
def test_2d_outside_points_are_counted_not_used(image_t, points_t, rc):
    shape = (30, 40)
    assume(min(abs(rc[0] + 0.5), abs(rc[0] - 29.5), abs(rc[1] + 0.5), abs(rc[1] - 39.5)) > 1e-3)
    inside = -0.5 <= rc[0] <= 29.5 and -0.5 <= rc[1] <= 39.5
    world = data_to_world(np.array([rc]), image_t)
    sp = slice_prompts(
        shape,
        image_t,
        None,
        world[0],
        points=world_to_data(world, points_t),
        points_matrix=points_t,
    )
    assert len(sp.points_xy) == int(inside)
    assert sp.n_outside == int(not inside)
    assert sp.slice_point_index.tolist() == [0]


def test_2d_points_layer_over_a_stack_prompts_the_current_slice():
    image_t = affine_from_scale_translate([2.0, 0.5, 0.5], [10.0, -3.0, 4.0])
    points_t = affine_from_scale_translate([1.0, 1.0], [0.0, 0.0])
    shape = (6, 20, 20)
    pts = np.array([[-3.0 + 0.5 * 7, 4.0 + 0.5 * 9]])  # world y, x of pixel (7, 9)
    for k in (0, 4):
        world_point = [10.0 + 2.0 * k, 0.0, 0.0]
        assert current_slice(image_t, shape, world_point) == k
        sp = slice_prompts(shape, image_t, k, world_point, points=pts, points_matrix=points_t)
        np.testing.assert_allclose(sp.points_xy, [[9.0, 7.0]])
    assert current_slice(image_t, shape, [10.0 + 2.0 * 6, 0, 0]) is None  # beyond the stack
    assert current_slice(image_t, shape, [10.0 - 2.0, 0, 0]) is None


def test_boxes_from_rectangles():
    image_t = affine_from_scale_translate([2.0, 0.5, 0.5], [10.0, -3.0, 4.0])
    shapes_t = affine_from_scale_translate([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    shape = (6, 20, 30)
    # rectangle on slice 3 from pixel (row 2, col 5) to (row 8, col 12), in world = shapes data
    corners = np.array([[3, 2, 5], [3, 2, 12], [3, 8, 12], [3, 8, 5]], float)
    rect = data_to_world(corners, image_t)
    off_image = data_to_world(
        np.array([[3, 30, 40], [3, 30, 50], [3, 40, 50], [3, 40, 40]], float), image_t
    )
    partly = data_to_world(
        np.array([[3, -5, 20], [3, -5, 40], [3, 4, 40], [3, 4, 20]], float), image_t
    )
    on_other = data_to_world(corners + np.array([1.0, 0.0, 0.0]), image_t)
    sp = slice_prompts(
        shape,
        image_t,
        3,
        rect[0],
        shapes=[rect, off_image, None, partly, on_other],
        shapes_matrix=shapes_t,
    )
    np.testing.assert_allclose(sp.boxes, [[5, 2, 12, 8], [20, -0.5, 29.5, 4]])
    assert sp.box_index.tolist() == [0, 3]
    assert sp.slice_box_index.tolist() == [0, 1, 3]
    assert sp.n_outside == 1
    boxes, on_slice, usable = boxes_to_image([corners[:, 1:]], (20, 30), None)
    np.testing.assert_allclose(boxes, [[5, 2, 12, 8]])
    assert on_slice.all() and usable.all()


def test_group_objects_rules():
    pts = np.array([[5, 5], [50, 50], [6, 6], [100, 100], [200, 200]], float)
    labels = np.array([1, 1, 0, 0, 1])
    # no box: one object from all points
    (obj,) = group_objects(pts, labels, np.zeros((0, 4)))
    assert obj.box is None and len(obj.point_coords) == 5
    # only negative points: no object
    assert group_objects(pts[[2, 3]], labels[[2, 3]], np.zeros((0, 4))) == []
    # two boxes: two objects; points inside a box join it (the smallest one), others form a third
    boxes = np.array([[0, 0, 10, 10], [40, 40, 120, 120], [45, 45, 55, 55]], float)
    objs = group_objects(pts, labels, boxes)
    assert len(objs) == 4
    np.testing.assert_array_equal(objs[0].point_coords, [[5, 5], [6, 6]])
    np.testing.assert_array_equal(objs[0].point_labels, [1, 0])
    np.testing.assert_array_equal(objs[1].point_coords, [[100, 100]])
    np.testing.assert_array_equal(objs[2].point_coords, [[50, 50]])
    np.testing.assert_array_equal(objs[3].point_coords, [[200, 200]])
    assert objs[3].box is None
    # boxes alone
    objs = group_objects(np.zeros((0, 2)), np.zeros(0), boxes[:2])
    assert [o.point_coords for o in objs] == [None, None] and len(objs) == 2


def test_labels_from_feature():
    vals = ["positive", "negative", "neg", "POS", True, False, 1, 0, None, "background"]
    assert labels_from_feature(vals, 10).tolist() == [1, 0, 0, 1, 1, 0, 1, 0, 1, 0]
    assert labels_from_feature(None, 3).tolist() == [1, 1, 1]


def test_compose_preview_and_plan_commit():
    a = np.zeros((4, 5), bool)
    a[0:2, 0:2] = True
    b = np.zeros((4, 5), bool)
    b[1:3, 1:4] = True
    preview = compose_preview([a, b], (4, 5))
    assert preview[1, 1] == 1 and preview[2, 2] == 2 and preview[3, 4] == 0  # first keeps overlap
    labels = np.zeros((4, 5), np.uint32)
    labels[2, 1:3] = 7
    plan = plan_commit(labels, preview, next_id=8)
    assert [p[0] for p in plan] == [8, 9]
    rows, cols = plan[1][1]
    assert (2, 1) not in set(zip(rows.tolist(), cols.tolist()))  # object 7 keeps its pixels
    assert len(rows) == int((preview == 2).sum()) - 2
    plan = plan_commit(labels, preview, next_id=8, overwrite=True)
    assert len(plan[1][1][0]) == int((preview == 2).sum())
    # an object entirely covered by existing labels uses no id
    labels[:] = 3
    assert plan_commit(labels, preview, next_id=4) == []


@settings(max_examples=60, deadline=None)
@given(
    image_t=transform(2),
    points_t=transform(3),
    rcs=st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 29), st.integers(0, 39)), min_size=1, max_size=6
    ),
    current=st.integers(0, 4),
)
def test_3d_points_layer_over_a_2d_image_uses_the_shown_position(image_t, points_t, rcs, current):
    """A prompt layer with an extra leading axis: only prompts napari shows at the viewer's
    position on that axis count, each on its own image pixel."""
    shape = (30, 40)
    zrc = np.array(rcs, float)
    world_yx = data_to_world(zrc[:, 1:], image_t)
    world_z = zrc[:, :1] * points_t[0, 0] + points_t[0, 3]
    in_layer = world_to_data(np.hstack([world_z, world_yx]), points_t)
    viewer = [current * points_t[0, 0] + points_t[0, 3], 0.0, 0.0]
    sp = slice_prompts(shape, image_t, None, viewer, points=in_layer, points_matrix=points_t)
    shown = zrc[:, 0] == current
    assert sp.point_index.tolist() == np.flatnonzero(shown).tolist()
    assert sp.slice_point_index.tolist() == np.flatnonzero(shown).tolist()
    np.testing.assert_allclose(sp.points_xy, zrc[shown][:, [2, 1]], atol=1e-6)
    assert sp.n_outside == 0


@settings(max_examples=40, deadline=None)
@given(
    image_t=transform(3),
    k=st.integers(0, 5),
    corner=st.tuples(st.floats(0, 15), st.floats(0, 25)),
    size=st.tuples(st.floats(0, 0.99), st.floats(1.0, 8.0)),
    flip=st.booleans(),
)
def test_degenerate_boxes_are_counted_not_used(image_t, k, corner, size, flip):
    """A box with no area (a click in rectangle mode) is ignored and counted, not sent to SAM."""
    shape = (6, 20, 30)
    (r0, c0), (thin, wide) = corner, size
    h, w = (wide, thin) if flip else (thin, wide)
    good = np.array([[k, 2, 2], [k, 2, 9], [k, 9, 9], [k, 9, 2]], float)
    bad = np.array([[k, r0, c0], [k, r0, c0 + w], [k, r0 + h, c0 + w], [k, r0 + h, c0]])
    world_point = data_to_world(np.array([[k, 0.0, 0.0]]), image_t)[0]
    sp = slice_prompts(
        shape,
        image_t,
        k,
        world_point,
        shapes=[bad, good],  # a Shapes layer with the image's transform
        shapes_matrix=image_t,
    )
    assert sp.box_index.tolist() == [1] and sp.n_degenerate == 1 and sp.n_outside == 0
    np.testing.assert_allclose(sp.boxes, [[2, 2, 9, 9]], atol=1e-6)
    assert sp.slice_box_index.tolist() == [0, 1]  # "clear" still removes it


def test_encoding_stops_between_encoder_blocks_when_cancelled():
    import pytest
    import torch

    from napari_sam.errors import Cancelled
    from napari_sam.workflows.interactive import encode_plane, install_cancel_hooks
    from volume_models import small_sam

    sam = small_sam()
    plane = np.random.default_rng(0).integers(0, 4000, (40, 56)).astype(np.uint16)
    expected = encode_plane(sam, plane, (0, 4000), rgb=False)  # no hooks yet
    install_cancel_hooks(sam)
    install_cancel_hooks(sam)  # once per model
    blocks = sam.image_encoder.blocks
    assert all(len(b._forward_pre_hooks) == 1 for b in blocks)
    ran = []
    for b in blocks:
        b.register_forward_pre_hook(lambda module, inputs: ran.append(module))
    with pytest.raises(Cancelled, match="Encoding cancelled"):
        encode_plane(sam, plane, (0, 4000), rgb=False, should_cancel=lambda: len(ran) >= 2)
    assert len(ran) == 2  # stopped before the third block
    ran.clear()
    got = encode_plane(sam, plane, (0, 4000), rgb=False, should_cancel=lambda: False)
    assert len(ran) == len(blocks)
    torch.testing.assert_close(got.features, expected.features)
    compiled = small_sam()
    compiled.encoder_compiled = True
    install_cancel_hooks(compiled)
    assert not compiled.image_encoder._forward_pre_hooks
