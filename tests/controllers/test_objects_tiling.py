"""A large plane (3000 x 2500) in the interactive controller: tiled automatically.

Only the tile a click needs is encoded (as a job), the click near a tile border
is predicted in one window and pasted back at full resolution as ONE object,
and the commit writes it. The expected preview is TiledPromptPredictor run
directly on the same plane and contrast. Random weights with the fast stand-in
encoder (tests/volume_models.py), so that encoding 1024-pixel tiles takes
milliseconds; whether border objects come out whole with a real segmenter is
tested with an oracle in tests/test_tiling_prompts.py.
"""

from __future__ import annotations

import numpy as np
from napari.components import ViewerModel

from napari_helpers import settle
from napari_sam._widgets.interactive.controller import InteractiveController
from napari_sam.workflows.click_preview import compose_click_preview
from napari_sam.workflows.prompts import ObjectPrompt
from napari_sam.workflows.tiled_embeddings import TiledEmbeddings
from napari_sam.workflows.tiled_prompts import TiledPromptPredictor, compose_tiled_preview
from napari_sam.workflows.tiling import Tiling
from volume_models import EncoderCalls


def big_plane() -> np.ndarray:
    """(3000, 2500) uint16: noise and bright discs, one across the tile border x = 768."""
    rng = np.random.default_rng(3)
    plane = rng.integers(100, 300, (3000, 2500)).astype(np.uint16)
    rr, cc = np.ogrid[:3000, :2500]
    for r, c, rad in ((1000, 770, 60), (400, 300, 40), (2500, 2000, 80)):
        plane[(rr - r) ** 2 + (cc - c) ** 2 <= rad**2] = 3000
    return plane


def test_a_click_near_a_tile_border_on_a_large_plane_is_one_object(fast_model):
    plane = big_plane()
    viewer = ViewerModel()
    image = viewer.add_image(plane, name="scan", contrast_limits=(0, 3500))
    c = InteractiveController(viewer)
    c.set_model(fast_model, "fast")
    calls = EncoderCalls(fast_model)
    points = c.prompts.points.current
    points.add([1000.0, 772.0])  # 4 px right of the inner border between tiles 0 and 1
    settle(c)
    tiled = c.tiles._tiled
    assert tiled is not None and len(tiled.grid) == 16
    assert 1 <= calls.planes == tiled.encoded <= 3  # the click's tile (and a grown window)
    assert "Tiled plane: 16 tiles of 768 × 768 px + 128 px halo." in c.status
    preview = c.preview.layer.data
    assert preview.shape == plane.shape

    # the same prediction, directly with the library
    direct = TiledEmbeddings(fast_model, plane, model_id="direct", tiling=Tiling(),
                             contrast=tuple(image.contrast_limits))
    click = ObjectPrompt(point_coords=np.array([[772.0, 1000.0]]), point_labels=np.array([1]))
    masks = TiledPromptPredictor(fast_model, direct).predict(None, [click])
    expected = compose_tiled_preview(masks, plane.shape)
    assert expected.any()
    np.testing.assert_array_equal(preview, expected)
    assert set(np.unique(preview)) == {0, 1}  # one object, whatever its tiles

    c.commit()
    labels = c.output.current
    assert labels.data.shape == plane.shape
    np.testing.assert_array_equal(labels.data == 1, expected == 1)
    assert labels.data.max() == 1 and len(points.data) == 0

    # a second click in a far tile: that tile is encoded, the first is not encoded again
    before = calls.planes
    points.add([2500.0, 2000.0])
    settle(c)
    assert calls.planes - before >= 1 and c.preview.layer.data.max() == 1

    # tiling switched off: the whole plane is encoded once, shrunk to SAM's input
    c.clear()
    c.set_tiling(False)
    points.add([1000.0, 772.0])
    settle(c)
    assert "Tiled plane" not in c.status and c.preview.layer.data.any()
    whole, _ = c.embeddings.key_and_plane(image, c.layout, None, c.model.model_id)
    assert whole in c.embeddings.store  # the untiled embedding of the plane
    calls.remove()
    c.close()


def test_one_click_per_cell_on_a_tiled_plane(fast_model):
    plane = big_plane()
    viewer = ViewerModel()
    image = viewer.add_image(plane, name="scan", contrast_limits=(0, 3500))
    c = InteractiveController(viewer)
    c.set_model(fast_model, "fast")
    c.set_one_click(True)
    points = c.prompts.points.current
    clicks_rc = np.array([[1000.0, 772.0], [400.0, 300.0], [1010.0, 740.0]])
    for rc in clicks_rc:
        points.add(rc)
    settle(c)
    direct = TiledEmbeddings(fast_model, plane, model_id="direct", tiling=Tiling(),
                             contrast=tuple(image.contrast_limits))
    objects = [ObjectPrompt(point_coords=rc[None, ::-1].copy(), point_labels=np.array([1]))
               for rc in clicks_rc]
    masks = TiledPromptPredictor(fast_model, direct).predict(None, objects)
    expected = compose_click_preview([m.mask for m in masks], clicks_rc, plane.shape,
                                     offsets=[(m.window.y0, m.window.x0) for m in masks])
    np.testing.assert_array_equal(c.preview.layer.data, expected)
    assert "Preview on image: 3 objects" in c.status and "Tiled plane" in c.status
    c.commit()
    assert c.output.current.data.max() == len(np.unique(expected)) - 1
    c.close()


def test_channel_layers_of_a_large_plane_are_tiled(fast_model):
    """Two channel layers of a 3000 x 2500 plane: the tiles are cut from SAM's red and green
    made of them (each with its contrast limits), and the preview equals the library's
    tiled prediction on the same channels."""
    first = big_plane()
    second = np.ascontiguousarray(first[::-1])  # another channel: other bright discs
    viewer = ViewerModel()
    a, b = viewer.add_image(np.stack([first, second]), channel_axis=0, name=["dna", "actin"])
    a.contrast_limits, b.contrast_limits = (0, 3500), (200, 2500)
    c = InteractiveController(viewer)
    c.set_model(fast_model, "fast")
    c.set_channels([a, b])
    calls = EncoderCalls(fast_model)
    c.prompts.points.current.add([1000.0, 772.0])
    settle(c)
    tiled = c.tiles._tiled
    assert tiled is not None and len(tiled.grid) == 16 and tiled.planes.channels == (0, 1)
    assert 1 <= calls.planes == tiled.encoded <= 3
    assert "Tiled plane: 16 tiles" in c.status
    direct = TiledEmbeddings(fast_model, [first, second], model_id="direct", tiling=Tiling(),
                             contrast=[(0, 3500), (200, 2500)])
    click = ObjectPrompt(point_coords=np.array([[772.0, 1000.0]]), point_labels=np.array([1]))
    expected = compose_tiled_preview(TiledPromptPredictor(fast_model, direct).predict(
        None, [click]), first.shape)
    assert expected.any()
    np.testing.assert_array_equal(c.preview.layer.data, expected)
    # not the tiles of the first channel alone
    alone = TiledEmbeddings(fast_model, first, model_id="alone", tiling=Tiling(),
                            contrast=(0, 3500))
    other = compose_tiled_preview(TiledPromptPredictor(fast_model, alone).predict(
        None, [click]), first.shape)
    assert not np.array_equal(other, expected)
    # a changed contrast of a channel: new tiled embeddings, the tile encoded again
    before = calls.planes
    b.contrast_limits = (200, 1500)
    settle(c)
    assert c.tiles._tiled is not tiled and calls.planes > before
    calls.remove()
    c.close()
