"""``napari-sam download``: fetch published weights into the cache ahead of time."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from napari_sam.cli.common import (
    add_subcommand,
)


def add(subparsers: Any) -> None:
    from napari_sam.runtime.weights import CHECKPOINTS, MODEL_TYPE_ALIASES

    choices = [*CHECKPOINTS, *MODEL_TYPE_ALIASES, "all"]
    parser = add_subcommand(
        subparsers,
        "download",
        help="download SAM weights (and micro-sam's AIS decoders) into the cache",
        description=(
            "Download published SAM checkpoints into the napari-sam cache folder\n"
            "(see `napari-sam info`), check their size and checksum, and print\n"
            "their paths. Files already downloaded are kept unless --force is given."
        ),
    )
    parser.add_argument(
        "model_types",
        nargs="+",
        choices=choices,
        metavar="MODEL_TYPE",
        help=f"one or more of: {', '.join(choices)}",
    )
    parser.add_argument(
        "--force", action="store_true", help="download again even if the file is cached"
    )
    parser.add_argument("--quiet", action="store_true", help="do not show a progress bar")
    parser.set_defaults(handler=_run_download)


def _run_download(args: argparse.Namespace) -> int:
    from napari_sam.runtime import config, weights

    wanted: list[str] = []
    for name in args.model_types:
        names = list(weights.CHECKPOINTS) if name == "all" else [name]
        for item in names:
            key = weights.checkpoint_info(item).model_type
            if key not in wanted:
                wanted.append(key)

    for key in wanted:
        info = weights.checkpoint_info(key)
        # a micro-sam model: its instance decoder (AIS) is a second file
        for item in [info] if info.decoder is None else [info, info.decoder]:
            what = key if item is info else f"{key} decoder"
            dest = config.cache_dir(create=False) / item.filename
            if not args.force and dest.is_file() and (
                item.size_bytes is None or dest.stat().st_size == item.size_bytes
            ):
                path = dest
                print(f"{what}: already downloaded", file=sys.stderr)
            else:
                path = weights.download(
                    item.url,
                    config.cache_dir() / item.filename,
                    expected_size=item.size_bytes,
                    md5=item.md5,
                    sha256=item.sha256,
                    xxh128=item.xxh128,
                    progress=not args.quiet,
                )
            print(path)
    return 0


# --------------------------------------------------------------------------- embed
