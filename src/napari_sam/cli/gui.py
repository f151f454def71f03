"""``napari-sam gui [IMAGE]``: napari with an image, the interactive dock and the model loading."""

from __future__ import annotations

import argparse
from typing import Any

from napari_sam.cli.common import add_subcommand

_DESCRIPTION = """\
Open napari ready to segment: IMAGE (default: the plugin's 3D nuclei sample),
the "Interactive segmentation (SAM)" dock with the "SAM points" layer selected
(the first click on the image is a positive point), and the model loading in the
background: the one used last, else one whose weights are already downloaded,
else the smallest (MobileSAM, 41 MB, downloaded once with progress in the dock).

The same dock opens from napari itself: napari -w napari-sam-microscopy
"Interactive segmentation (SAM)", or Layers > Segment in napari's menu.

examples:
  napari-sam gui
  napari-sam gui cells.tif --model vit_b
  napari-sam gui stack.tif --automatic
"""


def add(subparsers: Any) -> None:
    parser = add_subcommand(
        subparsers,
        "gui",
        help="open napari with an image, the interactive dock and the model loading",
        description=_DESCRIPTION,
    )
    parser.add_argument(
        "image", nargs="?", default=None, metavar="IMAGE",
        help="an image file napari can open (default: the plugin's 3D nuclei sample)",
    )
    parser.add_argument(
        "--model", default=None, choices=["auto", "vit_t", "vit_b", "vit_l", "vit_h"],
        help="the model to load (default: the one used last, else one already downloaded, "
        "else vit_t)",
    )
    parser.add_argument(
        "--automatic", action="store_true",
        help="also open the automatic segmentation dock (a tab beside the interactive one)",
    )
    parser.set_defaults(handler=_run_gui)


def _run_gui(args: argparse.Namespace) -> int:
    from napari_sam._widgets.launch import run_gui

    run_gui(args.image, args.model, args.automatic)
    return 0
