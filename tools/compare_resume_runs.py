"""Helper of train_resume_reshard_test.sh (stdlib + tools/reference/safetensors_lite only).

  compare_resume_runs.py compare LR STEPS REFERENCE_RUN OTHER_RUN [OTHER_RUN ...]
      Each run folder's metrics.jsonl (loss per step 1..STEPS) and its step-STEPS checkpoint
      (model.safetensors weights, trainer_state.safetensors AdamW moments m.* / v.*) against the
      reference (uninterrupted) run's.

Tolerances. The resumed runs change plugin, ZeRO stage and world size mid-run, so they compute the
same function as the reference (each rank's / microbatch's example its own routing group, the step's
gradient the mean over them) but not in the same float32 order: expert parallelism runs an expert
once over both ranks' rows where pure DP runs it per rank (compare_ep_dp.py: a few ulps, worst
~1.3e-6 of a tensor's maximum), a pipeline of microbatches accumulates the two examples' weight
gradients into one buffer where DP adds them in the all-reduce (compare_dp_grads.py: 2^-21
relative). ZeRO stages alone are exact (compare_zero_runs.py). Hence:
  - loss per step: relative 1e-5 (steps before the resume are the same process's bits);
  - weights: |a - b| <= 0.05 * LR * STEPS per element (compare_ep_dp.py params: AdamW moves a weight
    by at most ~LR a step; wrong data or state moves it by order LR);
  - moments: per tensor |a - b| <= 1e-3 * max|reference tensor| (m is an average of gradients, v of
    their squares; the ulp-level gradient differences above stay ~1e-5 of the maximum after 3
    steps, printed as `worst`; a moment taken from another slice, another step's data or left at
    zero is off by order 1 of the maximum).
"""
import json
import sys

import safetensors_lite as st


def metrics(run):
    return [json.loads(line) for line in open(f"{run}/metrics.jsonl")]


def compare(lr, steps, ref, other):
    lr, steps = float(lr), int(steps)
    a, b = metrics(ref), metrics(other)
    want = list(range(1, steps + 1))
    assert [m["step"] for m in a] == want and [m["step"] for m in b] == want, \
        f"{other}: steps {[m['step'] for m in b]}, reference {[m['step'] for m in a]}"
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= 1e-5 * abs(x["loss"]), \
            f"{other} step {x['step']}: loss {y['loss']!r}, uninterrupted {x['loss']!r}"
    worst = {"weights": 0.0, "moments": 0.0}
    p, q = st.read(f"{ref}/step-{steps}/model.safetensors"), st.read(f"{other}/step-{steps}/model.safetensors")
    assert sorted(p) == sorted(q), f"{other}: different weight names"
    tol = 0.05 * lr * steps
    for key in p:
        assert p[key][1] == q[key][1], f"{other} {key}: shape"
        for i, (u, v) in enumerate(zip(p[key][2], q[key][2])):
            assert abs(u - v) <= tol, f"{other}/step-{steps} {key}[{i}]: {v!r}, uninterrupted {u!r} (tolerance {tol:.3g})"
            worst["weights"] = max(worst["weights"], abs(u - v) / tol)
    p = st.read_moments(f"{ref}/step-{steps}")
    q = st.read_moments(f"{other}/step-{steps}")
    assert sorted(p) == sorted(q), f"{other}: different moment names"
    nonzero = 0
    for key in p:
        assert p[key][1] == q[key][1], f"{other} {key}: shape"
        scale = max(abs(u) for u in p[key][2])
        nonzero += scale > 0
        t = 1e-3 * scale
        for i, (u, v) in enumerate(zip(p[key][2], q[key][2])):
            assert abs(u - v) <= t, f"{other}/step-{steps} moment {key}[{i}]: {v!r}, uninterrupted {u!r} (tolerance {t:.3g})"
            if t > 0:
                worst["moments"] = max(worst["moments"], abs(u - v) / t)
    assert nonzero > len(p) // 2, f"{ref}: the moments are mostly zero ({nonzero} of {len(p)} tensors non-zero)"
    print(f"{other}: losses {[m['loss'] for m in b]}; weights and moments ({len(p)} moment tensors) equal to {ref} "
          f"(worst {worst['weights']:.3g} / {worst['moments']:.3g} of the tolerances)")


if __name__ == "__main__":
    if sys.argv[1] == "compare":
        for run in sys.argv[5:]:
            compare(sys.argv[2], sys.argv[3], sys.argv[4], run)
    else:
        raise SystemExit(__doc__)
