"""``napari-sam segment``: TIFF in, label TIFF (and COCO JSON) out; bad input fails cleanly.

The model is MobileSAM (vit_t) with random weights saved to a local checkpoint;
random weights give noise masks, so the thresholds are relaxed until masks
appear. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from pycocotools import mask as mask_utils

from napari_sam import cli
from napari_sam.workflows.io import read_tiff
from napari_sam.workflows.samples import make_nuclei_2d, make_nuclei_3d

SRC = Path(__file__).resolve().parents[1] / "src"
RELAXED = [
    "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
    "--min-area", "0", "--max-area", "1", "--quiet",
]  # fmt: skip


@pytest.fixture
def model_args(vit_t_checkpoint):
    return ["--model", "vit_t", "--checkpoint", str(vit_t_checkpoint), "--device", "cpu"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))


def write_2d(path, rgb=False):
    plane = make_nuclei_2d()[40:104, 60:140]  # (64, 80) uint16
    if rgb:
        g = (plane / plane.max() * 255).astype(np.uint8)
        tifffile.imwrite(path, np.stack([g, g // 2, 255 - g], axis=-1), photometric="rgb")
    else:
        tifffile.imwrite(path, plane, resolution=(2.0, 2.0), imagej=True, metadata={"unit": "um"})
    return plane


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def files_in(folder):
    """The entries of a folder, besides napari-sam's resume records (``.napari-sam/``)."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name != ".napari-sam")


# --------------------------------------------------------------------------- it works
def test_2d_tiff(tmp_path, capsys, model_args):
    src = tmp_path / "cells.tif"
    plane = write_2d(src)
    dst = tmp_path / "cells_labels.tif"
    code, out, err = run(["segment", str(src), "-o", str(dst), *model_args, *RELAXED], capsys)
    assert code == 0, err
    assert out.strip() == str(dst)
    assert "cells.tif:" in err and "object" in err
    labels = read_tiff(dst)
    assert labels.data.shape == plane.shape and labels.data.dtype.kind == "u"
    assert labels.data.max() >= 1
    assert labels.scale == pytest.approx((0.5, 0.5)) and labels.unit == "micrometer"
    assert files_in(tmp_path) == ["cells.tif", "cells_labels.tif"]


def test_3d_stack_linked_with_coco(tmp_path, capsys, model_args):
    stack = np.ascontiguousarray(make_nuclei_3d()[12:15, 40:104, 16:96])
    src = tmp_path / "stack.tif"
    tifffile.imwrite(
        src,
        stack,
        imagej=True,
        resolution=(4.0, 4.0),
        metadata={"axes": "ZYX", "spacing": 1.5, "unit": "micron"},
    )
    dst, coco = tmp_path / "out" / "stack_labels.tif", tmp_path / "stack.json"
    argv = ["segment", str(src), "-o", str(dst), "--link-slices", "--coco", str(coco)]
    code, out, err = run([*argv, *model_args, *RELAXED], capsys)
    assert code == 0, err
    assert out.split() == [str(dst), str(coco)]
    labels = read_tiff(dst)
    assert labels.data.shape == stack.shape and labels.data.dtype.kind == "u"
    assert labels.data.max() >= 1
    assert labels.scale == pytest.approx((1.5, 0.25, 0.25))
    # the COCO file holds one image per slice and decodes to the label masks
    data = json.loads(coco.read_text())
    assert [im["slice"] for im in data["images"]] == [0, 1, 2]
    assert {im["file_name"] for im in data["images"]} == {"stack.tif"}
    assert len(data["annotations"]) == sum(len(np.unique(p)) - 1 for p in labels.data)
    for ann in data["annotations"]:
        z = data["images"][ann["image_id"] - 1]["slice"]
        np.testing.assert_array_equal(
            mask_utils.decode(ann["segmentation"]).astype(bool), labels.data[z] == ann["label"]
        )
        assert 0 <= ann["predicted_iou"] and "stability_score" in ann


def test_folder_to_folder_reports_a_bad_file_and_goes_on(tmp_path, capsys, model_args):
    folder = tmp_path / "images"
    folder.mkdir()
    write_2d(folder / "a_rgb.tif", rgb=True)
    (folder / "b_broken.tif").write_bytes(b"this is no tiff")
    (folder / "notes.txt").write_text("ignored")
    out_dir = tmp_path / "labels"
    argv = ["segment", str(folder), "-o", str(out_dir), *model_args, *RELAXED]
    code, out, err = run(argv, capsys)
    assert code == 1
    assert out.split() == [str(out_dir / "a_rgb_labels.tif")]
    assert files_in(out_dir) == ["a_rgb_labels.tif"]
    assert read_tiff(out_dir / "a_rgb_labels.tif").data.shape == (64, 80)
    assert "b_broken.tif cannot be read as a TIFF" in err
    assert err.strip().splitlines()[-1] == (
        "napari-sam: error: 1 of 2 inputs could not be segmented: b_broken.tif."
    )
    assert "Traceback" not in err


