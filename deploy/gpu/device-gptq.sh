#!/usr/bin/env bash
# GPU-machine run of the GPTQ core: CUDA-vs-CPU agreement tests and per-module timings.
# Run through the device tool from the repo root, carrying .debs (deploy/gpu/prepare-carry.sh).
# Results land in $OUT (gptq_cuda_test.txt, gptq_bench_*.json).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source .debs/device-env.sh .debs
nvidia-smi -L
rm -f build-gpu/CMakeCache.txt
# device-env.sh exports CMAKE_PREFIX_PATH with ";" (a CMake list): pass it as a cache variable.
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DGPTQ_BUILD_SERVER=OFF -DCMAKE_PREFIX_PATH="$CMAKE_PREFIX_PATH" \
  -DGPTQ_TEST_DATA_ROOT="$PWD/.gpu-data" $DEVICE_CMAKE_ARGS > "$OUT/configure.txt" 2>&1 \
  || { tail -40 "$OUT/configure.txt"; exit 1; }
cmake --build build-gpu -j 16 --target gptq_cuda_test gptq_core_test gptq_bench 2>&1 | tail -20
readelf -d build-gpu/bin/gptq_cuda_test | grep NEEDED | head -12
./build-gpu/bin/gptq_cuda_test 2>&1 | tee "$OUT/gptq_cuda_test.txt" | tail -30
./build-gpu/bin/gptq_bench --device cuda --full --runs 5 --out "$OUT/gptq_bench_cuda.json" 2>&1 | tail -20
./build-gpu/bin/gptq_bench --device cuda --full --runs 5 --desc-act --out "$OUT/gptq_bench_cuda_actorder.json" 2>&1 | tail -20
