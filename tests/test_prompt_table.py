"""Prompt tables (CSV rows z,y,x,label,object): reading, writing, and what a bad row says."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.errors import InputFileError, PromptError
from napari_sam.workflows.memory_propagation import TrackPrompt
from napari_sam.workflows.prompt_table import (
    parse_prompt_table,
    read_prompt_table,
    write_prompt_table,
)


def test_rows_become_prompts_in_sam_coordinates():
    prompts = parse_prompt_table(
        "z,y,x,label,object\n"
        "# a comment\n"
        "8,120.5,64,1,1\n"
        "\n"
        "8,30,200,positive,2\n"
        "8,35,190,0,2\n"
        "3,10,20,+,2\n"
    )
    assert [(p.obj, p.z) for p in prompts] == [(1, 8), (2, 3), (2, 8)]
    one = prompts[0]
    np.testing.assert_array_equal(one.point_coords, [[64.0, 120.5]])  # (x, y) = (col, row)
    np.testing.assert_array_equal(one.point_labels, [1])
    two = prompts[2]
    np.testing.assert_array_equal(two.point_coords, [[200.0, 30.0], [190.0, 35.0]])
    np.testing.assert_array_equal(two.point_labels, [1, 0])


def test_header_is_optional_and_columns_can_move():
    plain = parse_prompt_table("8,120,64,1,1\n")
    moved = parse_prompt_table("object,label,x,y,z,comment\n1,1,64,120,8,first nucleus\n")
    for a, b in ((plain[0], moved[0]),):
        assert (a.obj, a.z) == (b.obj, b.z)
        np.testing.assert_array_equal(a.point_coords, b.point_coords)


def test_round_trip(tmp_path):
    prompts = [
        TrackPrompt(2, 5, [[10.5, 20.0], [11.0, 22.0]], [1, 0]),
        TrackPrompt(1, 0, [[3.0, 4.0]], [1]),
    ]
    path = write_prompt_table(tmp_path / "clicks.csv", prompts)
    text = path.read_text()
    assert text.splitlines()[0] == "z,y,x,label,object"
    assert text.splitlines()[1] == "0,4,3,1,1"
    back = read_prompt_table(path)
    assert [(p.obj, p.z) for p in back] == [(1, 0), (2, 5)]
    np.testing.assert_array_equal(back[1].point_coords, prompts[0].point_coords)
    np.testing.assert_array_equal(back[1].point_labels, prompts[0].point_labels)


def test_boxes_and_masks_have_no_rows(tmp_path):
    with pytest.raises(PromptError, match="has a box; a prompt table holds clicks only"):
        write_prompt_table(tmp_path / "x.csv", [TrackPrompt(1, 0, box=[0, 0, 4, 4])])
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("z,y,x,label\n1,2,3,1\n", "lacks the column"),
        ("z,y,x,label,object\n1,2,3,1\n", "Line 2 of t.csv has 4 value"),
        ("1,2,three,1,1\n", "Line 1 of t.csv"),
        ("-1,2,3,1,1\n", "slices start at 0"),
        ("1,2,3,1,0\n", "object ids at 1"),
        ("1,2,3,maybe,1\n", "'maybe' is not 1"),
        ("1,2,3,0,4\n", "only background clicks"),
        ("1.5,2,3,1,1\n", "Line 1 of t.csv"),
        ("# nothing\n\n", "holds no clicks"),
    ],
)
def test_bad_rows_name_the_line(text, message):
    with pytest.raises(InputFileError, match=message) as info:
        parse_prompt_table(text, source="t.csv")
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        read_prompt_table(tmp_path / "nope.csv")
