"""Two --dump_step_state files tensor by tensor (stdlib + tools/reference/safetensors_lite only).

  compare_step_dumps.py REFERENCE.safetensors OTHER.safetensors [--exact]

Prints one line per tensor that differs (elements that differ, largest absolute difference) and a
summary line; with --exact the exit status is 1 when any value differs (bit for bit, NaN equal to
NaN), else 0 always (a report).
"""
import math
import sys

import safetensors_lite as st


def same(x, y):
    return x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))


def main(ref_path, other_path, *flags):
    ref, other = st.read(ref_path), st.read(other_path)
    if sorted(ref) != sorted(other):
        print(f"tensor names differ: only in reference {sorted(set(ref) - set(other))}, "
              f"only in other {sorted(set(other) - set(ref))}")
        return 1
    differing = 0
    for name in sorted(ref):
        (dt_a, shape_a, a), (dt_b, shape_b, b) = ref[name], other[name]
        if (dt_a, shape_a) != (dt_b, shape_b):
            print(f"{name}: {dt_b} {shape_b} vs {dt_a} {shape_a}")
            differing += 1
            continue
        bad = [abs(x - y) for x, y in zip(a, b) if not same(x, y)]
        if bad:
            differing += 1
            print(f"{name}: {len(bad)} of {len(a)} values differ, max |diff| {max(bad):.3e}")
    print(f"{other_path} vs {ref_path}: {len(ref)} tensors, {differing} differ"
          + (" (bit-identical)" if differing == 0 else ""))
    return 1 if differing and "--exact" in flags else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
