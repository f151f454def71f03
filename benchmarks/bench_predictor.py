"""Encoder and click latency of SamPredictor: napari-sam vs Meta's segment_anything.

Both implementations load one file of random weights (the reference's random
initialisation, saved once), so they compute the same thing. Each runs in its
own fresh process, alternating, ``--rounds`` times; a process times

- ``set_image`` on a 1024×1024 RGB uint8 image (encoder + preprocessing), and
  the peak resident-memory growth during those calls;
- a single positive click ``predict`` (multimask, the default) on a
  2048×2048 image whose embedding is already computed (click-to-mask latency).

Usage::

    python benchmarks/bench_predictor.py --model vit_b --rounds 2 --json out.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import (
    load_impl,
    machine_info,
    markdown_table,
    measure,
    random_checkpoint,
    run_worker,
    write_json,
)


def worker(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model, predictor_cls = load_impl(args.impl, args.model, Path(args.checkpoint))
    predictor = predictor_cls(model)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    enc = measure(lambda: predictor.set_image(image), repeats=args.repeats, warmup=1)

    big = rng.integers(0, 256, (2048, 2048, 3), dtype=np.uint8)
    predictor.set_image(big)
    point, label = np.array([[1000.0, 900.0]]), np.array([1])
    click = measure(
        lambda: predictor.predict(point_coords=point, point_labels=label),
        repeats=args.click_repeats,
        warmup=2,
    )
    return {"encoder": enc, "click": click}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--rounds", type=int, default=2, help="alternating process pairs")
    parser.add_argument("--repeats", type=int, default=3, help="timed set_image calls per process")
    parser.add_argument("--click-repeats", type=int, default=20)
    parser.add_argument("--json", default=None)
    parser.add_argument("--checkpoint", default=None, help="weights file (default: random)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["ours", "ref"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        import json

        print(json.dumps(worker(args)))
        return 0

    tmp = Path(tempfile.gettempdir()) / "napari_sam_bench"
    ckpt = Path(args.checkpoint) if args.checkpoint else random_checkpoint(
        args.model, tmp / f"random_{args.model}.pth"
    )
    results: dict[str, list[dict]] = {"ref": [], "ours": []}
    for r in range(args.rounds):
        for impl in ("ref", "ours") if r % 2 == 0 else ("ours", "ref"):
            res = run_worker(
                Path(__file__),
                ["--impl", impl, "--model", args.model, "--checkpoint", str(ckpt),
                 "--repeats", str(args.repeats), "--click-repeats", str(args.click_repeats)],
            )
            results[impl].append(res)
            print(f"round {r} {impl}: set_image {res['encoder']['median_s']:.3f} s, "
                  f"click {res['click']['median_s'] * 1000:.1f} ms", file=sys.stderr)

    def med(impl: str, task: str, key: str = "median_s") -> float:
        return statistics.median(x[task][key] for x in results[impl])

    summary = {
        task: {
            impl: {"median_s": med(impl, task),
                   "peak_rss_growth_mb": med(impl, task, "peak_rss_growth_mb")}
            for impl in ("ref", "ours")
        }
        for task in ("encoder", "click")
    }
    for task in summary.values():
        task["time_ratio"] = task["ours"]["median_s"] / task["ref"]["median_s"]
        ref_mem = task["ref"]["peak_rss_growth_mb"]
        task["memory_ratio"] = task["ours"]["peak_rss_growth_mb"] / ref_mem if ref_mem else None
    rows = []
    for task, label in (("encoder", "set_image 1024×1024"), ("click", "click predict 2048×2048")):
        s = summary[task]
        scale, unit = (1, "s") if task == "encoder" else (1000, "ms")
        rows.append([
            f"{args.model} {label}",
            f"{s['ref']['median_s'] * scale:.3g} {unit}",
            f"{s['ours']['median_s'] * scale:.3g} {unit}",
            f"**{s['time_ratio']:.2f}×**",
            f"{s['ref']['peak_rss_growth_mb']:.0f} MiB",
            f"{s['ours']['peak_rss_growth_mb']:.0f} MiB",
            "n/a" if s["memory_ratio"] is None else f"{s['memory_ratio']:.2f}×",
        ])
    print(markdown_table(
        ["task", "reference", "napari-sam", "time ratio", "ref peak +RSS", "ours peak +RSS",
         "memory ratio"], rows))
    write_json(args.json, {"machine": machine_info(), "model": args.model, "summary": summary,
                           "raw": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
