"""SAM 2.1 in the interactive dock's controller, on a plain ViewerModel (no display).

A tiny SAM 2.1 with seeded random (perturbed) weights on 256-pixel inputs (the
``sam2_small_input`` fixture) keeps these fast. Clicks must give exactly what
``Sam2ImagePredictor`` gives when called directly; propagation with the "SAM 2
memory" method must write exactly what ``MemoryPropagation`` computes, as one
undo step, never over other objects, and nothing when cancelled.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from napari.components import ViewerModel
from napari.utils.key_bindings import KeymapHandler

from napari_helpers import LAX, collect, goto_slice, settle, world_of
from napari_sam._widgets.interactive.controller import InteractiveController
from napari_sam._widgets.interactive.stack import MEMORY, SLICES
from napari_sam.predictors.sam2_predictor import Sam2ImagePredictor
from napari_sam.workflows.image import to_sam_rgb
from napari_sam.workflows.memory_propagation import (
    MemoryPropagation,
    MemoryPropagationSettings,
    TrackPrompt,
)
from napari_sam.workflows.prompt_table import read_prompt_table
from napari_sam.workflows.propagation import plan_write, propagate

#: Random weights: follow objects through every slice (the object score is noise).
KEEP_GOING = MemoryPropagationSettings(stop_when_absent=False)
#: The slice clicked first, and two nuclei clicked there: (row, col).
K = 2
CLICKS = [(30.0, 40.0), (60.0, 90.0)]

ONE = (1.0, 1.0, 1.0)
ZERO = (0.0, 0.0, 0.0)


@pytest.fixture(scope="module")
def model(sam2_small_input):
    return sam2_small_input[0]


@pytest.fixture(scope="module")
def stack(nuclei_stack):
    """Five slices of the real nuclei stack (uint16), cropped to 96 × 128 pixels."""
    return np.ascontiguousarray(nuclei_stack[28:33, 40:136, 60:188])


def make(viewer, model) -> InteractiveController:
    c = InteractiveController(viewer)
    c.set_model(model, "sam2-tiny-random")
    c.stack.memory.settings = KEEP_GOING
    return c


def press_shift_f(viewer) -> None:
    """Press Shift+F as napari's canvas would (the selected layer's keymap, then the viewer's)."""
    handler = KeymapHandler()
    active = viewer.layers.selection.active
    handler.keymap_providers = [viewer] if active is None else [active, viewer]
    handler.press_key("Shift+F")


def cancel_after(c, n: int):
    """The runner cancels the running job after ``n`` progress steps."""
    def on_progress(job, event):
        if event.done >= n:
            job.cancel_event.set()

    c.runner.on_progress = on_progress


def expected_session(c, stack) -> MemoryPropagation:
    """MemoryPropagation called directly, as the dock should call it (sharing the dock's
    embeddings: nothing is encoded twice)."""
    return MemoryPropagation(c.model.sam, stack, model_id=c.model.model_id,
                             contrast=c.image.contrast_limits, store=c.embeddings.store,
                             settings=KEEP_GOING)


def two_nuclei(c, viewer, k=K) -> np.ndarray:
    """Click the first nucleus and commit it, then click the second (left as the preview);
    returns the committed mask."""
    (r0, c0), (r1, c1) = CLICKS
    click(c, viewer, k, r0, c0)
    committed = c.preview.layer.data[k] == 1
    c.commit()
    click(c, viewer, k, r1, c1)
    return committed


def follow_and_export(c, viewer, tmp_path, notes, pattern):
    """Click the first nucleus on slice K, propagate with SAM 2 memory, export the clicks;
    the labels (object 1 written), the CSV and the command ``pattern`` finds in the
    sentence."""
    import re

    click(c, viewer, K, *CLICKS[0])
    c.stack.propagate()
    labels = c.output.current.data
    assert labels.shape == (5, 96, 128) and (labels == 1).any()
    csv = tmp_path / "clicks.csv"
    assert c.stack.export_prompts(str(csv))
    return labels, csv, re.search(pattern, notes["info"][-1]).group(1)


def click(c, viewer, k, row, col, positive=True) -> None:
    goto_slice(viewer, k, ONE, ZERO)
    settle(c)
    c.set_negative(not positive)
    points = c.prompts.points.current
    points.add(points.world_to_data(world_of([k, row, col], ONE, ZERO)))
    settle(c)


