"""What every ``napari-sam`` subcommand shares: the parser helpers, progress bars, warnings."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from napari_sam.errors import (
    OutputFileError,
    SettingsError,
)
from napari_sam.runtime.fallbacks import relay_fallbacks

PROG = "napari-sam"

Handler = Callable[[argparse.Namespace], int]

# Options every subcommand accepts. SUPPRESS keeps a subparser from overwriting
# a value given before the subcommand name (``napari-sam --debug info``).
COMMON = argparse.ArgumentParser(add_help=False)
COMMON.add_argument(
    "--debug",
    action="store_true",
    default=argparse.SUPPRESS,
    help="show the full Python traceback when something fails",
)


def add_speed_options(parser: Any) -> None:
    """``--precision`` and ``--compile`` (the GPU fast path) on a parser or group."""
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="image-encoder precision: auto (default) = bf16 on a CUDA GPU and on CPUs with "
        "fast bf16 (AMX, AVX-512 BF16; see napari-sam info), fp32 elsewhere; masks and "
        "scores are always float32",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the image encoder with torch.compile (GPU; the first slice takes "
        "minutes longer, later ones are faster)",
    )


def package_version() -> str:
    """Installed version of napari-sam (``"unknown"`` when running from a source tree)."""
    from importlib import metadata

    try:
        return metadata.version("napari-sam-microscopy")
    except metadata.PackageNotFoundError:
        package = sys.modules.get("napari_sam")
        return str(getattr(package, "__version__", "unknown"))


def add_subcommand(
    subparsers: Any, name: str, *, help: str, description: str | None = None
) -> argparse.ArgumentParser:
    """Add a subcommand parser that also accepts the common options (``--debug``).

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The object returned by ``parser.add_subparsers()``.
    name : str
        Name of the subcommand.
    help : str
        One line for ``napari-sam --help``.
    description : str, optional
        Longer text for ``napari-sam <name> --help``; defaults to ``help``.

    Returns
    -------
    argparse.ArgumentParser
        The new parser; call ``set_defaults(handler=...)`` on it.
    """
    return subparsers.add_parser(
        name,
        help=help,
        description=description or help,
        parents=[COMMON],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def check_writable(folder: Path) -> None:
    """Fail early (before minutes of work) if no file can be created in ``folder``.

    A folder that does not exist yet is not created here (a failed run leaves
    nothing behind); its nearest existing parent is tested instead.
    """
    import tempfile


    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, f"{existing} is a file")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise OutputFileError(
            f"The output folder {folder} is not writable ({exc.strerror or exc})."
        ) from exc


def bar_updater(bar: Any) -> Callable[[Any], None]:
    """A progress callback (:class:`~napari_sam.runtime.progress.Progress`) driving a tqdm bar."""

    def update(event: Any) -> None:
        if event.total is not None and bar.total != event.total:
            bar.total = event.total
            bar.refresh()
        bar.update(event.done - bar.n)

    return update


def precision_name(sam: Any) -> str:
    """``"float32"``, ``"bfloat16"`` or ``"float16"``: the encoder precision in use."""
    dtype = getattr(sam, "encoder_dtype", None)
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


@contextlib.contextmanager
def plain_warnings() -> Iterator[None]:
    """Show napari-sam's own warnings (e.g. a GPU out-of-memory fallback) as one line."""

    def say(message: str) -> None:
        print(f"{PROG}: warning: {message}", file=sys.stderr)

    with relay_fallbacks(say, this_thread_only=False):
        yield




def cluster_model(args: argparse.Namespace, decoder: str | None = None) -> Any:
    """The :class:`~napari_sam.distributed.ModelSpec` every worker loads, from the model
    options; published weights are downloaded here once, not once per worker (a shared
    cache serves them all)."""
    from napari_sam.distributed import ModelSpec
    from napari_sam.runtime.weights import CHECKPOINTS, checkpoint_path

    spec = ModelSpec(
        model=args.model,
        checkpoint=str(Path(args.checkpoint).expanduser().resolve()) if args.checkpoint else None,
        device=args.device,
        precision=args.precision,
        compile=bool(args.compile),
        decoder=str(Path(decoder).expanduser().resolve()) if decoder else None,
    )
    if spec.checkpoint is None and args.model in CHECKPOINTS:
        checkpoint_path(args.model, progress=not args.quiet)
    return spec


@contextlib.contextmanager
def announced_cluster(args: argparse.Namespace) -> Iterator[Any]:
    """A Dask client on ``--scheduler`` or a local cluster of ``--workers``, after one line
    naming the cluster, its workers and the dashboard's address."""
    from napari_sam.distributed import dashboard_link, open_cluster

    with open_cluster(args.scheduler, args.workers) as client:
        link = dashboard_link(client)
        n_workers = len(client.nthreads())
        where = f"{args.scheduler}" if args.scheduler else "this machine"
        print(
            f"{PROG}: Dask cluster on {where}, {n_workers} worker{'s' if n_workers != 1 else ''}; "
            + (f"dashboard: {link}" if link else "no dashboard (install bokeh to get one)"),
            file=sys.stderr,
        )
        yield client


def check_cluster_options(args: argparse.Namespace) -> None:
    """Refuse ``--workers`` with ``--scheduler``, and fewer than one worker (one sentence)."""
    if args.workers is not None and args.scheduler:
        raise SettingsError(
            "Give either --workers (a cluster on this machine) or --scheduler (an existing "
            "cluster), not both."
        )
    if args.workers is not None and args.workers < 1:
        raise SettingsError(f"--workers needs at least 1 worker, not {args.workers}.")