# --------------------------------------------------------------------------- bad input
def _bad_inputs(tmp_path, checkpoint):
    """name -> (argv, expected message part); each fails and writes nothing."""
    good = tmp_path / "good.tif"
    write_2d(good)
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"\x00" * 100)
    five_d = tmp_path / "five_d.tif"  # (T, Z, Y, X) is segmented; 5 axes are too many
    tifffile.imwrite(five_d, np.zeros((2, 2, 3, 16, 16), np.uint16), metadata={"axes": "TQZYX"})
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(checkpoint.read_bytes()[:100_000])
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = str(tmp_path / "out" / "labels.tif")
    vit_t = ["--model", "vit_t", "--checkpoint", str(checkpoint)]
    return {
        "missing input": (
            [str(tmp_path / "nope.tif"), "-o", out, *vit_t],
            "nope.tif does not exist",
        ),
        "unreadable input": ([str(junk), "-o", out, *vit_t], "cannot be read as a TIFF file"),
        "unsupported shape": ([str(five_d), "-o", out, *vit_t], "has 5 axes"),
        "corrupt checkpoint": (
            [str(good), "-o", out, "--model", "vit_t", "--checkpoint", str(truncated)],
            "could not be read; it is probably incomplete",
        ),
        "checkpoint of another model": (
            [str(good), "-o", out, "--model", "vit_b", "--checkpoint", str(checkpoint)],
            "holds a 'vit_t' model, not 'vit_b'",
        ),
        "missing checkpoint": (
            [str(good), "-o", out, "--model", "vit_t", "--checkpoint", str(tmp_path / "x.pth")],
            "does not exist",
        ),
        "unwritable output": (
            [str(good), "-o", str(blocker / "labels.tif"), *vit_t],
            "is not writable",
        ),
        "output not a tif": ([str(good), "-o", str(tmp_path / "out.png"), *vit_t], ".tif file"),
        "output is the input": ([str(good), "-o", str(good), *vit_t], "is the input file"),
        "coco is a folder": (
            [str(good), "-o", out, "--coco", str(tmp_path), *vit_t],
            "is a folder",
        ),
        "bad threshold": (
            [str(good), "-o", out, "--pred-iou-thresh", "1.5", *vit_t],
            "predicted-IoU threshold must be a number from 0 to 1",
        ),
        "bad contrast": ([str(good), "-o", out, "--contrast", "5", "1", *vit_t], "LOW <= HIGH"),
    }


BAD = [
    "missing input", "unreadable input", "unsupported shape", "corrupt checkpoint",
    "checkpoint of another model", "missing checkpoint", "unwritable output",
    "output not a tif", "output is the input", "coco is a folder", "bad threshold",
    "bad contrast",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_bad_input_fails_cleanly(tmp_path, capsys, vit_t_checkpoint, case):
    argv, message = _bad_inputs(tmp_path, vit_t_checkpoint)[case]
    before = files_in(tmp_path)
    code, out, err = run(["segment", *argv, "--quiet"], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("napari-sam: error: ") and message in lines[0]
    assert "Traceback" not in err and out == ""
    assert files_in(tmp_path) == before  # no output, no temporary file
    assert not (tmp_path / "out").exists() or files_in(tmp_path / "out") == []


def test_debug_shows_the_traceback(tmp_path, capsys):
    code, _, err = run(
        ["segment", str(tmp_path / "nope.tif"), "-o", str(tmp_path / "x.tif"), "--debug"], capsys
    )
    assert code == 1 and "Traceback" in err and "does not exist" in err


def test_real_process_exit_code_and_help(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "napari_sam.cli", "segment"]
    result = subprocess.run(
        [*cmd, str(tmp_path / "nope.tif"), "-o", str(tmp_path / "x.tif")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"napari-sam: error: The input file {tmp_path / 'nope.tif'} does not exist."
    ]
    assert list(tmp_path.iterdir()) == []
    result = subprocess.run(
        [*cmd, "--help"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert result.returncode == 0
    for option in ("--model", "--checkpoint", "--device", "--points-per-side", "--min-area",
                   "--pred-iou-thresh", "--stability-score-thresh", "--link-slices", "--coco",
                   "exit status"):  # fmt: skip
        assert option in result.stdout