def direct(model, plane, contrast, xy) -> np.ndarray:
    """Sam2ImagePredictor called directly: the best of three masks for one click."""
    predictor = Sam2ImagePredictor(model)
    predictor.set_image(to_sam_rgb(plane, contrast))
    masks, scores, _ = predictor.predict(
        point_coords=np.array([xy], float), point_labels=np.array([1])
    )
    return masks[int(np.argmax(scores))] > 0


def test_a_click_predicts_with_the_sam2_image_path_and_commits(model, stack):
    viewer = ViewerModel()
    image = viewer.add_image(stack, name="nuclei")
    c = make(viewer, model)
    notes = collect(c)
    click(c, viewer, K, 30.0, 40.0)
    expected = direct(model, stack[K], image.contrast_limits, (40.0, 30.0))
    assert expected.any() and not expected.all()
    assert isinstance(c.predictor, Sam2ImagePredictor)
    np.testing.assert_array_equal(c.preview.layer.data[K] > 0, expected)
    (key,) = c.embeddings.store.keys()
    assert len(c.embeddings.store.get(key).high_res) == 2  # SAM 2's maps are kept
    c.commit()
    labels = c.output.current
    np.testing.assert_array_equal(labels.data[K] == 1, expected)
    assert notes["error"] == []
    c.close()


def test_batched_prediction_gives_the_per_object_masks_with_sam2(model, stack):
    from napari_sam.workflows import interactive as logic
    from napari_sam.workflows.prompts import ObjectPrompt

    predictor = logic.make_predictor(model)
    assert isinstance(predictor, Sam2ImagePredictor)
    predictor.set_embedding(logic.encode_plane(model, stack[K], None, False))
    objects = [
        ObjectPrompt(point_coords=np.array([[40.0, 30.0]]), point_labels=np.array([1])),
        ObjectPrompt(box=np.array([60.0, 40.0, 100.0, 80.0])),
    ]
    one = logic.predict_objects(predictor, objects, True, 1)
    cache = logic.PredictionCache()
    batched = logic.predict_objects_batched(predictor, objects, True, 1, cache=cache,
                                            cache_key="k")
    for a, b in zip(one, batched):
        assert a.mask.any()
        np.testing.assert_array_equal(a.mask, b.mask)
        assert (a.score, a.candidate) == (b.score, b.candidate) and b.stability is not None
    again = logic.predict_objects_batched(predictor, objects, True, 1, cache=cache, cache_key="k")
    assert cache.hits == 2 and again[0] is batched[0]


def test_propagate_both_ways_with_sam2_memory_one_undo_step_never_over_others(model, stack):
    viewer = ViewerModel()
    viewer.add_image(stack, name="nuclei")
    other = np.zeros(stack.shape, np.uint32)
    other[[0, 1, 3, 4], 50:70, 80:100] = 9  # another object, in the way (not on slice K)
    labels = viewer.add_labels(other.copy(), name="nuclei SAM labels")
    c = make(viewer, model)
    notes = collect(c)
    assert c.stack.method == MEMORY and c.stack.method_in_use() == MEMORY
    committed = two_nuclei(c, viewer)
    before = labels.data.copy()
    assert (before[K] == 10).any() and len(c.preview.objects) == 1
    press_shift_f(viewer)  # the key propagates with the chosen method
    assert notes["error"] == [], notes["error"]

    direct = expected_session(c, stack)
    (row, col) = CLICKS[1]
    want = direct.run([TrackPrompt(10, K, mask=committed),
                       TrackPrompt(11, K, [[col, row]], [1])])
    assert c.output.current is labels
    expected = other.copy()
    for oid, obj in zip(want.object_ids, want.objects):
        for z, mask in obj.masks.items():
            expected[z][mask & (expected[z] == 0)] = oid
    np.testing.assert_array_equal(labels.data, expected)
    for oid in (10, 11):
        on = [z for z in range(len(stack)) if (labels.data[z] == oid).any()]
        assert min(on) < K < max(on)  # both directions
    assert (labels.data[other == 9] == 9).all()  # never over another object
    assert not c.preview.layer.data.any()  # the preview's prompts were used up
    assert c.stack.summary.startswith("Propagated objects 10, 11 over slices 0–4")
    assert c.stack.memory.session.object_ids == [10, 11]

    labels.undo()  # ONE step
    np.testing.assert_array_equal(labels.data, before)
    labels.redo()
    np.testing.assert_array_equal(labels.data, expected)
    c.close()


