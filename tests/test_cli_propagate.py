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


# --------------------------------------------------------------------------- time-lapses
@pytest.fixture()
def movie_file(tmp_path, nuclei_stack):
    """(T, Z, Y, X) = (3, 4, 96, 128): three time points of four slices, with a frame interval."""
    path = tmp_path / "movie.tif"
    data = np.ascontiguousarray(nuclei_stack[24:36, 40:136, 60:188].reshape(3, 4, 96, 128))
    meta = {"axes": "TZYX", "spacing": 2.0, "finterval": 30.0, "unit": "um"}
    tifffile.imwrite(path, data, imagej=True, resolution=(2.0, 2.0), metadata=meta)
    return path, data


@pytest.mark.parametrize(("along", "at", "line"), [("t", 2, np.s_[:, 2]), ("z", 1, np.s_[1])])
def test_a_timelapse_of_stacks_is_followed_along_one_axis(
    tmp_path, fake_load, movie_file, sam2_small_input, capsys, along, at, line
):
    from napari_sam.workflows.embeddings import default_contrast_limits
    from napari_sam.workflows.memory_propagation import (
        MemoryPropagationSettings,
        propagate_memory,
    )
    from napari_sam.workflows.prompt_table import read_prompt_table

    path, data = movie_file
    prompts = _csv(tmp_path, "z,y,x,label,object\n1,30,40,1,3\n1,60,90,1,7\n")
    out = tmp_path / "labels.tif"
    args = ["propagate", str(path), "--prompts", str(prompts), "-o", str(out),
            "--keep-going", "--along", along, "--at", str(at)]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    where = "through the time points at slice 2" if along == "t" else (
        "through the slices of time point 1")
    assert f"2 objects followed {where} with" in err
    # the summary names the positions as the line's: time points along t
    n = data.shape[0 if along == "t" else 1]
    unit = "time point" if along == "t" else "slice"
    assert f"object 3: {unit}s 0–{n - 1} (" in err and f"object 7: {unit}s 0–{n - 1} (" in err
    written = io.read_tiff(out, frames=True)
    assert written.data.shape == data.shape
    assert written.scale == pytest.approx((30.0, 2.0, 0.5, 0.5))
    # the line equals one propagation through its planes, with the whole file's contrast
    model = LoadedModel.wrap(sam2_small_input[0], "test", name="sam2_tiny")
    expected = propagate_memory(
        model, np.ascontiguousarray(data[line]), read_prompt_table(prompts),
        contrast=default_contrast_limits(data),
        settings=MemoryPropagationSettings(stop_when_absent=False),
    ).label_volume()  # fmt: skip
    assert set(np.unique(expected)) == {0, 3, 7}
    np.testing.assert_array_equal(written.data[line], expected)
    rest = written.data.copy()
    rest[line] = 0
    assert not rest.any()  # nothing off the line


