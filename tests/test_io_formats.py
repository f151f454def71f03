"""Reading PNG / JPEG / BMP, zarr and OME-Zarr, TIFF lazily; writing OME-Zarr labels;
what a folder holds besides images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from napari_sam.errors import InputFileError
from napari_sam.workflows import io, zarr_io
from napari_sam.workflows.embeddings import default_contrast_limits
from napari_sam.workflows.image import get_plane, image_layout
from napari_sam.workflows.samples import make_nuclei_2d, make_nuclei_3d


def _gray8():
    plane = make_nuclei_2d()[40:104, 60:140]
    return (plane / plane.max() * 255).astype(np.uint8)


# --------------------------------------------------------------------------- Pillow
def test_png_jpeg_bmp(tmp_path):
    g = _gray8()
    rgb = np.stack([g, g // 2, 255 - g], axis=-1)
    plane16 = make_nuclei_2d()[40:104, 60:140].astype(np.uint16)
    Image.fromarray(g).save(tmp_path / "gray.png")
    Image.fromarray(plane16).save(tmp_path / "deep.png")
    Image.fromarray(rgb).save(tmp_path / "colour.PNG")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=95)
    Image.fromarray(g).save(tmp_path / "old.bmp")
    Image.fromarray(np.dstack([g, g])).save(tmp_path / "alpha.png")  # grey + alpha

    im = io.read_image(tmp_path / "gray.png")
    assert not im.rgb and im.data.dtype == np.uint8
    np.testing.assert_array_equal(im.data, g)
    im = io.read_image(tmp_path / "deep.png")
    assert im.data.dtype == np.uint16
    np.testing.assert_array_equal(im.data, plane16)
    im = io.read_image(tmp_path / "colour.PNG")
    assert im.rgb and im.spatial_shape == g.shape
    np.testing.assert_array_equal(im.data, rgb)
    assert io.read_image(tmp_path / "palette.png").data.shape == (*g.shape, 3)
    im = io.read_image(tmp_path / "photo.jpg")
    assert im.rgb and im.data.shape == rgb.shape  # lossy: values are close, not equal
    assert np.abs(im.data.astype(int) - rgb).mean() < 8
    np.testing.assert_array_equal(io.read_image(tmp_path / "old.bmp").data, g)
    np.testing.assert_array_equal(io.read_image(tmp_path / "alpha.png").data, g)
    assert io.read_image(tmp_path / "gray.png").scale == (1.0, 1.0)


def test_damaged_png_is_one_sentence(tmp_path):
    Image.fromarray(_gray8()).save(tmp_path / "x.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "x.png").read_bytes()[:200])
    (tmp_path / "junk.jpg").write_bytes(b"not a jpeg")
    for name, kind in (("cut.png", "PNG"), ("junk.jpg", "JPEG")):
        with pytest.raises(InputFileError, match=rf"{name} cannot be read as a {kind} image"):
            io.read_image(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputFileError, match=r"not an image napari-sam reads \(\.txt\)"):
        io.read_image(tmp_path / "notes.txt")


# --------------------------------------------------------------------------- TIFF lazily
def test_lazy_tiff_reads_planes_on_demand(tmp_path):
    stack = make_nuclei_3d()[:5, :48, :56]
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "ZYX", "spacing": 2.0})
    lazy = io.read_image(path, lazy=True)
    eager = io.read_image(path)
    assert not isinstance(lazy.data, np.ndarray)
    assert lazy.data.shape == stack.shape and lazy.scale == eager.scale
    layout = image_layout(lazy.data.shape, dtype=lazy.data.dtype)
    np.testing.assert_array_equal(get_plane(lazy.data, layout, 3), stack[3])
    assert default_contrast_limits(lazy.data) == default_contrast_limits(stack)


def test_lazy_array_drops_length_one_axes_like_numpy():
    base = np.arange(2 * 1 * 3 * 4 * 1).reshape(2, 1, 3, 4, 1)
    store = zarr.create_array(store={}, shape=base.shape, dtype=base.dtype, chunks=(1, 1, 3, 4, 1))
    store[...] = base
    lazy = zarr_io.LazyArray(store, keep=(0, 2, 3))
    squeezed = base.reshape(2, 3, 4)
    assert lazy.shape == (2, 3, 4) and lazy.dtype == base.dtype and len(lazy) == 2
    for key in (1, (0, slice(1, 3)), (Ellipsis, slice(0, 2)), (1, 2, 3), slice(None)):
        np.testing.assert_array_equal(lazy[key], squeezed[key])
    np.testing.assert_array_equal(np.asarray(lazy), squeezed)


# --------------------------------------------------------------------------- zarr
def test_ome_zarr_labels_round_trip(tmp_path):
    labels = np.zeros((3, 20, 30), np.uint32)
    labels[1, 2:8, 3:9] = 7
    labels[2, 10:12, 20:25] = 70_000
    path = io.write_labels(tmp_path / "out.ome.zarr", labels, scale=(2.0, 0.5, 0.25), unit="um")
    assert [p.name for p in tmp_path.iterdir()] == ["out.ome.zarr"]  # no temporary left
    attrs = json.loads((path / ".zattrs").read_text())
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4" and ms["name"] == "out.ome.zarr"
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert ms["axes"][0]["unit"] == "micrometer"
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [2.0, 0.5, 0.25]
    assert "image-label" in attrs
    back = io.read_image(path)
    assert back.scale == (2.0, 0.5, 0.25) and back.unit == "micrometer"
    np.testing.assert_array_equal(np.asarray(back.data), labels)
    # replacing an existing output
    io.write_labels(path, labels[:, :10], scale=(1, 1, 1))
    assert io.read_image(path).data.shape == (3, 10, 30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ome.zarr"]


def test_ome_zarr_5d_image_and_ngff_05(tmp_path):
    stack = make_nuclei_3d()[:4, :32, :40]
    # NGFF 0.4 (zarr v2), t c z y x with one time point and one channel
    group = zarr.open_group(str(tmp_path / "img.zarr"), mode="w", zarr_format=2)
    group.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
                 {"name": "z", "type": "space", "unit": "micrometer"},
                 {"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "s0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0, 3.0, 0.4, 0.4]}]}],
    }]  # fmt: skip
    arr = group.create_array(
        "s0", shape=(1, 1, *stack.shape), dtype=stack.dtype, chunks=(1, 1, 1, 32, 40)
    )
    arr[...] = stack[None, None]
    im = io.read_image(tmp_path / "img.zarr")
    assert im.data.shape == stack.shape and not isinstance(im.data, np.ndarray)
    assert im.scale == (3.0, 0.4, 0.4) and im.unit == "micrometer" and im.axes == "ZYX"
    np.testing.assert_array_equal(np.asarray(im.data[2]), stack[2])
    # NGFF 0.5 (zarr v3): metadata under "ome"
    g5 = zarr.open_group(str(tmp_path / "v5.zarr"), mode="w", zarr_format=3)
    g5.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [0.5, 0.5]}]}]}]}  # fmt: skip
    g5.create_array("0", shape=stack.shape[1:], dtype=stack.dtype)[...] = stack[0]
    im = io.read_image(tmp_path / "v5.zarr")
    assert im.scale == (0.5, 0.5)
    np.testing.assert_array_equal(np.asarray(im.data), stack[0])
    # a plain array; a group of several arrays without metadata is refused
    plain = zarr.open_array(str(tmp_path / "plain.zarr"), mode="w", shape=stack.shape, dtype="u2")
    plain[...] = stack
    np.testing.assert_array_equal(np.asarray(io.read_image(tmp_path / "plain.zarr").data), stack)
    many = zarr.open_group(str(tmp_path / "many.zarr"), mode="w")
    many.create_array("a", shape=(4, 4), dtype="u1")
    many.create_array("b", shape=(4, 4), dtype="u1")
    with pytest.raises(InputFileError, match="zarr group with 2 arrays"):
        io.read_image(tmp_path / "many.zarr")


# --------------------------------------------------------------------------- folders
def test_find_images_names_every_skipped_entry(tmp_path):
    Image.fromarray(_gray8()).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "b.tif", _gray8())
    io.write_labels(tmp_path / "c.zarr", np.zeros((4, 4), np.uint32))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "README").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / ".DS_Store").write_text("x")
    found = io.find_images(tmp_path)
    assert [p.name for p in found.images] == ["a.png", "b.tif", "c.zarr"]
    reasons = {p.name: r for p, r in found.skipped}
    assert set(reasons) == {"notes.txt", "README", "sub", ".DS_Store"}
    assert reasons["notes.txt"].startswith("not an image napari-sam reads (.txt)")
    assert "no extension" in reasons["README"]
    assert "folders inside an input folder are not searched" in reasons["sub"]
    assert reasons[".DS_Store"] == "a hidden file"


def test_lazy_array_puts_axes_in_another_order_like_numpy():
    base = np.arange(2 * 3 * 1 * 4 * 5).reshape(2, 3, 1, 4, 5)  # (T, Z, C=1, Y, X)
    store = zarr.create_array(store={}, shape=base.shape, dtype=base.dtype, chunks=(1, 1, 1, 4, 5))
    store[...] = base
    lazy = zarr_io.LazyArray(store, keep=(1, 0, 3, 4))  # (Z, T, Y, X)
    want = np.moveaxis(base[:, :, 0], 1, 0)
    assert lazy.shape == want.shape
    for key in (1, (0, 1), (slice(None), 1), (Ellipsis, 2), (slice(0, 2), slice(None), 3),
                (1, 0, 2, 3), slice(None)):
        np.testing.assert_array_equal(lazy[key], want[key], err_msg=str(key))
    again = zarr_io.LazyArray(lazy, keep=(2, 1, 0, 3))  # composed: (Y, T, Z, X)
    moved = np.transpose(want, (2, 1, 0, 3))
    np.testing.assert_array_equal(np.asarray(again), moved)
    np.testing.assert_array_equal(again[:, 1, 2], want[2, 1])
    np.testing.assert_array_equal(again[1:3, :, 0, ::2], moved[1:3, :, 0, ::2])
    with pytest.raises(ValueError):
        zarr_io.LazyArray(store, keep=(0, 0, 3, 4))


def test_a_hyperstack_is_read_channels_first_lazily(tmp_path):
    """An ImageJ hyperstack (T, Z, C, Y, X) with channels and frames: channels first, (C, T,
    Z, Y, X), with its frame interval, slice spacing and pixel size; lazily, a plane reads
    one page."""
    tzcyx = np.arange(2 * 3 * 2 * 6 * 7, dtype=np.uint16).reshape(2, 3, 2, 6, 7)
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, tzcyx, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "TZCYX", "spacing": 3.0, "finterval": 10.0})
    eager = io.read_tiff(path, channels=True, frames=True)
    lazy = io.read_tiff(path, channels=True, frames=True, lazy=True)
    want = np.moveaxis(tzcyx, 2, 0)
    assert eager.channel_axis == lazy.channel_axis == 0 and eager.axes == "CTZYX"
    assert eager.scale == lazy.scale == (10.0, 3.0, 0.5, 0.5)
    np.testing.assert_array_equal(eager.data, want)
    assert not isinstance(lazy.data, np.ndarray) and lazy.data.shape == want.shape
    np.testing.assert_array_equal(lazy.data[1, 0, 2], want[1, 0, 2])
    np.testing.assert_array_equal(np.asarray(lazy.data), want)
    with pytest.raises(InputFileError, match=r"has 4 axes besides its channels"):
        io.read_tiff(path, channels=True)  # a time-lapse only where frames are asked for


def test_channel_stack_reads_only_what_is_asked_like_numpy(tmp_path):
    """Channel files as one channels-first array: indexing like numpy's np.stack of them,
    each file read only where asked (a zarr store counts its reads)."""
    a = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    b = (a * 2).astype(np.uint8)
    store = zarr.create_array(store={}, shape=b.shape, dtype=b.dtype, chunks=(1, 4, 5))
    store[...] = b
    stack = zarr_io.ChannelStack([a, store])
    want = np.stack([a, b.astype(np.uint16)])
    assert stack.shape == want.shape and stack.dtype == np.uint16 and len(stack) == 2
    for key in (1, (0, 2), (slice(None), 1), (Ellipsis, 3), (1, slice(0, 2), 2),
                (slice(None), 0, slice(None), slice(1, 4))):
        np.testing.assert_array_equal(stack[key], want[key], err_msg=str(key))
    np.testing.assert_array_equal(np.asarray(stack), want)
    with pytest.raises(ValueError):
        zarr_io.ChannelStack([a, b[:, :2]])
    files = [tmp_path / "C1.tif", tmp_path / "C2.tif"]
    tifffile.imwrite(files[0], a, imagej=True, metadata={"axes": "ZYX", "spacing": 2.0})
    tifffile.imwrite(files[1], b, photometric="minisblack")
    image = io.read_channel_files(files[0], [files[1]], lazy=True)
    assert image.channel_axis == 0 and image.axes == "CZYX" and image.scale[0] == 2.0
    np.testing.assert_array_equal(image.data[1, 2], b[2])


@pytest.mark.parametrize("shape", [(3, 16, 16), (4, 16, 16), (2, 3, 16, 16), (3, 4, 16, 16)])
def test_labels_beyond_uint16_are_grey_pages_not_colour(tmp_path, shape):
    """More than 65535 ids: a plain uint32 TIFF with one grey page per plane. tifffile would
    otherwise store 3 or 4 slices as the samples of planar RGB(A) pages (Fiji: a colour
    image)."""
    labels = np.full(shape, 70_000, np.uint32)
    labels.flat[7] = 70_001
    path = io.write_labels_tiff(tmp_path / "many.tif", labels, unit="micrometer")
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == int(np.prod(shape[:-2]))
        assert {page.photometric for page in tif.pages} == {tifffile.PHOTOMETRIC.MINISBLACK}
        assert tif.pages[0].shape == shape[-2:] and tif.pages[0].dtype == np.uint32
    back = io.read_tiff(path, frames=len(shape) == 4)
    np.testing.assert_array_equal(np.asarray(back.data), labels)


@pytest.mark.parametrize("big_ids", [False, True])
def test_line_labels_are_written_plane_by_plane(tmp_path, monkeypatch, big_ids):
    """Labels found on lines of a time-lapse are written without the whole (T, Z, Y, X)
    array: the file equals the whole array's, and the peak memory stays near one line."""
    import tracemalloc

    from napari_sam.workflows.timelapse import LineLabels, TimelapseLine

    shape = (40, 20, 256, 256)  # 210 MB of uint32 if made whole
    rng = np.random.default_rng(0)
    through_t3 = rng.integers(0, 5, (20, 256, 256)).astype(np.uint32) * (70_000 if big_ids else 1)
    at_z7 = rng.integers(0, 5, (40, 256, 256)).astype(np.uint32)
    labels = LineLabels(shape)
    labels.add(TimelapseLine("z", 3), through_t3)
    labels.add(TimelapseLine("t", 7), at_z7)  # crosses the first line at (t=3, z=7): wins there
    expected = np.zeros(shape, np.uint32)
    expected[3] = through_t3
    expected[:, 7] = at_z7
    np.testing.assert_array_equal(np.asarray(labels), expected)

    def whole(*args, **kwargs):
        raise AssertionError("the whole label image was made")

    monkeypatch.setattr(LineLabels, "__array__", whole)
    tracemalloc.start()
    try:
        path = io.write_labels_tiff(tmp_path / "lines.tif", labels, scale=(60, 2, 0.5, 0.5),
                                    unit="micrometer")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, peak  # a plane at a time (0.25 MB each), not 210 MB
    back = io.read_tiff(path, frames=True)
    assert back.scale == (60.0, 2.0, 0.5, 0.5) and back.unit == "micrometer"
    data = np.asarray(back.data)
    assert data.dtype == (np.uint32 if big_ids else np.uint16)
    np.testing.assert_array_equal(data, expected)


def test_line_labels_check_the_line_shape():
    from napari_sam.workflows.timelapse import LineLabels, TimelapseLine

    labels = LineLabels((3, 5, 8, 8))
    with pytest.raises(ValueError, match=r"time point 1 should have shape \(5, 8, 8\)"):
        labels.add(TimelapseLine("z", 1), np.zeros((3, 8, 8), np.uint32))
    assert labels.max_id() == 0 and labels.plane(0, 0) is None
