#!/usr/bin/env bash
# The README's main command: sets everything up and runs the main job end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup-deps.sh
bash deploy/build.sh
if [ ! -x build/bin/gptq-server ] || [ ! -x build/bin/gptqctl ]; then
  echo "demo: the control plane (gptq-server, gptqctl) is not built yet; see the open issue." >&2
  exit 2
fi
exec bash deploy/run-demo.sh
