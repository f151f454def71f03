"""The ``napari-sam`` command: headless tools around the bundled SAM.

Usage::

    napari-sam info                 # versions, devices, cache folder, checkpoints
    napari-sam download vit_b       # fetch weights into the cache (progress bar)
    napari-sam download all
    napari-sam embed stack.tif -o CACHE_DIR   # precompute a 3D stack's embeddings
    napari-sam segment cells.tif -o cells_labels.tif   # label every object (TIFF in/out)
    napari-sam propagate stack.tif --prompts clicks.csv -o labels.tif   # SAM 2 memory
    napari-sam gui [IMAGE]          # napari with the image, the dock, the model loading

Adding a subcommand
-------------------
Write a module here with ``add(subparsers)`` that calls
:func:`~napari_sam.cli.common.add_subcommand` and sets
``handler=<function(args) -> int>`` with ``set_defaults``, then append its
``add`` to :data:`SUBCOMMANDS`. Handlers import heavy modules (torch, the model) inside
the function so that ``import napari_sam.cli`` and ``napari-sam --help`` stay
fast. Expected failures are raised as :class:`~napari_sam.errors.NapariSamError`;
:func:`main` prints them as one line on stderr and returns 1 (the traceback is
shown only with ``--debug``).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from napari_sam.cli import download, embed, gui, info, propagate, segment
from napari_sam.cli.common import PROG, package_version, plain_warnings
from napari_sam.errors import NapariSamError

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]

SUBCOMMANDS: list[Callable[[Any], None]] = [info.add, download.add, embed.add, segment.add]
SUBCOMMANDS.append(propagate.add)
SUBCOMMANDS.append(gui.add)


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """Build the ``napari-sam`` argument parser with all :data:`SUBCOMMANDS`.

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Segment Anything (SAM) for microscopy: command-line tools.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False,
        help="show the full Python traceback when something fails",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``napari-sam`` command.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit code: 0 on success, 1 when the command failed (the reason is
        printed as one line on stderr), 2 for a usage error, 130 after Ctrl+C.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    debug = bool(getattr(args, "debug", False))
    try:
        with plain_warnings():
            return int(handler(args) or 0)
    except NapariSamError as exc:
        if debug:
            traceback.print_exc()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130

