#!/usr/bin/env bash
# The README's test command: installs dependencies, builds, runs unit + integration tests.
# GPU tests skip themselves without a GPU; tests that need ../shared/data skip clearly without it.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash deploy/setup-deps.sh
bash deploy/build.sh
cd build
ctest --output-on-failure -j "$(nproc)" -LE bench --timeout 1500
echo "deploy/test.sh: wall time $(( $(date +%s) - start )) s"
