"""Tiled embeddings of a large plane: napari-sam vs micro-sam's tiling, same weights.

A 4096 × 4096 uint16 plane of synthetic nuclei (64 blocks of 512 × 512, each
its own random sample, so no two tiles hold the same pixels) is tiled with
napari-sam's defaults (768 × 768 tiles, 128-pixel halo: 36 tiles whose outer
windows are at most 1024 × 1024), identically in both implementations. Both
load one file of random weights (the reference's initialisation, saved once).
Each implementation runs in its own fresh process (alternating over
``--rounds``), after a warm-up encoding of an unrelated 1024 × 1024 image:

- **first preview**: from opening the plane to the mask of one click near a
  tile border. napari-sam encodes only the tile the click needs
  (``TiledPromptPredictor.predict``, then ``compose_tiled_preview``);
  micro-sam's prompt functions need the tiled embeddings of the whole plane
  first (``micro_sam.util.precompute_image_embeddings(..., tile_shape,
  halo)``, then ``segment_from_points``);
- **next click**: a second click in the same tile, embeddings cached (mean
  of 5 clicks);
  (random weights make SAM's masks sprawl to the edge of any window, which
  would make napari-sam grow a window around the "object" and encode it too;
  a nucleus does not do that, so growing is switched off here:
  ``max_grow=0``; the JSON records the tiles each run encoded);
- **full precompute**: every tile encoded into memory
  (``TiledEmbeddings.precompute`` vs ``precompute_image_embeddings``);
- **peak RSS**: growth of the process's resident set (VmHWM) during the first
  preview and during the full precompute;
- **CPU seconds** of each step (all threads of the process), which a busy
  machine disturbs less than wall-clock time.

Usage::

    python benchmarks/bench_tiling.py --json tiling.json          # vit_t and vit_b, 4096²
    python benchmarks/bench_tiling.py --quick                     # vit_t, 2048², one round

The machine is shared while helpers work: figures measured then are marked as
such in the JSON (``loadavg``); re-measure on a quiet machine for the docs.
"""

from __future__ import annotations

import argparse
import json
import os
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
    peak_rss_mb,
    random_checkpoint,
    reset_peak_rss,
    run_worker,
    write_json,
)

IMPLS = ("microsam", "ours")
TILE = (768, 768)
HALO = (128, 128)


def make_plane(size: int, path: Path) -> Path:
    """A ``size`` x ``size`` uint16 plane of nuclei, block by block (cached in ``path``)."""
    if path.exists():
        return path
    from napari_sam.workflows.samples import make_nuclei_2d

    n = size // 512
    rows = [
        np.concatenate([make_nuclei_2d(seed=r * n + c, shape=(512, 512), n=60) for c in range(n)],
                       axis=1)
        for r in range(n)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.concatenate(rows, axis=0))
    return path


def _timed(fn, record: dict | None = None, name: str = ""):
    """(wall seconds, peak RSS growth MiB, fn()); CPU seconds of the process into ``record``."""
    base = _current_rss()
    reset_peak_rss()
    c0 = time.process_time()
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    if record is not None:
        record[f"{name}_cpu_s"] = time.process_time() - c0
    return wall, peak_rss_mb() - base, out


CLICKS = 5


def _repeat(fn) -> None:
    """Run ``fn`` :data:`CLICKS` times (the caller divides the time by CLICKS)."""
    for _ in range(CLICKS):
        fn()


def _current_rss() -> float:
    from common import current_rss_mb

    return current_rss_mb()


