"""``napari-sam segment`` on folders, in one process: PNG/JPEG/BMP inputs, the end summary of
skipped and failed inputs, a created output folder, resuming, zarr in and out."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from napari_sam import cli, sam_model_registry
from napari_sam.workflows import io
from napari_sam.workflows.samples import make_nuclei_2d, make_nuclei_3d

RELAXED = [
    "--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
    "--min-area", "0", "--max-area", "1", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def model_args(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "vit_t_random.pth"
    torch.save(sam_model_registry["vit_t"]().state_dict(), path)
    return ["--model", "vit_t", "--checkpoint", str(path), "--device", "cpu"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _gray8():
    plane = make_nuclei_2d()[40:104, 60:140]
    return (plane / plane.max() * 255).astype(np.uint8)


def test_png_jpeg_bmp_folder_lists_what_it_skips(tmp_path, capsys, model_args):
    folder = tmp_path / "images"
    folder.mkdir()
    g = _gray8()
    Image.fromarray(np.stack([g, g // 2, 255 - g], axis=-1)).save(folder / "he.jpg")
    Image.fromarray(g).save(folder / "cells.png")
    Image.fromarray(g).save(folder / "old.bmp")
    (folder / "notes.txt").write_text("not an image")
    (folder / "raw").mkdir()
    out_dir = tmp_path / "new" / "labels"
    argv = ["segment", str(folder), "-o", str(out_dir), *model_args, *RELAXED]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    names = ["cells_labels.tif", "he_labels.tif", "old_labels.tif"]
    assert out.split() == [str(out_dir / n) for n in names]
    for name in names:
        assert io.read_image(out_dir / name).data.shape == g.shape
    lines = err.strip().splitlines()
    # the first output line says that the output folder was created, once
    assert f"created the folder {out_dir}" in lines[0]
    assert sum("created the folder" in line for line in lines) == 1
    assert lines[-3] == "napari-sam: 3 inputs: 3 segmented, 2 skipped."
    assert lines[-2] == (
        f"  skipped: {folder / 'notes.txt'}: not an image napari-sam reads (.txt); it reads "
        ".tif, .tiff, .png, .jpg, .jpeg, .bmp, .npy files and .zarr folders."
    )
    assert lines[-1] == (
        f"  skipped: {folder / 'raw'}: a folder (folders inside an input folder are not "
        "searched)."
    )


def test_failed_and_skipped_in_one_summary(tmp_path, capsys, model_args):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(_gray8()).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"broken")
    (folder / "c.csv").write_text("1,2")
    code, out, err = run(["segment", str(folder), "-o", str(tmp_path / "o"), *model_args, *RELAXED],
                         capsys)  # fmt: skip
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[-4:] == [
        "napari-sam: 2 inputs: 1 segmented, 1 failed, 1 skipped.",
        f"  failed:  {folder / 'b.png'}: b.png cannot be read as a PNG image "
        f"(UnidentifiedImageError: cannot identify image file '{folder / 'b.png'}').",
        f"  skipped: {folder / 'c.csv'}: not an image napari-sam reads (.csv); it reads "
        ".tif, .tiff, .png, .jpg, .jpeg, .bmp, .npy files and .zarr folders.",
        "napari-sam: error: 1 of 2 inputs could not be segmented: b.png.",
    ]
    assert out.split() == [str(tmp_path / "o" / "a_labels.tif")]


def test_existing_folder_is_not_announced(tmp_path, capsys, model_args):
    src = tmp_path / "cells.png"
    Image.fromarray(_gray8()).save(src)
    code, _, err = run(["segment", str(src), "-o", str(tmp_path / "x.tif"), *model_args,
                        *RELAXED], capsys)  # fmt: skip
    assert code == 0 and "created the folder" not in err
    code, _, err = run(["segment", str(src), "-o", str(tmp_path / "sub" / "x.tif"),
                        *model_args, *RELAXED], capsys)  # fmt: skip
    assert code == 0 and f"created the folder {tmp_path / 'sub'})" in err


def test_rerun_keeps_finished_outputs_unless_settings_change(tmp_path, capsys, model_args):
    folder = tmp_path / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", _gray8())
    Image.fromarray(_gray8()[:, ::-1].copy()).save(folder / "b.png")
    out_dir = tmp_path / "labels"
    argv = ["segment", str(folder), "-o", str(out_dir), *model_args, *RELAXED]
    assert run(argv, capsys)[0] == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out_dir.glob("*.tif")}
    code, out, err = run(argv, capsys)
    assert code == 0
    assert out.split() == [str(out_dir / "a_labels.tif"), str(out_dir / "b_labels.tif")]
    assert err.count("already segmented with these settings") == 2
    assert "2 inputs: 0 segmented, 2 kept from an earlier run." in err
    assert {p.name: p.stat().st_mtime_ns for p in out_dir.glob("*.tif")} == stamps
    # a changed input, a changed setting, or --force: segmented again
    os.utime(folder / "a.tif", ns=(1, 1))
    code, _, err = run(argv, capsys)
    assert code == 0 and "1 segmented, 1 kept" in err
    code, _, err = run([*argv, "--min-area", "1"], capsys)
    assert code == 0 and "2 segmented" in err
    code, _, err = run([*argv, "--min-area", "1", "--force"], capsys)
    assert code == 0 and "2 segmented" in err


def test_zarr_volume_in_zarr_out(tmp_path, capsys, model_args):
    stack = make_nuclei_3d()[12:14, 40:104, 16:96]
    src = tmp_path / "volume.ome.zarr"
    io.write_labels(src, stack.astype(np.uint32), scale=(1.5, 0.25, 0.25), unit="micrometer")
    out_dir = tmp_path / "out"
    code, out, err = run(["segment", str(src), "-o", f"{out_dir}/", *model_args, *RELAXED,
                          "--link-slices"], capsys)  # fmt: skip
    assert code == 0, err
    dst = out_dir / "volume_labels.zarr"
    assert out.split() == [str(dst)]
    labels = io.read_image(dst)
    assert labels.data.shape == stack.shape and labels.scale == (1.5, 0.25, 0.25)
    assert np.asarray(labels.data).max() >= 1
    # -o NAME.zarr for one input; a TIFF input can go to zarr too
    tif = tmp_path / "plane.tif"
    tifffile.imwrite(tif, _gray8())
    code, out, _ = run(["segment", str(tif), "-o", str(tmp_path / "p.zarr"), *model_args,
                        *RELAXED], capsys)  # fmt: skip
    assert code == 0 and out.split() == [str(tmp_path / "p.zarr")]
    assert io.read_image(tmp_path / "p.zarr").data.shape == _gray8().shape
    assert not any(p.name.endswith(".part") for p in Path(tmp_path).iterdir())
