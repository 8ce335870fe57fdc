#!/usr/bin/env python3
"""Self-test of check_gptq_checkpoint.py's unpacking (torch, CPU is enough).

Packs random codes with a packer written word by word from the format text (gptq-format.md:
2/4/8-bit runs of 32/b rows per word, lowest bits first; 3-bit 10-1-10-1-10 words) in plain
Python integers, and checks unpack_bitstream() recovers them along both dims, plus the v1
symmetric 4-bit zero word 0x77777777 -> zero 8 after the +1.
Run: python3 tests/gpu_python/test_unpack.py   (prints OK, exits 1 on a mismatch)
"""
import os
import random
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_gptq_checkpoint import dequantize, unpack_bitstream  # noqa: E402


def to_int32(u):
    return u - (1 << 32) if u >= (1 << 31) else u


def pack_column(values, bits):
    """Words for one column of `values` (len multiple of 32 for 3 bits, of 32/b otherwise)."""
    words = []
    if bits == 3:
        for base in range(0, len(values), 32):
            v = values[base : base + 32]
            w0 = w1 = w2 = 0
            for j in range(10):
                w0 |= v[j] << (3 * j)
            w0 |= (v[10] & 0b11) << 30
            w1 |= (v[10] >> 2) & 1
            for j in range(11, 21):
                w1 |= v[j] << (3 * (j - 11) + 1)
            w1 |= (v[21] & 1) << 31
            w2 |= (v[21] >> 1) & 0b11
            for j in range(22, 32):
                w2 |= v[j] << (3 * (j - 22) + 2)
            words += [w0, w1, w2]
    else:
        per = 32 // bits
        for r in range(len(values) // per):
            w = 0
            for j in range(per):
                w |= values[r * per + j] << (bits * j)
            words.append(w)
    return [to_int32(w) for w in words]


def main():
    rng = random.Random(1)
    for bits in (2, 3, 4, 8):
        k, n = 64, 96
        codes = [[rng.randrange(1 << bits) for _ in range(n)] for _ in range(k)]
        cols = [pack_column([codes[r][c] for r in range(k)], bits) for c in range(n)]
        qweight = torch.tensor([[cols[c][r] for c in range(n)] for r in range(len(cols[0]))],
                               dtype=torch.int32)
        got = unpack_bitstream(qweight, bits, k, dim=0)
        if not torch.equal(got, torch.tensor(codes, dtype=torch.int32)):
            print(f"FAIL: qweight unpack, {bits} bits", file=sys.stderr)
            sys.exit(1)
        rows = [pack_column(codes[r], bits) for r in range(k)]  # along N, like qzeros
        got = unpack_bitstream(torch.tensor(rows, dtype=torch.int32), bits, n, dim=1)
        if not torch.equal(got, torch.tensor(codes, dtype=torch.int32)):
            print(f"FAIL: qzeros unpack, {bits} bits", file=sys.stderr)
            sys.exit(1)
    # dequantize(): w[n, k] = scale[g_idx[k], n] * (q[k, n] - z[g_idx[k], n]), v1 and v2, with
    # an act-order (non-monotonic) g_idx.
    for bits in (2, 3, 4, 8):
        for fmt in ("gptq", "gptq_v2"):
            k, n, gs = 64, 32, 16
            groups = k // gs
            perm = list(range(k))
            rng.shuffle(perm)
            g_idx = [perm.index(i) // gs for i in range(k)]
            codes = [[rng.randrange(1 << bits) for _ in range(n)] for _ in range(k)]
            zeros = [[rng.randrange(1, 1 << bits) for _ in range(n)] for _ in range(groups)]
            scales = torch.rand(groups, n).half() + 0.01
            stored = [[z - 1 if fmt == "gptq" else z for z in row] for row in zeros]
            cols = [pack_column([codes[r][c] for r in range(k)], bits) for c in range(n)]
            tensors = {
                "m.qweight": torch.tensor([[cols[c][r] for c in range(n)]
                                           for r in range(len(cols[0]))], dtype=torch.int32),
                "m.qzeros": torch.tensor([pack_column(row, bits) for row in stored],
                                         dtype=torch.int32),
                "m.scales": scales,
                "m.g_idx": torch.tensor(g_idx, dtype=torch.int32),
            }
            qcfg = {"bits": bits, "group_size": gs, "checkpoint_format": fmt, "desc_act": True,
                    "static_groups": False}
            got = dequantize("m", tensors, qcfg)
            want = torch.tensor([[float(scales[g_idx[kk], nn]) * (codes[kk][nn] - zeros[g_idx[kk]][nn])
                                  for kk in range(k)] for nn in range(n)])
            if not torch.allclose(got, want, rtol=0, atol=1e-6):
                print(f"FAIL: dequantize {bits} bits {fmt}", file=sys.stderr)
                sys.exit(1)
    z = unpack_bitstream(torch.tensor([[0x77777777]], dtype=torch.int32), 4, 8, dim=1) + 1
    if not torch.equal(z, torch.full((1, 8), 8, dtype=torch.int32)):
        print("FAIL: v1 symmetric zeros", file=sys.stderr)
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
