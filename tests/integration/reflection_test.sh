#!/usr/bin/env bash
# Server reflection from a client that has no .proto file: installs @grpc/grpc-js and
# grpc-js-reflection-client into a cache under the build tree (once), starts the real
# gptq-server (port 0, temp db, no workers) and runs reflection_client.js against it.
# Usage: reflection_test.sh BIN_DIR NPM_CACHE_DIR     Exit: 0 pass, 1 fail, 77 skip (no npm).
set -uo pipefail
bin_dir=$1
cache=$2
here=$(cd "$(dirname "$0")" && pwd)
[ -x "$bin_dir/gptq-server" ] || { echo "FAIL: gptq-server not built at $bin_dir" >&2; exit 1; }
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "SKIP: node/npm not installed"; exit 77
fi
if [ ! -d "$cache/node_modules/grpc-js-reflection-client" ] || \
   [ ! -d "$cache/node_modules/@grpc/grpc-js" ]; then
  mkdir -p "$cache"
  if ! timeout 300 npm install --prefix "$cache" --no-audit --no-fund --loglevel=error \
      @grpc/grpc-js@1.14 grpc-js-reflection-client@1.4.2 >"$cache/npm-install.log" 2>&1; then
    echo "SKIP: npm install of @grpc/grpc-js and grpc-js-reflection-client failed" \
         "(registry unreachable?); see $cache/npm-install.log:"
    tail -5 "$cache/npm-install.log"
    exit 77
  fi
fi
tmp=$(mktemp -d)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
env -u GPTQ_AUTH_TOKEN "$bin_dir/gptq-server" --listen 127.0.0.1:0 --port-file "$tmp/port" \
  --metrics-listen "" --db "$tmp/jobs.db" --local-workers 0 >"$tmp/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 300); do
  [ -s "$tmp/port" ] && break
  kill -0 "$server_pid" 2>/dev/null || { echo "FAIL: gptq-server exited"; cat "$tmp/server.log"; exit 1; }
  sleep 0.1
done
[ -s "$tmp/port" ] || { echo "FAIL: no port file"; cat "$tmp/server.log"; exit 1; }
mkdir -p "$tmp/model" "$tmp/out"
NODE_PATH="$cache/node_modules" timeout 60 node "$here/reflection_client.js" "$(cat "$tmp/port")" \
  "$tmp/model" "$tmp/out/q"
rc=$?
[ $rc -eq 0 ] || tail -20 "$tmp/server.log"
exit $rc
