"""``napari-sam info``: versions, compute devices, the cache folder and the known models."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from napari_sam.cli.common import (
    add_subcommand,
    package_version,
)


def add(subparsers: Any) -> None:
    parser = add_subcommand(
        subparsers,
        "info",
        help="show versions, compute devices, the cache folder and the known models "
        "(and which have an AIS decoder)",
    )
    parser.set_defaults(handler=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    import platform

    from napari_sam.runtime import config, weights
    from napari_sam.runtime.device import describe_devices
    from napari_sam.runtime.loader import resolve_model_type

    devices = describe_devices()
    lines = [
        f"napari-sam {package_version()}",
        f"Python {platform.python_version()} ({sys.executable})",
        f"PyTorch {devices['torch_version']}",
    ]
    if devices["cuda_available"]:
        gpus = ", ".join(
            f"cuda:{index} {name}" for index, name in enumerate(devices["cuda_devices"])
        )
        lines.append(f"CUDA: available (built for CUDA {devices['cuda_version']}): {gpus}")
    else:
        built = devices["cuda_version"]
        note = f"PyTorch built for CUDA {built}, no usable GPU" if built else "CPU-only PyTorch"
        lines.append(f"CUDA: not available ({note})")
    lines.append(f"MPS (Apple GPU): {'available' if devices['mps_available'] else 'not available'}")
    lines.append(f"Auto device: {devices['auto']}")
    try:
        auto_model = resolve_model_type("auto", devices["auto"])
    except Exception as exc:  # diagnostics must not fail because the model code is broken
        auto_model = f"unknown (the model code cannot be imported: {exc})"
    lines.append(f"Auto model type: {auto_model}")
    lines.append(_precision_line(devices["auto"]))

    folder = config.cache_dir(create=False)
    origin = config.cache_dir_origin()
    exists = "" if folder.is_dir() else "does not exist yet"
    notes = "; ".join(note for note in (origin, exists) if note)
    lines.append(f"Cache folder: {folder}" + (f" ({notes})" if notes else ""))
    lines.append("Checkpoints (AIS: with micro-sam's instance decoder for automatic instance")
    lines.append("segmentation; its file is cached next to the model's):")
    width = max(len(key) for key in weights.CHECKPOINTS)
    fwidth = max(len(info.filename) for info in weights.CHECKPOINTS.values())
    for key, info in weights.CHECKPOINTS.items():
        state = _cache_state(folder / info.filename, info)
        if info.decoder is not None:
            decoder_state = _cache_state(folder / info.decoder.filename, info.decoder)
            if decoder_state != state:
                state = f"model {state}, decoder {decoder_state}"
        lines.append(
            f"  {key:<{width}} {info.filename:<{fwidth}} {_format_mb(info.size_bytes):>10}  "
            f"{'AIS' if info.decoder is not None else '   '}  {state}"
        )
    print("\n".join(lines))
    return 0


def _precision_line(device: Any) -> str:
    """Which precision "auto" gives the image encoder on ``device``, and why."""
    from napari_sam.runtime import config

    try:
        from napari_sam.runtime.precision import resolve_auto

        choice = resolve_auto(device)
    except Exception as exc:  # diagnostics must not fail
        return f"Image-encoder precision: unknown ({exc})"
    override = config.default_precision()
    note = (
        f"; {config.PRECISION_ENV}={override} overrides it"
        if override.strip().lower() != "auto" else ""
    )
    attention = ""
    if choice.dtype == "bfloat16" and str(device).startswith("cpu"):
        from napari_sam.runtime.precision import cpu_bf16

        cpu = cpu_bf16()
        if cpu.attention_speedup is not None:
            attention = (f"; attention by "
                         f"{'matrix products' if cpu.attention == 'matmul' else 'fused kernel'}"
                         f" (matrix products measured {cpu.attention_speedup:.2f}× as fast)")
    return (
        f"Image-encoder precision (auto) on {device}: {choice.dtype} "
        f"({choice.reason.removeprefix('auto: ')}){attention}{note}; "
        "masks and scores in float32"
    )


def _format_mb(size: int | None) -> str:
    return "size ?" if size is None else f"{size / 1e6:.1f} MB"


def _cache_state(path: Any, info: Any) -> str:
    try:
        size = path.stat().st_size
    except OSError:
        return "not cached"
    if info.size_bytes is None or size == info.size_bytes:
        return "cached"
    return f"incomplete ({size} of {info.size_bytes} bytes; will be downloaded again)"


# --------------------------------------------------------------------------- download
