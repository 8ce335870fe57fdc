#!/usr/bin/env bash
# GPU-machine performance pass: builds the worker and the GPTQ tests, runs the CUDA agreement
# tests, the per-module benchmark (GPTQ, pack, dequantize) and the 7B-shape whole-job benchmark.
# Carry: .debs and .gpu-data. Results in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source .debs/device-env.sh .debs > /dev/null
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DGPTQ_BUILD_SERVER=OFF \
  -DCMAKE_PREFIX_PATH="$CMAKE_PREFIX_PATH" -DGPTQ_TEST_DATA_ROOT="$PWD/.gpu-data" $DEVICE_CMAKE_ARGS > "$OUT/configure.txt" 2>&1 \
  || { tail -30 "$OUT/configure.txt"; exit 1; }
cmake --build build-gpu -j 16 --target gptq-worker gptq_cuda_test gptq_bench runtime_gpu_test 2>&1 | grep -E "error|FAILED" | head -20
echo "== gptq_cuda_test"; ./build-gpu/bin/gptq_cuda_test 2>&1 | grep -E "PASSED|FAILED|Failure" | head
echo "== runtime_gpu_test"; GPTQ_TEST_DATA_ROOT="$PWD/.gpu-data" ./build-gpu/bin/runtime_gpu_test 2>&1 | grep -E "cuda |PASSED|FAILED|Failure" | head
echo "== gptq_bench"; ./build-gpu/bin/gptq_bench --device cuda --full --runs 5 --out "$OUT/gptq_bench_cuda.json" 2>&1 | tail -5
echo "== 7B shape"; bash deploy/gpu/bench-7b.sh 2>&1 | tail -12
