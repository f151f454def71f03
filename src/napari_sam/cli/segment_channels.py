"""``napari-sam segment`` options for channels, contrast and the object table.

``--channels C [C ...]`` maps 1–3 channels of a multichannel TIFF (counted
from 0, as napari's channel slider) to SAM's red, green and blue inputs;
``--contrast LOW HIGH [LOW HIGH ...]`` gives the display range of the image, or
one range per chosen channel; ``--table objects.csv`` writes the object table
(:func:`napari_sam.workflows.tables.object_table`) of every labelled image into
one CSV file (with an ``image`` column naming the input file).

Kept apart from :mod:`napari_sam.cli.segment` so that the two change independently;
``segment`` calls :func:`add_options`, :func:`check_options` and
:class:`TableWriter` (the input is read and segmented by
:func:`napari_sam.workflows.batch.segment_file`, in one process or on a
cluster).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_sam.errors import ImageFormatError, OutputFileError

__all__ = [
    "ChannelOptions",
    "TableWriter",
    "add_channel_files_option",
    "add_channels_option",
    "add_options",
    "check_channel_files",
    "check_channels_and_contrast",
    "check_options",
]


def add_channels_option(group: Any, read_as: str) -> None:
    """Add ``--channels C [C C]`` to an argument group; the input is read as ``read_as``."""
    group.add_argument(
        "--channels",
        nargs="+",
        type=int,
        default=None,
        metavar="C",
        help="the channels (counted from 0, as napari's channel slider) given to SAM as red, "
        "green and blue: one channel is shown in gray, two as red and green; the input is "
        f"read as {read_as} with its channel axis (or, if the file names none, its first "
        "axis) as channels",
    )


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add the group "channels, contrast and object table" to ``segment``'s parser."""
    group = parser.add_argument_group(
        "channels, contrast and object table",
        "SAM sees one RGB image: choose up to three channels of a multichannel TIFF\n"
        "for its red, green and blue inputs, each shown with its own contrast.",
    )
    add_channels_option(group, "(C, Y, X) or (C, Z, Y, X)")
    add_channel_files_option(group, several=True)
    group.add_argument(
        "--contrast",
        nargs="+",
        type=float,
        default=None,
        metavar="LOW HIGH",
        help="show SAM the intensities LOW (black) to HIGH (white); with --channels, one LOW "
        "HIGH pair per chosen channel, in the same order (default: each image's or "
        "channel's minimum and maximum, as napari shows it)",
    )
    group.add_argument(
        "--table",
        metavar="CSV",
        default=None,
        help="also write the object table (one row per object: label, slices, size and centre "
        "in the image's units, mean intensity, SAM's scores) of all inputs to this CSV file",
    )


@dataclass(frozen=True)
class ChannelOptions:
    """The checked options: channels (or None), contrast pairs (or None), table path, and
    the files of INPUT's other channels (--with; then ``channels`` numbers INPUT 0 and the
    files 1, 2), or with several INPUTs each INPUT's files (``others_by_input``: resolved
    INPUT path, its files)."""

    channels: tuple[int, ...] | None
    contrast: tuple[tuple[float, float], ...] | None
    table: Path | None
    others: tuple[str, ...] | None = None
    others_by_input: tuple[tuple[str, tuple[str, ...]], ...] | None = None

    @property
    def single_contrast(self) -> tuple[float, float] | None:
        """The one contrast pair of an image without --channels."""
        return None if self.contrast is None else self.contrast[0]


def check_options(args: argparse.Namespace) -> ChannelOptions:
    """Check --channels, --contrast and --table before any work starts.

    Raises
    ------
    ImageFormatError
        For a contrast that is not LOW HIGH pairs with LOW <= HIGH, one per
        chosen channel, or more than three channels.
    OutputFileError
        For a --table path that is a folder or not a .csv file.
    """
    inputs = list(getattr(args, "inputs", None) or [None])
    others, contrast = check_channel_files(args.channels, getattr(args, "with_files", None),
                                           args.contrast, len(inputs))
    by_input = None
    if others is None:
        channels, contrast = check_channels_and_contrast(args.channels, args.contrast)
    else:  # INPUT and the files, read channels first
        others = tuple(str(Path(f).expanduser().resolve()) for f in others)
        per = len(others) // len(inputs)
        channels = tuple(range(1 + per))
        if inputs[0] is not None:  # segment: INPUT files (no folder), each with its files
            sources = _input_files(inputs)
            if len(sources) > 1:  # file j·n + i belongs to INPUT i of n
                n = len(sources)
                by_input = tuple((source, tuple(others[j * n + i] for j in range(per)))
                                 for i, source in enumerate(sources))
                others = None
    table = None
    if args.table:
        table = Path(args.table).expanduser()
        if table.is_dir():
            raise OutputFileError(f"--table {table} is a folder; give a .csv file name.")
        if table.suffix.lower() != ".csv":
            raise OutputFileError(f"--table {table} must be a .csv file name.")
    return ChannelOptions(channels, contrast, table, others, by_input)


