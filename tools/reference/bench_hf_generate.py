#!/usr/bin/env python3
"""The PyTorch-eager peer of //benchmarks:generate_benchmark: the project's Hugging Face OpenMoE
model (openmoe_hf.py, KV cache) at a preset's shapes with random weights, bf16, on one GPU.
Prints prefill tokens/s, time to first token, decode tokens/s per batch size, peak GPU memory.

    python3 tools/reference/bench_hf_generate.py --preset 8b --prompt_len 512 --new_tokens 64 --batches 1,16
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from openmoe_hf import OpenMoeConfig, OpenMoeForCausalLM  # noqa: E402

PRESETS = {
    "base": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                 head_dim=64, num_experts=16, moe_layer_interval=4),
    "8b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=24,
               head_dim=128, num_experts=32, moe_layer_interval=6),
    "34b": dict(hidden_size=3072, intermediate_size=12288, num_hidden_layers=32, num_attention_heads=24,
                head_dim=128, num_experts=32, moe_layer_interval=4),
}


@torch.no_grad()
def run(model, batch, prompt_len, new_tokens, device):
    g = torch.Generator(device="cpu").manual_seed(1234)
    ids = torch.randint(3, 256000, (batch, prompt_len), generator=g).to(device)
    ids[:, 0] = 0
    mask = torch.ones_like(ids)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model(ids, attention_mask=mask, use_cache=True, last_only=True)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    for _ in range(new_tokens - 1):
        mask = torch.cat((mask, torch.ones_like(nxt)), dim=1)
        out = model(nxt, attention_mask=mask, past_key_values=out.past_key_values, use_cache=True, last_only=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="8b", choices=PRESETS)
    parser.add_argument("--prompt_len", type=int, default=512)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--batches", default="1,16")
    args = parser.parse_args()
    device = "cuda"
    torch.manual_seed(20261129)
    config = OpenMoeConfig(**PRESETS[args.preset])
    t = time.perf_counter()
    torch.set_default_dtype(torch.bfloat16)  # build in bf16: 34B in float32 would not fit
    with torch.device(device):
        model = OpenMoeForCausalLM(config).eval()
    print(f"HF eager {args.preset} bf16 on {torch.cuda.get_device_name()}: built in {time.perf_counter() - t:.1f} s, "
          f"{sum(p.numel() for p in model.parameters()) / 1e9:.3f} B params")
    run(model, 1, 16, 4, device)  # warm-up
    for batch in [int(b) for b in args.batches.split(",")]:
        torch.cuda.reset_peak_memory_stats()
        prefill, decode = run(model, batch, args.prompt_len, args.new_tokens, device)
        print(f"RESULT peer=torch_eager preset={args.preset} batch={batch} prompt={args.prompt_len} "
              f"new={args.new_tokens} prefill_tok_s={batch * args.prompt_len / prefill:.1f} ttft_ms={prefill * 1e3:.1f} "
              f"decode_tok_s={batch * (args.new_tokens - 1) / decode:.1f} "
              f"peak_gib={torch.cuda.max_memory_allocated() / 2**30:.1f}")


if __name__ == "__main__":
    main()
