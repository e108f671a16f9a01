"""Helper of train_zero_test.sh (stdlib + tools/reference/safetensors_lite only).

  compare_zero_runs.py REFERENCE_RUN OTHER_RUN [OTHER_RUN ...]
      Each run folder's metrics.jsonl (loss, grad_norm per step) and its step-3 checkpoint
      (model.safetensors weights, trainer_state.safetensors AdamW moments) against the reference
      run's (ZeRO-0).
  compare_zero_runs.py moved RUN INITIAL_WEIGHTS
      The run's step-3 weights differ from the initial ones.
  compare_zero_runs.py masters LOG share|whole RANKS [WEIGHTS]
      How many fp32 master weights each rank keeps (check_masters).

Tolerance: none for the losses, the weights and the moments. ZeRO-1/2 run AdamW on the same float32
values with the same kernel per element, and with 2 ranks the reduce-scatter's sum a + b rounds as
the all-reduce's does; the mean is the same multiply by 1/2. The only other difference is ZeRO-2's
global norm: per-rank partial sums of squares in double added in rank order instead of one reduction
over the whole buffer, which may change the double norm in its last bits (grad_norm: relative 1e-12);
the float32 clipping factor float(max_norm / norm) stays the same unless the double quotient sits on a
float rounding boundary — the exact comparison of the weights checks that it did here.
"""
import json
import re
import sys

import safetensors_lite as st


def metrics(run):
    return [json.loads(line) for line in open(f"{run}/metrics.jsonl")]


def compare(ref, other):
    a, b = metrics(ref), metrics(other)
    assert [m["step"] for m in a] == [m["step"] for m in b] == [1, 2, 3], f"{other}: steps {[m['step'] for m in b]}"
    for x, y in zip(a, b):
        assert x["loss"] == y["loss"], f"{other} step {x['step']}: loss {y['loss']!r} vs {x['loss']!r}"
        assert abs(x["grad_norm"] - y["grad_norm"]) <= 1e-12 * abs(x["grad_norm"]), \
            f"{other} step {x['step']}: grad_norm {y['grad_norm']!r} vs {x['grad_norm']!r}"
    changed = 0
    for name, read in (("model.safetensors", lambda d: st.read(f"{d}/model.safetensors")),
                       ("AdamW moments", st.read_moments)):
        p, q = read(f"{ref}/step-3"), read(f"{other}/step-3")
        assert sorted(p) == sorted(q), f"{other}/{name}: different tensor names"
        for key in p:
            assert p[key][1] == q[key][1], f"{other}/{name} {key}: shape"
            if p[key][2] != q[key][2]:
                bad = next(i for i, (u, v) in enumerate(zip(p[key][2], q[key][2])) if u != v)
                raise AssertionError(f"{other}/step-3/{name} {key}[{bad}]: {q[key][2][bad]!r} vs {ref}'s "
                                     f"{p[key][2][bad]!r}")
            changed += 1
    print(f"{other}: losses {[m['loss'] for m in b]}, weights and moments equal to {ref} ({changed} tensors)")


def check_trained(ref, initial):
    """The weights moved from the initial model's (so equality above means something)."""
    p, q = st.read(f"{ref}/step-3/model.safetensors"), st.read(initial)
    moved = sum(1 for k in p if k in q and p[k][2] != q[k][2])
    assert moved > 0, "no weight changed in 3 steps"
    print(f"{moved} of {len(p)} tensors changed in 3 steps")


# Trainer::Create's line per rank of a multi-rank run.
MASTERS_LINE = re.compile(r"^fp32 masters: stage (\d+), data-parallel rank (\d+) of (\d+) keeps (\d+) of (\d+) \((.*)\)$",
                          re.M)


def check_masters(log, mode, ranks, weights=None):
    """The "fp32 masters" lines of a run's log: one per rank (`ranks` of them, distinct (stage,
    data-parallel rank)), each "keeps K of N" (N: the elements of the flat layout the rank stores).
    mode "whole" (fp32 runs, ZeRO-0): K = N, said whole. mode "share" (ZeRO-1/2 of a bf16 / fp16
    run): the line lists the ZeRO parts, "n over W ranks" each, adding up to N, and K is the sum of the
    rank's chunks plus the replicated tails, recomputed here from ZeroPartition's rule (not the code's):
    chunk = floor(n / (W * 64)) * 64, tail = n - W * chunk (< 64 W), so K is n / W to within 64 W per
    part. With WEIGHTS (the model.safetensors of a run whose ranks store the whole model) N is also
    checked against the parameter count: the layout adds gaps of fewer than 64 elements per tensor."""
    lines = MASTERS_LINE.findall(open(log).read())
    assert len(lines) == ranks and len({(s, r) for s, r, *_ in lines}) == ranks, f"{log}: {len(lines)} masters lines"
    if weights:
        tensors = st.read(weights)
        params = sum(len(t[2]) for t in tensors.values())
    for stage, rank, size, kept, total, why in lines:
        kept, total = int(kept), int(total)
        where = f"{log}: stage {stage} rank {rank}"
        if weights:
            assert params <= total < params + 64 * len(tensors), f"{where}: layout of {total} for {params} parameters"
        if mode == "whole":
            assert kept == total and "whole" in why, f"{where}: keeps {kept} of {total} ({why})"
            continue
        parts = [(int(n), int(w)) for n, w in re.findall(r"(\d+) over (\d+) ranks", why)]
        assert parts and sum(n for n, _ in parts) == total, f"{where}: parts {parts} of {total}"
        expected = 0
        for n, w in parts:
            chunk = n // (w * 64) * 64
            share = chunk + (n - w * chunk)
            assert abs(share - n / w) < 64 * w, (where, n, w, share)
            expected += share
        assert kept == expected, f"{where}: keeps {kept} fp32 masters, its shares of {parts} are {expected}"
        print(f"{where}: keeps {kept} of {total} fp32 masters ({kept / total:.3f}; parts {parts})")


if __name__ == "__main__":
    if sys.argv[1] == "moved":
        check_trained(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "masters":
        check_masters(sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:])
    else:
        for run in sys.argv[2:]:
            compare(sys.argv[1], run)
