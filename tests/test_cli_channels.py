"""``napari-sam segment --channels ... --contrast ... --table ...`` (cli.segment_channels).

Two-channel TIFFs cut from the real nuclei sample (uint16); MobileSAM with
random weights from a local file (relaxed thresholds so that masks appear);
nothing is downloaded. The labels equal the library's
:func:`segment_planes` on the same channels, and the CSV equals scikit-image
measurements of the written label file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from skimage.measure import regionprops_table

from bio_samples import sample
from napari_sam import cli, sam_model_registry
from napari_sam.workflows.io import read_tiff
from napari_sam.workflows.planes import ImagePlanes
from napari_sam.workflows.segment import AutoSettings
from napari_sam.workflows.segment_planes import segment_planes

RELAXED = [
    "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
    "--min-area", "0", "--max-area", "1", "--quiet",
]  # fmt: skip
SETTINGS = AutoSettings(
    points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0, min_area=0,
    max_area_fraction=1,
)  # fmt: skip
CONTRAST = [(100.0, 30000.0), (0.0, 20000.0)]


@pytest.fixture(scope="module")
def vit_t(tmp_path_factory):
    torch.manual_seed(0)
    model = sam_model_registry["vit_t"]()
    path = tmp_path_factory.mktemp("ckpt") / "vit_t_random.pth"
    torch.save(model.state_dict(), path)
    return path, sam_model_registry["vit_t"](checkpoint=str(path)).eval()


@pytest.fixture
def model_args(vit_t, monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    # fp32: compared with the library's float32 model ("auto" is bf16 on CPUs with bf16 units)
    return ["--model", "vit_t", "--checkpoint", str(vit_t[0]), "--device", "cpu",
            "--precision", "fp32"]


@pytest.fixture(scope="module")
def cyx():
    nuclei = np.asarray(sample("nuclei.tif"))
    return np.ascontiguousarray(np.stack([nuclei[30], nuclei[31]])[:, 60:124, 40:120])


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_two_channels_with_their_contrasts_and_a_table(tmp_path, capsys, model_args, vit_t, cyx):
    src = tmp_path / "cells.tif"
    tifffile.imwrite(src, cyx, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "CYX", "unit": "um"})  # fmt: skip
    dst, csv = tmp_path / "cells_labels.tif", tmp_path / "objects.csv"
    argv = ["segment", str(src), "-o", str(dst), "--channels", "1", "0",
            "--contrast", "100", "30000", "0", "20000", "--table", str(csv)]  # fmt: skip
    code, out, err = run([*argv, *model_args, *RELAXED], capsys)
    assert code == 0, err
    assert out.split() == [str(dst), str(csv)]
    labels = read_tiff(dst)
    assert labels.data.shape == (64, 80) and labels.data.max() >= 1
    # the same as the library on the same channels (channel 1 red, channel 0 green)
    planes = ImagePlanes(cyx, channel_axis=0, channels=[1, 0], contrast=CONTRAST)
    expected = segment_planes(vit_t[1], planes, settings=SETTINGS)
    np.testing.assert_array_equal(labels.data, expected.labels)

    table = pd.read_csv(csv)
    ref = regionprops_table(
        labels.data, intensity_image=np.moveaxis(cyx, 0, -1), spacing=labels.scale,
        properties=["label", "area", "centroid", "intensity_mean"],
    )  # fmt: skip
    assert (table["image"] == "cells.tif").all() and (table["method"] == "automatic").all()
    np.testing.assert_array_equal(table["label"], ref["label"])
    np.testing.assert_allclose(table["area"], ref["area"])
    np.testing.assert_allclose(table["centroid_x"], ref["centroid-1"])
    np.testing.assert_allclose(table["mean_intensity_ch0"], ref["intensity_mean-0"])
    np.testing.assert_allclose(table["mean_intensity_ch1"], ref["intensity_mean-1"])
    assert table["predicted_iou"].notna().all() and (table["unit"] == "micrometer").all()


def test_channel_stack_linked(tmp_path, capsys, model_args):
    nuclei = np.asarray(sample("nuclei.tif"))
    czyx = np.ascontiguousarray(np.stack([nuclei[29:32], nuclei[32:35]])[:, :, 60:124, 40:120])
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, np.moveaxis(czyx, 0, 1), imagej=True,
                     metadata={"axes": "ZCYX", "spacing": 2.0})  # fmt: skip
    dst = tmp_path / "stack_labels.tif"
    argv = ["segment", str(src), "-o", str(dst), "--channels", "0", "--link-slices"]
    code, _, err = run([*argv, *model_args, *RELAXED], capsys)
    assert code == 0, err
    labels = read_tiff(dst)
    assert labels.data.shape == (3, 64, 80) and labels.scale[0] == pytest.approx(2.0)
    assert labels.data.max() >= 1
    # linked: ids are numbered in order of first appearance, so slice 0 holds 1..n
    first = np.unique(labels.data[0])
    np.testing.assert_array_equal(first[first > 0], np.arange(1, len(first[first > 0]) + 1))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--channels", "0", "5"], "cells.tif: Channel 5 does not exist: the image has 2 channels"),
        (["--channels", "0", "1", "--contrast", "1", "2"], "one LOW HIGH pair per chosen channel"),
        (["--contrast", "5", "1"], "two finite numbers LOW <= HIGH, got 5 1"),
        (["--channels", "0", "1", "0", "1"], "1 to 3 channels"),
        (["--table", "objects.txt"], "must be a .csv file name"),
    ],
)
def test_bad_channel_options_fail_in_one_sentence_and_write_nothing(
    tmp_path, capsys, model_args, cyx, extra, message
):
    src = tmp_path / "cells.tif"
    tifffile.imwrite(src, cyx, imagej=True, metadata={"axes": "CYX"})
    dst = tmp_path / "out.tif"
    code, _, err = run(["segment", str(src), "-o", str(dst), *extra, *model_args], capsys)
    assert code == 1
    assert message in err and "Traceback" not in err
    assert not dst.exists()


def test_channels_with_a_tile_shape_are_tiled(tmp_path, capsys, model_args, vit_t, cyx):
    """--tile-shape reaches the channel path: the labels are those of the tiled library run."""
    from napari_sam.workflows.tiling import Tiling

    src = tmp_path / "cells.tif"
    tifffile.imwrite(src, cyx, imagej=True, metadata={"axes": "CYX"})
    dst = tmp_path / "tiled.tif"
    argv = ["segment", str(src), "-o", str(dst), "--channels", "0", "1",
            "--tile-shape", "64", "64", "--halo", "16", "16"]  # fmt: skip
    code, _, err = run([*argv, *model_args, *RELAXED], capsys)
    assert code == 0, err
    planes = ImagePlanes(cyx, channel_axis=0, channels=[0, 1])
    tiled = segment_planes(vit_t[1], planes, settings=SETTINGS,
                           tiling=Tiling.on((64, 64), (16, 16)))  # fmt: skip
    untiled = segment_planes(vit_t[1], planes, settings=SETTINGS)
    assert not np.array_equal(tiled.labels, untiled.labels)
    np.testing.assert_array_equal(read_tiff(dst).data, tiled.labels)


def test_channels_saved_one_per_file(tmp_path, capsys, model_args):
    """--with: a z-stack's channels saved one per file segment as --channels of the one
    multichannel file (INPUT channel 0, the files 1, 2), in one process and on a cluster;
    the table has one intensity per file; mistakes are one sentence."""
    from dask_helpers import inprocess_client
    from napari_sam.distributed import ModelSpec, run_batch
    from napari_sam.workflows.batch import Recipe, SegmentJob

    nuclei = np.asarray(sample("nuclei.tif"))
    czyx = np.ascontiguousarray(np.stack([nuclei[29:32], nuclei[32:35]])[:, :, 60:124, 40:120])
    one = tmp_path / "cells.tif"
    tifffile.imwrite(one, czyx, photometric="minisblack")
    files = [tmp_path / "C1-cells.tif", tmp_path / "C2-cells.tif"]
    for f, channel in zip(files, czyx[::-1]):  # C1 is channel 1, C2 channel 0
        tifffile.imwrite(f, channel, imagej=True, metadata={"axes": "ZYX", "spacing": 2.0})
    options = ["--contrast", "0", "30000", "100", "20000", "--link-slices", *model_args,
               *RELAXED]  # fmt: skip
    code, _, err = run(["segment", str(one), "-o", str(tmp_path / "one.tif"), "--channels",
                        "1", "0", *options], capsys)  # fmt: skip
    assert code == 0, err
    table = tmp_path / "objects.csv"
    code, _, err = run(["segment", str(files[0]), "--with", str(files[1]), "-o",
                        str(tmp_path / "split.tif"), "--table", str(table), *options], capsys)
    assert code == 0, err
    split = read_tiff(tmp_path / "split.tif")
    expected = read_tiff(tmp_path / "one.tif").data
    assert expected.max() >= 1 and split.scale[0] == pytest.approx(2.0)
    np.testing.assert_array_equal(split.data, expected)
    columns = pd.read_csv(table).columns
    assert {"mean_intensity_C1-cells", "mean_intensity_C2-cells"} <= set(columns)

    import argparse

    from napari_sam.cli.segment_channels import check_options

    args = argparse.Namespace(channels=None, with_files=[str(files[1])],
                              contrast=[0, 30000, 100, 20000], table=None)  # fmt: skip
    extra = check_options(args)
    recipe = Recipe(SETTINGS.__class__(**{**SETTINGS.as_dict(), "link_slices": True}),
                    model=f"vit_t:file:{model_args[3]}", channels=extra.channels,
                    channel_contrast=extra.contrast, others=extra.others, precision="fp32")
    job = SegmentJob(files[0], tmp_path / "cluster" / "labels.tif")
    with inprocess_client(dashboard=False) as client:
        report = run_batch(client, [job], ModelSpec("vit_t", model_args[3], "cpu", "fp32"),
                           recipe)
    (outcome,) = report.outcomes
    assert outcome.status == "done", outcome.reason
    np.testing.assert_array_equal(tifffile.imread(job.output), expected)

    for extra_args, message in [
        ([str(files[0]), "--with", str(tmp_path / "small.tif")], "has shape"),
        ([str(files[0]), str(one), "--with", str(files[1])], "one file per INPUT"),
        ([str(files[0]), "--with", str(files[1]), "--channels", "0"], "either --channels"),
    ]:
        tifffile.imwrite(tmp_path / "small.tif", czyx[0, :, :10], photometric="minisblack")
        (tmp_path / "out").mkdir(exist_ok=True)
        code, _, err = run(["segment", *extra_args, "-o", str(tmp_path / "out"), *model_args,
                            *RELAXED], capsys)  # fmt: skip
        assert code == 1 and message in err and "\n" not in err.strip(), err
    assert not any((tmp_path / "out").iterdir())


def test_several_inputs_each_with_its_channel_files(tmp_path, capsys, model_args):
    """C1-*.tif --with C2-*.tif: each INPUT is paired with its channel file by position, is
    segmented as it is alone (in one process and on a cluster), is kept on a re-run and
    segmented again when its own channel file changes; mistakes are one sentence."""
    import argparse
    import os

    from dask_helpers import inprocess_client
    from napari_sam.cli.segment_channels import check_options
    from napari_sam.distributed import ModelSpec, run_batch
    from napari_sam.workflows.batch import Recipe, SegmentJob

    nuclei = np.asarray(sample("nuclei.tif"))
    red, green = {}, {}
    for name, z in (("a", 30), ("b", 40)):
        red[name], green[name] = tmp_path / f"C1-{name}.tif", tmp_path / f"C2-{name}.tif"
        tifffile.imwrite(red[name], nuclei[z, 60:124, 40:120])
        tifffile.imwrite(green[name], nuclei[z + 3, 60:124, 40:120])
    options = ["--contrast", "0", "30000", "100", "20000", *model_args, *RELAXED[:-1]]
    alone = {}
    for name in "ab":
        alone[name] = tmp_path / f"alone-{name}.tif"
        code, _, err = run(["segment", str(red[name]), "--with", str(green[name]), "-o",
                            str(alone[name]), *options], capsys)  # fmt: skip
        assert code == 0, err
    assert read_tiff(alone["a"]).data.max() >= 1
    assert not np.array_equal(read_tiff(alone["a"]).data, read_tiff(alone["b"]).data)

    out = tmp_path / "out"
    argv = ["segment", str(red["a"]), str(red["b"]), "--with", str(green["a"]),
            str(green["b"]), "-o", str(out), *options]  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == 0, err
    for name in "ab":
        assert f"C1-{name}.tif (with C2-{name}.tif): " in err
        np.testing.assert_array_equal(read_tiff(out / f"C1-{name}_labels.tif").data,
                                      read_tiff(alone[name]).data)
    code, _, err = run(argv, capsys)  # nothing changed: both kept
    assert code == 0 and err.count("already segmented with these settings") == 2, err
    stamp = green["b"].stat()
    os.utime(green["b"], ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    code, _, err = run(argv, capsys)  # b's channel file changed: b only
    assert code == 0, err
    assert "C1-a.tif: already segmented" in err and "C1-b.tif (with C2-b.tif): " in err

    args = argparse.Namespace(inputs=[str(red["a"]), str(red["b"])], channels=None,
                              with_files=[str(green["a"]), str(green["b"])],
                              contrast=[0, 30000, 100, 20000], table=None)  # fmt: skip
    extra = check_options(args)
    assert extra.others is None and extra.channels == (0, 1)
    recipe = Recipe(SETTINGS, model=f"vit_t:file:{model_args[3]}", channels=extra.channels,
                    channel_contrast=extra.contrast, others_by_input=extra.others_by_input,
                    precision="fp32")  # fmt: skip
    jobs = [SegmentJob(red[n], tmp_path / "cluster" / f"{n}.tif") for n in "ab"]
    with inprocess_client(dashboard=False) as client:
        report = run_batch(client, jobs, ModelSpec("vit_t", model_args[3], "cpu", "fp32"),
                           recipe)
    assert [o.status for o in report.outcomes] == ["done", "done"], report.outcomes
    for name, job in zip("ab", jobs):
        np.testing.assert_array_equal(tifffile.imread(job.output), read_tiff(alone[name]).data)

    for bad, message in [
        ([str(red["a"]), str(red["b"]), "--with", str(green["a"]), str(green["b"]),
          str(green["a"])], "(2 or 4 files), got 3"),
        ([str(tmp_path), "--with", str(green["a"])], "is a folder"),
        ([str(red["a"]), str(red["a"]), "--with", str(green["a"]), str(green["b"])],
         "given twice"),
    ]:
        code, _, err = run(["segment", *bad, "-o", str(tmp_path / "bad"), *model_args,
                            *RELAXED], capsys)  # fmt: skip
        assert code == 1 and message in err and "\n" not in err.strip(), err
    assert not (tmp_path / "bad").exists()
