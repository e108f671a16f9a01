#!/usr/bin/env python3
"""Golden logits for any OpenMoE checkpoint folder through Hugging Face transformers
(tools/reference/openmoe_hf.py), to compare with //tools:logits.

    python3 tools/reference/generate_goldens.py --model DIR --inputs IN.safetensors \
        --output GOLDEN.safetensors [--mode eval|train] [--dtype float32|float64] [--device cpu|cuda]
    bazel run //tools:logits -- --model DIR --inputs IN.safetensors --output OURS.safetensors
    python3 tools/reference/compare_logits.py OURS.safetensors GOLDEN.safetensors

IN holds int64 input_ids [B, S] and (optionally) attention_mask [B, S]. Writes float32 logits
[B, S, V] and prints the routing statistics (capacity, kept/assigned) of every MoE layer.
Needs torch, transformers and safetensors (pip install).
"""
import argparse
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from openmoe_hf import OpenMoeConfig, register  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--mode", choices=["eval", "train"], default="eval")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    register()
    config = OpenMoeConfig.from_pretrained(args.model)
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(args.model, config=config, torch_dtype=dtype).to(args.device)
    model.train() if args.mode == "train" else model.eval()
    inputs = load_file(args.inputs)
    ids = inputs["input_ids"].to(args.device)
    mask = inputs.get("attention_mask", torch.ones_like(ids)).to(args.device)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits.float().contiguous().cpu()
    for i, s in enumerate(model.routing_stats()):
        print(f"MoE layer {i}: capacity {s['capacity']}, kept {s['kept']} of {s['assigned']}")
    save_file({"logits": logits}, args.output, metadata={"model": args.model, "mode": args.mode, "dtype": args.dtype})
    print(f"wrote logits {list(logits.shape)} ({args.mode}, {args.dtype}) to {args.output}")


if __name__ == "__main__":
    main()
