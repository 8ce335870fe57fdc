#!/usr/bin/env python3
"""Independent check of a checkpoint directory written by gptq::writer (json + struct only).

Usage: check_checkpoint.py DIR
Validates every safetensors file (8-byte LE header length, JSON header padded with spaces to a
multiple of 8, __metadata__ {"format": "pt"}, tensors contiguous in header order and covering
the data section), the shard names and model.safetensors.index.json (weight_map covers exactly
the tensors of each shard, metadata.total_size), and config.json vs quantize_config.json.
Prints {"tensors": {name: {"dtype", "shape", "file", "sha256"}}, "num_shards": n} on success;
exits 1 with a message on the first violation.
"""
import hashlib
import json
import os
import re
import struct
import sys

SIZES = {"F16": 2, "BF16": 2, "F32": 4, "I32": 4}


def fail(msg):
    print("check_checkpoint: FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def read_shard(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        fail(f"{path}: too short")
    (n,) = struct.unpack("<Q", data[:8])
    if n % 8 != 0:
        fail(f"{path}: header length {n} not a multiple of 8")
    raw = data[8 : 8 + n]
    text = raw.decode("utf-8")
    stripped = text.rstrip(" ")
    if len(text) - len(stripped) >= 8:
        fail(f"{path}: header padded with {len(text) - len(stripped)} spaces (>= 8)")
    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            fail(f"{path}: duplicate keys in header")
        return dict(pairs)  # keeps the file's key order

    header = json.loads(text, object_pairs_hook=no_duplicates)
    pairs = list(header.items())
    if header.get("__metadata__") != {"format": "pt"}:
        fail(f"{path}: __metadata__ is {header.get('__metadata__')!r}, expected {{'format': 'pt'}}")
    body = data[8 + n :]
    offset = 0
    tensors = {}
    for name, info in pairs:
        if name == "__metadata__":
            continue
        dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in SIZES:
            fail(f"{path}: {name}: dtype {dtype}")
        numel = 1
        for d in shape:
            numel *= d
        if begin != offset:
            fail(f"{path}: {name} starts at {begin}, expected {offset} (not contiguous in header order)")
        if end - begin != numel * SIZES[dtype]:
            fail(f"{path}: {name}: {end - begin} bytes for {dtype}{shape}")
        offset = end
        tensors[name] = {"dtype": dtype, "shape": shape,
                         "sha256": hashlib.sha256(body[begin:end]).hexdigest()}
    if offset != len(body):
        fail(f"{path}: tensors cover {offset} of {len(body)} data bytes")
    return tensors


def main():
    if len(sys.argv) != 2:
        fail("usage: check_checkpoint.py DIR")
    d = sys.argv[1]
    names = sorted(os.listdir(d))
    shards = [n for n in names if n.endswith(".safetensors")]
    all_tensors = {}
    total = 0
    if shards == ["model.safetensors"]:
        if "model.safetensors.index.json" in names:
            fail("single shard but an index exists")
        t = read_shard(os.path.join(d, "model.safetensors"))
        for k, v in t.items():
            v["file"] = "model.safetensors"
        all_tensors.update(t)
    else:
        num = len(shards)
        expected = [f"model-{i:05d}-of-{num:05d}.safetensors" for i in range(1, num + 1)]
        if shards != expected:
            fail(f"shard names {shards}, expected {expected}")
        with open(os.path.join(d, "model.safetensors.index.json")) as f:
            index = json.load(f)
        wm = index["weight_map"]
        for s in shards:
            t = read_shard(os.path.join(d, s))
            for k, v in t.items():
                if k in all_tensors:
                    fail(f"tensor {k} in two shards")
                if wm.get(k) != s:
                    fail(f"weight_map[{k}] = {wm.get(k)}, tensor is in {s}")
                v["file"] = s
            all_tensors.update(t)
        if set(wm) != set(all_tensors):
            fail("weight_map keys differ from the shards' tensors")
        for v in all_tensors.values():
            n = 1
            for x in v["shape"]:
                n *= x
            total += n * SIZES[v["dtype"]]
        if index["metadata"]["total_size"] != total:
            fail(f"total_size {index['metadata']['total_size']} != {total}")
    with open(os.path.join(d, "config.json")) as f:
        config = json.load(f)
    if "quantization_config" in config or "quantize_config.json" in names:
        with open(os.path.join(d, "quantize_config.json")) as f:
            qc = json.load(f)
        if qc != config.get("quantization_config"):
            fail("quantize_config.json differs from config.json's quantization_config")
        if qc["checkpoint_format"] != qc["format"]:
            fail("checkpoint_format != format")
        if not qc["sym"] and qc["checkpoint_format"] != "gptq_v2":
            fail("sym=false with a v1 checkpoint")
    if any(re.search(r"\.tmp-", n) for n in os.listdir(os.path.dirname(os.path.abspath(d)))):
        fail("a temporary directory is left beside the output")
    print(json.dumps({"num_shards": len(shards), "tensors": all_tensors}, sort_keys=True))


if __name__ == "__main__":
    main()
