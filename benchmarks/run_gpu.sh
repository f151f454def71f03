#!/usr/bin/env bash
# One prepared GPU session (device machine): the CUDA-only tests, then
# bench_gpu.py. Reference packages and missing pure-Python deps travel as wheels
# in .whl/ (see /work/.library/device/README.md); our code runs from src/.
# Usage there:  bash benchmarks/run_gpu.sh OUTDIR
set -uo pipefail
OUTDIR=${1:-benchmarks/results}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src:$PWD/tests
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -p no:cacheprovider -q -o addopts="-ra" \
    tests/test_gpu.py "tests/test_amg_utils.py" -k "gpu or cuda or GPU or fused or bf16 or batched" \
    2>&1 | tee "$OUTDIR/test_gpu.log"
timeout "${BENCH_TIMEOUT:-380}" python3 benchmarks/bench_gpu.py --repeats 5 --click-repeats 30 \
    --amg-repeats 1 --volume-slices 32 --json "$OUTDIR/gpu.json" ${BENCH_ARGS:-} \
    2>&1 | tee "$OUTDIR/bench_gpu.log"
