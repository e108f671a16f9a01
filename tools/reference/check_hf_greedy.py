#!/usr/bin/env python3
"""Checks the reference model's own KV-cache greedy decoding against the fixtures'
gen_greedy_ids (float32 and float64): the reference must pass before it judges anything.

    python3 tools/reference/check_hf_greedy.py tests/data/openmoe/tiny8b [--device cuda]
"""
import argparse
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from openmoe_hf import OpenMoeConfig, OpenMoeForCausalLM  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("case")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    expected = load_file(os.path.join(args.case, "expected.safetensors"))
    ok = True
    for dtype in (torch.float32, torch.float64):
        model = OpenMoeForCausalLM.from_pretrained(args.case, config=OpenMoeConfig.from_pretrained(args.case),
                                                   torch_dtype=dtype).to(args.device).eval()
        ids = model.greedy(expected["gen_prompt_ids"].to(args.device), expected["gen_prompt_mask"].to(args.device),
                           expected["gen_greedy_ids"].shape[1]).cpu()
        same = torch.equal(ids, expected["gen_greedy_ids"])
        ok &= same
        print(f"{args.case} {dtype}: HF reference KV-cache greedy {'matches' if same else 'DIFFERS from'} gen_greedy_ids")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
