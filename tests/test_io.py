"""TIFF in/out and COCO export (workflows.io, _widgets.writer); no model, no viewer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from napari_sam._widgets.writer import write_labels
from napari_sam.errors import ImageFormatError
from napari_sam.workflows import io


@pytest.fixture
def labels3d():
    g = np.random.default_rng(0)
    lab = np.zeros((4, 30, 40), np.uint32)
    for i in range(1, 12):
        z, r, c = g.integers(0, 4), g.integers(0, 24), g.integers(0, 34)
        lab[z, r : r + 6, c : c + 5] = i
    return lab


def _tiff_facts(path):
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        xres = page.tags["XResolution"].value
        yres = page.tags["YResolution"].value
        return {
            "data": tif.series[0].asarray(),
            "imagej": tif.imagej_metadata,
            "x": xres[1] / xres[0],
            "y": yres[1] / yres[0],
            "compression": page.compression,
        }


# --------------------------------------------------------------------------- TIFF writing
def test_3d_labels_round_trip_with_voxel_size(tmp_path, labels3d):
    path = io.write_labels_tiff(
        tmp_path / "labels.tif", labels3d, scale=(2.0, 0.5, 0.25), unit="micrometer"
    )
    facts = _tiff_facts(path)
    np.testing.assert_array_equal(facts["data"], labels3d)
    assert facts["data"].dtype == np.uint16  # ImageJ hyperstack
    assert facts["imagej"]["spacing"] == 2.0 and facts["imagej"]["unit"] == "micron"
    assert facts["imagej"]["slices"] == 4
    assert (facts["y"], facts["x"]) == pytest.approx((0.5, 0.25))
    assert facts["compression"] == tifffile.COMPRESSION.ADOBE_DEFLATE  # zlib
    back = io.read_tiff(path)
    np.testing.assert_array_equal(back.data, labels3d)
    assert back.scale == pytest.approx((2.0, 0.5, 0.25)) and back.unit == "micrometer"
    assert back.axes == "ZYX" and not back.rgb
    assert [p.name for p in tmp_path.iterdir()] == ["labels.tif"]  # no temporary left


def test_2d_labels_and_many_objects(tmp_path):
    lab = np.arange(200 * 400, dtype=np.uint32).reshape(200, 400)  # 80000 ids > uint16
    path = io.write_labels_tiff(tmp_path / "many.tif", lab, scale=(0.3, 0.3), unit="nm")
    facts = _tiff_facts(path)
    np.testing.assert_array_equal(facts["data"], lab)
    assert facts["data"].dtype == np.uint32 and facts["imagej"] is None
    back = io.read_tiff(path)
    assert back.scale == pytest.approx((0.3, 0.3)) and back.unit == "nanometer"
    small = io.write_labels_tiff(tmp_path / "small.tif", lab[:2, :3])
    back = io.read_tiff(small)
    np.testing.assert_array_equal(back.data, lab[:2, :3])
    assert back.scale == (1.0, 1.0) and back.unit is None


@pytest.mark.parametrize(
    ("data", "scale"),
    [(np.zeros((2, 2, 2, 3, 3), np.uint16), None), (np.zeros((4, 4), np.float32), None),
     (np.array([[0, -1]], np.int32), None), (np.zeros((4, 4), np.uint16), (1.0, 0.0))],
)  # fmt: skip
def test_write_refuses_bad_labels(tmp_path, data, scale):
    with pytest.raises(ImageFormatError):
        io.write_labels_tiff(tmp_path / "x.tif", data, scale=scale)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_destination_leaves_nothing(tmp_path, labels3d):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(io.OutputFileError, match="cannot be created"):
        io.write_labels_tiff(blocker / "labels.tif", labels3d)
    (tmp_path / "dir.tif").mkdir()
    with pytest.raises(io.OutputFileError, match="is a folder"):
        io.write_labels_tiff(tmp_path / "dir.tif", labels3d)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "dir.tif"]


def test_failure_while_writing_keeps_the_old_file(tmp_path, monkeypatch, labels3d):
    target = tmp_path / "labels.tif"
    target.write_bytes(b"old")

    def broken(path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(io.OutputFileError, match="No space left"):
        io.write_labels_tiff(target, labels3d)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["labels.tif"]


# --------------------------------------------------------------------------- napari writer
def test_napari_writer_and_napari_reader(tmp_path, labels3d):
    """A Labels layer saved with napari-sam's writer reads back identically, with its
    scale (tifffile), and napari's own reader opens the file."""
    from napari.layers import Labels
    from npe2 import PluginManager, read

    PluginManager.instance().discover()
    layer = Labels(labels3d, scale=(2.0, 0.5, 0.25), units=("micrometer",) * 3, name="cells")
    written = layer.save(str(tmp_path / "cells.tif"), plugin="napari-sam-microscopy")
    assert written == [str(tmp_path / "cells.tif"), str(tmp_path / "cells.csv")]  # + objects
    back = io.read_tiff(written[0])
    np.testing.assert_array_equal(back.data, labels3d)
    assert back.scale == pytest.approx((2.0, 0.5, 0.25)) and back.unit == "micrometer"

    [(data, *_)] = read([written[0]], stack=False, plugin_name="napari")
    np.testing.assert_array_equal(np.asarray(data), labels3d)

    # the function napari calls, with a 2D layer in pixels
    out = write_labels(str(tmp_path / "p.tiff"), labels3d[1], {"scale": (1.0, 1.0)})
    back = io.read_tiff(out[0])
    np.testing.assert_array_equal(back.data, labels3d[1])
    with pytest.raises(ImageFormatError, match="5 dimensions"):
        write_labels(str(tmp_path / "q.tif"), np.zeros((2, 2, 2, 2, 2), np.uint8), {"name": "q"})


