"""Time-lapses of stacks ``(T, Z, Y, X)``: ``napari-sam segment`` and ``segment_planes``.

Two time points of three slices cut from the real nuclei stack (uint16), in an
ImageJ hyperstack with a frame interval, slice spacing and pixel size;
MobileSAM with seeded random weights made decisive (reference.perturb_*) and
relaxed thresholds, which gives several objects per plane that continue
through the slices. Each time point is segmented as the stack it is (slice
linking within the time point), with the whole file's contrast; ids stay
distinct across time points.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from bio_samples import sample
from dask_helpers import inprocess_client
from napari_sam import cli
from napari_sam.distributed import ModelSpec, run_batch
from napari_sam.runtime.loader import load
from napari_sam.workflows import io, zarr_io
from napari_sam.workflows.batch import Recipe, SegmentJob, model_identity, segment_file
from napari_sam.workflows.embeddings import default_contrast_limits
from napari_sam.workflows.planes import ImagePlanes
from napari_sam.workflows.segment import AutoSettings, segment
from napari_sam.workflows.segment_planes import segment_planes
from napari_sam.workflows.tables import object_table
from reference import save_decisive_vit_t

SETTINGS = AutoSettings(
    points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0,
    min_area=0, max_area_fraction=1.0, link_slices=True,
)  # fmt: skip
OPTIONS = [
    "--points-per-side", "3", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
    "--box-nms-thresh", "1", "--min-area", "0", "--max-area", "1", "--link-slices", "--quiet",
]  # fmt: skip
SCALE = (5.0, 2.0, 0.5, 0.5)  # frame interval (s), slice spacing, pixel size (um)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_decisive_vit_t(tmp_path_factory.mktemp("ckpt") / "vit_t_decisive.pth")


@pytest.fixture(scope="module")
def sam(checkpoint):
    return load("vit_t", checkpoint, device="cpu").sam


@pytest.fixture(scope="module")
def tzyx():
    nuclei = sample("nuclei.tif")
    return np.ascontiguousarray(
        np.stack([nuclei[28:31, 96:160, 96:160], nuclei[30:33, 100:164, 92:156]])
    )


@pytest.fixture
def tzyx_file(tmp_path, tzyx):
    path = tmp_path / "timelapse.tif"
    tifffile.imwrite(
        path, tzyx, imagej=True, resolution=(1 / SCALE[3], 1 / SCALE[2]),
        metadata={"axes": "TZYX", "spacing": SCALE[1], "finterval": SCALE[0], "unit": "um"},
    )  # fmt: skip
    return path


def _model(checkpoint):
    return ["--model", "vit_t", "--checkpoint", str(checkpoint), "--device", "cpu"]


def _ids(plane):
    return set(np.unique(plane).tolist()) - {0}


def test_each_time_point_is_its_own_linked_stack(sam, tzyx):
    result = segment_planes(sam, ImagePlanes(tzyx), settings=SETTINGS)
    labels = result.labels
    assert labels.shape == tzyx.shape and labels.dtype == np.uint32
    contrast = default_contrast_limits(tzyx)  # the whole file's, as napari shows it
    offset = 0
    for t in range(2):
        alone = segment(sam, tzyx[t], contrast_limits=contrast, settings=SETTINGS).labels
        assert alone.max() >= 5, "too few objects to compare"
        expected = np.where(alone > 0, alone + offset, 0)
        np.testing.assert_array_equal(labels[t], expected, err_msg=f"time point {t}")
        offset += int(alone.max())
    # linked through the slices of a time point, never from one time point to the next
    assert _ids(labels[0, 0]) & _ids(labels[0, 1])
    assert not (_ids(labels[0]) & _ids(labels[1]))
    # scores are keyed by the full (t, z) index under the final ids
    assert {lab for (_, lab) in result.scores} == _ids(labels)
    assert all(isinstance(where, tuple) and len(where) == 2 for (where, _) in result.scores)
    for (t, z), lab in result.scores:
        assert (labels[t, z] == lab).any()


def test_segment_a_timelapse_tiff_with_coco_table_and_rerun(
    sam, checkpoint, tzyx, tzyx_file, tmp_path, capsys
):
    out, coco, csv = tmp_path / "labels.tif", tmp_path / "c.json", tmp_path / "objects.csv"
    argv = ["segment", str(tzyx_file), "-o", str(out), "--coco", str(coco), "--table", str(csv),
            *_model(checkpoint), *OPTIONS]  # fmt: skip
    assert cli.main(argv) == 0
    stdout, err = capsys.readouterr()
    assert stdout.split() == [str(out), str(coco), str(csv)]
    assert "timelapse.tif:" in err and "in 2 time points of 3 slices" in err

    written = io.read_tiff(out, frames=True)
    assert written.scale == SCALE and written.unit == "micrometer"
    labels = np.asarray(written.data)
    expected = segment_planes(sam, ImagePlanes(tzyx), settings=SETTINGS)
    np.testing.assert_array_equal(labels, expected.labels)

    data = json.loads(coco.read_text())
    assert [(im["frame"], im["slice"]) for im in data["images"]] == [
        (t, z) for t in range(2) for z in range(3)
    ]
    assert {im["file_name"] for im in data["images"]} == {"timelapse.tif"}
    per_plane = [len(_ids(labels[t, z])) for t in range(2) for z in range(3)]
    counts = [sum(a["image_id"] == im["id"] for a in data["annotations"]) for im in data["images"]]
    assert counts == per_plane

    table = pd.read_csv(csv)
    assert set(table["image"]) == {"timelapse.tif"}
    assert len(table) == len(_ids(labels[0])) + len(_ids(labels[1]))
    mine = object_table(labels, scale=SCALE, unit="micrometer", intensity=tzyx)
    np.testing.assert_array_equal(table["t"], mine["t"])
    np.testing.assert_array_equal(table["label"], mine["index"])  # "index" in napari
    np.testing.assert_allclose(table["volume"], mine["volume"])
    np.testing.assert_allclose(table["mean_intensity"], mine["mean_intensity"])
    assert table["predicted_iou"].notna().all()

    # a rerun keeps the output and gives the same COCO file (the (t, z) planes from the manifest)
    first = coco.read_text()
    coco.unlink()
    argv = ["segment", str(tzyx_file), "-o", str(out), "--coco", str(coco),
            *_model(checkpoint), *OPTIONS]  # fmt: skip
    assert cli.main(argv) == 0
    assert "already segmented with these settings" in capsys.readouterr().err
    assert json.loads(coco.read_text()) == json.loads(first)


def test_zarr_output_on_a_cluster_equals_one_process(sam, checkpoint, tzyx_file, tmp_path):
    recipe = Recipe(SETTINGS, model=model_identity("vit_t", checkpoint))
    ref = segment_file(sam, SegmentJob(tzyx_file, tmp_path / "ref" / "labels.zarr"), recipe)
    assert ref.n_frames == 2 and ref.n_slices == 3
    job = SegmentJob(tzyx_file, tmp_path / "out" / "labels.zarr")
    with inprocess_client(dashboard=False) as client:
        report = run_batch(client, [job], ModelSpec("vit_t", str(checkpoint), "cpu"), recipe)
    (outcome,) = report.outcomes
    assert outcome.status == "done", outcome.reason
    assert (outcome.n_frames, outcome.n_slices, outcome.n_objects) == (2, 3, ref.n_objects)
    source = zarr_io.open_zarr_image(job.output)
    assert source.axes == "TZYX" and source.scale == dict(zip("TZYX", SCALE))
    expected = np.asarray(zarr_io.open_zarr_image(tmp_path / "ref" / "labels.zarr").data)
    assert expected.max() >= 10
    np.testing.assert_array_equal(np.asarray(source.data), expected)
    reread = io.read_image(job.output, frames=True)
    assert reread.scale == SCALE and reread.data.shape == expected.shape


def test_segment_a_stack_of_rgb_planes_in_one_process_and_on_a_cluster(
    sam, checkpoint, tzyx, tmp_path, capsys
):
    """A (Z, Y, X, RGB) TIFF: each slice segmented with its colours, linked through the
    slices; the table has one mean intensity per colour; a cluster gives the same labels."""
    top = float(tzyx.max())
    colours = np.stack([tzyx[0], tzyx[1], tzyx[0][::-1]], axis=-1)  # (3, 64, 64, 3)
    rgb = (255.0 * colours / top).astype(np.uint8)
    src, out, csv = tmp_path / "colour.tif", tmp_path / "labels.tif", tmp_path / "objects.csv"
    tifffile.imwrite(src, rgb, photometric="rgb")
    argv = ["segment", str(src), "-o", str(out), "--table", str(csv), *_model(checkpoint),
            *OPTIONS]  # fmt: skip
    assert cli.main(argv) == 0
    assert "colour.tif:" in capsys.readouterr().err
    labels = tifffile.imread(out)
    expected = segment(sam, rgb, rgb=True, settings=SETTINGS).labels
    assert labels.shape == rgb.shape[:3] and expected.max() >= 3
    np.testing.assert_array_equal(labels, expected)
    gray = segment(sam, rgb[..., 0], settings=SETTINGS).labels  # the colours matter
    assert not np.array_equal(gray, expected)
    table = pd.read_csv(csv)
    mine = object_table(expected, intensity=[rgb[..., i] for i in range(3)],
                        channel_names=["red", "green", "blue"])
    np.testing.assert_array_equal(table["label"], mine["index"])
    for colour in ("red", "green", "blue"):
        np.testing.assert_allclose(table[f"mean_intensity_{colour}"],
                                   mine[f"mean_intensity_{colour}"])

    recipe = Recipe(SETTINGS, model=model_identity("vit_t", checkpoint))
    job = SegmentJob(src, tmp_path / "cluster" / "labels.tif")
    with inprocess_client(dashboard=False) as client:
        report = run_batch(client, [job], ModelSpec("vit_t", str(checkpoint), "cpu"), recipe)
    (outcome,) = report.outcomes
    assert outcome.status == "done", outcome.reason
    np.testing.assert_array_equal(tifffile.imread(job.output), expected)


def test_timelapses_of_colour_planes_and_of_channels(
    sam, checkpoint, tzyx, tmp_path, capsys, monkeypatch
):
    """A time-lapse of colour stacks (T, Z, Y, X, RGB) and an ImageJ hyperstack of channels
    (T, Z, C, Y, X) with ``--channels 1 0``: each time point segmented as its stack, in
    what SAM sees of it; labels (T, Z, Y, X) with the file's scale; a cluster agrees."""
    top = float(tzyx.max())
    rgb = (255.0 * np.stack([tzyx, tzyx[:, ::-1], tzyx[..., ::-1]], -1) / top).astype(np.uint8)
    src, out = tmp_path / "colour_movie.tif", tmp_path / "colour_labels.tif"
    tifffile.imwrite(src, rgb, photometric="rgb")  # (2, 3, 64, 64, 3)
    assert cli.main(["segment", str(src), "-o", str(out), *_model(checkpoint), *OPTIONS]) == 0
    assert "in 2 time points of 3 slices" in capsys.readouterr().err
    expected = segment_planes(sam, ImagePlanes(rgb, rgb=True), settings=SETTINGS).labels
    assert expected.shape == tzyx.shape and expected.max() >= 5
    np.testing.assert_array_equal(tifffile.imread(out), expected)
    for t in range(2):  # each time point as the colour stack it is, ids continuing
        alone = segment(sam, rgb[t], rgb=True, settings=SETTINGS).labels
        np.testing.assert_array_equal(expected[t] > 0, alone > 0)

    tzcyx = np.stack([tzyx, tzyx[..., ::-1] // 2], axis=2)  # (T, Z, C=2, Y, X) uint16
    src, out = tmp_path / "channels_movie.tif", tmp_path / "channel_labels.tif"
    tifffile.imwrite(
        src, tzcyx, imagej=True, resolution=(1 / SCALE[3], 1 / SCALE[2]),
        metadata={"axes": "TZCYX", "spacing": SCALE[1], "finterval": SCALE[0], "unit": "um"},
    )  # fmt: skip
    # read as a large file is: lazily, channels first, one page per plane
    from napari_sam.workflows import batch

    monkeypatch.setattr(batch, "LAZY_BYTES", 0)
    read = batch.open_input(src, Recipe(SETTINGS, channels=(1, 0)))
    assert isinstance(read.data, zarr_io.LazyArray) and read.data.shape == (2, 2, 3, 64, 64)
    argv = ["segment", str(src), "-o", str(out), "--channels", "1", "0", *_model(checkpoint),
            *OPTIONS]  # fmt: skip
    assert cli.main(argv) == 0
    assert "in 2 time points of 3 slices" in capsys.readouterr().err
    ctzyx = np.moveaxis(tzcyx, 2, 0)
    planes = ImagePlanes(ctzyx, channel_axis=0, channels=(1, 0))
    expected = segment_planes(sam, planes, settings=SETTINGS).labels
    assert expected.shape == tzyx.shape and expected.max() >= 5
    written = io.read_tiff(out, frames=True)
    assert written.scale == SCALE
    np.testing.assert_array_equal(np.asarray(written.data), expected)
    recipe = Recipe(SETTINGS, model=model_identity("vit_t", checkpoint), channels=(1, 0))
    job = SegmentJob(src, tmp_path / "cluster" / "labels.tif")
    with inprocess_client(dashboard=False) as client:
        report = run_batch(client, [job], ModelSpec("vit_t", str(checkpoint), "cpu"), recipe)
    (outcome,) = report.outcomes
    assert outcome.status == "done", outcome.reason
    assert (outcome.n_frames, outcome.n_slices) == (2, 3)
    np.testing.assert_array_equal(tifffile.imread(job.output), expected)


def test_a_five_dimensional_file_is_refused_in_one_sentence(checkpoint, tmp_path, capsys):
    src = tmp_path / "five.npy"
    np.save(src, np.zeros((2, 2, 3, 16, 16), np.uint16))
    out = tmp_path / "labels.tif"
    argv = ["segment", str(src), "-o", str(out), *_model(checkpoint), "--quiet"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has 5 axes" in err[0] and "(T, Z, Y, X)" in err[0], err
    assert not out.exists()


def test_coco_of_a_timelapse_label_image_names_frame_and_slice():
    from napari_sam.workflows.coco import labels_to_coco

    labels = np.zeros((2, 2, 8, 8), np.uint32)
    labels[0, 1, 2:4, 2:5] = 1
    labels[1, 0, 5:8, 0:2] = 2
    data = labels_to_coco(labels, "movie.tif", scores={((1, 0), 2): {"predicted_iou": 0.9}})
    assert [(im["frame"], im["slice"]) for im in data["images"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    first, second = data["annotations"]
    assert (first["image_id"], first["label"], first["area"]) == (2, 1, 6)
    assert (second["image_id"], second["label"], second["predicted_iou"]) == (3, 2, 0.9)


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_labels_larger_than_the_spill_size_are_made_on_disk_with_the_same_output(
    sam, checkpoint, tzyx, tzyx_file, tmp_path, capsys, monkeypatch, suffix
):
    """Over ``spill.SPILL_BYTES`` (here 0) the time-lapse's labels are written into a
    memory-mapped file beside the output, never all in memory; the output, COCO file,
    object table and object count are those of labels made in memory, and the file is
    gone afterwards."""
    from napari_sam.workflows import segment_planes as module
    from napari_sam.workflows import spill

    expected = segment_planes(sam, ImagePlanes(tzyx), settings=SETTINGS)
    assert expected.labels.max() >= 10
    monkeypatch.setattr(spill, "SPILL_BYTES", 0)
    given = []

    def spying(*args, **kwargs):
        given.append(kwargs.get("out"))
        return segment_planes(*args, **kwargs)

    monkeypatch.setattr(module, "segment_planes", spying)
    folder = tmp_path / "out"
    out, coco, csv = folder / f"labels{suffix}", tmp_path / "c.json", tmp_path / "objects.csv"
    argv = ["segment", str(tzyx_file), "-o", str(out), "--coco", str(coco), "--table", str(csv),
            *_model(checkpoint), *OPTIONS]  # fmt: skip
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    n = len(_ids(expected.labels))
    assert f"timelapse.tif: {n} objects" in err
    assert len(given) == 1 and isinstance(given[0], np.memmap)
    assert given[0].shape == tzyx.shape and given[0].dtype == np.uint32
    written = np.asarray(io.read_image(out, frames=True).data)
    np.testing.assert_array_equal(written, expected.labels)
    # nothing left beside it but the resume records
    assert sorted(p.name for p in folder.iterdir()) == [".napari-sam", out.name]
    data = json.loads(coco.read_text())
    assert len(data["annotations"]) == sum(
        len(_ids(expected.labels[t, z])) for t in range(2) for z in range(3)
    )
    # the table is measured on the labels on disk, before they are removed
    table = pd.read_csv(csv)
    mine = object_table(expected.labels, scale=SCALE, unit="micrometer", intensity=tzyx)
    np.testing.assert_array_equal(table["label"], mine["index"])
    np.testing.assert_allclose(table["volume"], mine["volume"])


def test_labels_on_disk_reserve_their_space_and_say_when_there_is_none(tmp_path, monkeypatch):
    import errno
    import os

    from napari_sam.errors import OutputFileError
    from napari_sam.workflows import spill

    near = tmp_path / "labels.tif"
    with spill.labels_on_disk((2, 3, 8, 8), near) as small:
        assert small is None  # 1.5 KiB belong in memory
    monkeypatch.setattr(spill, "SPILL_BYTES", 1000)
    with spill.labels_on_disk((2, 3, 8, 8), near) as big:
        assert isinstance(big, np.memmap) and big.dtype == np.uint32 and big.shape == (2, 3, 8, 8)
        assert not big.any()
        (folder,) = tmp_path.iterdir()
        assert folder.name.startswith(".labels.tif.") and folder.is_dir()
        big[1, 2] = 7
        assert int(np.asarray(big).sum()) == 7 * 64
        del big
    assert list(tmp_path.iterdir()) == []

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(OutputFileError, match="There is no room for the labels"):
        with spill.labels_on_disk((2, 3, 8, 8), near):
            pass
    assert list(tmp_path.iterdir()) == []


def test_a_stack_over_the_spill_size_is_linked_on_disk_as_in_memory(
    sam, checkpoint, tzyx, tmp_path, capsys, monkeypatch
):
    """A plain stack (Z, Y, X) too: its labels are assembled and linked through the slices in
    the memory-mapped file, one slice at a time, and written as the in-memory ones."""
    from napari_sam.workflows import segment as segment_module
    from napari_sam.workflows import spill

    stack = tzyx[0]
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, stack, imagej=True, metadata={"axes": "ZYX"})
    expected = segment(sam, stack, settings=SETTINGS)
    assert expected.labels.max() >= 5 and _ids(expected.labels[0]) & _ids(expected.labels[1])
    monkeypatch.setattr(spill, "SPILL_BYTES", 0)
    given = []
    real = segment_module.segment_iter

    def spying(*args, **kwargs):
        given.append(kwargs.get("out"))
        return real(*args, **kwargs)

    monkeypatch.setattr(segment_module, "segment_iter", spying)
    out = tmp_path / "out" / "labels.tif"
    assert cli.main(["segment", str(src), "-o", str(out), *_model(checkpoint), *OPTIONS]) == 0
    assert f"stack.tif: {len(_ids(expected.labels))} objects" in capsys.readouterr().err
    assert len(given) == 1 and isinstance(given[0], np.memmap)
    np.testing.assert_array_equal(tifffile.imread(out), expected.labels)
    assert sorted(p.name for p in out.parent.iterdir()) == [".napari-sam", out.name]


def test_linking_in_place_equals_linking_into_a_new_array():
    from napari_sam.workflows.segment import link_slices

    rng = np.random.default_rng(3)
    labels = np.zeros((4, 32, 32), np.uint32)
    for z in (0, 1, 3):  # slice 2 is not segmented
        for k in range(1, 6):
            r, c = rng.integers(0, 24, 2)
            labels[z, r : r + 8, c : c + 8] = k
    labels[1] = labels[0]  # objects that continue
    fresh, mapping = link_slices(labels, 0.3, slices=[0, 1, 3])
    inplace = labels.copy()
    same, mapping2 = link_slices(inplace, 0.3, slices=[0, 1, 3], out=inplace)
    assert same is inplace and mapping2 == mapping
    np.testing.assert_array_equal(inplace, fresh)
    assert _ids(fresh[0]) == _ids(fresh[1]) and not fresh[2].any()
