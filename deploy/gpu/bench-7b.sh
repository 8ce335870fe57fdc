#!/usr/bin/env bash
# GPU-machine benchmark: the whole quantize job on a random-weight Llama-2-7B-shaped model
# (tests/bench/make_random_llama.py), 128 × 2048 c4 calibration windows, 4-bit g128 sym,
# fp16 compute, no perplexity passes (random weights). Compare with REFERENCE.md (≈23 s per
# decoder layer, ≈12 min extrapolated, on the H100). Carry: .debs and .gpu-data.
# Writes $OUT/bench_7b_report.json and $OUT/bench_7b.txt.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source .debs/device-env.sh .debs > /dev/null
nvidia-smi -L | tee "$OUT/bench_7b.txt"
if [ ! -x build-gpu/bin/gptq-worker ]; then
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DGPTQ_BUILD_SERVER=OFF -DGPTQ_BUILD_TESTS=OFF \
    -DCMAKE_PREFIX_PATH="$CMAKE_PREFIX_PATH" $DEVICE_CMAKE_ARGS > "$OUT/configure.txt" 2>&1 || { tail -30 "$OUT/configure.txt"; exit 1; }
  cmake --build build-gpu -j 16 --target gptq-worker 2>&1 | grep -E "error|FAILED" | head -20
fi
t0=$(date +%s)
python3 tests/bench/make_random_llama.py /tmp/llama7b --shape 7b \
  --tokenizer .gpu-data/models/stories15M-hf/tokenizer.model 2>&1 | tail -2 | tee -a "$OUT/bench_7b.txt"
echo "model written in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/bench_7b.txt"
rm -rf /tmp/llama7b-w4g128
/usr/bin/time -v ./build-gpu/bin/gptq-worker quantize --model /tmp/llama7b --output /tmp/llama7b-w4g128 \
  --bits 4 --group-size 128 --damp-percent 0.01 --sym --dataset c4 --nsamples 128 --seqlen 2048 \
  --data-dir .gpu-data/text --device cuda --report "$OUT/bench_7b_report.json" > "$OUT/bench_7b_progress.txt" 2>&1
rc=$?
grep -E "quantize layer|done in|error|Error" "$OUT/bench_7b_progress.txt" | tail -8 | tee -a "$OUT/bench_7b.txt"
grep -E "Elapsed|Maximum resident" "$OUT/bench_7b_progress.txt" | tee -a "$OUT/bench_7b.txt"
echo "rc=$rc" | tee -a "$OUT/bench_7b.txt"
python3 - "$OUT/bench_7b_report.json" <<'PY' | tee -a "$OUT/bench_7b.txt"
import json, statistics, sys
r = json.load(open(sys.argv[1]))
print("seconds:", {k: round(v, 2) for k, v in r["seconds"].items()})
print("peak_gpu_GiB:", round(r["peak_gpu_bytes"] / 2**30, 2))
mods = r["modules"]
by = {}
for m in mods:
    by.setdefault(m["name"].split(".")[-1], []).append(m["seconds"])
print("median module seconds:", {k: round(statistics.median(v), 3) for k, v in by.items()})
print("modules:", len(mods), "fallbacks:", sum(1 for m in mods if m.get("fallback")))
PY
du -sh /tmp/llama7b /tmp/llama7b-w4g128 | tee -a "$OUT/bench_7b.txt"