def _input_files(inputs: list[Any]) -> list[str]:
    """The INPUTs given with --with, resolved: each a file, once.

    Raises
    ------
    SettingsError
        An INPUT that is a folder, or one given twice.
    """
    from napari_sam.errors import SettingsError

    sources = []
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir():
            raise SettingsError(
                f"--with pairs each INPUT file with its channel files, and {path} is a folder: "
                "give the files (e.g. folder/C1-*.tif --with folder/C2-*.tif)."
            )
        sources.append(str(path.resolve()))
    if len(set(sources)) != len(sources):
        raise SettingsError("--with pairs each INPUT with its channel files: an INPUT was "
                            "given twice.")
    return sources


def add_channel_files_option(group: Any, several: bool = False) -> None:
    """Add ``--with FILE [FILE]`` (dest ``with_files``): channels saved one per file;
    ``several``: the command takes several INPUTs, each paired with its files."""
    group.add_argument(
        "--with",
        dest="with_files",
        nargs="+",
        default=None,
        metavar="FILE",
        help="channels saved one per file (e.g. by Fiji's Split Channels): INPUT is SAM's red "
        "input and these files its green (and blue), each grayscale and of INPUT's shape; "
        "--contrast then takes one pair per file"
        + ("; with several INPUTs, one file per INPUT for each channel, in the INPUTs' order "
           "(C1-*.tif --with C2-*.tif)" if several else ""),
    )


def check_channel_files(
    channels: Any, files: Any, contrast: Any, n_inputs: int = 1
) -> tuple[tuple[str, ...] | None, tuple[tuple[float, float], ...] | None]:
    """``--with`` files (1-2 paths per INPUT, or None) and ``--contrast`` for an INPUT and
    its files: one LOW HIGH pair per file, or None.

    With ``n_inputs`` INPUTs the files come one per INPUT for each other channel, in the
    INPUTs' order: ``[green of INPUT 1, …, green of INPUT n, (blue of INPUT 1, …)]``.

    Raises
    ------
    SettingsError
        ``--with`` together with ``--channels``, or not 1-2 files per INPUT.
    ImageFormatError
        A contrast that is not one LOW HIGH pair (LOW <= HIGH) per file.
    """
    from napari_sam.errors import SettingsError

    if files is None:
        return None, None
    if channels is not None:
        raise SettingsError(
            "Give either --channels (channels of one multichannel file) or --with (channels "
            "in separate files), not both."
        )
    files = tuple(str(f) for f in files)
    if n_inputs > 1:
        per, rest = divmod(len(files), n_inputs)
        if rest or per not in (1, 2):
            raise SettingsError(
                f"With {n_inputs} INPUTs, --with takes one file per INPUT for each other "
                f"channel, in the INPUTs' order ({n_inputs} or {2 * n_inputs} files), got "
                f"{len(files)}."
            )
    elif len(files) > 2:
        raise SettingsError(
            f"--with takes 1 or 2 files (SAM's green and blue inputs), got {len(files)}."
        )
    else:
        per = len(files)
    _, pairs = check_channels_and_contrast(tuple(range(1 + per)), contrast)
    return files, pairs


def check_channels_and_contrast(
    channels: Any, contrast: Any
) -> tuple[tuple[int, ...] | None, tuple[tuple[float, float], ...] | None]:
    """``--channels`` (1-3 numbers, or None) and ``--contrast`` (LOW HIGH pairs, one per
    chosen channel, or one pair without channels; or None), checked.

    Raises
    ------
    ImageFormatError
        More than three channels, or a contrast that is not LOW HIGH pairs with
        LOW <= HIGH, one per chosen channel.
    """
    channels = None if channels is None else tuple(int(c) for c in channels)
    if channels is not None and not 1 <= len(channels) <= 3:
        raise ImageFormatError(
            f"--channels takes 1 to 3 channels (SAM's red, green and blue), got {len(channels)}."
        )
    if contrast is None:
        return channels, None
    values = list(contrast)
    need = 1 if channels is None else len(channels)
    if len(values) != 2 * need:
        what = "one LOW HIGH pair" if channels is None else (
            f"one LOW HIGH pair per chosen channel ({need} pairs)"
        )
        raise ImageFormatError(f"--contrast needs {what}; got {len(values)} numbers.")
    pairs = []
    for lo, hi in zip(values[::2], values[1::2]):
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ImageFormatError(
                f"--contrast needs two finite numbers LOW <= HIGH, got {lo:g} {hi:g}."
            )
        pairs.append((lo, hi))
    return channels, tuple(pairs)


class TableWriter:
    """Collects the object tables of the inputs and writes them as one CSV (--table)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tables: list[Any] = []

    def add(self, table: Any) -> None:
        """Add the object table of one input
        (:func:`~napari_sam.workflows.tables.image_object_table`)."""
        self.tables.append(table)

    def write(self) -> Path:
        import pandas as pd

        from napari_sam.workflows.tables import write_object_table

        return write_object_table(self.path, pd.concat(self.tables, ignore_index=True))
