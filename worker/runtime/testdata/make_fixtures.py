#!/usr/bin/env python3
"""Makes the tiny random checkpoints + transformers logits read by runtime_model_test's
FixtureTest (worker/runtime/model/decoder_test.cc).

For each family (llama, llama3rope, mistral, qwen2) it writes worker/runtime/testdata/<name>/:
  config.json, model.safetensors (fp16 weights; ~200 KB), generation_config.json (if any),
  input_ids.json ({"input_ids": [...]}, 16 ids), logits.safetensors ({"logits": [16, 256] fp32})

Shape: hidden 64, 2 layers, 4 heads, 2 KV heads (GQA), ffn 128, vocab 256, no sliding window,
untied lm_head. Weights are drawn at a scale that gives O(1) logits (the default 0.02 init
would make the comparison meaningless), rounded to fp16, and the logits are computed in fp32
from exactly those fp16 values with the eager attention implementation.

Needs: python3 with torch and transformers (5.x; 4.4x also works), safetensors.
Usage:  python3 worker/runtime/testdata/make_fixtures.py [--out DIR] [--only NAME ...]
"""
import argparse
import json
import math
import os
import sys

import torch
import transformers
from safetensors.torch import save_file

VOCAB, HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 256, 64, 128, 2, 4, 2
INPUT_IDS = [1, 17, 200, 5, 5, 93, 255, 0, 64, 128, 31, 7, 180, 42, 99, 3]
MAJOR = int(transformers.__version__.split(".")[0])


def rope_kwargs(theta, scaling):
    """rope settings in the spelling of the installed transformers."""
    if MAJOR >= 5:
        params = {"rope_type": "default", "rope_theta": theta}
        if scaling:
            params.update(scaling)
        return {"rope_parameters": params}
    kw = {"rope_theta": theta}
    if scaling:
        kw["rope_scaling"] = dict(scaling)
    return kw


def make_config(name):
    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN,
                  num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  num_key_value_heads=KV_HEADS, max_position_embeddings=128,
                  rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1,
                  eos_token_id=2, hidden_act="silu")
    if name == "llama":
        return transformers.LlamaConfig(**common, **rope_kwargs(10000.0, None))
    if name == "llama3rope":
        scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
        return transformers.LlamaConfig(**common, **rope_kwargs(500.0, scaling))
    if name == "mistral":
        return transformers.MistralConfig(**common, sliding_window=None,
                                          **rope_kwargs(10000.0, None))
    if name == "qwen2":
        return transformers.Qwen2Config(**common, use_sliding_window=False, sliding_window=None,
                                        **rope_kwargs(10000.0, None))
    raise ValueError(name)


def init_weights(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif pname.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in pname:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            # The checkpoint stores fp16; compute the reference from those exact values.
            p.copy_(p.half().float())


def make(name, out_root, seed):
    config = make_config(name)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model = model.float().eval()
    init_weights(model, seed)
    ids = torch.tensor([INPUT_IDS])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float().contiguous()
    out = os.path.join(out_root, name)
    os.makedirs(out, exist_ok=True)
    model.half().save_pretrained(out, safe_serialization=True)
    with open(os.path.join(out, "input_ids.json"), "w") as f:
        json.dump({"input_ids": INPUT_IDS}, f)
    save_file({"logits": logits}, os.path.join(out, "logits.safetensors"))
    with open(os.path.join(out, "PROVENANCE.txt"), "w") as f:
        f.write(f"made by make_fixtures.py with torch {torch.__version__}, "
                f"transformers {transformers.__version__}, seed {seed}\n")
    sizes = {fn: os.path.getsize(os.path.join(out, fn)) for fn in sorted(os.listdir(out))}
    print(name, sizes, "max |logit|", float(logits.abs().max()))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=here)
    ap.add_argument("--only", nargs="*", default=["llama", "llama3rope", "mistral", "qwen2"])
    args = ap.parse_args()
    torch.manual_seed(0)
    for i, name in enumerate(args.only):
        make(name, args.out, seed=1000 + i)
    return 0


if __name__ == "__main__":
    sys.exit(main())
