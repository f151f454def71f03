"""Run work on a real local cluster of 2 worker processes and SIGKILL one of them mid-task.

Used by the killed-worker tests of segmentation (slices, tiles) and propagation:
Dask must retry the killed worker's tasks elsewhere and the run must complete.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any


def run_killing_a_worker(
    work: Callable[[Any], Any],
    task: str,
    *,
    plugins: Sequence[tuple[str, Any]] = (),
    wait: float = 120.0,
) -> Any:
    """Call ``work(client)`` in a thread; kill (SIGKILL) the first worker process seen
    running a task whose key contains ``task``; return what ``work`` returned.

    ``plugins``: ``(name, WorkerPlugin)`` registered before ``work`` starts (a worker that
    replaces the killed one gets them too). Fails the test when no such task was seen
    within ``wait`` seconds, or when ``work`` raised.
    """
    from distributed import Client, LocalCluster

    result: dict[str, Any] = {}
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None,
    ) as cluster, Client(cluster) as client:  # fmt: skip
        for name, plugin in plugins:
            client.register_plugin(plugin, name=name)
        pids = client.run(os.getpid)

        def run() -> None:
            try:
                result["value"] = work(client)
            except BaseException as exc:  # reported below
                result["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        killed = None
        deadline = time.monotonic() + wait
        while killed is None and time.monotonic() < deadline and thread.is_alive():
            for address, keys in client.processing().items():
                if any(task in str(k) for k in keys) and address in pids:
                    os.kill(pids[address], signal.SIGKILL)
                    killed = address
                    break
            time.sleep(0.02)  # polling the scheduler, not waiting for a result
        thread.join(timeout=600)
        assert killed is not None, f"no {task} task was seen running"
    assert "error" not in result, result.get("error")
    return result["value"]
