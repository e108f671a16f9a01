"""Helper of train_zero_test.sh (stdlib + tools/reference/safetensors_lite only).

  compare_zero_runs.py REFERENCE_RUN OTHER_RUN [OTHER_RUN ...]
      Each run folder's metrics.jsonl (loss, grad_norm per step) and its step-3 checkpoint
      (model.safetensors weights, trainer_state.safetensors AdamW moments) against the reference
      run's (ZeRO-0).

Tolerance: none for the losses, the weights and the moments. ZeRO-1/2 run AdamW on the same float32
values with the same kernel per element, and with 2 ranks the reduce-scatter's sum a + b rounds as
the all-reduce's does; the mean is the same multiply by 1/2. The only other difference is ZeRO-2's
global norm: per-rank partial sums of squares in double added in rank order instead of one reduction
over the whole buffer, which may change the double norm in its last bits (grad_norm: relative 1e-12);
the float32 clipping factor float(max_norm / norm) stays the same unless the double quotient sits on a
float rounding boundary — the exact comparison of the weights checks that it did here.
"""
import json
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


if __name__ == "__main__":
    if sys.argv[1] == "moved":
        check_trained(sys.argv[2], sys.argv[3])
    else:
        for run in sys.argv[2:]:
            compare(sys.argv[1], run)
