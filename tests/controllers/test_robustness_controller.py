"""Nothing lost, nothing misleading: the controllers under bad input and faults (no display).

Each test drives a plain napari ViewerModel the way a user would (layers, clicks as
layer edits, commands) and checks two things: the user is told what happened in
one plain sentence (a notice), and no layer is written where the user did not ask
— or at all, when the result no longer fits what is on screen. Jobs that "run
meanwhile" are held by a deferred runner until the test lets them finish.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from napari.components import ViewerModel

from napari_helpers import best_mask, collect, cut, lax_auto, settle
from napari_sam._widgets.automatic.controller import AutomaticController
from napari_sam._widgets.interactive.controller import InteractiveController
from napari_sam._widgets.jobs import SyncRunner
from napari_sam.errors import DeviceFallbackWarning, OutOfMemoryError
from napari_sam.runtime.loader import LoadedModel
from napari_sam.workflows import interactive as logic
from napari_sam.workflows import propagation as propagation_logic
from napari_sam.workflows import segment as segment_logic
from napari_sam.workflows.embeddings import DiskCache

FALLBACK = "The GPU ran out of memory; napari-sam finished this work on the CPU, more slowly."


@pytest.fixture(scope="module")
def stack(nuclei):
    """(7, 64, 80) uint16 nuclei (non-square planes)."""
    return cut(nuclei, (10, 17), (40, 104), (16, 96))


def make(viewer, model=None, runner=None) -> InteractiveController:
    c = InteractiveController(viewer, runner=runner)
    if model is not None:
        c.set_model(model, "fast")
    return c


def test_commands_without_a_usable_image_say_what_to_do(fast_model):
    viewer = ViewerModel()
    c = make(viewer, fast_model)
    auto = AutomaticController(viewer)
    notes = collect(c, auto)
    for command in (c.commit, c.clear, c.stack.propagate, c.stack.precompute):
        command()
    assert notes["warning"] == ["Open an image, or choose one in the Image list, first."] * 4
    # no obvious plane (a last axis of 2 looks like channels): rejected, with a reason
    viewer.add_image(np.zeros((2, 3, 16, 16, 2), np.uint8), name="5D")
    assert "no obvious plane" in notes["warning"][-1]
    c.commit()
    assert "“5D” cannot be segmented" in notes["warning"][-1]
    auto.run()
    assert "no obvious plane" in notes["error"][-1] and not auto.busy  # one sentence, as above
    viewer.layers.clear()
    auto.run()
    assert notes["warning"][-1] == "Open or choose an image layer to segment."
    assert [lyr.name for lyr in viewer.layers] == []
    auto.close()
    c.close()


def test_unusual_images_are_explained_or_segmented(fast_model):
    viewer = ViewerModel()
    rng = np.random.default_rng(0)
    c = make(viewer, fast_model)
    notes = collect(c)

    # two channels last: explained, not taken for a stack of 48 planes 2 pixels wide
    viewer.add_image(rng.integers(0, 900, (48, 64, 2), dtype=np.uint16), name="two channels")
    assert c.image is None
    assert "holds channels" in notes["warning"][-1] and "channel_axis" in notes["warning"][-1]
    # 5D whose last axis looks like channels: no obvious plane (a (T, Z, C, Y, X) with an
    # obvious YX plane is segmented, see test_objects_nd.py)
    c.set_image(viewer.add_image(np.zeros((2, 2, 16, 16, 2), np.uint8), name="5D"))
    assert "no obvious plane" in notes["warning"][-1] and c.image is None
    n_warnings = len(notes["warning"])
    c.set_image(viewer.layers["two channels"])  # explained once; the status keeps it
    assert len(notes["warning"]) == n_warnings and "channels" in c.status

    # RGBA: the alpha channel is dropped, the plane is segmented
    rgba = rng.integers(0, 255, (48, 64, 4), dtype=np.uint8)
    image = viewer.add_image(rgba, name="rgba")
    c.set_image(image)
    points = c.prompts.points.current
    points.add([20.0, 30.0])
    settle(c)
    expected = best_mask(fast_model, rgba, image.contrast_limits, (30.0, 20.0), rgb=True)
    np.testing.assert_array_equal(c.preview.layer.data > 0, expected)
    c.commit()
    assert c.output.current.data.shape == (48, 64) and c.output.current.data.max() == 1

    # float with NaN and ±inf: finite contrast limits, NaN black, +inf white
    flt = rng.random((48, 64)).astype(np.float32)
    flt[:5] = np.nan
    flt[5, :] = np.inf
    flt[6, :] = -np.inf
    image = viewer.add_image(flt, name="float")
    c.set_image(image)
    assert np.isfinite(image.contrast_limits).all()
    points.add([20.0, 30.0])
    settle(c)
    expected = best_mask(fast_model, flt, image.contrast_limits, (30.0, 20.0))
    np.testing.assert_array_equal(c.preview.layer.data > 0, expected)
    assert len(notes["warning"]) == n_warnings

    # a constant image: SAM sees one grey; said once, the session goes on
    c.set_image(viewer.add_image(np.full((48, 64), 7, np.uint16), name="constant"))
    points.add([10.0, 10.0])
    settle(c)
    assert "looks uniform to SAM" in notes["warning"][-1]
    points.add([12.0, 12.0])
    settle(c)
    assert len(notes["warning"]) == n_warnings + 1
    assert c.preview.layer.data.shape == (48, 64)

    # a 1 x 1 image
    c.set_image(viewer.add_image(np.array([[3]], np.uint16), name="one pixel"))
    points.add([0.0, 0.0])
    settle(c)
    c.commit()
    assert viewer.layers["one pixel SAM labels"].data.shape == (1, 1)
    assert notes["error"] == []
    c.close()


def test_degenerate_boxes_and_prompt_layers_with_more_axes(fast_model, nuclei):
    viewer = ViewerModel()
    plane = cut(nuclei, 14, (40, 104), (16, 96))
    image = viewer.add_image(plane, name="plane")
    c = make(viewer, fast_model)
    notes = collect(c)
    boxes = c.prompts.boxes.current
    boxes.add_rectangles(np.array([[10.0, 20.0], [10.0, 20.0], [30.0, 20.0], [30.0, 20.0]]))
    settle(c)
    assert notes["warning"][-1].startswith("1 box on this slice has no area")
    assert c.preview.layer is None or not c.preview.layer.data.any()
    c.clear()
    assert len(boxes.data) == 0  # "clear" removes it too

    # the user's own 3D Points layer over this 2D image: only the points shown count
    mine = viewer.add_points(np.zeros((0, 3)), ndim=3, name="3D points")
    c.set_prompt_layer("points", mine)
    assert "has 3 axes and the image “plane” 2" in notes["info"][-1]
    mine.add([[0, 20.0, 30.0], [2, 50.0, 60.0]])
    viewer.dims.set_point(0, 0)
    settle(c)
    contrast = image.contrast_limits
    np.testing.assert_array_equal(
        c.preview.layer.data > 0, best_mask(fast_model, plane, contrast, (30.0, 20.0))
    )
    viewer.dims.set_point(0, 2)
    settle(c)
    np.testing.assert_array_equal(
        c.preview.layer.data > 0, best_mask(fast_model, plane, contrast, (60.0, 50.0))
    )
    assert notes["error"] == []
    c.close()


def test_labels_layer_of_another_shape_or_a_too_small_dtype(fast_model, nuclei, monkeypatch):
    viewer = ViewerModel()
    plane = cut(nuclei, 14, (40, 104), (16, 96))
    viewer.add_image(plane, name="plane")
    wrong = viewer.add_labels(np.zeros((10, 10), np.uint32), name="other shape")
    full = np.zeros(plane.shape, np.uint8)  # 255 objects: one more does not fit in uint8
    full.flat[:255] = np.arange(1, 256)
    small = viewer.add_labels(full.copy(), name="uint8 labels")
    c = make(viewer, fast_model)
    notes = collect(c)
    c.set_output(wrong)
    c.prompts.points.current.add([40.0, 40.0])
    settle(c)
    c.commit()
    assert "has shape (10, 10), but the image is (64, 80)" in notes["error"][-1]
    assert not wrong.data.any() and c.preview.layer.data.any()

    c.set_output(small)
    preview = c.preview.layer.data > 0
    c.commit()
    assert small.data.dtype == np.uint16
    np.testing.assert_array_equal(small.data[preview & (full == 0)], 256)
    np.testing.assert_array_equal(small.data[full > 0], full[full > 0])  # no id truncated
    assert "too small for object id 256" in notes["info"][-1]
    small.undo()  # the commit is one undo step
    np.testing.assert_array_equal(small.data, full)

    # SAM finds nothing at the prompts: said so, nothing written
    monkeypatch.setattr(
        logic, "predict_objects",
        lambda *a, **k: [logic.ObjectMask(np.zeros(plane.shape, bool), 0.1, 0, 3)],
    )
    c.prompts.points.current.add([20.0, 20.0])
    settle(c)
    c.commit()
    assert notes["info"][-1].startswith("Nothing to commit: SAM found no object")
    np.testing.assert_array_equal(small.data, full)
    c.close()


def test_layers_deleted_while_encoding(fast_model, stack):
    viewer = ViewerModel()
    image = viewer.add_image(stack[0], name="first")
    c = make(viewer, fast_model, runner=SyncRunner(deferred=True))
    notes = collect(c)
    c.prompts.points.current.add([30.0, 30.0])
    c.flush()
    assert c.runner.running("encode")
    viewer.layers.remove(image)  # the image goes while its plane is encoded
    settle(c)
    assert c.image is None and "Open or choose" in c.status

    second = viewer.add_image(stack[1], name="second")
    assert c.image is second
    c.prompts.points.current.add([30.0, 30.0])
    c.flush()
    assert c.runner.running("encode")
    viewer.layers.remove("SAM points")  # the prompts go while encoding
    settle(c)
    assert c.prompts.points.current is None
    assert c.preview.layer is None or not c.preview.layer.data.any()
    c.commit()
    assert notes["info"][-1].startswith("Nothing to commit")
    assert notes["error"] == []
    assert {lyr.name for lyr in viewer.layers} >= {"second", "SAM boxes"}
    c.close()


def test_slice_change_during_encoding_never_lands_on_the_wrong_slice(fast_model, stack):
    viewer = ViewerModel()
    image = viewer.add_image(stack, name="nuclei")
    c = make(viewer, fast_model, runner=SyncRunner(deferred=True))
    points = c.prompts.points.current
    viewer.dims.set_point(0, 3)
    points.add([3, 30.0, 40.0])
    c.flush()
    assert c.runner.running("encode")
    viewer.dims.set_point(0, 1)  # while slice 3 is encoded
    points.add([1, 20.0, 60.0])
    settle(c)
    contrast = image.contrast_limits
    preview = c.preview.layer.data
    np.testing.assert_array_equal(preview[1] > 0, best_mask(fast_model, stack[1], contrast,
                                                            (60, 20)))
    assert not preview[np.arange(7) != 1].any()
    assert sorted(key.slice for key in c.embeddings.store.keys()) == [1, 3]
    viewer.dims.set_point(0, 3)
    settle(c)
    np.testing.assert_array_equal(
        c.preview.layer.data[3] > 0, best_mask(fast_model, stack[3], contrast, (40, 30))
    )
    assert not c.preview.layer.data[1].any() and len(c.embeddings.log) == 2
    c.close()


def test_cancel_during_encoding(sam_small, stack):
    viewer = ViewerModel()
    viewer.add_image(stack[2], name="plane")
    c = make(viewer, sam_small)
    notes = collect(c)
    ran = []

    def cancel_in_block(module, inputs):
        ran.append(module)
        c.cancel()  # the user presses Cancel while the first block runs

    handle = sam_small.image_encoder.blocks[0].register_forward_pre_hook(cancel_in_block)
    try:
        c.prompts.points.current.add([30.0, 30.0])
        settle(c)
    finally:
        handle.remove()
    assert notes["info"][-1].startswith("Encoding cancelled") and len(ran) == 1
    assert len(c.embeddings.store) == 0
    assert c.preview.layer is None or not c.preview.layer.data.any()
    c.close()


def test_fallback_warnings_and_out_of_memory_reach_the_user(fast_model, stack, monkeypatch):
    viewer = ViewerModel()
    viewer.add_image(stack, name="nuclei")
    c = make(viewer)
    # as if loaded on a GPU (its weights are on the CPU: moved there after running out of memory)
    c.set_model(LoadedModel(fast_model, "vit_b", "fast", "vit_b", torch.device("cuda")))
    notes = collect(c)
    changed = []
    c.listen(changed=changed.append)

    def with_fallback(real):
        def wrapped(*args, **kwargs):
            warnings.warn(FALLBACK, DeviceFallbackWarning, stacklevel=2)
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(logic, "encode_plane", with_fallback(logic.encode_plane))
    viewer.dims.set_point(0, 2)
    c.prompts.points.current.add([2, 30.0, 40.0])
    settle(c)
    assert notes["warning"] == [FALLBACK] and c.status.startswith("Preview on slice 2")
    assert c.preview.layer.data[2].any() and "model" in changed  # the result still arrives
    assert c.model.describe() == "vit_b on cpu (moved from cuda: out of memory)"

    def out_of_memory(*args, **kwargs):
        raise OutOfMemoryError("This slice does not fit in memory, even on the CPU.")

    monkeypatch.setattr(logic, "encode_plane", out_of_memory)
    viewer.dims.set_point(0, 4)
    c.prompts.points.current.add([4, 30.0, 40.0])
    settle(c)
    assert notes["error"] == ["This slice does not fit in memory, even on the CPU."]

    # the mask decoder runs on the controller's thread: its fallbacks are shown the same way
    monkeypatch.undo()
    monkeypatch.setattr(logic, "predict_objects", with_fallback(logic.predict_objects))
    viewer.dims.set_point(0, 2)
    c.prompts.points.current.add([2, 35.0, 45.0])
    settle(c)
    assert notes["warning"] == [FALLBACK] * 2 and c.preview.layer.data[2].any()
    monkeypatch.undo()

    # propagation: the same warning, every time it happens
    monkeypatch.setattr(propagation_logic, "propagate", with_fallback(propagation_logic.propagate))
    for _ in range(2):
        c.stack.propagate()
    assert notes["warning"] == [FALLBACK] * 4

    # automatic segmentation, with the viewer's model (loaded again where asked: it had moved)
    c.session.factory = lambda *a, **k: LoadedModel.wrap(fast_model, "fast")
    def fallback_when_run(real):  # segment_iter checks its input at the call, works when run
        def wrapped(*args, **kwargs):
            steps = real(*args, **kwargs)

            def run():
                warnings.warn(FALLBACK, DeviceFallbackWarning, stacklevel=2)
                return (yield from steps)
            return run()
        return wrapped

    run_with_fallback = fallback_when_run(segment_logic.segment_iter)
    monkeypatch.setattr(segment_logic, "segment_iter", run_with_fallback)
    auto = AutomaticController(viewer)
    lax_auto(auto, 2)
    auto_notes = collect(auto)
    auto.run("current slice")
    assert auto_notes["warning"] == [FALLBACK]
    assert "nuclei SAM auto" in [lyr.name for lyr in viewer.layers]

    def segment_out_of_memory(*args, **kwargs):
        raise OutOfMemoryError("This image does not fit in memory, even on the CPU.")

    monkeypatch.setattr(segment_logic, "segment_iter", segment_out_of_memory)
    auto.run("current slice")
    assert auto_notes["error"] == ["This image does not fit in memory, even on the CPU."]
    auto.close()
    c.close()


def test_corrupted_disk_cache_is_detected_and_recomputed(fast_model, stack, tmp_path):
    viewer = ViewerModel()
    viewer.add_image(stack[:3], name="nuclei")
    c = make(viewer, fast_model)
    notes = collect(c)
    c.embeddings.set_disk(True, str(tmp_path))
    c.stack.precompute()
    files = sorted(tmp_path.rglob("*.npz"))
    assert len(files) == 3
    for path in files:  # every entry damaged: cut in half
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    c.embeddings.store.clear()
    viewer.dims.set_point(0, 1)
    c.prompts.points.current.add([1, 30.0, 40.0])
    settle(c)
    assert len(c.embeddings.log) == 1 and c.preview.layer.data[1].any()
    assert notes["info"][-1].startswith("A damaged file in the embedding cache was deleted")
    (key,) = c.embeddings.store.keys()
    assert DiskCache(tmp_path).get(key) is not None  # written again, readable
    assert notes["error"] == []

    # a cache folder that cannot be made: said once, then memory only
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    c.embeddings.set_disk(True, str(blocker / "cache"))
    c.embeddings.store.clear()
    viewer.dims.set_point(0, 2)
    c.prompts.points.current.add([2, 30.0, 40.0])
    settle(c)
    assert notes["warning"][-1].endswith("Embeddings are kept in memory only.")
    assert not c.embeddings.use_disk and c.preview.layer.data[2].any()
    c.close()


def test_a_closed_controller_writes_nothing_and_says_nothing(fast_model, stack):
    viewer = ViewerModel()
    viewer.add_image(stack, name="nuclei")
    runner = SyncRunner(deferred=True)
    c = make(viewer, fast_model, runner=runner)
    notes = collect(c)
    viewer.dims.set_point(0, 3)
    c.prompts.points.current.add([3, 30.0, 40.0])
    settle(c)
    c.stack.settings = c.stack.settings.__class__(min_score=0.0, min_overlap=0.0, min_area=1)
    c.stack.propagate()
    names = [lyr.name for lyr in viewer.layers]
    c.close()  # the dock closes while propagating
    runner.run_pending()  # the job ends (cancelled): nothing is written, nothing said
    assert [lyr.name for lyr in viewer.layers] == names
    assert notes == {"error": [], "warning": [], "info": []}
    viewer.layers["SAM points"].add([3, 10.0, 10.0])
    assert not c.pending and not runner.running()
