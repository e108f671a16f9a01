#!/usr/bin/env python3
"""Writes the embedded default model of //tools:generate: a tiny OpenMoE (V 640, H 64, 4 layers,
4 experts, MoE every 2nd layer) initialised as the spec's section 2.6 says (seed 20261129), in the
Hugging Face layout (config.json + model.safetensors + tokenizer.model). Its weights are random,
so its text is meaningless; it exists so that `bazel run //tools:generate` works with no download.

    make_default_model.py OUT_DIR TOKENIZER_MODEL
"""
import json
import math
import os
import random
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
import safetensors_lite  # noqa: E402

CONFIG = {
    "architectures": ["OpenMoeForCausalLM"], "model_type": "llama", "vocab_size": 640, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
    "head_dim": 16, "max_position_embeddings": 2048, "rms_norm_eps": 1e-06, "hidden_act": "swiglu",
    "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 0,
    "initializer_range": 0.02, "torch_dtype": "float32", "num_experts": 4, "moe_layer_interval": 2,
    "router_topk": 2, "router_capacity_factor_train": 1.25, "router_capacity_factor_eval": 2.0,
    "router_min_capacity": 4, "router_noisy_policy": None, "router_drop_tks": True, "mlp_gated": True,
    "label_smoothing": 0.001, "z_loss_factor": 0.01, "router_aux_loss_factor": 0.01, "router_z_loss_factor": 0.0001,
}


def main():
    out, tokenizer = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    rng = random.Random(20261129)
    c = CONFIG
    V, H, I, E = c["vocab_size"], c["hidden_size"], c["intermediate_size"], c["num_experts"]
    qd = c["num_attention_heads"] * c["head_dim"]
    tensors = {}

    def normal(name, shape, std):
        n = math.prod(shape)
        tensors[name] = ("F32", shape, [rng.gauss(0.0, std) for _ in range(n)])

    def ones(name, n):
        tensors[name] = ("F32", [n], [1.0] * n)

    normal("model.embed_tokens.weight", [V, H], 0.02)
    emb = list(tensors["model.embed_tokens.weight"][2])
    emb[0:H] = [0.0] * H  # padding row
    tensors["model.embed_tokens.weight"] = ("F32", [V, H], emb)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        ones(f"{p}.input_layernorm.weight", H)
        ones(f"{p}.post_attention_layernorm.weight", H)
        for proj, shape in [("q", [qd, H]), ("k", [qd, H]), ("v", [qd, H]), ("o", [H, qd])]:
            normal(f"{p}.self_attn.{proj}_proj.weight", shape, 0.02)
        moe = (i + 1) % c["moe_layer_interval"] == 0
        mlp = f"{p}.extra_mlp" if moe else f"{p}.mlp"
        normal(f"{mlp}.gate_proj.weight", [2 * I, H], 0.02)
        normal(f"{mlp}.up_proj.weight", [I, H], 0.02)
        normal(f"{mlp}.down_proj.weight", [H, I], 0.02)
        if moe:
            normal(f"{p}.mlp.gate_weight", [E, H], math.sqrt(0.1 / H))
            normal(f"{p}.mlp.experts.wi_gate", [E, H, 2 * I], math.sqrt(0.1 / H))
            normal(f"{p}.mlp.experts.wi_up", [E, H, I], math.sqrt(0.1 / H))
            normal(f"{p}.mlp.experts.wo", [E, I, H], math.sqrt(0.1 / I))
            ones(f"{p}.pre_extra_mlp_layernorm.weight", H)
    ones("model.norm.weight", H)
    normal("lm_head.weight", [V, H], 0.02)
    safetensors_lite.write(os.path.join(out, "model.safetensors"), tensors)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    shutil.copy(tokenizer, os.path.join(out, "tokenizer.model"))


if __name__ == "__main__":
    main()
