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
        help="download SAM weights into the cache",
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
        if weights.is_cached(key) and not args.force:
            path = weights.checkpoint_path(key, download=False)
            print(f"{key}: already downloaded", file=sys.stderr)
        else:
            path = weights.download(
                info.url,
                config.cache_dir() / info.filename,
                expected_size=info.size_bytes,
                md5=info.md5,
                sha256=info.sha256,
                progress=not args.quiet,
            )
        print(path)
    return 0


# --------------------------------------------------------------------------- embed
