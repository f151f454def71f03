#!/usr/bin/env bash
# Run the CPU benchmarks one after another (nothing else should run meanwhile)
# and keep their JSON in benchmarks/results/. The tables in docs/benchmarks.md
# are copied from this output.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-../.venv/bin/python}
mkdir -p results
$PY bench_predictor.py --model vit_b --rounds 2 --repeats 2 --click-repeats 20 --json results/predictor_vit_b.json
$PY bench_vit_t.py --rounds 3 --repeats 5 --json results/vit_t.json
$PY bench_amg.py --model vit_b --size 512 --points 16 --thresholds default,permissive --rounds 1 --repeats 1 --json results/amg_vit_b.json
$PY bench_volume.py --models vit_t vit_b --slices 8 --json results/volume.json
$PY bench_cli_segment.py --models vit_t vit_b --slices 4 --json results/cli_segment.json
