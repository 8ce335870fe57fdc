#!/usr/bin/env python3
"""Writes a float16 copy of a float32/float16 safetensors file (standard library only).

Used to carry stories15M to the GPU machine under the 64 MiB transfer limit.
usage: to_fp16.py IN.safetensors OUT.safetensors
"""
import json
import struct
import sys
from array import array


def main(src, dst):
    with open(src, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        meta = header.pop("__metadata__", None)
        out_header, chunks, offset = {}, [], 0
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            start, end = info["data_offsets"]
            f.seek(base + start)
            raw = f.read(end - start)
            if info["dtype"] == "F32":
                vals = array("f")
                vals.frombytes(raw)
                raw = struct.pack("<%de" % len(vals), *vals)
            elif info["dtype"] != "F16":
                raise SystemExit(f"{src}: tensor {name}: unsupported dtype {info['dtype']}")
            out_header[name] = {"dtype": "F16", "shape": info["shape"],
                                "data_offsets": [offset, offset + len(raw)]}
            chunks.append(raw)
            offset += len(raw)
    if meta is not None:
        out_header["__metadata__"] = meta
    hb = json.dumps(out_header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for c in chunks:
            f.write(c)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
