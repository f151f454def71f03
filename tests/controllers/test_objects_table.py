"""The object table of the interactive dock's output labels (features + CSV), checked against
scikit-image's regionprops on the written labels (real nuclei sample, calibrated stack)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from napari.components import ViewerModel
from scipy import ndimage
from skimage.measure import regionprops

from bio_samples import sample
from napari_helpers import collect, settle
from napari_sam._widgets.interactive.controller import InteractiveController
from napari_sam.workflows.tables import read_object_table

Z = 43
SCALE = (2.0, 0.5, 0.25)
TRANSLATE = (0.0, 10.0, -4.0)


def test_commit_measures_every_object_and_save_table_writes_the_csv(fast_model, tmp_path):
    stack, truth = sample("nuclei.tif"), sample("nuclei_label.tif")
    ids = [i for i in np.unique(truth[Z]) if i][:5]
    centres = np.array(ndimage.center_of_mass(truth[Z] > 0, truth[Z], ids))
    viewer = ViewerModel()
    viewer.add_image(stack, name="nuclei", scale=SCALE, translate=TRANSLATE)
    c = InteractiveController(viewer)
    c.set_model(fast_model, "fast")
    assert c.save_table(tmp_path / "none.csv") is None and not (tmp_path / "none.csv").exists()
    c.set_one_click(True)
    viewer.dims.set_point(0, Z * SCALE[0])
    points = c.prompts.points.current
    for r, col in centres:
        points.add(points.world_to_data(np.array([Z, r, col]) * SCALE + TRANSLATE))
    settle(c)
    scores = {i + 1: (o.score, o.stability) for i, o in enumerate(c.preview.objects)}
    c.commit()
    labels = c.output.current
    table = labels.features
    data = np.asarray(labels.data)
    props = regionprops(data, intensity_image=stack, spacing=SCALE)
    assert len(table) == len(props) == 5
    for row, prop in zip(table.itertuples(), props):
        assert row.index == prop.label
        assert row.n_pixels == int(np.sum(data == prop.label))
        assert row.volume == pytest.approx(prop.area)  # voxels x 2 x 0.5 x 0.25
        assert row.z_first == row.z_last == Z
        np.testing.assert_allclose(
            [row.centroid_z, row.centroid_y, row.centroid_x],
            np.asarray(prop.centroid) + TRANSLATE,
        )
        assert row.mean_intensity == pytest.approx(prop.intensity_mean)
        assert (row.predicted_iou, row.stability_score) == pytest.approx(scores[row.index])
        assert row.method == "one-click"

    # a second commit (ordinary mode) keeps the first objects' scores and adds its own
    c.set_one_click(False)
    far = np.array(ndimage.center_of_mass(truth[Z] > 0, truth[Z], [ids[-1] + 3]))[0]
    points.add(points.world_to_data(np.array([Z, *far]) * SCALE + TRANSLATE))
    settle(c)
    c.commit()
    table = labels.features
    assert list(table["method"]) == ["one-click"] * 5 + ["interactive"] * (len(table) - 5)
    assert len(table) == len(np.unique(labels.data)) - 1 >= 6
    np.testing.assert_allclose(table["predicted_iou"][:5], [scores[i][0] for i in range(1, 6)])

    path = c.save_table(str(tmp_path / "objects.csv"))
    assert path is not None and "Saved the table of" in c.status
    saved = read_object_table(path)
    pd.testing.assert_frame_equal(saved, labels.features, check_dtype=False)
    assert pd.read_csv(path).columns[0] == "label"
    # a file that cannot be written (a folder is in the way): one sentence, nothing raised
    (tmp_path / "taken.csv").mkdir()
    notes = collect(c)
    assert c.save_table(str(tmp_path / "taken.csv")) is None
    assert len(notes["error"]) == 1 and "taken.csv" in notes["error"][0]
    c.close()
