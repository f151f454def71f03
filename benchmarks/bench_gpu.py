"""GPU fast path: napari-sam (bf16 autocast, batched) vs segment_anything (fp32), one run.

Everything here runs in one process on one device, ours and the reference
alternating per measurement, with identical random weights (the reference's
random initialisation, with position tables and mask hypernetworks perturbed
so that those paths carry signal, copied into ours). Figures:

- **encoder** ms/image per model type: the reference fp32 at batch 1, ours fp32
  at batch 1, ours in the fast path (``precision="auto"``: bf16 on a CUDA GPU)
  at batch 1 and at each batch size of ``--batches``; FLOP per image (counted
  on the meta device with ``torch.utils.flop_counter``) and the % of the GPU's
  dense bf16 peak that the best fast-path figure reaches; peak GPU memory.
- **accuracy** of the fast path against our fp32 path on the same image:
  embedding error, low-res logit error, predicted-IoU error, and the IoU of
  the binary masks for 16 clicks × 3 masks.
- **click**: ms from a click to its masks (``predict``) on a 1024² image whose
  embedding is ready, ours vs the reference.
- **amg**: seconds per 1024² image of the automatic mask generator
  (``--amg-points`` per side), ours (``points_per_batch=None``) vs the reference
  (its default 64), with SAM's thresholds and with permissive ones.
- **compile**: first-call seconds (compilation) and then ms/image of the
  encoder after ``Sam.compile_encoder`` (``--compile-model``, batch 1).
- **volume**: slices/s encoding a stack with :class:`StackEmbeddings`
  (memory-bounded batches) vs the reference ``set_image`` per slice.

Usage (GPU machine, takes a few minutes)::

    python benchmarks/bench_gpu.py --json benchmarks/results/gpu.json

``--smoke`` runs every section at toy sizes (vit_t, few repeats) so that the
script itself is tested on a CPU (tests/test_bench_gpu.py).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, markdown_table, write_json

#: Dense bf16 tensor-core peak (TFLOP/s, no sparsity) by GPU name fragment;
#: from the vendors' data sheets. Longest matching fragment wins.
BF16_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
}


def bf16_peak_tflops(name: str | None) -> float | None:
    """Dense bf16 peak of the GPU called ``name``, or None if not in the table."""
    if not name:
        return None
    hits = [k for k in BF16_PEAK_TFLOPS if k.lower() in name.lower()]
    return BF16_PEAK_TFLOPS[max(hits, key=len)] if hits else None


# ---------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> dict:
    """Median wall time of ``fn`` (device synchronised), in seconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "times_s": times}


def _reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


# ---------------------------------------------------------------------------- models
@torch.no_grad()
def _perturb(sam: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed + 1)
    for name, p in sam.named_parameters():
        if "pos_embed" in name or "rel_pos" in name or "attention_biases" in name:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    for mlp in sam.mask_decoder.output_hypernetworks_mlps:
        mlp.layers[-1].weight.mul_(20.0)


def build_models(model_type: str, device: torch.device, seed: int = 0):
    """(reference, ours) with identical random weights, in eval mode on ``device``."""
    torch.manual_seed(seed)
    if model_type == "vit_t":
        from mobile_sam import sam_model_registry as ref_registry
    else:
        from segment_anything import sam_model_registry as ref_registry
    from napari_sam.model.build import CONFIGS
    from napari_sam.runtime.checkpoints import build_from_config

    ref = ref_registry[model_type]().eval()
    _perturb(ref, seed)
    ours = _ours_from_state(CONFIGS[model_type], ref.state_dict(), build_from_config)
    return ref.to(device).eval(), ours.to(device).eval()


def _ours_from_state(config, state, build_from_config):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.pth"
        torch.save(state, path)
        return build_from_config(config, path)


def ref_predictor(model_type: str, ref):
    """The reference package's SamPredictor for ``ref``."""
    if model_type == "vit_t":
        from mobile_sam import SamPredictor
    else:
        from segment_anything import SamPredictor
    return SamPredictor(ref)


