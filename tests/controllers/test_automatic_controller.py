"""AutomaticController on a plain napari ViewerModel: no display, jobs run in the test's thread.

Each expected label image is computed by calling napari_sam.workflows.segment directly
on the same data with the layer's contrast limits: the controller must pick the
right image, slice and settings, and write the result into "<image> SAM auto"
with the image's geometry, once, as one undo step. Models have random weights
(the small test config, or a fast stand-in encoder); nothing is downloaded.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from napari.components import ViewerModel
from pycocotools import mask as mask_utils

from napari_helpers import SCALE, TRANSLATE, collect, cut, lax_auto, settle
from napari_sam._widgets.automatic.controller import DOCK_DEFAULTS, AutomaticController
from napari_sam._widgets.automatic.estimate import points_hint, run_estimate
from napari_sam._widgets.jobs import SyncRunner
from napari_sam._widgets.model_session import CUSTOM_CHECKPOINT
from napari_sam.errors import CheckpointError
from napari_sam.runtime import settings as user_settings
from napari_sam.workflows import segment as logic
from napari_sam.workflows.image import image_layout
from napari_sam.workflows.segment import AutoSettings, segment
from napari_sam.workflows.tables import object_table


@pytest.fixture(scope="module")
def stack(nuclei):
    """(3, 64, 80) uint16 nuclei (non-square planes)."""
    return cut(nuclei, (12, 15), (40, 104), (16, 96))


def make(viewer, model=None, points=4, runner=None) -> AutomaticController:
    c = AutomaticController(viewer, runner=runner)
    if model is not None:
        c.session.set_model(model, "small-random")
    lax_auto(c, points)
    return c


def expected_labels(model, data, image, settings, **kwargs):
    return segment(
        model, data, contrast_limits=tuple(image.contrast_limits), settings=settings, **kwargs
    ).labels


def test_2d_image(fast_model, stack):
    viewer = ViewerModel()
    plane = stack[1]
    image = viewer.add_image(plane, scale=SCALE[1:], translate=TRANSLATE[1:], name="cells")
    image.contrast_limits = (float(np.percentile(plane, 1)), float(np.percentile(plane, 99)))
    c = make(viewer, fast_model)
    notes = collect(c)
    assert c.settings.points_per_side == 4 and c.status == "Ready to segment the image “cells”."
    c.run()
    assert notes["error"] == []
    layer = viewer.layers["cells SAM auto"]
    assert c.output_layer is layer
    assert layer.data.dtype == np.uint32 and layer.data.shape == plane.shape
    np.testing.assert_array_equal(layer.scale, SCALE[1:])
    np.testing.assert_array_equal(layer.translate, TRANSLATE[1:])
    expected = expected_labels(fast_model, plane, image, c.settings)
    assert expected.max() >= 1
    np.testing.assert_array_equal(layer.data, expected)
    assert "object" in c.status and "→ “cells SAM auto”" in c.status
    # the layer's object table: one row per object, SAM's scores, method "automatic"
    found = segment(fast_model, plane, contrast_limits=tuple(image.contrast_limits),
                    settings=c.settings)
    reference = object_table(expected, scale=SCALE[1:], translate=TRANSLATE[1:],
                             intensity=plane, scores=found.scores, method="automatic")
    table = pd.DataFrame(layer.features)
    assert list(table["index"]) == [int(i) for i in np.unique(expected) if i]
    assert (table["method"] == "automatic").all() and table["predicted_iou"].notna().all()
    pd.testing.assert_frame_equal(table[reference.columns].reset_index(drop=True), reference,
                                  check_dtype=False)
    # the stages of the run, as SAM's generator names them, reached the progress
    stages = {e.stage for e in c.runner.progress_log}
    assert any("encod" in s for s in stages) and any("decoding prompts" in s for s in stages)
    c.close()


def test_stack_current_slice_then_all_slices_linked_one_undo_step(fast_model, stack, tmp_path):
    viewer = ViewerModel()
    image = viewer.add_image(stack, scale=SCALE, translate=TRANSLATE, name="nuclei")
    c = make(viewer, fast_model)
    notes = collect(c)
    settings = c.settings

    # the current slice only
    k = 2
    viewer.dims.set_point(0, TRANSLATE[0] + SCALE[0] * k)
    c.run("current slice")
    layer = viewer.layers["nuclei SAM auto"]
    assert layer.data.shape == stack.shape and layer.data.dtype == np.uint32
    np.testing.assert_array_equal(layer.scale, SCALE)
    np.testing.assert_array_equal(layer.translate, TRANSLATE)
    one = expected_labels(fast_model, stack, image, settings, slices=[k])
    np.testing.assert_array_equal(layer.data, one)
    assert layer.data[k].any() and not layer.data[:k].any()

    # all slices, linked, into the same layer: one undo step brings back the slice result
    c.set_settings(link_slices=True)
    c.run("all slices")
    assert viewer.layers["nuclei SAM auto"] is layer
    assert "linking slices" in {e.stage for e in c.runner.progress_log}
    linked = expected_labels(fast_model, stack, image, c.settings)
    np.testing.assert_array_equal(layer.data, linked)
    table = pd.DataFrame(layer.features)  # the whole stack measured again, earlier rows dropped
    reference = object_table(linked, scale=SCALE, translate=TRANSLATE, intensity=stack)
    assert list(table["index"]) == list(reference["index"])
    np.testing.assert_allclose(table["volume"], reference["volume"])
    assert (table["method"] == "automatic").all()
    layer.undo()
    np.testing.assert_array_equal(layer.data, one)
    layer.redo()
    np.testing.assert_array_equal(layer.data, linked)

    # COCO export of the layer: masks decode to the labels; scores while unchanged
    path = c.export_coco(tmp_path / "nuclei.json")
    data = json.loads(path.read_text())
    assert [im["slice"] for im in data["images"]] == [0, 1, 2]
    for ann in data["annotations"]:
        z = data["images"][ann["image_id"] - 1]["slice"]
        mask = mask_utils.decode(ann["segmentation"]).astype(bool)
        np.testing.assert_array_equal(mask, linked[z] == ann["label"])
        assert "predicted_iou" in ann
    assert len(data["annotations"]) == sum(len(np.unique(p)) - 1 for p in linked)
    layer.data_setitem((np.array([0]), np.array([0]), np.array([0])), 77)  # a user's edit
    data = json.loads(c.export_coco(tmp_path / "edited.json").read_text())
    assert not any("predicted_iou" in ann for ann in data["annotations"])
    assert notes["error"] == []
    c.close()


def test_timelapse_of_stacks_slice_then_the_stack_of_each_time_point(
    fast_model, nuclei, tmp_path
):
    """A (T, Z, Y, X) image: the plane shown, then every slice of the time point shown,
    linked; other time points keep their objects, new ids go above theirs."""
    import dask.array as da

    tzyx = np.stack([cut(nuclei, (12, 15), (40, 104), (16, 96)),
                     cut(nuclei, (20, 23), (44, 108), (12, 92))])  # fmt: skip
    viewer = ViewerModel()
    scale, translate = (60.0, *SCALE), (0.0, *TRANSLATE)
    image = viewer.add_image(da.from_array(tzyx, chunks=(1, 1, 64, 80)), scale=scale,
                             translate=translate, name="movie", axis_labels=("t", "z", "y", "x"))
    image.contrast_limits = (float(tzyx.min()), float(np.percentile(tzyx, 99)))
    contrast = tuple(image.contrast_limits)
    c = make(viewer, fast_model)
    notes = collect(c)
    assert c.status == "Ready to segment the time-lapse “movie”."
    assert c.layout().is_stack and c.layout().n_slices == 3

    # the plane shown: t = 1, z = 2
    viewer.dims.set_point(0, 60.0)
    viewer.dims.set_point(1, TRANSLATE[0] + SCALE[0] * 2)
    c.run("current slice")
    layer = viewer.layers["movie SAM auto"]
    assert layer.data.shape == tzyx.shape and layer.data.dtype == np.uint32
    np.testing.assert_array_equal(layer.scale, scale)
    np.testing.assert_array_equal(layer.translate, translate)
    plane = segment(fast_model, tzyx[1, 2], contrast_limits=contrast, settings=c.settings)
    assert plane.labels.max() >= 1
    np.testing.assert_array_equal(layer.data[1, 2], plane.labels)
    assert not np.delete(layer.data.reshape(6, -1), 5, axis=0).any()
    assert "slice 2 at t=1" in c.status

    # every slice of time point 0, linked: the plane at t = 1 stays, ids above its ids
    c.set_settings(link_slices=True)
    viewer.dims.set_point(0, 0.0)
    c.run("all slices")
    assert viewer.layers["movie SAM auto"] is layer
    stack0 = segment(fast_model, tzyx[0], contrast_limits=contrast, settings=c.settings)
    n1 = int(plane.labels.max())
    np.testing.assert_array_equal(layer.data[0], np.where(stack0.labels > 0,
                                                          stack0.labels + n1, 0))
    np.testing.assert_array_equal(layer.data[1, 2], plane.labels)
    assert "3 slices, linked at t=0" in c.status
    # the object table has the time point of each object; SAM's scores of both runs
    table = pd.DataFrame(layer.features)
    assert set(table["t"]) == {0, 1} and table["predicted_iou"].notna().all()
    assert sorted(table["index"]) == [int(i) for i in np.unique(layer.data) if i]
    # one undo step takes time point 0 back
    layer.undo()
    assert not layer.data[0].any() and layer.data[1, 2].any()
    layer.redo()

    # COCO export: one image per plane, with frame and slice
    data = json.loads(c.export_coco(tmp_path / "movie.json").read_text())
    assert [(im["frame"], im["slice"]) for im in data["images"]] == [
        (t, z) for t in range(2) for z in range(3)
    ]
    assert len(data["annotations"]) == sum(
        len(np.unique(p)) - 1 for p in layer.data.reshape(6, *tzyx.shape[2:])
    )
    assert all("predicted_iou" in ann for ann in data["annotations"])

    # every time point in one run: the library's segment_planes of the whole image (ids on
    # through the time points, linked through each one's slices), replacing the layer
    from napari_sam.workflows.planes import ImagePlanes
    from napari_sam.workflows.segment_planes import segment_planes

    assert c.scopes() == ("current slice", "all slices", "all time points")
    c.set_scope("all time points")
    assert c.estimate().startswith("This run: 6 slices × 16 prompts = 96 prompts to decode")
    c.run()
    whole = segment_planes(fast_model, ImagePlanes(tzyx, contrast=contrast), settings=c.settings)
    assert viewer.layers["movie SAM auto"] is layer
    np.testing.assert_array_equal(layer.data, whole.labels)
    assert _ids(whole.labels[0]).isdisjoint(_ids(whole.labels[1]))
    assert "in 2 time points of 3 slices, linked through the slices →" in c.status
    table = pd.DataFrame(layer.features)
    assert set(table["t"]) == {0, 1} and table["predicted_iou"].notna().all()
    layer.undo()  # one undo step back to the runs before
    assert layer.data[1, 2].any() and not layer.data[1, :2].any()
    assert notes["error"] == []
    c.close()


def _ids(labels) -> set:
    return set(np.unique(labels).tolist()) - {0}


def test_cancel_leaves_the_layer_untouched(fast_model, stack):
    viewer = ViewerModel()
    viewer.add_image(stack, name="nuclei")
    before = np.arange(stack.size, dtype=np.uint32).reshape(stack.shape) % 5
    existing = viewer.add_labels(before.copy(), name="nuclei SAM auto")
    c = make(viewer, fast_model, runner=SyncRunner(deferred=True))
    notes = collect(c)
    c.run("all slices")
    c.cancel()  # at once
    settle(c)
    np.testing.assert_array_equal(existing.data, before)
    assert "cancelled" in c.status and "no layer was changed" in notes["info"][-1]

    def cancel_after_one(job, event):  # while the first slice is being segmented
        if event.done >= 1:
            c.cancel()

    c.runner.on_progress = cancel_after_one
    c.run("all slices")
    settle(c)
    np.testing.assert_array_equal(existing.data, before)
    assert len(existing._undo_history) == 0  # nothing was written
    assert [lyr.name for lyr in viewer.layers] == ["nuclei", "nuclei SAM auto"]
    assert not c.busy and notes["error"] == []
    c.close()


def test_expected_errors_are_notices(stack):
    viewer = ViewerModel()

    def failing_factory(choice, checkpoint, device, **kwargs):
        raise CheckpointError("The checkpoint file x.pth could not be read.")

    viewer.add_image(np.zeros((2, 2, 16, 16, 2), np.uint16), name="5d")
    c = make(viewer)
    c.session.factory = failing_factory
    notes = collect(c)
    c.run()  # a 5D image whose last axis looks like channels: refused at once
    assert not c.busy and len(notes["error"]) == 1 and "channels" in notes["error"][0]

    viewer.add_image(stack[0], name="plane")
    c.set_image(viewer.layers["plane"])
    c.run()  # the model cannot be loaded: one sentence, no layer
    assert notes["error"][-1] == "The checkpoint file x.pth could not be read."
    assert len(notes["error"]) == 2 and "plane SAM auto" not in [lyr.name for lyr in viewer.layers]

    c.session.update(choice=CUSTOM_CHECKPOINT)
    c.run()  # custom checkpoint without a file
    assert "Choose a checkpoint file" in notes["error"][-1]

    assert c.export_coco("never.json") is None  # nothing to export yet: a warning
    assert any("nothing to export" in w for w in notes["warning"])
    c.set_settings(points_per_side=0)
    c.run()
    assert "points per side" in notes["error"][-1]
    c.close()


def test_a_run_keeps_to_its_slice_and_drops_stale_results(fast_model, stack):
    viewer = ViewerModel()
    full = cut(stack, (0, 3), (0, 64), (0, 80))
    image = viewer.add_image(np.concatenate([full, full[::-1], full[:1]]), name="nuclei")
    c = make(viewer, fast_model, points=2, runner=SyncRunner(deferred=True))
    notes = collect(c)
    viewer.dims.set_point(0, 2)
    c.run("current slice")
    viewer.dims.set_point(0, 5)  # the user moves on while slice 2 is segmented
    settle(c)
    out = viewer.layers["nuclei SAM auto"]
    assert out.data[2].any() and not out.data[np.arange(7) != 2].any()
    before = out.data.copy()

    c.run("current slice")  # slice 5, and the image's data is replaced meanwhile
    image.data = image.data[::-1].copy()
    settle(c)
    assert notes["warning"][-1] == (
        "The image “nuclei” changed during the run; the result was dropped."
    )
    np.testing.assert_array_equal(out.data, before)

    c.run("current slice")  # and the image is closed meanwhile
    viewer.layers.remove(image)
    settle(c)
    assert "was closed during the run" in notes["warning"][-1]
    np.testing.assert_array_equal(out.data, before)
    assert notes["error"] == []
    c.close()


def test_runs_never_replace_the_users_edits(fast_model, stack):
    viewer = ViewerModel()
    viewer.add_image(stack[:2], name="nuclei")
    before = np.zeros((2, 64, 80), np.uint32)
    before[0, :4, :4] = 9
    earlier = viewer.add_labels(before.copy(), name="nuclei SAM auto")  # e.g. a saved result
    c = make(viewer, fast_model, points=2)
    notes = collect(c)
    c.run("all slices")
    np.testing.assert_array_equal(earlier.data, before)
    assert "holds objects this widget did not write" in notes["info"][-1]
    first = c.output_layer
    assert first is not earlier and first.data.any()

    c.run("all slices")  # its own, unedited result: replaced, one undo step
    assert c.output_layer is first and len(notes["info"]) == 1

    first.data_setitem((np.array([1]), np.array([5]), np.array([5])), 77)  # the user's edit
    edited = first.data.copy()
    c.run("current slice")
    np.testing.assert_array_equal(first.data, edited)
    assert c.output_layer not in (first, earlier) and len(notes["info"]) == 2
    assert len([lyr for lyr in viewer.layers if "SAM auto" in lyr.name]) == 3
    assert notes["error"] == []
    c.close()


def test_estimate_before_the_run_and_a_hint_for_small_images():
    viewer = ViewerModel()
    viewer.add_image(np.zeros((60, 192, 192), np.uint16), name="small slices")
    c = AutomaticController(viewer)
    assert c.settings == DOCK_DEFAULTS  # nothing remembered yet: the dock's defaults
    assert DOCK_DEFAULTS == AutoSettings(link_slices=True)
    c.set_scope("all slices")
    text = c.estimate()
    assert text.startswith("This run: 60 slices × 1,024 prompts = 61,440 prompts to decode, "
                           "60 image encodings.")
    # 32 points per side on 192 pixels is a prompt every 6 pixels: 16 suffice, 4x faster
    assert "16 (one every ~12 pixels) is about 4× faster" in text
    c.set_scope("current slice")
    c.set_settings(points_per_side=16, crop_n_layers=1)
    assert c.estimate() == ("This run: 1 slice × 1,280 prompts = 1,280 prompts to decode, "
                            "5 image encodings.")
    layout = image_layout((1024, 1024))
    assert points_hint(layout, AutoSettings()) is None  # a point every 32 pixels: fine
    assert run_estimate(layout, AutoSettings(), 1).startswith("This run: 1 image × 1,024")
    c.close()


def test_settings_are_remembered_across_sessions_and_a_broken_file_is_ignored(tmp_path):
    viewer = ViewerModel()
    c = AutomaticController(viewer)
    c.set_settings(points_per_side=12, link_slices=False)
    c.close()
    values, problem = user_settings.read_section("automatic")
    assert problem is None and values["points_per_side"] == 12
    later = AutomaticController(ViewerModel())
    assert later.settings.points_per_side == 12 and not later.settings.link_slices
    later.close()

    path = user_settings.config.settings_file()
    path.write_text("{ not json")
    broken = AutomaticController(ViewerModel())
    notes = collect(broken)  # what was said while it was made is handed over
    assert broken.settings == DOCK_DEFAULTS
    assert len(notes["warning"]) == 1 and "could not be read" in notes["warning"][0]
    broken.set_settings(points_per_side=8)  # the next change replaces the broken file
    assert user_settings.read_section("automatic")[0]["points_per_side"] == 8
    broken.close()


def test_a_run_waits_for_the_shared_model(fast_model, stack, monkeypatch):
    from napari_sam.runtime.loader import LoadedModel

    viewer = ViewerModel()
    viewer.add_image(stack[0], name="plane")
    c = make(viewer, points=2, runner=SyncRunner(deferred=True))
    c.session.factory = lambda *a, **k: LoadedModel.wrap(fast_model, "fast")
    calls = []
    real = logic.segment_iter

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(logic, "segment_iter", counting)
    c.run()
    assert c.busy and c.status == "Loading the model first…" and calls == []
    settle(c)
    assert calls == [1] and c.model is not None and "plane SAM auto" in viewer.layers
    c.close()
