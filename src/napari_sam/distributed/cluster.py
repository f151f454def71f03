"""Connecting to a Dask cluster, or starting one on this machine.

:func:`open_cluster` yields a ``distributed.Client``: connected to an existing
scheduler (``tcp://host:8786``, as started by ``dask scheduler``,
dask-jobqueue's ``SLURMCluster`` or dask-kubernetes), or to a new
``LocalCluster`` of worker *processes* (one thread each, the machine's cores
shared among their torch threads). A cluster it started is shut down when
the block ends, also after Ctrl+C; a cluster it only connected to is left
running.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from napari_sam.errors import ClusterError

__all__ = ["dashboard_link", "local_torch_threads", "open_cluster"]

#: Seconds to wait for a scheduler to answer.
CONNECT_TIMEOUT = 30


def local_torch_threads(n_workers: int) -> int:
    """Torch threads per worker when ``n_workers`` processes share this machine's cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, n_workers))


@contextlib.contextmanager
def open_cluster(
    scheduler: str | None = None,
    workers: int | None = None,
    *,
    memory_limit: str | None = "auto",
) -> Iterator[Any]:
    """A Dask client: on the scheduler at ``scheduler``, or on a new local cluster.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://10.0.0.5:8786``), or a
        scheduler file (JSON) as dask-jobqueue and ``dask scheduler
        --scheduler-file`` write it.
    workers : int, optional
        Without ``scheduler``: start a ``LocalCluster`` of this many worker
        processes (at least 1).
    memory_limit : str, optional
        Memory per local worker (Dask's default "auto" shares the machine's memory).

    Raises
    ------
    ClusterError
        If the scheduler cannot be reached, or the local cluster cannot start.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ClusterError(
            "Running on a Dask cluster needs the distributed package; install it with "
            "`pip install \"dask[distributed]\"`."
        ) from exc
    if scheduler:
        kwargs: dict[str, Any] = {"timeout": CONNECT_TIMEOUT}
        if scheduler.endswith(".json") and os.path.isfile(scheduler):
            kwargs["scheduler_file"] = scheduler
            target: Any = None
        else:
            target = scheduler
        try:
            client = Client(target, **kwargs)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(
                f"The Dask scheduler at {scheduler} cannot be reached ({type(exc).__name__}: "
                f"{exc}); check the address (e.g. tcp://host:8786) and that the scheduler runs."
            ) from exc
        try:
            yield client
        finally:
            client.close()
        return
    n = int(workers or 1)
    if n < 1:
        raise ClusterError(f"--workers needs at least 1 worker, not {n}.")
    try:
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            host="127.0.0.1",
            processes=True,
            memory_limit=memory_limit,
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.ERROR,
        )
    except Exception as exc:  # distributed raises many kinds for a failed start
        raise ClusterError(
            f"A local Dask cluster of {n} workers could not start ({type(exc).__name__}: {exc})."
        ) from exc
    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def dashboard_link(client: Any) -> str | None:
    """The Dask dashboard's address, or None when it is not served (bokeh missing)."""
    import importlib.util

    if importlib.util.find_spec("bokeh") is None:
        return None
    try:
        return str(client.dashboard_link)
    except Exception:  # no dashboard on this scheduler
        return None