def encoder_flops(model_type: str) -> float:
    """FLOP of one 1024² image through the encoder (2 per multiply-add), counted on meta."""
    from torch.utils.flop_counter import FlopCounterMode

    from napari_sam.model.build import CONFIGS, build_model

    with torch.device("meta"):
        sam = build_model(CONFIGS[model_type]).eval()
        x = torch.zeros(1, 3, sam.img_size, sam.img_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        sam.image_encoder(x)
    return float(counter.get_total_flops())


def test_image(size: int, seed: int = 0) -> np.ndarray:
    """A ``size``² RGB uint8 microscopy-like image (synthetic nuclei, tiled)."""
    from napari_sam.workflows.image import to_sam_rgb
    from napari_sam.workflows.samples import make_nuclei_2d

    plane = make_nuclei_2d()
    reps = (size // plane.shape[0] + 1, size // plane.shape[1] + 1)
    return to_sam_rgb(np.tile(plane, reps)[:size, :size], None)


# ---------------------------------------------------------------------------- sections
def bench_encoder(model_type, ref, ours, device, batches, repeats, fast_precision,
                  warmup=1) -> dict:
    size = ours.img_size
    x1 = torch.rand(1, 3, size, size, device=device) * 255

    def encode(model, x, precision=None):
        def run():
            with torch.no_grad():
                if precision is None:
                    return model.image_encoder(model.preprocess(x))
                return model.encode(model.preprocess(x))

        return run

    out: dict = {"model": model_type, "runs": []}
    flops = encoder_flops(model_type)
    out["gflop_per_image"] = flops / 1e9

    def record(impl, precision, batch, fn):
        _reset_peak(device)
        t = timed(fn, device, repeats, warmup=warmup)
        ms = t["median_s"] / batch * 1000
        out["runs"].append(
            {
                "impl": impl,
                "precision": precision,
                "batch": batch,
                "ms_per_image": ms,
                "times_s": t["times_s"],
                "peak_gpu_mb": _peak_mb(device),
            }
        )
        print(f"  encoder {model_type} {impl} {precision} batch {batch}: {ms:.1f} ms/image",
              file=sys.stderr)

    record("reference", "fp32", 1, encode(ref, x1))
    ours.precision = "fp32"
    record("ours", "fp32", 1, encode(ours, x1, "fp32"))
    ours.precision = fast_precision
    label = _precision_label(ours)
    for batch in batches:
        x = x1.expand(batch, -1, -1, -1).contiguous()
        try:
            record("ours", label, batch, encode(ours, x, label))
        except torch.OutOfMemoryError:
            print(f"  batch {batch}: out of memory", file=sys.stderr)
            break
    out["fast_precision"] = label
    fast = [r for r in out["runs"] if r["impl"] == "ours" and r["precision"] == label]
    best = min(fast, key=lambda r: r["ms_per_image"])
    peak = bf16_peak_tflops(torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    out["best"] = {"batch": best["batch"], "ms_per_image": best["ms_per_image"]}
    achieved = flops / (best["ms_per_image"] / 1000) / 1e12
    out["achieved_tflops"] = achieved
    out["bf16_peak_tflops"] = peak
    out["percent_of_bf16_peak"] = None if peak is None else 100 * achieved / peak
    return out


def bench_compile(model_type, ours, device, repeats, backend="inductor") -> dict:
    """Warm-up cost and steady-state speed of ``Sam.compile_encoder`` (batch 1)."""
    import copy

    model = copy.deepcopy(ours)
    x = torch.rand(1, 3, model.img_size, model.img_size, device=device) * 255

    def run():
        with torch.no_grad():
            model.encode(model.preprocess(x))

    t0 = time.perf_counter()
    model.compile_encoder(backend=backend)
    run()
    _sync(device)
    warmup_s = time.perf_counter() - t0
    t = timed(run, device, repeats, warmup=1)
    out = {
        "model": model_type,
        "backend": backend,
        "precision": _precision_label(model),
        "first_call_s": warmup_s,
        "ms_per_image": t["median_s"] * 1000,
        "times_s": t["times_s"],
    }
    print(f"  compile {model_type}: first call {warmup_s:.1f} s, then "
          f"{out['ms_per_image']:.1f} ms/image", file=sys.stderr)
    return out


def _precision_label(sam) -> str:
    dtype = sam.encoder_dtype
    return "fp32" if dtype is None else str(dtype).removeprefix("torch.")


def bench_accuracy(ours, image, fast_precision) -> dict:
    """Fast path vs our fp32 path: embedding, logits, IoU scores, binary masks."""
    from napari_sam.predictors.predictor import SamPredictor

    h, w = image.shape[:2]
    grid = [(w * (i + 0.5) / 4, h * (j + 0.5) / 4) for i in range(4) for j in range(4)]
    results = {}
    for precision in ("fp32", fast_precision):
        ours.precision = precision
        predictor = SamPredictor(ours)
        predictor.set_image(image)
        masks, ious, lows = [], [], []
        for x, y in grid:
            m, iou, low = predictor.predict(
                point_coords=np.array([[x, y]]), point_labels=np.array([1]), return_logits=True
            )
            masks.append(m > 0)
            ious.append(iou)
            lows.append(low)
        results[precision] = (predictor.features.float().cpu(), np.stack(masks),
                              np.stack(ious), np.stack(lows))
    f32, m32, i32, l32 = results["fp32"]
    ff, mf, i_f, lf = results[fast_precision]
    inter = np.logical_and(m32, mf).sum(axis=(-1, -2))
    union = np.logical_or(m32, mf).sum(axis=(-1, -2))
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return {
        "precision": fast_precision,
        "clicks": len(grid),
        "embedding_max_abs_err": float((ff - f32).abs().max()),
        "embedding_rel_err": float((ff - f32).norm() / f32.norm()),
        "lowres_logit_max_abs_err": float(np.abs(lf - l32).max()),
        "lowres_logit_scale": float(np.abs(l32).max()),
        "iou_prediction_max_abs_err": float(np.abs(i_f - i32).max()),
        "mask_iou_mean": float(iou.mean()),
        "mask_iou_min": float(iou.min()),
    }


def bench_click(model_type, ref, ours, image, device, repeats) -> dict:
    from napari_sam.predictors.predictor import SamPredictor

    out = {}
    point = (np.array([[image.shape[1] * 0.4, image.shape[0] * 0.6]]), np.array([1]))
    for impl, predictor in (("reference", ref_predictor(model_type, ref)),
                            ("ours", SamPredictor(ours))):
        predictor.set_image(image)
        t = timed(lambda p=predictor: p.predict(*point), device, repeats, warmup=min(3, repeats))
        out[impl] = {"ms": t["median_s"] * 1000, "times_s": t["times_s"]}
        print(f"  click {impl}: {t['median_s'] * 1000:.1f} ms", file=sys.stderr)
    return out


def bench_amg(model_type, ref, ours, image, device, points, repeats,
              which=("default", "permissive")) -> dict:
    if model_type == "vit_t":
        from mobile_sam import SamAutomaticMaskGenerator as RefAmg
    else:
        from segment_anything import SamAutomaticMaskGenerator as RefAmg
    from napari_sam.predictors.automatic import SamAutomaticMaskGenerator

    settings = {
        "default": {},
        "permissive": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
    }
    out: dict = {"model": model_type, "points_per_side": points, "size": list(image.shape[:2])}
    for name, kw in settings.items():
        if name not in which:
            continue
        for impl in ("reference", "ours"):
            _reset_peak(device)
            if impl == "reference":
                gen = RefAmg(ref, points_per_side=points, **kw)
            else:
                gen = SamAutomaticMaskGenerator(ours, points_per_side=points,
                                                points_per_batch=None, **kw)
            n = []
            t = timed(lambda g=gen, n=n: n.append(len(g.generate(image))), device, repeats,
                      warmup=0)
            out[f"{name}_{impl}"] = {
                "s_per_image": t["median_s"],
                "times_s": t["times_s"],
                "masks": n[-1],
                "peak_gpu_mb": _peak_mb(device),
            }
            print(f"  amg {name} {impl}: {t['median_s']:.2f} s, {n[-1]} masks", file=sys.stderr)
    return out


def bench_volume(model_type, ref, ours, device, slices, size) -> dict:
    from napari_sam.workflows.embeddings import (
        EmbeddingStore,
        StackEmbeddings,
        default_contrast_limits,
    )
    from napari_sam.workflows.image import to_sam_rgb
    from napari_sam.workflows.samples import make_nuclei_3d

    stack = make_nuclei_3d()
    reps = (slices // stack.shape[0] + 1, size // stack.shape[1] + 1, size // stack.shape[2] + 1)
    stack = np.tile(stack, reps)[:slices, :size, :size]
    contrast = default_contrast_limits(stack)
    out: dict = {"model": model_type, "slices": slices, "size": size}

    def ours_run():
        emb = StackEmbeddings(ours, stack, model_id="bench", contrast=contrast,
                              store=EmbeddingStore(max_mb=0))
        emb.precompute()
        out["ours_batch"] = emb.batch_size

    predictor = ref_predictor(model_type, ref)

    def ref_run():
        for z in range(slices):
            predictor.set_image(to_sam_rgb(stack[z], contrast))
            predictor.get_image_embedding().cpu()

    for impl, fn in (("reference", ref_run), ("ours", ours_run)):
        _reset_peak(device)
        t = timed(fn, device, repeats=1, warmup=0)
        out[impl] = {"slices_per_s": slices / t["median_s"], "peak_gpu_mb": _peak_mb(device)}
        print(f"  volume {impl}: {slices / t['median_s']:.2f} slices/s", file=sys.stderr)
    return out


# ---------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    info = machine_info()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    result: dict = {"machine": info, "device": str(device), "encoder": [], "accuracy": {}}
    image = test_image(args.size)
    for model_type in args.models:
        print(f"{model_type}:", file=sys.stderr)
        ref, ours = build_models(model_type, device)
        result["encoder"].append(
            bench_encoder(model_type, ref, ours, device, args.batches, args.repeats,
                          args.fast_precision, warmup=args.warmup)
        )
        result["accuracy"][model_type] = bench_accuracy(ours, image, args.fast_precision)
        ours.precision = args.fast_precision
        if model_type == args.compile_model:
            result["compile"] = bench_compile(model_type, ours, device, args.repeats,
                                              args.compile_backend)
        if model_type == args.click_model:
            result["click"] = bench_click(model_type, ref, ours, image, device,
                                          args.click_repeats)
        if model_type == args.amg_model:
            result["amg"] = bench_amg(model_type, ref, ours, image, device, args.amg_points,
                                      args.amg_repeats, args.amg_settings.split(","))
        if model_type == args.volume_model:
            result["volume"] = bench_volume(model_type, ref, ours, device, args.volume_slices,
                                            args.size)
        del ref, ours
        _reset_peak(device)
    return result


def summary(result: dict) -> str:
    rows = []
    for enc in result["encoder"]:
        runs = {(r["impl"], r["precision"], r["batch"]): r for r in enc["runs"]}
        ref = runs[("reference", "fp32", 1)]["ms_per_image"]
        fast_b1 = runs.get(("ours", enc["fast_precision"], 1), runs[("ours", "fp32", 1)])
        acc = result["accuracy"][enc["model"]]
        pct = enc["percent_of_bf16_peak"]
        rows.append([
            enc["model"], f"{ref:.1f}", f"{runs[('ours', 'fp32', 1)]['ms_per_image']:.1f}",
            f"{fast_b1['ms_per_image']:.1f}",
            f"{enc['best']['ms_per_image']:.1f} (b{enc['best']['batch']})",
            f"{enc['best']['ms_per_image'] / ref:.2f}x",
            "n/a" if pct is None else f"{pct:.0f} %",
            f"{acc['mask_iou_mean']:.4f} / {acc['mask_iou_min']:.4f}",
        ])
    return markdown_table(
        ["model", "ref fp32 ms", "ours fp32 ms", "ours fast b1 ms", "ours fast best ms",
         "best/ref", "% bf16 peak", "mask IoU fast vs fp32 mean/min"],
        rows,
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=["vit_t", "vit_b", "vit_l", "vit_h"])
    parser.add_argument("--batches", default="1,2,4,8,16")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2, help="untimed encoder runs first")
    parser.add_argument("--size", type=int, default=1024, help="test image side (pixels)")
    parser.add_argument("--fast-precision", default="auto")
    parser.add_argument("--click-model", default="vit_h")
    parser.add_argument("--click-repeats", type=int, default=50)
    parser.add_argument("--amg-model", default="vit_h")
    parser.add_argument("--amg-points", type=int, default=32)
    parser.add_argument("--amg-repeats", type=int, default=2)
    parser.add_argument("--amg-settings", default="default,permissive",
                        help="thresholds: SAM's (default) and/or none (permissive)")
    parser.add_argument("--volume-model", default="vit_b")
    parser.add_argument("--compile-model", default="vit_b",
                        help="model whose torch.compile warm-up and speed are measured "
                        "('none' to skip)")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--volume-slices", type=int, default=64)
    parser.add_argument("--smoke", action="store_true",
                        help="toy sizes on any device, to test this script")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.models = ["vit_t"]
        args.batches, args.repeats, args.warmup, args.size = "1,2", 1, 0, 256
        args.click_model = args.amg_model = args.volume_model = "vit_t"
        args.compile_model, args.compile_backend = "vit_t", "eager"  # no compiler needed
        args.amg_settings = "permissive"
        args.click_repeats, args.amg_points, args.amg_repeats, args.volume_slices = 2, 3, 1, 2
        if args.fast_precision == "auto" and args.device == "cpu":
            args.fast_precision = "bf16"  # exercise the autocast path on the CPU
    args.batches = [int(b) for b in str(args.batches).split(",")]
    result = run(args)
    write_json(args.json, result)
    print(summary(result))
    return result


if __name__ == "__main__":
    main()
