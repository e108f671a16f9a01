#!/usr/bin/env python3
"""The PyTorch-eager peer of //benchmarks:train_benchmark: a training step of the project's
Hugging Face OpenMoE model (openmoe_hf.py) at a preset's shapes with random weights and tokens,
fp32 master weights with fp32 or bf16 (torch.autocast, as ours: bf16 compute copies, fp32
masters) compute, torch.optim.AdamW (lr 1e-5), on one GPU: forward, OpenMoE's LM loss (label
smoothing 0.001 + z-loss 0.01, summed; the router losses are left out: they are O(N*E) work),
backward, optimizer step. Prints step time, tokens/s and peak memory. --device cpu runs it on the
host instead (torch threads = --threads, default all cores; bf16 through torch.autocast("cpu");
peak_gib=0.0 there).

    python3 tools/reference/bench_hf_train.py --preset base --seq 2048 --batch 1 --steps 3 [--precision bf16]
    [--layers N]   (N < the preset's layers: 8B with fp32 masters + AdamW does not fit one H200)
    python3 tools/reference/bench_hf_train.py --device cpu --preset base --seq 256 --batch 1 --steps 2
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_hf_generate import PRESETS  # noqa: E402
from openmoe_hf import OpenMoeConfig, OpenMoeForCausalLM  # noqa: E402


def lm_loss(logits, ids, ls=0.001, z=0.01):
    logits = logits[:, :-1].float()
    labels = ids[:, 1:]
    V = logits.shape[-1]
    log_z = torch.logsumexp(logits, -1)
    logp = logits - log_z[..., None]
    off = ls / (V - 1)
    target_logp = logp.gather(-1, labels[..., None]).squeeze(-1)
    cross = (1 - ls - off) * target_logp + off * logp.sum(-1)
    return (-cross + z * log_z ** 2).sum()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="base", choices=sorted(PRESETS))
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--layers", type=int, default=0, help="override num_hidden_layers (0: the preset's)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads with --device cpu")
    a = p.parse_args()
    device = a.device
    if device == "cpu":
        torch.set_num_threads(a.threads)
        where = f"CPU ({torch.get_num_threads()} threads)"
    else:
        where = torch.cuda.get_device_name()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    shapes = dict(PRESETS[a.preset])
    if a.layers:
        shapes["num_hidden_layers"] = a.layers
    config = OpenMoeConfig(**shapes)
    t0 = time.time()
    model = OpenMoeForCausalLM(config).to(device=device, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    print(f"HF eager {a.preset} {a.precision} ({config.num_hidden_layers} layers) on {where}: built in {time.time() - t0:.1f} s")
    g = torch.Generator(device="cpu").manual_seed(1234)
    ids = torch.randint(3, 256000, (a.batch, a.seq), generator=g).to(device)
    ids[:, 0] = 0
    mask = torch.ones_like(ids)
    best = float("inf")
    for step in range(a.steps + 1):
        sync()
        t = time.time()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            logits = model(ids, attention_mask=mask).logits
        loss = lm_loss(logits, ids)
        loss.backward()
        opt.step()
        sync()
        dt = time.time() - t
        print(f"step {step}: {dt:.3f} s, loss {loss.item():.2f}")
        if step > 0:
            best = min(best, dt)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    print(f"RESULT peer=torch_eager preset={a.preset} precision={a.precision} layers={config.num_hidden_layers} batch={a.batch} seq={a.seq} step_s={best:.3f} "
          f"tokens_s={a.batch * a.seq / best:.1f} peak_gib={peak:.1f}")


if __name__ == "__main__":
    main()
