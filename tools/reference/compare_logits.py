#!/usr/bin/env python3
"""Compares two logits files (safetensors, float32 [B, S, V]) the way the parity suite does:
max absolute difference and argmax agreement per position.

    python3 tools/reference/compare_logits.py OURS.safetensors GOLDEN.safetensors \
        [--ours-key logits] [--golden-key logits] [--atol 1e-4]
Exits 1 when the difference exceeds --atol or more argmaxes differ than --max-argmax-mismatches (0).

A reduced-precision run is compared by its error model instead (tests/bf16_parity_test.cc derives
the bf16 bounds: NMSE <= 2e-3, argmax agreement >= 0.90):
    compare_logits.py OURS GOLDEN --max-nmse 2e-3 --min-argmax-agreement 0.9
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
    parser.add_argument("--max-nmse", type=float, default=None,
                        help="compare by normalised mean squared error instead of --atol")
    parser.add_argument("--min-argmax-agreement", type=float, default=None,
                        help="fraction of positions whose argmax must agree (instead of --max-argmax-mismatches)")
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
    rows = len(a) // vocab
    if args.max_nmse is not None or args.min_argmax_agreement is not None:
        nmse = sum((x - y) ** 2 for x, y in zip(a, b)) / sum(y * y for y in b)
        agreement = 1 - mismatches / rows
        ok = (args.max_nmse is None or nmse <= args.max_nmse) and (
            args.min_argmax_agreement is None or agreement >= args.min_argmax_agreement)
        print(f"NMSE {nmse:.3g} (max {args.max_nmse}), argmax agreement {agreement:.3f} "
              f"(min {args.min_argmax_agreement}), max |ours - golden| = {max_diff:.3g}: {'OK' if ok else 'FAIL'}")
        return 0 if ok else 1
    ok = max_diff <= args.atol and mismatches <= args.max_argmax_mismatches
    print(f"max |ours - golden| = {max_diff:.3g} (atol {args.atol}), argmax mismatches {mismatches}: "
          f"{'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
