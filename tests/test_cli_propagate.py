"""``napari-sam propagate STACK --prompts CSV -o LABELS.tif``, with a small SAM 2.1 as the model.

The model loader is replaced by one returning the tiny SAM 2.1 with random
weights on 256-pixel inputs, so that the command runs in seconds; loading
published weights is tested in test_sam2_model.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_sam.cli import main
from napari_sam.runtime.loader import LoadedModel
from napari_sam.workflows import io


@pytest.fixture()
def fake_load(monkeypatch, sam2_small_input):
    import napari_sam.runtime.loader as loader

    calls = []

    def load(model="auto", checkpoint=None, device="auto", **kwargs):
        calls.append((model, checkpoint, kwargs.get("precision")))
        return LoadedModel.wrap(sam2_small_input[0], f"test-{model}", name=model)

    monkeypatch.setattr(loader, "load", load)
    return calls


@pytest.fixture()
def stack_file(tmp_path, nuclei_stack):
    path = tmp_path / "stack.tif"
    data = np.ascontiguousarray(nuclei_stack[25:33, 40:136, 60:188])
    meta = {"axes": "ZYX", "spacing": 2.0, "unit": "um"}
    tifffile.imwrite(path, data, imagej=True, resolution=(2.0, 2.0), metadata=meta)
    return path


def _csv(tmp_path, text):
    path = tmp_path / "clicks.csv"
    path.write_text(text)
    return path


def test_follows_clicked_objects_into_a_label_tiff(tmp_path, fake_load, stack_file, capsys):
    prompts = _csv(tmp_path, "z,y,x,label,object\n4,30,40,1,3\n4,60,90,1,7\n4,65,85,0,7\n")
    out = tmp_path / "labels.tif"
    args = ["propagate", str(stack_file), "--prompts", str(prompts), "-o", str(out), "--quiet"]
    code = main(args)
    assert code == 0
    assert fake_load == [("sam2_tiny", None, "auto")]
    image = io.read_tiff(out)
    assert image.data.shape == (8, 96, 128)
    assert set(np.unique(image.data)) <= {0, 3, 7} and (image.data[4] == 3).any()
    assert image.scale == pytest.approx((2.0, 0.5, 0.5))
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert "2 objects followed" in captured.err


def test_options_reach_the_propagation(tmp_path, fake_load, stack_file):
    prompts = _csv(tmp_path, "4,30,40,1,1\n")
    out = tmp_path / "labels.tif"
    args = ["propagate", str(stack_file), "--prompts", str(prompts), "-o", str(out), "--quiet"]
    args += ["--keep-going", "--slices", "2", "6", "--model", "sam2_large", "--precision", "fp32"]
    assert main(args) == 0
    assert fake_load == [("sam2_large", None, "fp32")]
    labels = io.read_tiff(out).data
    assert not labels[:2].any() and not labels[7:].any()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("12,30,40,1,1\n", "slice 12, but the stack has slices 0 to 7"),
        ("4,30,400,1,1\n", "outside the image"),
        ("4,30,40,0,1\n", "only background clicks"),
        ("4;30;40;1;1\n", "Line 1 of clicks.csv"),
    ],
)
def test_bad_prompts_fail_with_one_line(tmp_path, fake_load, stack_file, capsys, rows, message):
    out = tmp_path / "labels.tif"
    prompts = _csv(tmp_path, rows)
    args = ["propagate", str(stack_file), "--prompts", str(prompts), "-o", str(out), "--quiet"]
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 1 and not out.exists()
    assert err.startswith("napari-sam: error:") and message in err and "\n" not in err


def test_a_2d_image_fails_with_one_line(tmp_path, fake_load, capsys):
    image = tmp_path / "plane.tif"
    tifffile.imwrite(image, np.zeros((64, 64), np.uint16))
    prompts = _csv(tmp_path, "0,30,40,1,1\n")
    code = main(["propagate", str(image), "--prompts", str(prompts), "-o", str(tmp_path / "o.tif")])
    err = capsys.readouterr().err
    assert code == 1 and "this image is 2D" in err


def test_output_must_be_a_tiff(tmp_path, fake_load, stack_file, capsys):
    prompts = _csv(tmp_path, "4,30,40,1,1\n")
    out = str(tmp_path / "o.png")
    code = main(["propagate", str(stack_file), "--prompts", str(prompts), "-o", out])
    assert code == 1 and ".tif file name" in capsys.readouterr().err
    assert fake_load == []


def test_help_lists_the_command(capsys):
    assert main(["--help"]) == 0
    assert "propagate" in capsys.readouterr().out
    assert main(["propagate", "--help"]) == 0
    assert "z,y,x,label,object" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"], "not both"),
        (["--workers", "0"], "at least 1 worker"),
    ],
)
def test_wrong_cluster_options_fail_in_one_sentence(
    tmp_path, fake_load, stack_file, capsys, flags, message
):
    prompts = _csv(tmp_path, "4,30,40,1,1\n")
    out = tmp_path / "o.tif"
    code = main(["propagate", str(stack_file), "--prompts", str(prompts), "-o", str(out), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 1 and not out.exists() and fake_load == []
    assert err.startswith("napari-sam: error: ") and message in err
    assert "\n" not in err
