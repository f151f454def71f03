"""Precompute and propagation of the interactive controller, on a plain ViewerModel (no display).

The labels written must be exactly what ``napari_sam.workflows.propagation.propagate``
computes (itself checked against the rule applied by hand in test_propagation.py), with the
same id on every slice, never over other objects, as ONE undo step, and nothing at all
when cancelled or when the image or the output changed meanwhile. The model is a real Sam
(small config, random weights) whose image encoder is a fast pooling stand-in.
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_helpers import (
    LAX,
    SCALE,
    TRANSLATE,
    collect,
    cut,
    goto_slice,
    settle,
    with_object,
    world_of,
)
from napari_sam._widgets.interactive.controller import InteractiveController
from napari_sam._widgets.jobs import SyncRunner
from napari_sam.runtime.loader import LoadedModel
from napari_sam.workflows.embeddings import DiskCache, StackEmbeddings
from napari_sam.workflows.propagation import PropagationSettings, plan_write, propagate
from volume_models import EncoderCalls


@pytest.fixture(scope="module")
def stack(nuclei):
    """(7, 96, 160) uint16 nuclei."""
    return cut(nuclei, (10, 17))


def make(viewer, model=None, runner=None, settings=LAX, z_range=None) -> InteractiveController:
    c = InteractiveController(viewer, runner=runner)
    if model is not None:
        c.set_model(model, "small-fast")
    c.stack.settings = settings
    if z_range is not None:
        c.stack.z_range = z_range
    return c


def cancel_after(c, n: int):
    """A runner that cancels the running job after ``n`` progress steps."""
    def on_progress(job, event):
        if event.done >= n:
            job.cancel_event.set()

    c.runner.on_progress = on_progress


def test_propagate_a_preview_writes_one_undoable_object_and_says_why_it_stopped(
    fast_model, stack
):
    viewer = ViewerModel()
    image = viewer.add_image(stack, scale=SCALE, translate=TRANSLATE, name="nuclei")
    c = make(viewer, fast_model)
    notes = collect(c)
    assert c.stack.z_range == (0, 6)
    k = 3
    goto_slice(viewer, k)
    x0, y0, x1, y1 = 20.0, 25.0, 70.0, 45.0
    corners = world_of([[k, y0, x0], [k, y0, x1], [k, y1, x1], [k, y1, x0]])
    boxes = c.prompts.boxes.current
    boxes.add_rectangles(np.array([boxes.world_to_data(w) for w in corners]))
    settle(c)
    seed = c.preview.layer.data[k] == 1
    assert seed.any()
    c.stack.z_range = (1, 5)
    assert c.output.current is None
    c.stack.propagate()

    expected = propagate(
        fast_model, stack, seed, k, z_range=(1, 5), settings=LAX, contrast=image.contrast_limits
    )
    labels = c.output.current
    assert labels.name == "nuclei SAM labels" and labels.data.dtype == np.uint32
    np.testing.assert_array_equal(labels.scale, SCALE)
    np.testing.assert_array_equal(labels.data, expected.label_volume(ids=[1]))
    on = [z for z in range(7) if (labels.data[z] == 1).any()]
    assert on == list(range(1, 6))  # the same id on every slice of the range, not beyond
    assert c.stack.last_result.objects[0].extent == (1, 5)
    assert len(boxes.data) == 0 and not c.preview.layer.data.any()
    assert labels.selected_label == 2
    summary = c.stack.summary
    assert summary.startswith("Propagated object 1 over slices 1–5 (Ctrl+Z undoes it).")
    assert ("Object 1: slices 1–5; up: reached the end of the slice range; down: reached the "
            "end of the slice range.") in summary
    assert notes["info"][-1] == summary  # the whole summary, in one notification
    assert notes["error"] == []

    labels.undo()  # ONE step removes the whole object
    assert not labels.data.any()
    labels.redo()
    np.testing.assert_array_equal(labels.data, expected.label_volume(ids=[1]))
    c.close()


def test_the_summary_gives_the_true_stop_reason_and_slice(fast_model, stack):
    viewer = ViewerModel()
    labels, before = with_object(viewer, stack)
    strict = PropagationSettings(min_score=0.999, min_overlap=0.0, min_area=1)
    c = make(viewer, fast_model, settings=strict)
    notes = collect(c)
    c.stack.propagate()
    result = c.stack.last_result
    (obj,) = result.objects
    up, down = obj.stops[1], obj.stops[-1]
    assert (up.reason, up.slice, down.reason, down.slice) == ("low_score", 4, "low_score", 2)
    # the object ended at once: nothing new was written, and the summary says why (it was
    # reported as "lies on existing objects" before)
    np.testing.assert_array_equal(labels.data, before)
    summary = notes["info"][-1]
    assert summary.startswith("Propagation wrote nothing new.")
    assert (f"Object 2: slices 3–3; up: SAM's predicted IoU {up.score:.2f} was below the "
            f"minimum 1.00 at slice 4; down: SAM's predicted IoU {down.score:.2f} was below "
            "the minimum 1.00 at slice 2.") in summary
    assert "existing objects" not in summary and c.stack.summary == summary

    # objects in the way: where it would overwrite another object, and with which
    c.stack.settings = LAX
    blocker = before.copy()
    blocker[4:6] = 9  # object 9 fills slices 4 and 5
    labels.data = blocker
    c.stack.propagate()
    assert "Not written where it would overwrite object 9 at slices 4–5" in c.stack.summary
    assert (labels.data[4:6] == 9).all()
    c.close()


def test_propagate_committed_objects_keeps_ids_and_other_objects(fast_model, stack):
    viewer = ViewerModel()
    image = viewer.add_image(stack, name="nuclei")
    before = np.zeros(stack.shape, np.uint32)
    yy, xx = np.mgrid[:96, :160]
    before[:, 50:96, 0:80] = 7  # another object, on every slice, where SAM's masks reach
    k = 3
    before[k][((yy - 30) / 12) ** 2 + ((xx - 50) / 18) ** 2 < 1] = 3
    before[k][((yy - 60) / 16) ** 2 + ((xx - 115) / 14) ** 2 < 1] = 5
    labels = viewer.add_labels(before.copy(), name="nuclei SAM labels")
    c = make(viewer, fast_model)
    notes = collect(c)
    assert c.output.current is labels
    viewer.dims.set_point(0, k)
    c.stack.ids_text = "3, 5"
    c.stack.propagate()

    seeds = np.stack([before[k] == 3, before[k] == 5])
    result = propagate(fast_model, stack, seeds, k, settings=LAX, contrast=image.contrast_limits)
    expected = before.copy()
    for oid, index in plan_write(before, result, ids=[3, 5]):
        expected[index] = oid
    np.testing.assert_array_equal(labels.data, expected)
    assert set(np.unique(labels.data)) == {0, 3, 5, 7}
    assert (labels.data[before == 7] == 7).all()  # never over another object
    for oid, obj in zip((3, 5), result.objects):  # written only where it was followed
        lo, hi = obj.extent
        on = [z for z in range(7) if (labels.data[z] == oid).any()]
        assert len(on) >= 2 and k in on and set(on) <= set(range(lo, hi + 1))
    assert notes["error"] == []
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)

    # an id that is not on the slice, or not a number, is refused with a sentence
    for text, message in (("4", "Object 4 is not on slice 3"), ("3, x", "whole numbers")):
        c.stack.ids_text = text
        c.stack.propagate()
        assert not c.busy and message in notes["error"][-1]
    c.close()


def test_cancel_leaves_the_labels_as_they_were(fast_model, stack):
    viewer = ViewerModel()
    labels, before = with_object(viewer, stack)
    c = make(viewer, fast_model)
    notes = collect(c)
    cancel_after(c, 1)
    c.stack.propagate()
    np.testing.assert_array_equal(labels.data, before)
    assert "cancelled" in c.status and "cancelled" in notes["info"][-1]
    assert not c.busy and len(labels._undo_history) == 0  # nothing was recorded
    c.close()


def test_precompute_with_disk_cache_progress_cancel_and_resume(fast_model, stack, tmp_path):
    viewer = ViewerModel()
    image = viewer.add_image(stack, name="nuclei")
    c = make(viewer)
    # no model yet: precompute loads it first (through the session's model factory)
    c.session.factory = lambda *a, **k: LoadedModel.wrap(fast_model, "small-fast", "fast model")
    notes = collect(c)
    c.embeddings.set_disk(True, str(tmp_path))
    calls = EncoderCalls(fast_model)
    cancel_after(c, 3)
    c.stack.precompute()
    done = len(DiskCache(tmp_path))
    assert 2 <= done < 7 and calls.planes == done
    assert "cancelled" in c.status
    steps = [(e.done, e.total) for e in c.runner.progress_log if e.unit == "slices"]
    assert steps[0] == (0, 7) and all(t == 7 for _, t in steps)

    # resume: only the missing slices are encoded
    calls.reset()
    c.runner.progress_log.clear()
    c.runner.on_progress = lambda job, event: None
    c.stack.precompute()
    assert calls.planes == 7 - done and len(DiskCache(tmp_path)) == 7
    steps = [(e.done, e.total) for e in c.runner.progress_log]
    assert steps[0] == (0, 7 - done) and steps[-1] == (7 - done, 7 - done)
    assert "Embeddings of all 7 slices are ready" in c.status

    # a later session (here: plain Python) finds every slice under the controller's keys
    later = StackEmbeddings(
        fast_model, stack, model_id="small-fast", contrast=image.contrast_limits, disk=tmp_path
    )
    assert later.missing() == []
    # and the preview uses the cache: no encoding for a prompt on any slice
    calls.reset()
    c.embeddings.store.clear()
    viewer.dims.set_point(0, 5)
    c.prompts.points.current.add([5, 40.0, 60.0])
    settle(c)
    assert c.preview.layer.data[5].any() and calls.planes == 0 and c.embeddings.log == []
    assert notes["error"] == [] and notes["warning"] == []
    c.close()


def test_stack_work_follows_the_image(fast_model, stack):
    viewer = ViewerModel()
    viewer.add_image(stack[0], name="plane")
    c = make(viewer, fast_model)
    notes = collect(c)
    c.stack.propagate()
    assert "works on 3D stacks" in notes["info"][-1]
    image = viewer.add_image(stack[:4], name="small stack")
    c.set_image(image)
    assert c.layout.is_stack and c.stack.z_range == (0, 3)
    viewer.dims.set_point(0, 2)
    c.stack.propagate()  # nothing on this slice
    assert "Nothing to propagate" in notes["info"][-1] and not c.busy
    c.stack.z_range = (0, 1)
    objects = viewer.add_labels(np.zeros(image.data.shape, np.uint32), name="mine")
    objects.data[2, 10:20, 10:20] = 1
    c.set_output(objects)
    c.stack.propagate()
    assert "does not include the current slice 2" in notes["error"][-1]
    c.close()


def test_changes_during_a_propagation_write_nothing_and_ids_are_never_truncated(
    fast_model, stack
):
    viewer = ViewerModel()
    image = viewer.add_image(stack, name="nuclei")
    runner = SyncRunner(deferred=True)  # jobs wait until the test lets them run
    c = make(viewer, fast_model, runner=runner)
    notes = collect(c)
    viewer.dims.set_point(0, 3)
    c.prompts.points.current.add([3, 30.0, 40.0])
    settle(c)

    # the image's data is replaced while propagating: nothing is written
    c.stack.propagate()
    assert c.busy
    image.data = stack[::-1].copy()
    settle(c)
    assert "“nuclei” was closed or changed during the propagation" in notes["error"][-1]
    assert "nuclei SAM labels" not in [lyr.name for lyr in viewer.layers]

    # the output labels are removed while propagating: nothing is written anywhere
    labels = viewer.add_labels(np.zeros(stack.shape, np.uint8), name="nuclei SAM labels")
    c.set_output(labels)
    c.prompts.points.current.add([3, 30.0, 40.0])
    settle(c)
    c.stack.propagate()
    viewer.layers.remove(labels)
    settle(c)
    assert "was removed during the propagation" in notes["error"][-1]
    assert not any(lyr.name.endswith("SAM labels") for lyr in viewer.layers)

    # a uint8 layer that already holds object 255: the new object is 256, not 0
    full = np.zeros(stack.shape, np.uint8)
    full[0, 0, 0] = 255
    labels = viewer.add_labels(full.copy(), name="uint8 labels")
    c.set_output(labels)
    c.prompts.points.current.add([3, 30.0, 40.0])
    settle(c)
    c.stack.propagate()
    settle(c)
    assert labels.data.dtype == np.uint16 and labels.data[3].max() == 256
    assert labels.data[0, 0, 0] == 255 and set(np.unique(labels.data)) == {0, 255, 256}
    assert "too small for object id 256" in notes["info"][-2]
    labels.undo()
    np.testing.assert_array_equal(labels.data, full)
    c.close()
