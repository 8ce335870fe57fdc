#!/usr/bin/env python3
"""Independent check of a GPTQ checkpoint written by gptq-service (needs torch + transformers).

    check_gptq_checkpoint.py OUT_DIR ORIG_MODEL_DIR TEXT_FILE [--seqlen 256]
        [--batch-size 8] [--max-ppl-ratio R] [--max-weight-nmse 1.0] [--no-native]
        [--weights-only]

Written from the format description alone (docs/anchors gptq-format.md), sharing no code with
our packer: reads OUT_DIR's safetensors, unpacks qweight/qzeros for 2/3/4/8 bits as one
little-endian bit stream per column (which is what the 2/4/8-bit word layout and the 3-bit
10-1-10-1-10 layout both are), adds 1 to the zeros for checkpoint_format "gptq" (v1), and
dequantizes w[k, n] = scales[g_idx[k], n] * (q[k, n] - z[g_idx[k], n]). It then loads
LlamaForCausalLM from ORIG_MODEL_DIR, measures the original model's perplexity, puts the
dequantized Linear weights and OUT_DIR's float16 tensors into it, and measures again.
Perplexity = exp(mean NLL) over non-overlapping SEQLEN-token windows of the whole tokenized
text (no BOS; the final partial window dropped; every window predicts tokens 1..SEQLEN-1).
If gptqmodel or optimum is importable it also loads OUT_DIR through transformers' native GPTQ
path and reports that perplexity (optional; failures there are reported, not fatal).

Prints one JSON object on stdout. Exits non-zero (with the reason on stderr) on any format
violation, a weight nmse above --max-weight-nmse, a non-finite perplexity, or a quantized /
original perplexity ratio above --max-ppl-ratio.
"""
import argparse
import glob
import json
import math
import os
import sys

import torch


def die(msg):
    print("check_gptq_checkpoint: FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def load_tensors(out_dir):
    files = sorted(glob.glob(os.path.join(out_dir, "*.safetensors")))
    if not files:
        die(f"no .safetensors in {out_dir}")
    index_path = os.path.join(out_dir, "model.safetensors.index.json")
    weight_map = None
    if os.path.exists(index_path):
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
    try:
        from safetensors.torch import load_file
    except ImportError:
        load_file = read_safetensors

    tensors = {}
    for path in files:
        for name, t in load_file(path).items():
            if name in tensors:
                die(f"tensor {name} appears in two shards")
            if weight_map is not None and weight_map.get(name) != os.path.basename(path):
                die(f"index says {name} is in {weight_map.get(name)}, found in {path}")
            tensors[name] = t
    if weight_map is not None and set(weight_map) != set(tensors):
        die("index weight_map does not match the shards' tensors")
    return tensors


def read_safetensors(path):
    """Fallback reader (json + struct) when the safetensors package is absent."""
    import struct

    dtypes = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
              "I32": torch.int32}
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = bytearray(data[8 + n + begin : 8 + n + end])
        t = torch.frombuffer(raw, dtype=dtypes[info["dtype"]]) if raw else \
            torch.empty(0, dtype=dtypes[info["dtype"]])
        out[name] = t.reshape(info["shape"])
    return out


def unpack_bitstream(words, bits, count, dim):
    """Values of `bits` bits packed LSB-first as one bit stream along `dim` of int32 `words`.

    Returns an int32 tensor with `count` values along `dim` (the others unchanged).
    """
    w = words.to(torch.int32)
    if dim == 0:
        w = w.t()
    shifts = torch.arange(32, device=w.device, dtype=torch.int32)
    # bit i of word j -> stream bit 32 j + i. Arithmetic >> then & 1 is right for every i.
    stream = ((w.unsqueeze(-1) >> shifts) & 1).to(torch.uint8).reshape(w.shape[0], -1)
    if stream.shape[1] != count * bits:
        die(f"packed size {stream.shape[1]} bits != {count} values x {bits} bits")
    stream = stream.reshape(w.shape[0], count, bits).to(torch.int32)
    weights = torch.tensor([1 << i for i in range(bits)], device=w.device, dtype=torch.int32)
    values = (stream * weights).sum(-1, dtype=torch.int32)
    return values.t().contiguous() if dim == 0 else values


