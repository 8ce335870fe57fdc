#!/usr/bin/env python3
"""Copies a Hugging Face model directory, converting F32 tensors of model.safetensors to F16
(plain Python, no numpy/torch). Used to carry stories15M (61 MB fp32 → 30 MB fp16) to the GPU
machine, whose runs take at most 64 MiB of files; the reference GPTQ figures were measured with
fp16 weights, so nothing is lost for the GPU acceptance run.

Usage: python3 worker/runtime/testdata/to_fp16.py SRC_DIR DST_DIR
"""
import json
import os
import shutil
import struct
import sys
from array import array


def convert(src_file, dst_file):
    with open(src_file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out_header, chunks, offset = {}, [], 0
    for name, info in header.items():
        if name == "__metadata__":
            out_header[name] = info
            continue
        begin, end = info["data_offsets"]
        raw = data[begin:end]
        dtype = info["dtype"]
        if dtype == "F32":
            values = array("f")
            values.frombytes(raw)
            if sys.byteorder != "little":
                values.byteswap()
            raw = struct.pack("<%de" % len(values), *values)
            dtype = "F16"
        out_header[name] = {"dtype": dtype, "shape": info["shape"],
                            "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    h = json.dumps(out_header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(dst_file, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for c in chunks:
            f.write(c)


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    src, dst = sys.argv[1], sys.argv[2]
    os.makedirs(dst, exist_ok=True)
    for fn in os.listdir(src):
        if fn.endswith(".safetensors"):
            convert(os.path.join(src, fn), os.path.join(dst, fn))
        elif os.path.isfile(os.path.join(src, fn)):
            shutil.copyfile(os.path.join(src, fn), os.path.join(dst, fn))
    cfg_path = os.path.join(dst, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["torch_dtype"] = "float16"
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
