#!/usr/bin/env python3
"""The PyTorch-eager peer of //benchmarks:generate_benchmark: the project's Hugging Face OpenMoE
model (openmoe_hf.py, KV cache) at a preset's shapes with random weights, bf16, on one GPU
(default) or on the host (--device cpu: torch threads = --threads, default all cores; --dtype
bf16 or fp32, the model built in that dtype). Prints prefill tokens/s, time to first token,
decode tokens/s per batch size, peak GPU memory (peak_gib=0.0 on the host).

    python3 tools/reference/bench_hf_generate.py --preset 8b --prompt_len 512 --new_tokens 64 --batches 1,16
    python3 tools/reference/bench_hf_generate.py --device cpu --preset base --dtype fp32 --prompt_len 64 --new_tokens 8 --batches 1
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


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def run(model, batch, prompt_len, new_tokens, device):
    g = torch.Generator(device="cpu").manual_seed(1234)
    ids = torch.randint(3, 256000, (batch, prompt_len), generator=g).to(device)
    ids[:, 0] = 0
    mask = torch.ones_like(ids)
    sync(device)
    t0 = time.perf_counter()
    out = model(ids, attention_mask=mask, use_cache=True, last_only=True)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    sync(device)
    t1 = time.perf_counter()
    for _ in range(new_tokens - 1):
        mask = torch.cat((mask, torch.ones_like(nxt)), dim=1)
        out = model(nxt, attention_mask=mask, past_key_values=out.past_key_values, use_cache=True, last_only=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    sync(device)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="8b", choices=PRESETS)
    parser.add_argument("--prompt_len", type=int, default=512)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads with --device cpu")
    args = parser.parse_args()
    device = args.device
    if device == "cpu":
        torch.set_num_threads(args.threads)
        where = f"CPU ({torch.get_num_threads()} threads)"
    else:
        where = torch.cuda.get_device_name()
    torch.manual_seed(20261129)
    config = OpenMoeConfig(**PRESETS[args.preset])
    t = time.perf_counter()
    # build in the run's dtype (bf16 by default: 34B in float32 would not fit one GPU)
    torch.set_default_dtype(torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    with torch.device(device):
        model = OpenMoeForCausalLM(config).eval()
    print(f"HF eager {args.preset} {args.dtype} on {where}: built in {time.perf_counter() - t:.1f} s, "
          f"{sum(p.numel() for p in model.parameters()) / 1e9:.3f} B params")
    run(model, 1, 16, 4, device)  # warm-up
    for batch in [int(b) for b in args.batches.split(",")]:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        prefill, decode = run(model, batch, args.prompt_len, args.new_tokens, device)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
        print(f"RESULT peer=torch_eager preset={args.preset} batch={batch} prompt={args.prompt_len} "
              f"new={args.new_tokens} prefill_tok_s={batch * args.prompt_len / prefill:.1f} ttft_ms={prefill * 1e3:.1f} "
              f"decode_tok_s={batch * (args.new_tokens - 1) / decode:.1f} "
              f"peak_gib={peak:.1f}")


if __name__ == "__main__":
    main()
