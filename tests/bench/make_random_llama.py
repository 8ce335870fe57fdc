#!/usr/bin/env python3
"""Writes a random-weight Llama checkpoint in Hugging Face layout (for speed benchmarks only).

    make_random_llama.py OUT_DIR [--shape 7b|tiny] [--tokenizer tokenizer.model] [--seed 0]

7b: Llama-2-7B's shape (hidden 4096, ffn 11008, 32 layers, 32 heads, vocab 32000), fp16, one
safetensors shard per 4 decoder layers plus an index. Weights ~ N(0, 0.02²), norms 1, untied
head. Quality figures on such a model mean nothing; time and memory do.
"""
import argparse
import json
import os
import shutil

import torch
from safetensors.torch import save_file

SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, vocab_size=32000),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--shape", default="7b", choices=sorted(SHAPES))
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers-per-shard", type=int, default=4)
    a = ap.parse_args()
    s = SHAPES[a.shape]
    os.makedirs(a.out_dir, exist_ok=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(a.seed)
    h, f, v = s["hidden_size"], s["intermediate_size"], s["vocab_size"]
    kv = h // s["num_attention_heads"] * s["num_key_value_heads"]

    def rnd(*shape):
        return (torch.randn(*shape, generator=g, device=dev, dtype=torch.float32) * 0.02).half().cpu()

    weight_map = {}
    shard, tensors, n_shards = 0, {}, (s["num_hidden_layers"] + a.layers_per_shard - 1) // a.layers_per_shard + 1
    total = 0

    def flush():
        nonlocal shard, tensors, total
        name = f"model-{shard + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file(tensors, os.path.join(a.out_dir, name), metadata={"format": "pt"})
        for k, t in tensors.items():
            weight_map[k] = name
            total += t.numel() * t.element_size()
        shard += 1
        tensors = {}

    for i in range(s["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = torch.ones(h, dtype=torch.half)
        tensors[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.half)
        tensors[p + "self_attn.q_proj.weight"] = rnd(h, h)
        tensors[p + "self_attn.k_proj.weight"] = rnd(kv, h)
        tensors[p + "self_attn.v_proj.weight"] = rnd(kv, h)
        tensors[p + "self_attn.o_proj.weight"] = rnd(h, h)
        tensors[p + "mlp.gate_proj.weight"] = rnd(f, h)
        tensors[p + "mlp.up_proj.weight"] = rnd(f, h)
        tensors[p + "mlp.down_proj.weight"] = rnd(h, f)
        if (i + 1) % a.layers_per_shard == 0:
            flush()
    if tensors:
        flush()
    tensors = {"model.embed_tokens.weight": rnd(v, h), "model.norm.weight": torch.ones(h, dtype=torch.half),
               "lm_head.weight": rnd(v, h)}
    flush()
    with open(os.path.join(a.out_dir, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)
    config = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
                  max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
                  tie_word_embeddings=False, torch_dtype="float16", bos_token_id=1, eos_token_id=2,
                  **s)
    with open(os.path.join(a.out_dir, "config.json"), "w") as fh:
        json.dump(config, fh, indent=2)
    if a.tokenizer:
        shutil.copy(a.tokenizer, os.path.join(a.out_dir, "tokenizer.model"))
    print(f"wrote {a.out_dir}: {a.shape}, {total / 2**30:.2f} GiB in {shard} shards")


if __name__ == "__main__":
    main()
