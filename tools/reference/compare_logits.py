#!/usr/bin/env python3
"""Compares two logits files (safetensors, float32 [B, S, V]) the way the parity suite does:
max absolute difference and argmax agreement per position.

    python3 tools/reference/compare_logits.py OURS.safetensors GOLDEN.safetensors \
        [--ours-key logits] [--golden-key logits] [--atol 1e-4]
Exits 1 when the difference exceeds --atol or more argmaxes differ than --max-argmax-mismatches (0).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_lite  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ours")
    parser.add_argument("golden")
    parser.add_argument("--ours-key", default="logits")
    parser.add_argument("--golden-key", default="logits")
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--max-argmax-mismatches", type=int, default=0)
    args = parser.parse_args()
    _, shape_a, a = safetensors_lite.read(args.ours)[args.ours_key]
    _, shape_b, b = safetensors_lite.read(args.golden)[args.golden_key]
    if shape_a != shape_b:
        print(f"shape mismatch: {shape_a} vs {shape_b}")
        return 1
    vocab = shape_a[-1]
    max_diff = max(abs(x - y) for x, y in zip(a, b))
    mismatches = 0
    for row in range(len(a) // vocab):
        ra, rb = a[row * vocab:(row + 1) * vocab], b[row * vocab:(row + 1) * vocab]
        mismatches += ra.index(max(ra)) != rb.index(max(rb))
    ok = max_diff <= args.atol and mismatches <= args.max_argmax_mismatches
    print(f"max |ours - golden| = {max_diff:.3g} (atol {args.atol}), argmax mismatches {mismatches}: "
          f"{'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
