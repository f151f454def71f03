"""Synthetic sample data: generated in code, opened through napari's npe2 plugin system."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam._widgets.sample_data import nuclei_2d, nuclei_3d
from napari_sam.workflows.samples import (
    NUCLEI_2D_SHAPE,
    NUCLEI_3D_SCALE,
    NUCLEI_3D_SHAPE,
    make_nuclei_2d,
    make_nuclei_3d,
)


def test_generators_are_deterministic_fluorescence_like():
    a = make_nuclei_2d()
    assert a.shape == NUCLEI_2D_SHAPE == (256, 256) and a.dtype == np.uint16
    np.testing.assert_array_equal(a, make_nuclei_2d())
    # dim noisy background, bright objects: the top percent is many times the median
    assert np.percentile(a, 99) > 5 * np.median(a) and a.std() > 0
    b = make_nuclei_3d()
    assert b.shape == NUCLEI_3D_SHAPE == (32, 192, 192) and b.dtype == np.uint16
    assert NUCLEI_3D_SCALE == (1.0, 0.25, 0.25)
    # nuclei appear and disappear along z: some slices are much brighter than the ends
    per_slice = b.reshape(b.shape[0], -1).mean(axis=1)
    assert per_slice.max() > 1.5 * per_slice[[0, -1]].max()


def test_layer_data_tuples():
    ((data, meta, kind),) = nuclei_3d()
    assert kind == "image" and meta["scale"] == NUCLEI_3D_SCALE and data.ndim == 3
    lo, hi = meta["contrast_limits"]
    assert data.min() <= lo < hi <= data.max()
    ((data2, meta2, kind2),) = nuclei_2d()
    assert kind2 == "image" and data2.ndim == 2 and len(meta2["scale"]) == 2


@pytest.mark.parametrize(
    "key, shape, scale",
    [("nuclei_2d", (256, 256), (0.5, 0.5)), ("nuclei_3d", (32, 192, 192), (1.0, 0.25, 0.25))],
)
def test_samples_open_in_napari(make_napari_viewer, key, shape, scale):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-sam-microscopy", key)
    (layer,) = viewer.layers
    assert layer.data.shape == shape and layer.data.dtype == np.uint16
    np.testing.assert_allclose(layer.scale, scale)
    assert "synthetic" in layer.name


def test_manifest_lists_widget_menu_and_samples():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-sam-microscopy")
    ids = {c.id for c in manifest.contributions.commands}
    assert "napari-sam-microscopy.segment_interactively" in ids
    assert {s.key for s in manifest.contributions.sample_data} >= {"nuclei_2d", "nuclei_3d"}
    menu = manifest.contributions.menus["napari/layers/segment"]
    assert any(item.command == "napari-sam-microscopy.segment_interactively" for item in menu)
    command = "napari-sam-microscopy.segment_interactively"
    (widget,) = [w for w in manifest.contributions.widgets if w.command == command]
    assert widget.display_name == "Interactive segmentation (SAM)"
