"""Automatic mask generation: napari-sam vs Meta's segment_anything, whole ``generate``.

Both implementations load one file of random weights (the reference's random
initialisation, saved once to a temporary directory), so they compute the same
masks. Each implementation runs in its own fresh process (alternating over
``--rounds``); a process times ``generate`` on a 512×512 RGB image with a
16×16 point grid (``--size``, ``--points``), ``--repeats`` times after one
warm-up call, for each threshold setting:

- ``default``: SAM's defaults (``pred_iou_thresh=0.88``,
  ``stability_score_thresh=0.95``). With random weights few or no masks pass,
  which favours implementations that skip work for rejected masks.
- ``permissive``: both thresholds 0, so every mask goes through upscaling,
  stability scoring, boxes, NMS and encoding (the worst case for napari-sam's
  shortcuts).

``--model small`` uses the small test configuration (narrow encoder, same
decoder) for a quick check. Results: a Markdown table (median seconds, ratio
napari-sam / reference, masks returned, peak RSS growth) and, with ``--json``,
all figures.

Usage::

    python benchmarks/bench_amg.py --model vit_b --repeats 3 --json amg.json
    python benchmarks/bench_amg.py --model small --repeats 1 --size 256
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
    machine_info,
    markdown_table,
    measure,
    random_checkpoint,
    run_worker,
    write_json,
)

ROOT = Path(__file__).resolve().parent.parent
THRESHOLDS = {
    "default": {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95},
    "permissive": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
}


def blob_image(size: int, seed: int = 0) -> np.ndarray:
    """A ``size × size`` RGB uint8 image of soft coloured blobs with noise."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.zeros((size, size, 3))
    for _ in range(16):
        cy, cx = g.uniform(0, size, 2)
        r = g.uniform(0.04, 0.2) * size
        img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None] * g.uniform(
            0, 255, 3
        )
    img += g.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def small_checkpoint(path: Path) -> Path:
    """Random weights of the small test configuration (tests/reference.py)."""
    if path.exists():
        return path
    sys.path.insert(0, str(ROOT / "tests"))
    from reference import SMALL, build_reference, save_state

    path.parent.mkdir(parents=True, exist_ok=True)
    return save_state(build_reference(SMALL, seed=0), path)


def load_generator_cls(impl: str, model_type: str, checkpoint: Path):
    """(model, mask generator class) of implementation ``impl``."""
    if model_type == "small":
        sys.path.insert(0, str(ROOT / "tests"))
        from reference import SMALL, build_reference

        if impl == "ours":
            from napari_sam import SamAutomaticMaskGenerator
            from napari_sam.runtime.checkpoints import build_from_config

            return build_from_config(SMALL, checkpoint, model_type="custom"), (
                SamAutomaticMaskGenerator
            )
        from segment_anything import SamAutomaticMaskGenerator

        model = build_reference(SMALL, seed=0)
        model.load_state_dict(torch.load(checkpoint, map_location="cpu"))
        return model.eval(), SamAutomaticMaskGenerator
    if impl == "ours":
        from napari_sam import SamAutomaticMaskGenerator, sam_model_registry

        return sam_model_registry[model_type](checkpoint=str(checkpoint)), (
            SamAutomaticMaskGenerator
        )
    from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

    model = sam_model_registry[model_type](checkpoint=str(checkpoint)).eval()
    return model, SamAutomaticMaskGenerator


def worker(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model, generator_cls = load_generator_cls(args.impl, args.model, Path(args.checkpoint))
    image = blob_image(args.size)
    out = {}
    for name in args.thresholds.split(","):
        generator = generator_cls(
            model, points_per_side=args.points, points_per_batch=args.batch, **THRESHOLDS[name]
        )
        counts = []
        res = measure(
            lambda gen=generator, counts=counts: counts.append(len(gen.generate(image))),
            repeats=args.repeats,
            warmup=args.warmup,
        )
        res["n_masks"] = counts[-1]
        out[name] = res
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b", help="vit_b, vit_l, vit_h or small")
    parser.add_argument("--size", type=int, default=512, help="image side (pixels)")
    parser.add_argument("--points", type=int, default=16, help="points_per_side")
    parser.add_argument("--batch", type=int, default=64, help="points_per_batch")
    parser.add_argument("--thresholds", default="default,permissive",
                        help="comma-separated: default, permissive")
    parser.add_argument("--rounds", type=int, default=1, help="alternating process pairs")
    parser.add_argument("--repeats", type=int, default=3, help="timed generate calls per process")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    parser.add_argument("--json", default=None, help="write all figures to this file")
    parser.add_argument("--checkpoint", default=None, help="weights file (default: random)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["ours", "ref"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = args.thresholds.split(",")
    unknown = [n for n in names if n not in THRESHOLDS]
    if unknown:
        parser.error(f"unknown threshold setting(s): {', '.join(unknown)}")

    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    tmp = Path(tempfile.gettempdir()) / "napari_sam_bench"
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
    elif args.model == "small":
        ckpt = small_checkpoint(tmp / "random_small.pth")
    else:
        ckpt = random_checkpoint(args.model, tmp / f"random_{args.model}.pth")

    worker_args = [
        "--model", args.model, "--checkpoint", str(ckpt), "--size", str(args.size),
        "--points", str(args.points), "--batch", str(args.batch),
        "--thresholds", args.thresholds, "--repeats", str(args.repeats),
        "--warmup", str(args.warmup),
    ]
    results: dict[str, list[dict]] = {"ref": [], "ours": []}
    for r in range(args.rounds):
        for impl in ("ref", "ours") if r % 2 == 0 else ("ours", "ref"):
            res = run_worker(Path(__file__), ["--impl", impl, *worker_args])
            results[impl].append(res)
            summary = ", ".join(
                f"{n} {res[n]['median_s']:.2f} s ({res[n]['n_masks']} masks)" for n in names
            )
            print(f"round {r} {impl}: {summary}", file=sys.stderr)

    def med(impl: str, name: str, key: str) -> float:
        return statistics.median(x[name][key] for x in results[impl])

    summary = {}
    rows = []
    for name in names:
        s = {
            impl: {
                "median_s": med(impl, name, "median_s"),
                "peak_rss_growth_mb": med(impl, name, "peak_rss_growth_mb"),
                "n_masks": results[impl][-1][name]["n_masks"],
            }
            for impl in ("ref", "ours")
        }
        s["time_ratio"] = s["ours"]["median_s"] / s["ref"]["median_s"]
        summary[name] = s
        for impl, label in (("ref", "segment_anything"), ("ours", "napari-sam")):
            ratio = "1.00×" if impl == "ref" else f"**{s['time_ratio']:.2f}×**"
            rows.append([
                f"{args.model} {args.size}×{args.size}, {args.points}² points, {name}",
                label,
                f"{s[impl]['median_s']:.2f}",
                ratio,
                s[impl]["n_masks"],
                f"{s[impl]['peak_rss_growth_mb']:.0f} MiB",
            ])
    print(markdown_table(
        ["task", "impl", "seconds (median)", "ratio", "masks", "peak +RSS"], rows
    ))
    write_json(args.json, {
        "machine": machine_info(),
        "model": args.model,
        "size": args.size,
        "points_per_side": args.points,
        "points_per_batch": args.batch,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "thresholds": {n: THRESHOLDS[n] for n in names},
        "summary": summary,
        "raw": results,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
