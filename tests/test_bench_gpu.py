"""The GPU benchmark script runs end to end (``--smoke``: vit_t, toy sizes, on the CPU).

It produces the GPU table of docs/benchmarks.md when a GPU is available; this
test keeps the script working where there is none. Its timings are not checked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench_gpu(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_gpu

    yield bench_gpu
    sys.modules.pop("bench_gpu", None)


def test_peak_table(bench_gpu):
    assert bench_gpu.bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench_gpu.bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench_gpu.bf16_peak_tflops("NVIDIA H200") == 989.0
    assert bench_gpu.bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench_gpu.bf16_peak_tflops("Some Future GPU") is None
    assert bench_gpu.bf16_peak_tflops(None) is None


def test_smoke_run_on_cpu(bench_gpu, tmp_path):
    out = tmp_path / "gpu.json"
    result = bench_gpu.main(["--smoke", "--device", "cpu", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    (enc,) = result["encoder"]
    assert enc["model"] == "vit_t" and enc["fast_precision"] == "bfloat16"
    assert 70 < enc["gflop_per_image"] < 85  # TinyViT-5M at 1024²: ~78 GFLOP
    kinds = {(r["impl"], r["precision"], r["batch"]) for r in enc["runs"]}
    assert kinds == {("reference", "fp32", 1), ("ours", "fp32", 1),
                     ("ours", "bfloat16", 1), ("ours", "bfloat16", 2)}
    assert all(r["ms_per_image"] > 0 for r in enc["runs"])
    assert enc["percent_of_bf16_peak"] is None  # no GPU, no peak
    acc = result["accuracy"]["vit_t"]
    assert acc["clicks"] == 16 and acc["mask_iou_min"] >= 0.9
    assert 0 < acc["embedding_rel_err"] < 0.05
    assert set(result["click"]) == {"reference", "ours"}
    assert {"permissive_reference", "permissive_ours"} <= set(result["amg"])
    assert result["volume"]["ours"]["slices_per_s"] > 0
    assert result["compile"]["backend"] == "eager" and result["compile"]["first_call_s"] > 0
    assert "| vit_t |" in bench_gpu.summary(result)