def dequantize(prefix, tensors, qcfg):
    bits, group_size = qcfg["bits"], qcfg["group_size"]
    fmt = qcfg.get("checkpoint_format", qcfg.get("format", "gptq"))
    if fmt not in ("gptq", "gptq_v2"):
        die(f"unknown checkpoint_format {fmt}")
    qweight = tensors[prefix + ".qweight"]
    qzeros = tensors[prefix + ".qzeros"]
    scales = tensors[prefix + ".scales"]
    g_idx = tensors[prefix + ".g_idx"].long()
    for name, t, dt in (("qweight", qweight, torch.int32), ("qzeros", qzeros, torch.int32),
                        ("scales", scales, torch.float16), ("g_idx", tensors[prefix + ".g_idx"],
                                                            torch.int32)):
        if t.dtype != dt:
            die(f"{prefix}.{name} has dtype {t.dtype}, expected {dt}")
    k = g_idx.numel()
    n = qweight.shape[1]
    num_groups = math.ceil(k / group_size) if group_size > 0 else 1
    if qweight.shape[0] * 32 != k * bits:
        die(f"{prefix}.qweight rows {qweight.shape[0]} != K*bits/32 = {k * bits / 32}")
    if tuple(scales.shape) != (num_groups, n):
        die(f"{prefix}.scales shape {tuple(scales.shape)} != ({num_groups}, {n})")
    if tuple(qzeros.shape) != (num_groups, n * bits // 32) or (n * bits) % 32:
        die(f"{prefix}.qzeros shape {tuple(qzeros.shape)} != ({num_groups}, {n * bits / 32})")
    if g_idx.min() < 0 or g_idx.max() >= num_groups:
        die(f"{prefix}.g_idx outside [0, {num_groups})")
    if not qcfg.get("desc_act", False) or qcfg.get("static_groups", False):
        expected = torch.arange(k, device=g_idx.device) // (group_size if group_size > 0 else k)
        if not torch.equal(g_idx, expected):
            die(f"{prefix}.g_idx is not k // group_size although desc_act is off or static")
    q = unpack_bitstream(qweight, bits, k, dim=0)            # [K, N]
    z = unpack_bitstream(qzeros, bits, n, dim=1)             # [G, N]
    if fmt == "gptq":
        z = z + 1                                            # v1 stores z - 1
    w = scales.float()[g_idx] * (q.float() - z.float()[g_idx])  # [K, N]
    return w.t().contiguous()                                # Linear weight [N, K]


def tokenize(out_dir, text):
    spm_path = os.path.join(out_dir, "tokenizer.model")
    if os.path.exists(spm_path):
        try:
            import sentencepiece

            sp = sentencepiece.SentencePieceProcessor(model_file=spm_path)
            return sp.encode(text), "sentencepiece"
        except ImportError:
            pass
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out_dir)
    return tok(text, add_special_tokens=False)["input_ids"], type(tok).__name__


@torch.no_grad()
def perplexity(model, ids, seqlen, batch_size, device):
    num_windows = ids.numel() // seqlen
    if num_windows == 0:
        die(f"text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    windows = ids[: num_windows * seqlen].view(num_windows, seqlen)
    total_nll, total_tokens = 0.0, 0
    for start in range(0, num_windows, batch_size):
        batch = windows[start : start + batch_size].to(device)
        logits = model(input_ids=batch).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
            reduction="sum")
        total_nll += nll.item()
        total_tokens += batch[:, 1:].numel()
    return math.exp(total_nll / total_tokens), num_windows


def load_model(path, device):
    from transformers import LlamaForCausalLM

    try:
        model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    except TypeError:  # transformers < 4.56 spells it torch_dtype
        model = LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    return model.to(device).eval()


