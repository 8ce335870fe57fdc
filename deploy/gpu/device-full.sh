#!/usr/bin/env bash
# GPU-machine run of the whole worker: builds against LibTorch 2.11 CUDA, makes the
# Mistral/Qwen2/Llama fixtures with transformers, runs the CUDA tests, quantizes stories15M on
# the GPU and checks the checkpoint with an independent Python loader + transformers.
# Carry: .debs and .gpu-data (deploy/gpu/prepare-carry.sh). Results land in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
log() { echo "== $*"; }
source .debs/device-env.sh .debs
export GPTQ_TEST_DATA_ROOT="$PWD/.gpu-data" GPTQ_DATA_DIR="$PWD/.gpu-data/text" PYTHONUNBUFFERED=1
nvidia-smi -L
rm -f build-gpu/CMakeCache.txt
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DGPTQ_BUILD_SERVER=OFF -DCMAKE_PREFIX_PATH="$CMAKE_PREFIX_PATH" \
  -DGPTQ_TEST_DATA_ROOT="$PWD/.gpu-data" $DEVICE_CMAKE_ARGS > "$OUT/configure.txt" 2>&1 \
  || { tail -40 "$OUT/configure.txt"; exit 1; }
log build
cmake --build build-gpu -j 16 --target gptq-worker runtime_model_test runtime_gpu_test gptq_cuda_test gptq_bench worker_serve_integration_test \
  2>&1 | grep -E "error|FAILED|Linking CXX executable" | head -40
readelf -d build-gpu/bin/gptq-worker | grep NEEDED | head -6
if [ "${FIXTURES:-0}" = 1 ]; then
  log fixtures
  python3 worker/runtime/testdata/make_fixtures.py 2>&1 | tail -8
  tar czf "$OUT/fixtures.tgz" -C worker/runtime testdata
fi
log "libstdc++ symbols exported by LibTorch"
tlib=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__)+"/lib")')
for l in "$tlib"/libtorch*.so "$tlib"/libc10*.so; do
  echo "$(basename "$l"): $(nm -D --defined-only "$l" 2>/dev/null | grep -c '_ZNSt10filesystem') std::filesystem symbols"
done
if [ "${PRELOAD:-0}" = 1 ]; then
  log "TinyJob without the preload"
  timeout 120 ./build-gpu/bin/runtime_gpu_test --gtest_filter='*TinyJob*' 2>&1 | tail -4
  export LD_PRELOAD=$(g++ -print-file-name=libstdc++.so.6)
  log "LD_PRELOAD=$LD_PRELOAD"
fi
log runtime_model_test
./build-gpu/bin/runtime_model_test 2>&1 | grep -E "^\[  (FAILED|PASSED|SKIPPED) |OK \] Fixture|Failure|expected" | head -40
log runtime_gpu_test
timeout 300 ./build-gpu/bin/runtime_gpu_test 2>&1 | tail -15
log quantize stories15M on cuda
/usr/bin/time -v ./build-gpu/bin/gptq-worker quantize --model .gpu-data/models/stories15M-hf \
  --output /tmp/s15-w4g128 --bits 4 --group-size 128 --damp-percent 0.01 --sym \
  --dataset c4 --nsamples 128 --seqlen 256 --eval tinystories,wikitext2 \
  --data-dir .gpu-data/text --device cuda --report "$OUT/s15_cuda_report.json" 2>&1 \
  | grep -vE "^\s+(Page|File|Socket|Signals|Swaps|Voluntary|Involuntary|Minor|Major|Average|Exit|Percent)" | tail -25
log stories260K on cuda
./build-gpu/bin/gptq-worker quantize --model .gpu-data/models/stories260K-hf --output /tmp/s260 \
  --bits 4 --group-size 32 --dataset tinystories --nsamples 32 --seqlen 128 --data-dir .gpu-data/text \
  --device cuda --report "$OUT/s260_cuda_report.json" 2>&1 | tail -6
log independent loader
python3 tests/gpu_python/test_unpack.py 2>&1 | tail -3
python3 tests/gpu_python/check_gptq_checkpoint.py /tmp/s15-w4g128 .gpu-data/models/stories15M-hf \
  .gpu-data/text/tinystories/tiny.utf8 --seqlen 256 > "$OUT/independent_check.json" 2> "$OUT/independent_check.err"
echo "rc=$?"; cat "$OUT/independent_check.json"; tail -5 "$OUT/independent_check.err"
log gptq_cuda_test + bench
./build-gpu/bin/gptq_cuda_test 2>&1 | grep -E "PASSED|FAILED" | head
./build-gpu/bin/gptq_bench --device cuda --full --runs 5 --out "$OUT/gptq_bench_cuda.json" 2>&1 | tail -3
log worker serve on cuda
GPTQ_TEST_WORKER_DEVICE=cuda:0 ./build-gpu/bin/worker_serve_integration_test 2>&1 | grep -E "OK|FAILED|PASSED|Failure" | head
