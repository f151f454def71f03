"""Batch segmentation on a Dask cluster: many files, huge stacks, one model per worker.

- :mod:`~napari_sam.distributed.cluster`: connect to a scheduler, or start a local cluster;
- :mod:`~napari_sam.distributed.worker`: the model each worker loads once and keeps;
- :mod:`~napari_sam.distributed.tasks`: what a worker runs (a file, a slice, overlaps, relabelling);
- :mod:`~napari_sam.distributed.work`: unfinished work on disk, for resuming;
- :mod:`~napari_sam.distributed.run`: :func:`run_batch`, the client that follows it all.

Used by ``napari-sam segment --workers N`` / ``--scheduler ADDRESS``; from Python::

    from napari_sam.distributed import ModelSpec, open_cluster, run_batch
    from napari_sam.workflows.batch import Recipe, plan_jobs

    plan = plan_jobs(["images/"], "labels/")
    with open_cluster(workers=2) as client:
        report = run_batch(client, plan.jobs, ModelSpec("vit_t"), Recipe())

Imports the workflows, runtime and lower layers, and ``distributed``; never napari.
"""

from napari_sam.distributed.cluster import dashboard_link, open_cluster
from napari_sam.distributed.run import BatchReport, Outcome, run_batch
from napari_sam.distributed.worker import ModelSpec

__all__ = ["BatchReport", "ModelSpec", "Outcome", "dashboard_link", "open_cluster", "run_batch"]
