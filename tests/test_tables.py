"""Object tables (workflows.tables) against scikit-image run directly on the written labels.

Real data: the nuclei sample's ground truth (20 nuclei in 60 × 256 × 256) and
its uint16 image, with an anisotropic voxel size.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from skimage.measure import regionprops_table

from bio_samples import sample
from napari_sam._widgets.writer import write_labels
from napari_sam.errors import ImageFormatError
from napari_sam.workflows import io
from napari_sam.workflows.tables import (
    merge_sam_columns,
    object_table,
    read_object_table,
    scores_by_label,
    table_path_for,
    write_object_table,
)

SCALE = (2.0, 0.5, 0.5)
TRANSLATE = (10.0, -3.0, 4.0)


@pytest.fixture(scope="module")
def nuclei():
    return np.asarray(sample("nuclei.tif")), np.asarray(sample("nuclei_label.tif"))


def _reference(labels, intensity=None, spacing=None):
    props = ["label", "bbox", "area", "centroid"] + (["intensity_mean"] if intensity is not None
                                                     else [])
    kw = {"spacing": spacing} if spacing is not None else {}
    if intensity is not None:
        kw["intensity_image"] = intensity
    return regionprops_table(labels, properties=props, **kw)


def test_3d_table_matches_scikit_image_on_the_nuclei_sample(nuclei):
    image, labels = nuclei
    scores = {(z, 3): {"predicted_iou": 0.8 + z / 1000, "stability_score": 0.9} for z in (4, 6)}
    table = object_table(
        labels, scale=SCALE, translate=TRANSLATE, unit="micrometer", intensity=image,
        scores=scores, method={3: "one-click"},
    )  # fmt: skip
    ref = _reference(labels, image, SCALE)
    assert list(table.columns) == [
        "index", "z_first", "z_last", "n_pixels", "volume", "centroid_z", "centroid_y",
        "centroid_x", "mean_intensity", "predicted_iou", "stability_score", "method", "unit",
    ]  # fmt: skip
    assert len(table) == 20
    np.testing.assert_array_equal(table["index"], ref["label"])
    np.testing.assert_array_equal(table["z_first"], ref["bbox-0"])
    np.testing.assert_array_equal(table["z_last"], ref["bbox-3"] - 1)
    np.testing.assert_allclose(table["volume"], ref["area"])
    counts = np.bincount(labels.ravel())[ref["label"]]
    np.testing.assert_array_equal(table["n_pixels"], counts)
    np.testing.assert_allclose(table["volume"], counts * 2.0 * 0.5 * 0.5)
    for j, axis in enumerate("zyx"):
        np.testing.assert_allclose(table[f"centroid_{axis}"], ref[f"centroid-{j}"] + TRANSLATE[j])
    np.testing.assert_allclose(table["mean_intensity"], ref["intensity_mean"])
    row = table.set_index("index").loc[3]
    assert row["predicted_iou"] == pytest.approx(0.805) and row["method"] == "one-click"
    assert table.set_index("index")["predicted_iou"].drop(3).isna().all()
    assert (table["unit"] == "micrometer").all()


def test_writer_saves_the_table_beside_the_tiff_and_it_matches_the_written_labels(
    tmp_path, nuclei
):
    _, labels = nuclei
    features = pd.DataFrame(
        {"index": [2, 5], "predicted_iou": [0.7, 0.9], "stability_score": [0.95, np.nan],
         "method": ["interactive", "propagated"], "n_pixels": [1, 1]}
    )  # fmt: skip
    meta = {"scale": SCALE, "translate": TRANSLATE, "units": ("micrometer",) * 3,
            "features": features, "name": "nuclei labels"}  # fmt: skip
    written = write_labels(str(tmp_path / "nuclei_labels.tif"), labels, meta)
    assert written == [str(tmp_path / "nuclei_labels.tif"), str(tmp_path / "nuclei_labels.csv")]
    back = io.read_tiff(written[0])
    ref = _reference(back.data, spacing=back.scale)
    csv = pd.read_csv(written[1])
    assert csv.columns[0] == "label"
    np.testing.assert_array_equal(csv["label"], ref["label"])
    np.testing.assert_allclose(csv["volume"], ref["area"])
    np.testing.assert_allclose(csv["centroid_y"], ref["centroid-1"] + TRANSLATE[1])
    np.testing.assert_array_equal(csv["z_last"], ref["bbox-3"] - 1)
    table = read_object_table(written[1]).set_index("index")
    assert table.loc[2, "predicted_iou"] == 0.7 and table.loc[5, "method"] == "propagated"
    assert np.isnan(table.loc[5, "stability_score"]) and table.loc[1, "method"] == ""
    assert table.loc[2, "n_pixels"] > 1  # pixel measurements are recomputed, not copied


def test_2d_time_lapse_and_channels(nuclei):
    image, labels = nuclei
    tzyx = labels[:60].reshape(3, 20, 256, 256)
    table = object_table(tzyx, scale=(1.0, *SCALE))
    assert "t" in table and "volume" in table
    for t in range(3):
        ref = _reference(tzyx[t], spacing=SCALE)
        part = table[table["t"] == t]
        np.testing.assert_array_equal(part["index"], ref["label"])
        np.testing.assert_allclose(part["volume"], ref["area"])
    plane_labels, a, b = labels[30], image[30], image[31]
    two = object_table(plane_labels, intensity=[a, b], channel_names=["dapi", "gfp"])
    ref = _reference(plane_labels, np.stack([a, b], axis=-1))
    assert "area" in two and "z_first" not in two
    np.testing.assert_allclose(two["mean_intensity_dapi"], ref["intensity_mean-0"])
    np.testing.assert_allclose(two["mean_intensity_gfp"], ref["intensity_mean-1"])
    assert (two["unit"] == "pixel").all()
    frames = labels[28:31]
    tyx = object_table(frames, axes="tyx")
    assert "area" in tyx and "z_first" not in tyx and sorted(tyx["t"].unique()) == [0, 1, 2]
    for t in range(3):
        ref = _reference(frames[t])
        np.testing.assert_allclose(tyx[tyx["t"] == t]["area"], ref["area"])


def test_empty_labels_and_bad_input(tmp_path):
    empty = object_table(np.zeros((8, 8), np.uint16))
    assert empty.empty and "index" in empty and "area" in empty
    path = write_object_table(tmp_path / "e.csv", empty)
    assert read_object_table(path).empty
    with pytest.raises(ImageFormatError, match="integer object ids"):
        object_table(np.zeros((4, 4), np.float32))
    with pytest.raises(ImageFormatError, match="one scale and one translate value per label axis"):
        object_table(np.zeros((4, 4), np.uint8), scale=(1, 1, 1))
    with pytest.raises(ImageFormatError, match="Intensity channel 0 has shape"):
        object_table(np.zeros((4, 4), np.uint8), intensity=np.zeros((4, 5)))
    with pytest.raises(ImageFormatError, match="axes='tzyx'"):
        object_table(np.zeros((2, 2, 2, 2, 2), np.uint8))


def test_helpers():
    assert table_path_for("a/cells_labels.tif").name == "cells_labels.csv"
    assert table_path_for("x.ome.tiff").name == "x.csv"
    got = scores_by_label({(0, 1): {"predicted_iou": 0.5}, (1, 1): {"predicted_iou": 0.7}, 2: {
        "predicted_iou": 0.1, "stability_score": float("nan")}})
    assert got == {1: {"predicted_iou": pytest.approx(0.6)}, 2: {"predicted_iou": 0.1}}
    table = object_table(np.array([[0, 1], [2, 2]], np.uint8), method="automatic")
    merged = merge_sam_columns(table, {"index": [2], "predicted_iou": [0.3]})
    assert merged["predicted_iou"].tolist()[1] == 0.3 and np.isnan(merged["predicted_iou"][0])
    assert merged["method"].tolist() == ["automatic", "automatic"]
