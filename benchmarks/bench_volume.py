"""Precomputing the embeddings of a 3D stack: throughput, cache sizes, and the float16 error.

For each model (random weights from napari-sam's own builder; nothing is
downloaded; ``small`` is the test suite's small ViT config), in its own fresh
process, on the synthetic 3D nuclei sample (uint16, 192×192 planes; SAM
encodes every plane at 1024×1024 whatever its size):

- **throughput**: slices per second of ``StackEmbeddings.precompute`` into
  memory only and into an on-disk cache (float16 files written atomically),
  for each batch size (planes per forward pass; by default 1 on a CPU and
  1, 2, 4, 8 on a CUDA GPU, where bfloat16 autocast is measured too);
- **size per cached slice**: float32 features in memory, the float16 ``.npz``
  file on disk, and the time to read one back;
- **float16 error**: max / mean absolute difference between the float32
  embeddings and their float16 copies (and the max relative to the largest
  feature), and the IoU between masks predicted from the two for random point
  and box prompts (``multimask_output=False``).

Usage::

    python benchmarks/bench_volume.py --json volume.json             # vit_t and vit_b
    python benchmarks/bench_volume.py --models vit_t --slices 2 --prompts 4   # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import machine_info, markdown_table, measure, run_worker, write_json


def worker(args: argparse.Namespace) -> dict:
    from napari_sam import sam_model_registry
    from napari_sam.predictors.predictor import ImageEmbedding, SamPredictor
    from napari_sam.runtime.device import resolve_device
    from napari_sam.workflows.embeddings import (
        DiskCache,
        EmbeddingStore,
        StackEmbeddings,
        encode_planes,
    )
    from napari_sam.workflows.samples import make_nuclei_3d

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    if args.model == "small":  # the test suite's small config (tests/reference.py::SMALL)
        from napari_sam.model.build import SamConfig, build_model

        model = build_model(SamConfig(64, 4, 4, (1, 3))).to(device).eval()
    else:
        model = sam_model_registry[args.model]().to(device).eval()
    stack = make_nuclei_3d()[: args.slices]
    n = stack.shape[0]
    out: dict = {"model": args.model, "device": str(device), "slices": n, "runs": []}

    # warm-up (first-call allocations, kernel selection)
    StackEmbeddings(model, stack[:1], model_id="w", store=EmbeddingStore()).precompute()

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else None
    if batch_sizes is None:
        batch_sizes = [1, 2, 4, 8] if device.type == "cuda" else [1]
    autocasts = [False, True] if device.type == "cuda" else [False]
    with tempfile.TemporaryDirectory() as tmp:
        disk = DiskCache(Path(tmp) / "emb")
        for autocast in autocasts:
            model.precision = "bf16" if autocast else "fp32"
            for bs in batch_sizes:
                if bs > n:
                    continue

                def to_memory(bs=bs, autocast=autocast):
                    StackEmbeddings(
                        model,
                        stack,
                        model_id="m",
                        store=EmbeddingStore(),
                        batch_size=bs,
                    ).precompute()

                def to_disk(bs=bs, autocast=autocast):
                    disk.clear()
                    StackEmbeddings(
                        model,
                        stack,
                        model_id="m",
                        store=EmbeddingStore(),
                        disk=disk,
                        batch_size=bs,
                    ).precompute()

                mem = measure(to_memory, repeats=args.repeats, warmup=0)
                dsk = measure(to_disk, repeats=args.repeats, warmup=0)
                out["runs"].append(
                    {
                        "batch_size": bs,
                        "autocast": autocast,
                        "memory_slices_per_s": n / mem["median_s"],
                        "disk_slices_per_s": n / dsk["median_s"],
                        "memory_times_s": mem["times_s"],
                        "disk_times_s": dsk["times_s"],
                        "peak_rss_growth_mb": mem["peak_rss_growth_mb"],
                    }
                )
                print(
                    f"{args.model} batch {bs}{' autocast' if autocast else ''}: "
                    f"{n / mem['median_s']:.2f} slices/s in memory, "
                    f"{n / dsk['median_s']:.2f} slices/s to disk",
                    file=sys.stderr,
                )

        model.precision = "fp32"
        # sizes, read time and the float16 error (float32 embeddings, one plane per pass)
        emb = StackEmbeddings(model, stack, model_id="m", store=EmbeddingStore(), disk=disk)
        disk.clear()
        fp32 = [encode_planes(model, [stack[z]], emb.contrast)[0] for z in range(n)]
        for z, e in enumerate(fp32):
            disk.put(emb.key(z), e)
        sizes = [f.stat().st_size for f in disk.files()]
        t0 = time.perf_counter()
        fp16 = [disk.get(emb.key(z)) for z in range(n)]
        read_s = (time.perf_counter() - t0) / n
    out["memory_mib_per_slice"] = fp32[0].nbytes / 2**20
    out["disk_mib_per_slice"] = float(np.mean(sizes)) / 2**20
    out["disk_read_ms_per_slice"] = 1000 * read_s

    diffs = [(b.features.float().cpu() - a.features.cpu()).abs() for a, b in zip(fp32, fp16)]
    peak = max(float(a.features.abs().max()) for a in fp32)
    out["fp16_max_abs"] = max(float(d.max()) for d in diffs)
    out["fp16_mean_abs"] = float(np.mean([float(d.mean()) for d in diffs]))
    out["fp16_max_rel_to_peak"] = out["fp16_max_abs"] / peak
    out["feature_abs_max"] = peak
    out["feature_abs_mean"] = float(np.mean([float(a.features.abs().mean()) for a in fp32]))

    g = np.random.default_rng(0)
    predictor = SamPredictor(model)
    h, w = stack.shape[1:]
    ious = []
    for i in range(args.prompts):
        z = int(g.integers(n))
        if i % 2:
            x0, y0 = g.uniform(0, w * 0.7), g.uniform(0, h * 0.7)
            prompt = {"box": np.array([x0, y0, x0 + g.uniform(10, w * 0.3), y0 + 30.0])}
        else:
            prompt = {
                "point_coords": np.array([[g.uniform(0, w), g.uniform(0, h)]]),
                "point_labels": np.array([1]),
            }
        masks = []
        for e in (fp32[z], fp16[z]):
            predictor.set_embedding(ImageEmbedding(e.features, e.original_size, e.input_size))
            masks.append(predictor.predict(**prompt, multimask_output=False)[0][0])
        union = (masks[0] | masks[1]).sum()
        ious.append(1.0 if union == 0 else float((masks[0] & masks[1]).sum() / union))
    out["mask_iou_mean"] = float(np.mean(ious))
    out["mask_iou_min"] = float(np.min(ious))
    out["masks_identical"] = float(np.mean([i == 1.0 for i in ious]))
    out["prompts"] = args.prompts
    out["threads"] = torch.get_num_threads()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["vit_t", "vit_b"],
        help="vit_t, vit_b, vit_l, vit_h, or small (the tests' small random config)",
    )
    parser.add_argument("--slices", type=int, default=8, help="slices of the stack (max 32)")
    parser.add_argument("--repeats", type=int, default=1, help="timed precomputations")
    parser.add_argument("--batch-sizes", default=None, help="e.g. 1,2,4 (default: by device)")
    parser.add_argument("--prompts", type=int, default=40, help="prompts for the mask IoU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", default=None, help="write the results to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    results = []
    for model in args.models:
        worker_args = ["--model", model, "--slices", str(args.slices)]
        worker_args += ["--repeats", str(args.repeats), "--prompts", str(args.prompts)]
        worker_args += ["--device", args.device, "--threads", str(args.threads)]
        if args.batch_sizes:
            worker_args += ["--batch-sizes", args.batch_sizes]
        results.append(run_worker(Path(__file__), worker_args))

    rows = []
    for r in results:
        for run in r["runs"]:
            rows.append(
                [
                    r["model"],
                    r["device"],
                    run["batch_size"],
                    "bf16" if run["autocast"] else "fp32",
                    f"{run['memory_slices_per_s']:.2f}",
                    f"{run['disk_slices_per_s']:.2f}",
                ]
            )
    print(
        markdown_table(
            ["model", "device", "batch", "encoder dtype", "slices/s (memory)", "slices/s (disk)"],
            rows,
        )
    )
    print()
    print(
        markdown_table(
            [
                "model",
                "memory MiB/slice (fp32)",
                "disk MiB/slice (fp16 .npz)",
                "disk read ms/slice",
            ],
            [
                [
                    r["model"],
                    f"{r['memory_mib_per_slice']:.2f}",
                    f"{r['disk_mib_per_slice']:.3f}",
                    f"{r['disk_read_ms_per_slice']:.1f}",
                ]
                for r in results
            ],
        )
    )
    print()
    print(
        markdown_table(
            [
                "model",
                "fp16 max abs err",
                "fp16 mean abs err",
                "max err / largest feature",
                "mask IoU mean",
                "mask IoU min",
                "identical masks",
            ],
            [
                [
                    r["model"],
                    f"{r['fp16_max_abs']:.2e}",
                    f"{r['fp16_mean_abs']:.2e}",
                    f"{r['fp16_max_rel_to_peak']:.1e}",
                    f"{r['mask_iou_mean']:.4f}",
                    f"{r['mask_iou_min']:.4f}",
                    f"{100 * r['masks_identical']:.0f}% of {r['prompts']}",
                ]
                for r in results
            ],
        )
    )
    write_json(args.json, {"machine": machine_info(), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
