#!/usr/bin/env bash
# Fills the ignored folders a GPU-machine run carries (run on your own machine, repo root):
#   .debs      Debian gRPC/protobuf/Abseil/... packages (../shared/gpu/bundle-debs.sh) + device-env.sh
#   .gpu-data  stories15M (as float16, to fit the 64 MiB limit), stories260K, text files
set -euo pipefail
cd "$(dirname "$0")/../.."
shared=${GPTQ_SHARED:-../shared}
if [ ! -f .debs/device-env.sh ]; then
  bash "$shared/gpu/bundle-debs.sh" .debs libcurl4-openssl-dev libcurl4 nlohmann-json3-dev \
    libcpp-httplib-dev libcpp-httplib0.11 libprotoc-dev libunistring2 libidn2-0 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1 libnghttp2-14 librtmp1 libssh2-1 libpsl5 libbrotli1 libldap-2.5-0 libsasl2-2
  cp "$shared/gpu/device-env.sh" .debs/
fi
d=.gpu-data
mkdir -p $d/models/stories15M-hf $d/models/stories260K-hf $d/text/c4 $d/text/tinystories $d/text/wikitext2
src=$shared/data/models/stories15M-hf
for f in config.json generation_config.json special_tokens_map.json tokenizer.model tokenizer_config.json; do
  cp "$src/$f" $d/models/stories15M-hf/
done
[ -f $d/models/stories15M-hf/model.safetensors ] || \
  python3 deploy/gpu/to_fp16.py "$src/model.safetensors" $d/models/stories15M-hf/model.safetensors
cp "$shared"/data/models/stories260K-hf/{config.json,generation_config.json,model.safetensors,tok512.bin} $d/models/stories260K-hf/
cp "$shared"/data/text/c4/c4.utf8 $d/text/c4/
cp "$shared"/data/text/tinystories/tiny.utf8 $d/text/tinystories/
cp "$shared"/data/text/wikitext2/wiki.test.raw $d/text/wikitext2/
du -sh .debs $d
