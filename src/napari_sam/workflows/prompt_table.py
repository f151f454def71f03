"""Prompt tables: clicks for propagation as CSV rows ``z,y,x,label,object``.

One row per click:

``z``
    slice (or time point) index, from 0;
``y``, ``x``
    row and column of the click in pixels of that slice (napari's order;
    decimals allowed);
``label``
    1 (or ``positive``, ``+``, ``object``, ``yes``) for a click on the object,
    0 (or ``negative``, ``-``, ``background``, ``no``) for a click on the
    background;
``object``
    the object's id, a whole number >= 1: the label it gets in the output.

A header line naming the columns is optional (the columns may then come in
any order, and other columns are ignored); lines starting with ``#`` and
empty lines are skipped. For a time-lapse of stacks ``(T, Z, Y, X)`` a ``t``
column (in a header ``t,z,y,x,label,object``) gives each click its time
point as well, so one table can follow objects on several lines of planes
(:func:`read_prompt_lines`). Every object needs at least one click with label 1.
Example::

    z,y,x,label,object
    8,120.5,64,1,1
    8,30,200,1,2
    8,35,190,0,2

:func:`read_prompt_table` gives :class:`~napari_sam.workflows.memory_propagation.TrackPrompt`
objects (one per object and slice, in SAM's ``(x, y)``: the one place this
file's row/column order is swapped); :func:`write_prompt_table` writes them
back (clicks only: boxes and masks have no rows in this format).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from napari_sam.errors import InputFileError, OutputFileError, PromptError
from napari_sam.runtime.files import atomic_write
from napari_sam.workflows.memory_propagation import TrackPrompt, merge_prompts
from napari_sam.workflows.prompts import rows_cols_to_xy

__all__ = [
    "COLUMNS",
    "parse_prompt_table",
    "read_prompt_lines",
    "read_prompt_table",
    "write_prompt_table",
]

#: The columns of a prompt table, in the order they are written.
COLUMNS = ("z", "y", "x", "label", "object")

_POSITIVE = {"1", "1.0", "positive", "pos", "+", "object", "yes", "true", "foreground", "fg"}
_NEGATIVE = {"0", "0.0", "negative", "neg", "-", "background", "no", "false", "bg"}


def read_prompt_table(path: str | os.PathLike[str]) -> list[TrackPrompt]:
    """Read a prompt table file (see the module documentation).

    Raises
    ------
    InputFileError
        The file is missing or cannot be read, or a row is malformed (the
        message names the line).
    """
    source, text = _read_text(path)
    return parse_prompt_table(text, source=source)


def parse_prompt_table(text: str, source: str = "the prompt table") -> list[TrackPrompt]:
    """Prompts from the text of a prompt table (see the module documentation)."""
    _, clicks = _parse_clicks(text, source)
    return _prompts([(z, y, x, lab, obj) for _, z, y, x, lab, obj in clicks], source)


def read_prompt_lines(
    path: str | os.PathLike[str], along: str
) -> dict[int, list[TrackPrompt]] | None:
    """The clicks of a prompt table with a ``t`` column, by line of a time-lapse of stacks.

    A header ``t,z,y,x,label,object`` gives each click its time point and
    slice. ``along="z"`` (following objects through the slices): the lines
    are the time points, keyed by ``t``, and a prompt's position is its slice.
    ``along="t"`` (through the time points): the lines are the slices, keyed
    by ``z``, and a prompt's position is its time point.

    Returns
    -------
    dict of int -> list of TrackPrompt, or None
        None for a table without a ``t`` column (its ``z`` is the position on
        one line: :func:`read_prompt_table`).

    Raises
    ------
    InputFileError
        As :func:`read_prompt_table`, and for a missing or negative ``t``.
    """
    source, text = _read_text(path)
    has_t, clicks = _parse_clicks(text, source)
    if not has_t:
        return None
    if along not in ("z", "t"):
        raise ValueError(f"along must be 'z' or 't', not {along!r}")
    lines: dict[int, list[tuple[int, float, float, int, int]]] = {}
    for t, z, y, x, lab, obj in clicks:
        key, position = (t, z) if along == "z" else (z, t)
        lines.setdefault(int(key), []).append((position, y, x, lab, obj))
    return {key: _prompts(rows, source) for key, rows in sorted(lines.items())}


def _read_text(path: str | os.PathLike[str]) -> tuple[str, str]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputFileError(f"The prompt table {path} does not exist.")
    try:
        return path.name, path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"The prompt table {path} cannot be read ({exc}).") from exc


#: A parsed click: (t or None, z, y, x, label 0/1, object id).
_Click = tuple[int | None, int, float, float, int, int]


def _parse_clicks(text: str, source: str) -> tuple[bool, list[_Click]]:
    """The rows of a prompt table, and whether its header has a ``t`` column."""
    rows = [
        (n, [c.strip() for c in row])
        for n, row in enumerate(csv.reader(io.StringIO(text)), start=1)
        if row and any(c.strip() for c in row) and not row[0].lstrip().startswith("#")
    ]
    if not rows:
        raise InputFileError(f"{source} holds no clicks (expected rows z,y,x,label,object).")
    order = list(range(len(COLUMNS)))
    t_column: int | None = None
    first = [c.lower() for c in rows[0][1]]
    if not _is_number(first[0]) and any(c in COLUMNS for c in first):
        missing = [c for c in COLUMNS if c not in first]
        if missing:
            raise InputFileError(
                f"The header of {source} lacks the column(s) {', '.join(missing)}; it needs "
                f"{','.join(COLUMNS)}."
            )
        order = [first.index(c) for c in COLUMNS]
        t_column = first.index("t") if "t" in first else None
        rows = rows[1:]
    clicks: list[_Click] = []
    for line, cells in rows:
        where = f"line {line} of {source}"
        if len(cells) <= max(order + ([] if t_column is None else [t_column])):
            raise InputFileError(
                f"{where.capitalize()} has {len(cells)} value(s); each row needs "
                f"{','.join(COLUMNS if t_column is None else ('t', *COLUMNS))}."
            )
        z_text, y_text, x_text, label_text, obj_text = (cells[i] for i in order)
        t_text = "0" if t_column is None else cells[t_column]
        try:
            t, z, obj = _whole(t_text), _whole(z_text), _whole(obj_text)
            y, x = float(y_text), float(x_text)
        except ValueError:
            raise InputFileError(
                f"{where.capitalize()} ({','.join(cells)}) is not z,y,x,label,object with "
                "numbers for z, y, x (and t) and a whole-number object id."
            ) from None
        if t < 0 or z < 0 or obj < 1 or not (np.isfinite(x) and np.isfinite(y)):
            raise InputFileError(
                f"{where.capitalize()}: time points and slices start at 0, object ids at 1 "
                f"and positions are finite numbers (got z={z_text}, object={obj_text}, "
                f"y={y_text}, x={x_text}{'' if t_column is None else f', t={t_text}'})."
            )
        label = label_text.lower()
        if label in _POSITIVE:
            lab = 1
        elif label in _NEGATIVE:
            lab = 0
        else:
            raise InputFileError(
                f"{where.capitalize()}: the label {label_text!r} is not 1 (object) or 0 "
                "(background)."
            )
        clicks.append((None if t_column is None else t, z, y, x, lab, obj))
    return t_column is not None, clicks


def _prompts(
    clicks: Iterable[tuple[int, float, float, int, int]], source: str
) -> list[TrackPrompt]:
    """One TrackPrompt per object and position from clicks ``(position, y, x, label, obj)``."""
    points: dict[tuple[int, int], list[tuple[float, float, int]]] = {}
    for z, y, x, lab, obj in clicks:
        points.setdefault((obj, z), []).append((y, x, lab))
    prompts = []
    for (obj, z), group in sorted(points.items()):
        rc = np.array([[y, x] for y, x, _ in group])
        labels = np.array([lab for _, _, lab in group])
        try:
            prompts.append(TrackPrompt(obj, z, rows_cols_to_xy(rc), labels))
        except PromptError as exc:
            raise InputFileError(f"In {source}: {exc}") from None
    return prompts


def write_prompt_table(
    path: str | os.PathLike[str], prompts: Iterable[TrackPrompt]
) -> Path:
    """Write prompts as a prompt table (with a header), atomically.

    Rows are sorted by object, then slice, clicks in their order.

    Raises
    ------
    PromptError
        A prompt has a box or a mask (the format holds clicks only).
    OutputFileError
        The file cannot be written.
    """
    merged = merge_prompts(prompts)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for (obj, z), p in sorted(merged.items()):
        if p.box is not None or p.mask is not None:
            raise PromptError(
                f"Object {obj} on slice {z} has a {'box' if p.box is not None else 'mask'}; "
                "a prompt table holds clicks only."
            )
        for (x, y), lab in zip(p.point_coords, p.point_labels):
            writer.writerow([z, _num(y), _num(x), int(lab), obj])
    path = Path(path).expanduser()
    try:
        with atomic_write(path) as tmp:
            Path(tmp).write_text(out.getvalue(), encoding="utf-8")
    except OutputFileError:
        raise
    except OSError as exc:
        raise OutputFileError(f"{path} cannot be written ({exc.strerror or exc}).") from exc
    return path


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _whole(text: str) -> int:
    value = float(text)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
