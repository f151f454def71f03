"""Helpers shared by the benchmark scripts.

Each implementation is measured in its own fresh Python process (so one
implementation's allocator state, caches and threads never affect the other),
and the processes are alternated so that slow drifts of the machine hit both
alike. Peak memory is the growth of the process's resident set (VmHWM) during
the measured call, after resetting the high-water mark.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def reset_peak_rss() -> None:
    """Reset this process's resident-set high-water mark (Linux; no-op elsewhere)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident set size (VmHWM) of this process in MiB since the last reset."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """Current resident set size (VmRSS) of this process in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def measure(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict:
    """Run ``fn`` ``warmup`` times, then ``repeats`` timed times.

    Returns the median and all times in seconds, and the peak RSS growth (MiB)
    over all calls (warm-up included) relative to the RSS just before them:
    the working memory the operation needs beyond the loaded model.
    """
    base = current_rss_mb()
    reset_peak_rss()
    for _ in range(warmup):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(times),
        "times_s": times,
        "peak_rss_growth_mb": peak_rss_mb() - base,
        "rss_before_mb": base,
    }


def run_worker(script: Path, args: Sequence[str], env: dict | None = None) -> dict:
    """Run ``python script --worker ARGS`` in a fresh process; parse its last JSON line."""
    cmd = [sys.executable, str(script), "--worker", *args]
    out = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark worker failed: {' '.join(cmd)}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine_info() -> dict:
    """What the figures were measured on."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))


def random_checkpoint(model_type: str, path: Path, seed: int = 0) -> Path:
    """Save the reference implementation's random ``model_type`` weights to ``path``.

    Both implementations then load this one file, so they compute with
    identical weights. The file is reused if it already exists.
    """
    if path.exists():
        return path
    torch.manual_seed(seed)
    if model_type == "vit_t":
        from mobile_sam import sam_model_registry as ref_registry
    else:
        from segment_anything import sam_model_registry as ref_registry
    model = ref_registry[model_type]()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def load_impl(impl: str, model_type: str, checkpoint: Path):
    """(model, predictor class) of implementation ``impl`` ('ours' or 'ref')."""
    if impl == "ours":
        from napari_sam import SamPredictor, sam_model_registry

        return sam_model_registry[model_type](checkpoint=str(checkpoint)), SamPredictor
    if model_type == "vit_t":
        from mobile_sam import SamPredictor, sam_model_registry
    else:
        from segment_anything import SamPredictor, sam_model_registry
    return sam_model_registry[model_type](checkpoint=str(checkpoint)).eval(), SamPredictor


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
