"""A Dask cluster inside the test process, shared by the distributed tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def inprocess_client(dashboard: bool = True) -> Iterator[Any]:
    """A client of a ``LocalCluster`` of 2 workers in this process (threads, one each),
    reached over TCP on 127.0.0.1 as a remote scheduler would be."""
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://",
        host="127.0.0.1", dashboard_address="127.0.0.1:0" if dashboard else None,
    ) as cluster, Client(cluster) as client:  # fmt: skip
        yield client
