"""MobileSAM (vit_t) encoder latency: napari-sam's TinyViT vs the ``mobile_sam`` reference.

Both implementations load one file of random weights (the reference's random
initialisation, saved once), so they compute the same thing. Each
implementation runs in its own fresh process; the processes alternate
(``ref, ours, ours, ref, …``) for ``--rounds`` rounds. A process encodes a
1024×1024 RGB uint8 image with ``SamPredictor.set_image`` once to warm up,
then ``--repeats`` timed times, and reports the median and the peak growth of
its resident memory (VmHWM after resetting it through ``/proc/self/clear_refs``)
during the timed calls. The table gives the median over rounds.

Usage::

    python benchmarks/bench_vit_t.py --rounds 3 --repeats 5 --json vit_t.json
    python benchmarks/bench_vit_t.py --rounds 1 --repeats 1      # smoke run
"""

from __future__ import annotations

import argparse
import json
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

MODEL = "vit_t"
IMPLS = ("ref", "ours")


def worker(args: argparse.Namespace) -> dict:
    """Time ``set_image`` in this (fresh) process for one implementation."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, predictor_cls = load_impl(args.impl, MODEL, Path(args.checkpoint))
    predictor = predictor_cls(model)
    image = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    result = measure(lambda: predictor.set_image(image), repeats=args.repeats, warmup=1)
    result["threads"] = torch.get_num_threads()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating process pairs")
    parser.add_argument("--repeats", type=int, default=5, help="timed set_image calls per process")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", default=None, help="write the results to this file")
    parser.add_argument("--checkpoint", default=None, help="vit_t weights file (default: random)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    ckpt = (
        Path(args.checkpoint)
        if args.checkpoint
        else random_checkpoint(
            MODEL, Path(tempfile.gettempdir()) / "napari_sam_bench" / "random_vit_t.pth"
        )
    )
    raw: dict[str, list[dict]] = {impl: [] for impl in IMPLS}
    for r in range(args.rounds):
        for impl in IMPLS if r % 2 == 0 else IMPLS[::-1]:
            res = run_worker(
                Path(__file__),
                [
                    "--impl", impl,
                    "--checkpoint", str(ckpt),
                    "--repeats", str(args.repeats),
                    "--threads", str(args.threads),
                ],
            )  # fmt: skip
            raw[impl].append(res)
            print(
                f"round {r} {impl}: set_image median {res['median_s']:.3f} s "
                f"(times {', '.join(f'{t:.3f}' for t in res['times_s'])}), "
                f"peak +RSS {res['peak_rss_growth_mb']:.0f} MiB",
                file=sys.stderr,
            )

    summary: dict[str, dict] = {
        impl: {
            "median_s": statistics.median(x["median_s"] for x in raw[impl]),
            "peak_rss_growth_mb": statistics.median(x["peak_rss_growth_mb"] for x in raw[impl]),
        }
        for impl in IMPLS
    }
    ratio = summary["ours"]["median_s"] / summary["ref"]["median_s"]
    ref_mem = summary["ref"]["peak_rss_growth_mb"]
    summary["time_ratio"] = ratio
    summary["memory_ratio"] = summary["ours"]["peak_rss_growth_mb"] / ref_mem if ref_mem else None

    names = {"ref": "mobile_sam (reference)", "ours": "napari-sam"}
    rows = [
        [
            f"{names[impl]} vit_t set_image 1024×1024",
            f"{summary[impl]['median_s']:.3f}",
            "1.00×" if impl == "ref" else f"**{ratio:.2f}×**",
            f"{summary[impl]['peak_rss_growth_mb']:.0f}",
        ]
        for impl in IMPLS
    ]
    print(markdown_table(["implementation", "median s", "ratio ours/ref", "peak +RSS MiB"], rows))
    write_json(
        args.json,
        {
            "machine": machine_info(),
            "model": MODEL,
            "task": "SamPredictor.set_image, 1024x1024 RGB uint8",
            "rounds": args.rounds,
            "repeats": args.repeats,
            "threads": raw["ours"][0]["threads"] if raw["ours"] else None,
            "summary": summary,
            "raw": raw,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