def test_cancel_leaves_labels_and_session_untouched(model, stack):
    viewer = ViewerModel()
    viewer.add_image(stack, name="nuclei")
    c = make(viewer, model)
    notes = collect(c)
    two_nuclei(c, viewer)
    labels = c.output.current
    before = labels.data.copy()
    cancel_after(c, 2)
    c.stack.propagate()
    np.testing.assert_array_equal(labels.data, before)
    assert "cancelled" in c.status.lower()
    assert c.stack.memory.session.object_ids == []
    assert len(c.preview.objects) == 1  # the prompts are still there, ready to try again
    assert notes["error"] == []

    c.runner.on_progress = lambda job, event: None
    c.stack.propagate()
    assert set(np.unique(labels.data)) == {0, 1, 2}
    before = labels.data.copy()
    # a second run, cancelled: the labels written by the first stay as they are
    click(c, viewer, 3, 20.0, 110.0)
    cancel_after(c, 0)
    c.stack.propagate()
    np.testing.assert_array_equal(labels.data, before)
    assert c.stack.memory.session.object_ids == [1, 2]
    c.close()


def test_correction_on_another_slice_keeps_earlier_prompts_and_exports_them(
    model, stack, tmp_path
):
    viewer = ViewerModel()
    viewer.add_image(stack, name="nuclei")
    c = make(viewer, model)
    notes = collect(c)
    committed = two_nuclei(c, viewer)
    c.stack.propagate()
    labels = c.output.current
    k = 3
    rows, cols = np.nonzero(labels.data[k] == 1)
    assert rows.size
    row, col = float(rows[len(rows) // 2]), float(cols[len(cols) // 2])
    first = labels.data.copy()
    second = first == 2
    click(c, viewer, k, row, col)  # on object 1: a correction of object 1
    c.stack.propagate()
    assert notes["error"] == [], notes["error"]
    session = c.stack.memory.session
    assert session.object_ids == [1, 2]
    assert [p.z for p in session.prompts(1)] == [K, k]  # the earlier slice is kept

    direct = expected_session(c, stack)
    (y, x) = CLICKS[1]
    direct.run([TrackPrompt(1, K, mask=committed), TrackPrompt(2, K, [[x, y]], [1])])
    want = direct.correct([TrackPrompt(1, k, [[col, row]], [1])])
    (one, _) = want.objects
    for z, mask in one.masks.items():
        mine = labels.data[z] == 1
        # written wherever it is free; where the other object is, it stays
        np.testing.assert_array_equal(mine, mask & ((labels.data[z] == 0) | mine))
    for z in range(len(stack)):
        if z not in one.masks:
            assert not (labels.data[z] == 1).any()
    np.testing.assert_array_equal(labels.data == 2, second)  # not recomputed: as it was
    assert not np.array_equal(labels.data, first)  # the correction changed object 1
    labels.undo()  # the correction is one undo step
    np.testing.assert_array_equal(labels.data, first)

    path = tmp_path / "prompts.csv"
    assert c.stack.export_prompts(str(path))
    assert notes["info"][-1].startswith("Saved 2 clicks of 2 objects to")
    assert f"Left out (object 1 on slice {K})" in notes["info"][-1]  # a committed mask
    back = read_prompt_table(path)
    clicks = [p for p in session.prompts() if p.mask is None]
    assert [(p.obj, p.z) for p in back] == [(1, k), (2, K)] == [(p.obj, p.z) for p in clicks]
    for a, b in zip(back, clicks):
        np.testing.assert_allclose(a.point_coords, b.point_coords)
        np.testing.assert_array_equal(a.point_labels, b.point_labels)
    c.close()


def test_committed_objects_export_and_method_rules(model, fast_model, stack, tmp_path):
    viewer = ViewerModel()
    viewer.add_image(stack, name="nuclei")
    c = make(viewer, model)
    notes = collect(c)
    assert not c.stack.export_prompts(str(tmp_path / "none.csv"))
    assert notes["error"][-1].startswith("There are no SAM 2 prompts to export yet")
    click(c, viewer, K, 30.0, 40.0)
    c.commit()
    c.stack.propagate()  # no preview: the committed object, as a mask prompt
    labels = c.output.current
    on = [z for z in range(len(stack)) if (labels.data[z] == 1).any()]
    assert min(on) < K < max(on)
    assert not c.stack.export_prompts(str(tmp_path / "mask.csv"))
    assert f"Left out (object 1 on slice {K})" in notes["error"][-1]
    assert not (tmp_path / "mask.csv").exists()

    # slice-to-slice with the SAM 2.1 model: the SAM 1 rule, decoded by SAM 2's image path
    c.stack.set_method(SLICES)
    c.stack.settings = LAX
    c.stack.z_range = (1, 3)
    click(c, viewer, K, 60.0, 90.0)
    seed = c.preview.layer.data[K] == 1
    before = labels.data.copy()
    errors = len(notes["error"])
    c.stack.propagate()
    assert notes["error"][errors:] == []
    want = propagate(model, stack, seed, K, z_range=(1, 3), settings=LAX,
                     contrast=c.image.contrast_limits)
    assert set(want.objects[0].masks) == {1, 2, 3}
    plan = plan_write(before, want, next_id=2)
    for oid, index in plan:
        before[index] = oid
    np.testing.assert_array_equal(labels.data, before)
    c.set_model(fast_model, "sam1-fast")
    assert c.stack.method_in_use() == SLICES  # a SAM 1 model always goes slice to slice
    c.stack.set_method(MEMORY)
    assert c.stack.method_in_use() == SLICES
    c.close()


def test_slice_to_slice_with_sam2_decodes_as_the_image_predictor(model, stack):
    """The SAM 1 rule's prompts (box, point, previous logits) on a SAM 2.1 model give what
    Sam2ImagePredictor gives for the same prompts in image pixels."""
    from napari_sam.workflows.embeddings import StackEmbeddings
    from napari_sam.workflows.propagation import MaskPrompt, Sam2SlicePredictor

    embeddings = StackEmbeddings(model, stack, model_id="t")
    slices = Sam2SlicePredictor(Sam2ImagePredictor(model), embeddings)
    box, point = np.array([30.0, 20.0, 70.0, 60.0]), np.array([50.0, 40.0])
    masks, iou, low = slices(1, [MaskPrompt(box=box, point=point)])
    again, _, _ = slices(1, [MaskPrompt(box=box, point=point, logits=low[0])])

    direct = Sam2ImagePredictor(model)
    direct.set_image(to_sam_rgb(stack[1], embeddings.contrast))
    want, score, want_low = direct.predict(point_coords=point[None], point_labels=np.array([1]),
                                           box=box, multimask_output=False)
    assert want[0].any() and not want[0].all()
    np.testing.assert_array_equal(masks[0], want[0] > 0)
    np.testing.assert_allclose(iou[0], score[0], atol=1e-5)
    np.testing.assert_allclose(low[0], want_low, atol=1e-4)
    want2, _, _ = direct.predict(point_coords=point[None], point_labels=np.array([1]), box=box,
                                 mask_input=want_low, multimask_output=False)
    np.testing.assert_array_equal(again[0], want2[0] > 0)
    assert slices(1, [])[0].shape == (0, *stack.shape[1:])


def test_a_colour_stack_followed_in_the_dock_replays_on_the_command_line(
    model, nuclei_stack, tmp_path, monkeypatch
):
    """Serial colour sections (Z, Y, X, RGB): an object clicked and followed with SAM 2
    memory in the dock, its clicks exported, and `napari-sam propagate` with that table
    gives the same labels (the same model, contrast and stop rule)."""
    from napari_sam.cli import main
    from napari_sam.runtime import loader
    from napari_sam.runtime.loader import LoadedModel
    from napari_sam.workflows import io

    crop = nuclei_stack[24:35, 40:136, 60:188].astype(np.float64)
    colour = np.stack([crop[z : z + 7 : 3] for z in range(5)])  # (5, 3, 96, 128)
    colour = np.ascontiguousarray(np.moveaxis(255 * colour / crop.max(), 1, -1).astype(np.uint8))
    viewer = ViewerModel()
    viewer.add_image(colour, name="sections", rgb=True)
    c = make(viewer, model)
    notes = collect(c)
    assert c.stack.method == MEMORY
    click(c, viewer, K, *CLICKS[0])
    c.stack.propagate()
    labels = c.output.current.data
    assert labels.shape == (5, 96, 128) and (labels == 1).sum(axis=(1, 2)).all()
    # its planes are slices, as in a grayscale stack (napari leaves the axis unnamed)
    assert c.stack.summary.startswith("Propagated object 1 over slices 0–4 (Ctrl+Z undoes it).")
    assert "Object 1: slices 0–4" in c.stack.summary and "axis" not in c.stack.summary
    csv = tmp_path / "clicks.csv"
    assert c.stack.export_prompts(str(csv))
    assert notes["info"][-1].endswith(
        "replay them with `napari-sam propagate STACK --prompts clicks.csv -o labels.tif "
        "--contrast 0 255`.")

    tif = tmp_path / "sections.tif"
    tifffile.imwrite(tif, colour, photometric="rgb")
    monkeypatch.setattr(loader, "load", lambda *a, **k: LoadedModel.wrap(model, "t", "sam2"))
    out = tmp_path / "labels.tif"
    assert main(["propagate", str(tif), "--prompts", str(csv), "-o", str(out), "--keep-going",
                 "--quiet"]) == 0  # fmt: skip
    np.testing.assert_array_equal(io.read_tiff(out).data, labels)
    assert notes["error"] == []
    c.close()


def test_channels_of_a_channel_axis_followed_in_the_dock_replay_on_the_command_line(
    model, nuclei_stack, tmp_path, monkeypatch
):
    """A (C, Z, Y, X) file opened as one layer: channels 1 and 0 chosen on its channel axis,
    one contrast changed, an object followed with SAM 2 memory; the exported sentence names
    --channels and --contrast, and the command with them gives the dock's labels."""

    from napari_sam.cli import main
    from napari_sam.runtime import loader
    from napari_sam.runtime.loader import LoadedModel
    from napari_sam.workflows import io

    czyx = np.ascontiguousarray(np.stack([nuclei_stack[28:33, 40:136, 60:188],
                                          nuclei_stack[34:39, 40:136, 60:188]]))
    viewer = ViewerModel()
    viewer.add_image(czyx, name="cells")
    c = make(viewer, model)
    notes = collect(c)
    c.set_channel_axis(0, "1 0")
    red, green = c.channels.layers
    green.contrast_limits = (float(czyx[0].min()), float(np.percentile(czyx[0], 90)))
    labels, csv, command = follow_and_export(c, viewer, tmp_path, notes,
                                             r"`napari-sam propagate STACK (.*)`")
    options = command.split()
    assert options[options.index("--channels") + 1:][:2] == ["1", "0"]
    at = options.index("--contrast") + 1
    assert [float(v) for v in options[at:at + 4]] == pytest.approx(
        [*red.contrast_limits, *green.contrast_limits], rel=1e-5)

    tif = tmp_path / "cells.tif"
    tifffile.imwrite(tif, czyx)  # no axes named: the first holds the channels
    monkeypatch.setattr(loader, "load", lambda *a, **k: LoadedModel.wrap(model, "t", "sam2"))
    options[options.index("--prompts") + 1] = str(csv)
    options[options.index("-o") + 1] = str(tmp_path / "labels.tif")
    assert main(["propagate", str(tif), *options, "--keep-going", "--quiet"]) == 0
    np.testing.assert_array_equal(io.read_tiff(tmp_path / "labels.tif").data, labels)
    assert notes["error"] == []
    c.close()


def test_channels_of_a_hyperstack_followed_in_the_dock_replay_on_the_command_line(
    model, nuclei_stack, tmp_path, monkeypatch
):
    """An ImageJ hyperstack (T, Z, C, Y, X) opened as one layer: channels 1 and 0 chosen on
    its axis 2, an object clicked at time point 1 and followed through its slices with SAM 2
    memory; the exported sentence names --along z --at 1 --channels 1 0 --contrast, and the
    command with them gives the dock's labels (T, Z, Y, X)."""
    import re

    from napari_sam.cli import main
    from napari_sam.runtime import loader
    from napari_sam.runtime.loader import LoadedModel
    from napari_sam.workflows import io

    crop = nuclei_stack[:, 40:136, 60:188]
    tzcyx = np.ascontiguousarray(np.stack([
        np.stack([crop[20:25], crop[26:31]], axis=1),  # time point 0: (Z, C, Y, X)
        np.stack([crop[28:33], crop[34:39]], axis=1),
    ]))  # fmt: skip
    viewer = ViewerModel()
    viewer.add_image(tzcyx, name="movie")
    c = make(viewer, model)
    notes = collect(c)
    c.set_channel_axis(2, "1 0")
    assert [layer.data.shape for layer in c.channels.layers] == [(2, 5, 96, 128)] * 2
    # the layer is shown channels first, (C, T, Z, Y, X), so that its channel layers line up
    assert viewer.layers["movie"].data.shape == (2, 2, 5, 96, 128)
    viewer.dims.set_point(1, 1)  # time point 1, slice K
    viewer.dims.set_point(2, K)
    points = c.prompts.points.current
    points.add([1, K, *CLICKS[0]])
    settle(c)
    c.stack.propagate()
    assert notes["error"] == [], notes["error"]
    labels = c.output.current.data
    assert labels.shape == (2, 5, 96, 128) and not labels[0].any()
    assert (labels[1] == 1).any(axis=(1, 2)).sum() >= 2
    # napari leaves the two axes unnamed: they read as a time-lapse of stacks, (t, z)
    assert c.stack.summary.startswith("Propagated object 1 over z 0–4 at t=1"), c.stack.summary
    csv = tmp_path / "clicks.csv"
    assert c.stack.export_prompts(str(csv))
    command = re.search(r"`napari-sam propagate STACK (.*)`", notes["info"][-1]).group(1)
    options = command.split()
    assert options[options.index("--along") + 1:][:3] == ["z", "--at", "1"]
    assert options[options.index("--channels") + 1:][:2] == ["1", "0"]

    tif = tmp_path / "movie.tif"
    tifffile.imwrite(tif, tzcyx, imagej=True, metadata={"axes": "TZCYX"})
    monkeypatch.setattr(loader, "load", lambda *a, **k: LoadedModel.wrap(model, "t", "sam2"))
    options[options.index("--prompts") + 1] = str(csv)
    options[options.index("-o") + 1] = str(tmp_path / "labels.tif")
    assert main(["propagate", str(tif), *options, "--keep-going", "--quiet"]) == 0
    written = io.read_tiff(tmp_path / "labels.tif", frames=True).data
    np.testing.assert_array_equal(written, labels)
    c.close()


def test_channel_layers_opened_one_per_file_replay_on_the_command_line(
    model, nuclei_stack, tmp_path, monkeypatch
):
    """Channels saved one per file (Fiji's Split Channels), each opened with napari's reader
    and chosen as channel layers, an object followed with SAM 2 memory: the exported sentence
    names the red channel's file and --with the green one's, and that command gives the
    dock's labels. Channel layers made in napari (no file) have no command to replay."""
    import shlex

    from napari.layers._source import layer_source

    from napari_sam.cli import main
    from napari_sam.runtime import loader
    from napari_sam.runtime.loader import LoadedModel
    from napari_sam.workflows import io

    files = []
    for name, z in (("C1-cells.tif", 28), ("C2-cells.tif", 34)):
        files.append(tmp_path / name)
        tifffile.imwrite(files[-1], np.ascontiguousarray(nuclei_stack[z:z + 5, 40:136, 60:188]))
    viewer = ViewerModel()
    layers = []
    for f in files:  # as napari's reader adds them: each layer's source is its file
        with layer_source(path=str(f)):
            layers.append(viewer.add_image(tifffile.imread(f), name=f.stem))
    red, green = layers
    c = make(viewer, model)
    notes = collect(c)
    c.set_channels([red, green])
    labels, csv, command = follow_and_export(c, viewer, tmp_path, notes,
                                             r"`napari-sam (propagate .*)`")
    argv = shlex.split(command)
    assert argv[1] == str(files[0]) and argv[argv.index("--with") + 1] == str(files[1])
    argv[argv.index("--prompts") + 1] = str(csv)
    argv[argv.index("-o") + 1] = str(tmp_path / "labels.tif")
    monkeypatch.setattr(loader, "load", lambda *a, **k: LoadedModel.wrap(model, "t", "sam2"))
    assert main([*argv, "--keep-going", "--quiet"]) == 0
    np.testing.assert_array_equal(io.read_tiff(tmp_path / "labels.tif").data, labels)

    # layers without a file: the sentence says how to replay instead
    made = viewer.add_image(np.asarray(green.data) // 2, name="made here")
    c.set_channels([red, made])
    click(c, viewer, K, *CLICKS[0])
    c.stack.propagate()
    assert c.stack.export_prompts(str(tmp_path / "again.csv"))
    assert "no files hold" in notes["info"][-1] and "--with" in notes["info"][-1]
    assert notes["error"] == []
    c.close()
