#!/usr/bin/env bash
# The whole GPU job in one call (device tool): GPU tests, scan and sparse-attention tuning, scaling benchmarks
# (every registry case eager / torch.compile / CUDA graphs, with ratios to the dense module).
# Usage on the GPU machine, from the repo root: OUT=/some/dir bash benchmarks/gpu_suite.sh [verify]
# ("verify": only the GPU tests, the scan's GPU time per call, the fused layers eager / compiled /
# CUDA graphs at 8K and 32K, and host / wall time per call eager vs compiled: one device call)
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT/r"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv | tee "$OUT/r/gpu.txt"
if [ "${1:-}" = verify ]; then  # one device call (under 10 minutes): tests, the scan, every fused layer compiled
  python3 -m pytest -m gpu tests/gpu -q -p no:cacheprovider -n 8 -rf --tb=line 2>&1 | tee "$OUT/r/gpu_tests.log" | tail -8
  python3 benchmarks/scan_tuning.py --out "$OUT/r/graph" --graph 2>&1 | tail -4
  python3 -m hvlm_export.cli bench --device cuda --dtype fp16 --repeats 15 --modes eager compiled cudagraphs \
    --lengths 8192 32768 --names mamba strided strided_causal local_global performer performer_causal \
    --out "$OUT/r" > "$OUT/r/bench_verify.log" 2>&1
  tail -22 "$OUT/r/bench_verify.log"
  python3 benchmarks/compile_modes.py --no-direct --lengths 1024 8192 --names strided strided_causal local_global \
    performer performer_causal mamba cross_memory > "$OUT/r/compile_modes.log" 2>&1
  tail -17 "$OUT/r/compile_modes.log"
  tar -C "$OUT" -cf "$OUT/gpu_results.tar" r && rm -rf "$OUT/r"
  exit 0
fi
python3 -m pytest -m gpu tests/gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/r/gpu_tests.log" | tail -5
python3 -m pytest -m trt tests/trt -q -p no:cacheprovider -rs 2>&1 | tee "$OUT/r/trt_tests.log" | tail -3
python3 benchmarks/scan_tuning.py --out "$OUT/r" 2>&1 | tail -9
python3 benchmarks/sparse_tuning.py --lengths 8192 32768 --out "$OUT/r/sparse_tuning.json" 2>&1 | tail -9
python3 -m hvlm_export.cli bench --device cuda --dtype fp16 --repeats 20 --modes eager compiled cudagraphs \
  --lengths 1024 2048 4096 8192 16384 32768 65536 --out "$OUT/r" > "$OUT/r/bench_fp16.log" 2>&1
tail -40 "$OUT/r/bench_fp16.log"
tar -C "$OUT" -cf "$OUT/gpu_results.tar" r && rm -rf "$OUT/r"
