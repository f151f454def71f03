"""Image series (workflows.series): a folder of 3 real images round-trips.

Images: a nuclei plane (uint16, calibrated), a crop of the skin sample (RGB) and
a 5-slice nuclei stack. Labels are saved with the names ``napari-sam segment``
gives in folder mode; prompts are kept per image; unchanged labels are not
rewritten; the next image's embedding is precomputed under the key the
interactive tools will look up.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from bio_samples import sample
from napari_sam.errors import InputFileError
from napari_sam.workflows import io
from napari_sam.workflows.batch import plan_jobs
from napari_sam.workflows.embeddings import EmbeddingStore, model_tag
from napari_sam.workflows.planes import ImagePlanes
from napari_sam.workflows.series import ImageSeries, list_images, precompute_embedding
from volume_models import fast_sam


@pytest.fixture
def folder(tmp_path):
    nuclei = np.asarray(sample("nuclei.tif"))
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(
        images / "b_plane.tif", nuclei[30], imagej=True, resolution=(4.0, 4.0),
        metadata={"unit": "um"},
    )  # fmt: skip
    tifffile.imwrite(images / "a_skin.ome.tif", np.asarray(sample("skin.tif"))[:200, :300],
                     photometric="rgb")  # fmt: skip
    tifffile.imwrite(images / "c_stack.tiff", nuclei[28:33], imagej=True, metadata={"axes": "ZYX"})
    (images / "notes.txt").write_text("not an image")
    return images


def test_three_images_round_trip(folder, tmp_path):
    out = tmp_path / "labels"
    series = ImageSeries(folder, out)
    assert [p.name for p in series.images] == ["a_skin.ome.tif", "b_plane.tif", "c_stack.tiff"]
    assert series.images == list_images(folder)
    # the names napari-sam segment writes for the same folder
    cli_names = {job.source: job.output for job in plan_jobs([str(folder)], str(out)).jobs}
    for i, path in enumerate(series.images):
        assert series.labels_path(i) == cli_names[path]

    truth = np.asarray(sample("nuclei_label.tif"))
    drawn = {}
    opened, saved = series.switch(0)
    assert saved == [] and opened.image.rgb and opened.labels.shape == (200, 300)
    assert opened.labels.dtype == np.uint32 and not opened.labels.any()
    for i in range(3):
        assert opened.position == i
        labels = opened.labels.copy()
        if i == 0:
            labels[10:40, 20:50] = 1
        else:
            labels[...] = truth[30] if i == 1 else truth[28:33]
        drawn[i] = labels
        prompts = {"points": np.array([[i, 5.0, 6.0]])}
        if i < 2:
            features = pd.DataFrame({"index": [1], "predicted_iou": [0.5 + i / 10],
                                     "method": ["one-click"]})  # fmt: skip
            opened, saved = series.switch(i + 1, labels, prompts, features=features)
            assert [p.name for p in saved] == [
                series.labels_path(i).name, series.labels_path(i).with_suffix(".csv").name,
            ]  # fmt: skip
        else:
            series.set_prompts(i, prompts)
            assert len(series.save(i, labels)) == 2

    # back to the start: labels and prompts are there
    for i in range(3):
        again = series.open(i)
        np.testing.assert_array_equal(again.labels, drawn[i])
        assert again.prompts["points"][0, 0] == i
    plane = io.read_tiff(series.labels_path(1))
    assert plane.scale == pytest.approx((0.25, 0.25)) and plane.unit == "micrometer"
    table = pd.read_csv(series.labels_path(1).with_suffix(".csv"))
    assert table.loc[table["label"] == 1, "predicted_iou"].item() == pytest.approx(0.6)
    assert (table["unit"] == "micrometer").all() and "mean_intensity" in table
    skin = pd.read_csv(series.labels_path(0).with_suffix(".csv"))
    assert {"mean_intensity_red", "mean_intensity_green", "mean_intensity_blue"} <= set(skin)
    stack = pd.read_csv(series.labels_path(2).with_suffix(".csv"))
    assert "volume" in stack and "z_first" in stack
    # the saved table comes back with the labels (features: SAM's scores are kept) ...
    back = series.open(1).table
    assert back.loc[back["index"] == 1, "predicted_iou"].item() == pytest.approx(0.6)
    assert back.loc[back["index"] == 1, "method"].item() == "one-click"
    # ... unless it is unreadable: then there is none, and the labels still open
    series.labels_path(0).with_suffix(".csv").write_bytes(b"\x00\xff garbage")
    assert series.open(0).table is None
    np.testing.assert_array_equal(series.open(0).labels, drawn[0])

    # a fresh session over the same folders finds everything; nothing changed, nothing written
    other = ImageSeries(folder, out)
    first, _ = other.switch(2)
    before = series.labels_path(2).stat().st_mtime_ns
    _, saved = other.switch(0, first.labels, None)
    assert saved == [] and series.labels_path(2).stat().st_mtime_ns == before
    assert other.prompts(2) is None and other.next_position() == 1
    assert other.next_position(-1) is None


def test_precompute_next_image_uses_the_interactive_key(folder):
    series = ImageSeries(folder)
    assert series.output == folder / "labels"
    model = fast_sam(0)
    store = EmbeddingStore()
    key = precompute_embedding(model, series.images[2], model_id="fast", store=store)
    opened = series.open(2)
    planes = ImagePlanes(opened.image.data, rgb=opened.image.rgb)
    assert key.index == (2,)  # napari opens a 5-slice stack at slice 2
    assert planes.key(2, model_tag(model, "fast")) == key and key in store
    calls = []
    hook = model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        planes.embedding(model, 2, model_id="fast", store=store)
    finally:
        hook.remove()
    assert calls == []


def test_bad_series(tmp_path, folder):
    with pytest.raises(InputFileError, match=r"holds no image file napari-sam reads \(\.tif, "):
        ImageSeries(_empty(tmp_path))
    series = ImageSeries(folder, tmp_path / "out")
    series.labels_path(1).parent.mkdir()
    tifffile.imwrite(series.labels_path(1), np.zeros((5, 5), np.uint16))
    with pytest.raises(InputFileError, match=r"have shape \(5, 5\).*move the labels file away"):
        series.open(1)
    with pytest.raises(IndexError, match="has 3 images"):
        series.open(3)


def _empty(tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    return path


def test_png_and_npy_images_named_as_the_cli_names_them(tmp_path):
    from PIL import Image

    nuclei = np.asarray(sample("nuclei.tif"))
    folder = tmp_path / "pngs"
    folder.mkdir()
    plane = (nuclei[30, :64, :80] // 256).astype(np.uint8)
    Image.fromarray(plane).save(folder / "a.png")
    np.save(folder / "b.npy", nuclei[31, :64, :80])
    series = ImageSeries(folder)
    assert [p.name for p in series.images] == ["a.png", "b.npy"]
    cli = {job.source: job.output for job in plan_jobs([str(folder)], str(series.output)).jobs}
    assert [series.labels_path(i) for i in range(2)] == [cli[p] for p in series.images]
    opened = series.open(0)
    np.testing.assert_array_equal(opened.image.data, plane)
    labels = opened.labels.copy()
    labels[5:20, 10:30] = 1
    assert series.switch(1, labels)[1][0] == folder / "labels" / "a_labels.tif"
    np.testing.assert_array_equal(series.open(0).labels, labels)
