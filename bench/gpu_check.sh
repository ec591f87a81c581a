#!/usr/bin/env bash
# The one prepared GPU script of issue 5, for a machine with an NVIDIA GPU
# (the device tool's H200: CuPy, PyTorch, pytest and nvcc are already there).
# Installs nothing. In one call it:
#   1. prints the GPU, driver and library versions;
#   2. runs the gpu-marked parity tests (tests/ops/ and the whole-model ones) and the nvcc/NVRTC compile test;
#   3. benchmarks every kernel and the training step of each model against
#      PyTorch + cuDNN at batch 16 and 64 (bench/gpu_bench.py), table last.
# Output: bench/results/gpu_check.txt (and a copy in $OUT when set, so the
# device tool brings it back). Usage: bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-/tmp/hitcnn_numba_cache}"
export MPLBACKEND=Agg
PY="${PYTHON:-python3}"
mkdir -p bench/results
LOG=bench/results/gpu_check.txt
{
  echo "# bench/gpu_check.sh  $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | head -3
  "$PY" -c "import sys, cupy, torch, numpy; print('python', sys.version.split()[0], '| numpy', numpy.__version__, '| cupy', cupy.__version__, '| torch', torch.__version__, '| cuda available', torch.cuda.is_available())"
  echo "== tests (gpu parity + compile) =="
  timeout 120 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" -m gpu tests/ops -rfEs 2>&1 | tail -20
  timeout 240 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_gpu_parity.py tests/test_gpu_integration.py tests/test_gpu_compile.py -k "not emulation" -rfEs 2>&1 | tail -40
  echo "== benchmark =="
  timeout 300 "$PY" bench/gpu_bench.py "$@" 2>&1
} 2>&1 | tee "$LOG"
if [ -n "${OUT:-}" ]; then cp "$LOG" "$OUT/"; fi