@pytest.mark.parametrize("along", ["z", "t"])
def test_a_prompt_table_with_a_t_column_follows_every_line_it_names(
    tmp_path, fake_load, movie_file, sam2_small_input, capsys, along
):
    """t,z,y,x,label,object: one run follows the objects on each line the clicks lie on
    (the time points with --along z, the slices with --along t), into one output."""
    from napari_sam.workflows.embeddings import default_contrast_limits
    from napari_sam.workflows.memory_propagation import (
        MemoryPropagationSettings,
        propagate_memory,
    )
    from napari_sam.workflows.prompt_table import read_prompt_table

    path, data = movie_file
    rows = "t,z,y,x,label,object\n0,1,30,40,1,3\n2,1,60,90,1,7\n2,1,62,30,1,8\n"
    prompts = _csv(tmp_path, rows)
    out = tmp_path / "labels.tif"
    args = ["propagate", str(path), "--prompts", str(prompts), "-o", str(out), "--keep-going",
            "--along", along]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    written = np.asarray(io.read_tiff(out, frames=True).data)
    assert written.shape == data.shape
    model = LoadedModel.wrap(sam2_small_input[0], "test", name="sam2_tiny")
    settings = MemoryPropagationSettings(stop_when_absent=False)
    contrast = default_contrast_limits(data)
    expected = np.zeros(data.shape, np.uint32)
    if along == "z":  # the slices of time points 0 and 2; z in the table is the slice
        lines = {0: "1,30,40,1,3\n", 2: "1,60,90,1,7\n1,62,30,1,8\n"}
        for t, text in lines.items():
            clicks = read_prompt_table(_csv(tmp_path, text))
            expected[t] = propagate_memory(model, np.ascontiguousarray(data[t]), clicks,
                                           contrast=contrast, settings=settings).label_volume()
        assert "3 objects followed through the slices of time points 0, 2 with" in err
        assert "time point 0:\n  object 3: slices 0–3" in err
        assert "time point 2:\n  object 7: slices 0–3" in err
    else:  # the time points at slice 1; t in the table is the position on the line
        clicks = read_prompt_table(_csv(tmp_path, "0,30,40,1,3\n2,60,90,1,7\n2,62,30,1,8\n"))
        expected[:, 1] = propagate_memory(model, np.ascontiguousarray(data[:, 1]), clicks,
                                          contrast=contrast, settings=settings).label_volume()
        assert "3 objects followed through the time points at slice 1 with" in err
        assert "object 3: time points 0–2" in err
    assert set(np.unique(expected)) == {0, 3, 7, 8}
    np.testing.assert_array_equal(written, expected)


@pytest.mark.parametrize(
    ("rows", "flags", "message"),
    [
        ("t,z,y,x,label,object\n0,1,30,40,1,3\n", ["--at", "0"],
         "clicks.csv has a t column, which says where each click is: leave --at out"),
        ("t,z,y,x,label,object\n5,1,30,40,1,3\n", [],
         "clicks.csv has clicks at time point 5, but movie.tif has 3 time points (0 to 2)."),
        ("t,z,y,x,label,object\n0,7,30,40,1,3\n", ["--along", "t"],
         "clicks.csv has clicks at slice 7, but movie.tif has 4 slices (0 to 3)."),
        ("t,z,y,x,label,object\n-1,1,30,40,1,3\n", [], "time points and slices start at 0"),
    ],
)
def test_a_t_column_outside_the_timelapse_or_with_at_is_one_sentence(
    tmp_path, fake_load, movie_file, capsys, rows, flags, message
):
    prompts = tmp_path / "clicks.csv"
    prompts.write_text(rows)
    out = tmp_path / "o.tif"
    code = main(["propagate", str(movie_file[0]), "--prompts", str(prompts), "-o", str(out),
                 *flags])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 1 and not out.exists() and fake_load == []
    assert message in err and "\n" not in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "is a time-lapse of stacks (T, Z, Y, X) of shape (3, 4, 96, 128): say where"),
        (["--at", "3"], "--at 3: movie.tif has 3 time points (0 to 2)"),
        (["--along", "t", "--at", "4"], "--at 4: movie.tif has 4 slices (0 to 3)"),
    ],
)
def test_a_timelapse_needs_a_line_inside_it(
    tmp_path, fake_load, movie_file, capsys, flags, message
):
    prompts = _csv(tmp_path, "1,30,40,1,1\n")
    out = tmp_path / "o.tif"
    code = main(["propagate", str(movie_file[0]), "--prompts", str(prompts), "-o", str(out),
                 *flags])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 1 and not out.exists() and fake_load == []
    assert message in err and "\n" not in err


def test_along_and_at_are_for_timelapses_only(tmp_path, fake_load, stack_file, capsys):
    prompts = _csv(tmp_path, "4,30,40,1,1\n")
    code = main(["propagate", str(stack_file), "--prompts", str(prompts), "-o",
                 str(tmp_path / "o.tif"), "--at", "2"])  # fmt: skip
    assert code == 1 and "--along and --at are for time-lapses of stacks" in (
        capsys.readouterr().err)