def weights_only(args):
    with open(os.path.join(args.out_dir, "quantize_config.json")) as f:
        qcfg = json.load(f)
    tensors = load_tensors(args.out_dir)
    orig = load_tensors(args.orig_model_dir)
    prefixes = sorted(k[: -len(".qweight")] for k in tensors if k.endswith(".qweight"))
    if not prefixes:
        die("no .qweight tensors: not a GPTQ checkpoint")
    nmse = {}
    for prefix in prefixes:
        w = dequantize(prefix, tensors, qcfg)
        o = orig.get(prefix + ".weight")
        if o is None or tuple(o.shape) != tuple(w.shape):
            die(f"{prefix}: no original weight of shape {tuple(w.shape)}")
        o = o.float()
        nmse[prefix] = ((w - o).pow(2).sum() / o.pow(2).sum()).item()
    worst = max(nmse, key=nmse.get)
    print(json.dumps({"out_dir": args.out_dir, "quantize_config": qcfg,
                      "num_quantized_modules": len(prefixes),
                      "weight_nmse": {"mean": sum(nmse.values()) / len(nmse),
                                      "max": nmse[worst], "max_module": worst,
                                      "per_module": nmse}}, indent=2))
    if nmse[worst] > args.max_weight_nmse:
        die(f"weight nmse {nmse[worst]:.4g} of {worst} > {args.max_weight_nmse} (unpacking wrong?)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("orig_model_dir")
    ap.add_argument("text_file")
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-ppl-ratio", type=float, default=None)
    ap.add_argument("--max-weight-nmse", type=float, default=1.0)
    ap.add_argument("--no-native", action="store_true")
    ap.add_argument("--weights-only", action="store_true",
                    help="no transformers, no perplexity: only dequantize every module and "
                         "report its nmse against ORIG_MODEL_DIR's safetensors weights")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False

    with open(os.path.join(args.out_dir, "quantize_config.json")) as f:
        qcfg = json.load(f)
    with open(os.path.join(args.out_dir, "config.json")) as f:
        config = json.load(f)
    if config.get("quantization_config") != qcfg:
        die("config.json quantization_config differs from quantize_config.json")
    if qcfg.get("quant_method") != "gptq" or qcfg["bits"] not in (2, 3, 4, 8):
        die(f"unexpected quantize_config {qcfg}")
    if not qcfg["sym"] and qcfg.get("checkpoint_format") != "gptq_v2":
        die("sym=false in a v1 (gptq) checkpoint")
    with open(os.path.join(args.orig_model_dir, "config.json")) as f:
        orig_config = json.load(f)
    ignored = {"quantization_config", "torch_dtype", "dtype", "transformers_version"}
    for key in sorted(set(orig_config) | set(config)):
        if key not in ignored and orig_config.get(key) != config.get(key):
            die(f"config.json[{key!r}] = {config.get(key)!r}, original has {orig_config.get(key)!r}")
    if config.get("torch_dtype", config.get("dtype")) != "float16":
        die(f"config.json torch_dtype is {config.get('torch_dtype')!r}, expected 'float16'")

    if args.weights_only:
        weights_only(args)
        return
    with open(args.text_file, encoding="utf-8") as f:
        text = f.read()
    ids, tokenizer_kind = tokenize(args.out_dir, text)
    ids = torch.tensor(ids, dtype=torch.long)

    model = load_model(args.orig_model_dir, device)
    ppl_orig, num_windows = perplexity(model, ids, args.seqlen, args.batch_size, device)

    tensors = {k: v.to(device) for k, v in load_tensors(args.out_dir).items()}
    prefixes = sorted(k[: -len(".qweight")] for k in tensors if k.endswith(".qweight"))
    if not prefixes:
        die("no .qweight tensors: not a GPTQ checkpoint")
    used = set()
    nmse = {}
    params = dict(model.named_parameters(remove_duplicate=False))  # tied ones too
    with torch.no_grad():
        for prefix in prefixes:
            try:
                module = model.get_submodule(prefix)
            except AttributeError:
                die(f"{prefix} (from {prefix}.qweight) is not a module of the model")
            if not isinstance(module, torch.nn.Linear):
                die(f"{prefix} is a {type(module).__name__}, not a Linear")
            w = dequantize(prefix, tensors, qcfg)
            if tuple(w.shape) != tuple(module.weight.shape):
                die(f"{prefix}: dequantized {tuple(w.shape)} vs Linear {tuple(module.weight.shape)}")
            orig = module.weight.float()
            nmse[prefix] = ((w - orig).pow(2).sum() / orig.pow(2).sum()).item()
            module.weight.copy_(w.to(module.weight.dtype))
            used.update(prefix + s for s in (".qweight", ".qzeros", ".scales", ".g_idx"))
            if prefix + ".bias" in tensors:
                module.bias.copy_(tensors[prefix + ".bias"].to(module.bias.dtype))
                used.add(prefix + ".bias")
        for name, t in tensors.items():
            if name in used:
                continue
            if name not in params:
                die(f"tensor {name} in the checkpoint matches no parameter of the model")
            if t.dtype != torch.float16:
                die(f"non-quantized tensor {name} has dtype {t.dtype}, expected float16")
            if tuple(t.shape) != tuple(params[name].shape):
                die(f"{name}: shape {tuple(t.shape)} vs model {tuple(params[name].shape)}")
            params[name].copy_(t.to(params[name].dtype))
            used.add(name)
    linears = [n for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")]
    unquantized = sorted(set(linears) - set(prefixes))
    worst = max(nmse, key=nmse.get)
    ppl_q, _ = perplexity(model, ids, args.seqlen, args.batch_size, device)

    report = {
        "out_dir": args.out_dir, "orig_model_dir": args.orig_model_dir,
        "text_file": args.text_file, "seqlen": args.seqlen, "num_tokens": ids.numel(),
        "num_windows": num_windows, "tokenizer": tokenizer_kind, "device": device,
        "quantize_config": qcfg, "num_quantized_modules": len(prefixes),
        "unquantized_decoder_linears": unquantized,
        "weight_nmse": {"mean": sum(nmse.values()) / len(nmse), "max": nmse[worst],
                        "max_module": worst},
        "ppl_original": ppl_orig, "ppl_dequantized": ppl_q,
        "ppl_ratio": ppl_q / ppl_orig,
    }
    del model
    if device == "cuda":
        torch.cuda.empty_cache()

    if not args.no_native:
        native = {"attempted": False}
        try:
            import importlib.util

            backends = [m for m in ("gptqmodel", "optimum")
                        if importlib.util.find_spec(m) is not None]
            if backends:
                from transformers import AutoModelForCausalLM

                native = {"attempted": True, "backends": backends}
                nmodel = AutoModelForCausalLM.from_pretrained(args.out_dir, device_map=device)
                nmodel.eval()
                native["ppl"], _ = perplexity(nmodel, ids, args.seqlen, args.batch_size, device)
                native["ppl_vs_dequantized"] = native["ppl"] / ppl_q
                del nmodel
            else:
                native["reason"] = "neither gptqmodel nor optimum is installed"
        except Exception as e:  # optional path: report, do not fail
            native["error"] = f"{type(e).__name__}: {e}"
        report["native"] = native

    print(json.dumps(report, indent=2))
    if nmse[worst] > args.max_weight_nmse:
        die(f"weight nmse {nmse[worst]:.4g} of {worst} > {args.max_weight_nmse} (unpacking wrong?)")
    if not (math.isfinite(ppl_q) and math.isfinite(ppl_orig)):
        die(f"non-finite perplexity: original {ppl_orig}, dequantized {ppl_q}")
    if args.max_ppl_ratio is not None and ppl_q / ppl_orig > args.max_ppl_ratio:
        die(f"perplexity ratio {ppl_q / ppl_orig:.4f} > {args.max_ppl_ratio}")


if __name__ == "__main__":
    main()