def test_napari_writer_saves_a_time_lapse_of_stacks(tmp_path, labels3d):
    """(T, Z, Y, X) labels (the dock's output for a time-lapse of stacks): an ImageJ
    hyperstack with frames, slices, the z spacing and the frame interval, and the object
    table with a ``t`` column beside it."""
    import pandas as pd

    tzyx = np.stack([labels3d, np.roll(labels3d, 3, axis=-1)])
    written = write_labels(str(tmp_path / "movie.tif"), tzyx,
                           {"scale": (30.0, 2.0, 0.5, 0.25), "units": ("micrometer",) * 4})
    with tifffile.TiffFile(written[0]) as tif:
        assert tif.series[0].axes == "TZYX"
        np.testing.assert_array_equal(tif.asarray(), tzyx)
        meta = tif.imagej_metadata
    assert (meta["frames"], meta["slices"]) == tzyx.shape[:2]
    assert meta["spacing"] == 2.0 and meta["finterval"] == 30.0 and meta["unit"] == "micron"
    table = pd.read_csv(written[1])
    assert sorted(set(table["t"])) == [0, 1]
    assert len(table) == sum(len(np.unique(v)) - 1 for v in tzyx)


# --------------------------------------------------------------------------- TIFF reading
def test_read_layouts(tmp_path):
    g = np.random.default_rng(1)
    rgb = g.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    img = io.read_tiff(tmp_path / "rgb.tif")
    assert img.rgb and img.spatial_shape == (20, 30)
    np.testing.assert_array_equal(img.data, rgb)

    movie = g.integers(0, 60000, (5, 20, 30), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "t.tif", movie, imagej=True, metadata={"axes": "TYX"})
    img = io.read_tiff(tmp_path / "t.tif")
    assert img.data.shape == (5, 20, 30) and img.spatial_shape == (5, 20, 30) and not img.rgb

    single = movie[:1, None]  # (1, 1, 20, 30): one time point, one channel
    tifffile.imwrite(tmp_path / "s.tif", single, imagej=True, metadata={"axes": "TCYX"})
    img = io.read_tiff(tmp_path / "s.tif")
    assert img.data.shape == (20, 30)
    np.testing.assert_array_equal(img.data, movie[0])


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("missing.tif", None, "does not exist"),
        ("junk.tif", lambda p: p.write_bytes(b"not a tiff at all"), "cannot be read as a TIFF"),
        (
            "two_channels.tif",
            lambda p: tifffile.imwrite(
                p, np.zeros((2, 8, 8), np.uint16), imagej=True, metadata={"axes": "CYX"}
            ),
            "2 channels",
        ),
        (
            "4d.tif",
            lambda p: tifffile.imwrite(
                p, np.zeros((2, 3, 8, 8), np.uint16), imagej=True, metadata={"axes": "TZYX"}
            ),
            "4 axes",
        ),
        (
            "rgb_stack.tif",
            lambda p: tifffile.imwrite(p, np.zeros((3, 8, 8, 3), np.uint8), photometric="rgb"),
            "RGB image with 3 spatial axes",
        ),
        ("complex.tif", lambda p: tifffile.imwrite(p, np.zeros((8, 8), np.complex64)), "real"),
    ],
)
def test_read_refuses(tmp_path, name, make, message):
    path = tmp_path / name
    if make is not None:
        make(path)
    with pytest.raises((io.InputFileError, ImageFormatError), match=message) as info:
        io.read_tiff(path)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- COCO
def test_coco_decodes_to_the_label_masks(tmp_path, labels3d):
    scores = {(2, int(labels3d[2].max())): {"predicted_iou": 0.9, "stability_score": 0.95}}
    writer = io.CocoWriter()
    writer.add(labels3d, "stack.tif", scores=scores)
    writer.add(labels3d[0], "plane.tif")
    path = writer.write(tmp_path / "out" / "coco.json")
    data = json.loads(path.read_text())
    assert len(data["images"]) == 5
    assert [im.get("slice") for im in data["images"]] == [0, 1, 2, 3, None]

    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    n = 0
    for image in data["images"]:
        plane = labels3d[image["slice"]] if "slice" in image else labels3d[0]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        assert sorted(a["label"] for a in anns) == sorted(set(np.unique(plane)) - {0})
        for ann in anns:
            expected = plane == ann["label"]
            np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), expected)
            np.testing.assert_array_equal(
                mask_utils.decode(ann["segmentation"]).astype(bool), expected
            )
            assert ann["area"] == expected.sum()
            rows, cols = np.nonzero(expected)
            assert ann["bbox"] == [cols.min(), rows.min(), np.ptp(cols) + 1, np.ptp(rows) + 1]
            n += 1
    assert n == len(data["annotations"]) and n > 0
    scored = [a for a in data["annotations"] if "predicted_iou" in a]
    assert len(scored) == 1 and scored[0]["stability_score"] == 0.95

    # one 2D label image, via the helper
    data2 = io.labels_to_coco(labels3d[3], "x.tif")
    assert len(data2["images"]) == 1 and "slice" not in data2["images"][0]