def worker(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plane = np.load(args.image)
    size = plane.shape[0]
    click_yx = (size // 2 + 10, 2 * TILE[1] - 6)  # just left of a tile border
    second_yx = (click_yx[0] - 150, click_yx[1] - 200)
    model, predictor_cls = load_impl("ours" if args.impl == "ours" else "ref", args.model,
                                     Path(args.checkpoint))
    warm = np.random.default_rng(1).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    predictor = predictor_cls(model)
    predictor.set_image(warm)  # warm-up: first-call allocations, kernel choice
    out: dict = {"impl": args.impl, "model": args.model, "size": size,
                 "threads": torch.get_num_threads()}
    if args.impl == "ours":
        from napari_sam.workflows.embeddings import EmbeddingStore
        from napari_sam.workflows.prompts import ObjectPrompt
        from napari_sam.workflows.tiled_embeddings import TiledEmbeddings
        from napari_sam.workflows.tiled_prompts import TiledPromptPredictor, compose_tiled_preview
        from napari_sam.workflows.tiling import Tiling

        tiling = Tiling.on(TILE, HALO)

        def click(yx):
            return ObjectPrompt(point_coords=np.array([[float(yx[1]), float(yx[0])]]),
                                point_labels=np.array([1]))

        def first_preview():
            tiled = TiledEmbeddings(model, plane, model_id="bench", tiling=tiling,
                                    store=EmbeddingStore())
            tp = TiledPromptPredictor(model, tiled, max_grow=0)  # see the module docstring
            masks = tp.predict(None, [click(click_yx)])
            compose_tiled_preview(masks, plane.shape)
            return tp, tiled

        out["first_preview_s"], out["first_preview_rss_mb"], (tp, tiled) = _timed(
            first_preview, out, "first_preview")
        out["tiles_encoded_for_first_preview"] = tiled.encoded

        def next_click():
            compose_tiled_preview(tp.predict(None, [click(second_yx)]), plane.shape)

        out["next_click_s"], _, _ = _timed(lambda: _repeat(next_click), out, "next_click")
        out["next_click_s"] /= CLICKS
        out["next_click_cpu_s"] /= CLICKS
        del tp, tiled

        def precompute():
            tiled = TiledEmbeddings(model, plane, model_id="bench", tiling=tiling,
                                    store=EmbeddingStore())
            tiled.precompute()
            return len(tiled.grid)

        out["precompute_s"], out["precompute_rss_mb"], out["tiles"] = _timed(
            precompute, out, "precompute")
    else:
        import micro_sam.util as mu
        from micro_sam.prompt_based_segmentation import segment_from_points

        predictor.model_type, predictor.model_name = args.model, "random"
        state = {}

        def first_preview():
            t0, c0 = time.perf_counter(), time.process_time()
            embeddings = mu.precompute_image_embeddings(
                predictor, plane, tile_shape=TILE, halo=HALO, verbose=False
            )
            state["precompute_s"] = time.perf_counter() - t0
            state["precompute_cpu_s"] = time.process_time() - c0
            segment_from_points(predictor, np.array([click_yx]), np.array([1]), embeddings)
            return embeddings

        out["first_preview_s"], out["first_preview_rss_mb"], embeddings = _timed(
            first_preview, out, "first_preview")
        out["tiles"] = out["tiles_encoded_for_first_preview"] = len(embeddings["features"])

        def next_click():
            segment_from_points(predictor, np.array([second_yx]), np.array([1]), embeddings)

        out["next_click_s"], _, _ = _timed(lambda: _repeat(next_click), out, "next_click")
        out["next_click_s"] /= CLICKS
        out["next_click_cpu_s"] /= CLICKS
        # micro-sam's first preview consists of the full precompute and one click
        out["precompute_s"] = state["precompute_s"]
        out["precompute_cpu_s"] = state["precompute_cpu_s"]
        out["precompute_rss_mb"] = out["first_preview_rss_mb"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_t", "vit_b"])
    parser.add_argument("--size", type=int, default=4096, help="plane side (multiple of 512)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating process pairs")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--quick", action="store_true", help="vit_t, 2048 x 2048, one round")
    parser.add_argument("--json", default=None, help="write the results to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.quick:
        args.models, args.size, args.rounds = ["vit_t"], 2048, 1

    cache = Path(tempfile.gettempdir()) / "napari_sam_bench"
    image = make_plane(args.size, cache / f"nuclei_{args.size}.npy")
    results: dict = {"machine": machine_info(), "loadavg_start": os.getloadavg(),
                     "size": args.size, "tile_shape": TILE, "halo": HALO, "models": {}}
    rows = []
    for model_type in args.models:
        ckpt = random_checkpoint(model_type, cache / f"random_{model_type}.pth")
        raw: dict[str, list[dict]] = {impl: [] for impl in IMPLS}
        for r in range(args.rounds):
            order = IMPLS if r % 2 == 0 else IMPLS[::-1]
            for impl in order:
                res = run_worker(Path(__file__), [
                    "--impl", impl, "--model", model_type, "--image", str(image),
                    "--checkpoint", str(ckpt), "--threads", str(args.threads),
                ])
                raw[impl].append(res)
                print(f"{model_type} {impl}: {json.dumps(res)}", file=sys.stderr)

        def med(impl, key, raw=raw):
            return statistics.median(x[key] for x in raw[impl])

        summary = {
            impl: {key: med(impl, key) for key in (
                "first_preview_s", "first_preview_rss_mb", "next_click_s", "precompute_s",
                "precompute_rss_mb", "first_preview_cpu_s", "next_click_cpu_s",
                "precompute_cpu_s")}
            for impl in IMPLS
        }
        for impl in IMPLS:
            summary[impl]["tiles_encoded_for_first_preview"] = raw[impl][0][
                "tiles_encoded_for_first_preview"]
            summary[impl]["tiles"] = raw[impl][0]["tiles"]
        ratios = {key: summary["ours"][key] / summary["microsam"][key]
                  for key in ("first_preview_s", "next_click_s", "precompute_s",
                              "first_preview_cpu_s", "next_click_cpu_s", "precompute_cpu_s")}
        results["models"][model_type] = {
            "runs": raw, "median": summary, "ratio_ours_to_ref": ratios
        }
        o, m = summary["ours"], summary["microsam"]
        rows += [
            [model_type, "first preview (s)", f"{o['first_preview_s']:.1f}",
             f"{m['first_preview_s']:.1f}", f"{ratios['first_preview_s']:.2f}"],
            [model_type, "next click (s)", f"{o['next_click_s']:.2f}", f"{m['next_click_s']:.2f}",
             f"{ratios['next_click_s']:.2f}"],
            [model_type, f"full precompute, {o['tiles']} tiles (s)", f"{o['precompute_s']:.1f}",
             f"{m['precompute_s']:.1f}", f"{ratios['precompute_s']:.2f}"],
            [model_type, "full precompute, CPU time of the process (s)",
             f"{o['precompute_cpu_s']:.1f}", f"{m['precompute_cpu_s']:.1f}",
             f"{ratios['precompute_cpu_s']:.2f}"],
            [model_type, "peak RSS growth, first preview (MiB)",
             f"{o['first_preview_rss_mb']:.0f}", f"{m['first_preview_rss_mb']:.0f}", ""],
            [model_type, "peak RSS growth, precompute (MiB)", f"{o['precompute_rss_mb']:.0f}",
             f"{m['precompute_rss_mb']:.0f}", ""],
        ]
    results["loadavg_end"] = os.getloadavg()
    print(markdown_table(["model", "measure", "napari-sam", "micro-sam", "ratio"], rows))
    print(f"CPU: {results['machine']['cpu']}; load average {results['loadavg_start']} -> "
          f"{results['loadavg_end']}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
