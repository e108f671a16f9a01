"""Helper of train_expert_parallel_test.sh (stdlib + tools/reference/safetensors_lite only).

  compare_ep_dp.py grads EP.safetensors DP.safetensors
      Every grad.<p> of the --plugin ep step-1 dump against the pure data-parallel
      one (--plugin ep_zero --extra_dp_size 2): per tensor, |ep - dp| <= 1e-5 * max |dp|.
  compare_ep_dp.py params EP_MODEL.safetensors DP_MODEL.safetensors LR STEPS
      The checkpointed parameters after STEPS steps: |ep - dp| <= 0.05 * LR * STEPS per element.

Tolerances. Both runs compute the same function of the same data, but not in the same float32
order: under EP each expert's products run once over the 2C rows of both ranks (and its weight
gradient accumulates both ranks' rows in one GEMM), while pure DP runs them over C rows per rank
and adds the two ranks' gradients in the all-reduce. The expert outputs therefore differ by a few
ulps, which propagate through every layer's backward: measured worst 1.3e-6 of the tensor's largest
element (float32 accumulations of <= ~100 terms: bound ~100 * 2^-24 = 6e-6). 1e-5 of the tensor
maximum is above that and far below what a wrong exchange gives (another rank's rows, another
expert's rows, a missing or doubled 1/P: errors of order 1 of the maximum). After the steps, AdamW
moves each weight by at most ~LR per step; the gradient differences above move the updates by
a far smaller fraction (measured 1e-7 absolute after 3 steps at LR 1e-5, i.e. 0.3% of LR * STEPS);
5% of LR * STEPS still catches an update taken from wrong rows (order LR * STEPS).
"""
import sys

import safetensors_lite as st


def _compare(a, b, names, tol_of, what):
    worst, values = 0.0, 0
    for name in names:
        x, y = a[name][2], b[name][2]
        assert a[name][1] == b[name][1], f"{name}: shapes {a[name][1]} vs {b[name][1]}"
        tol = tol_of(y)
        for i, (xv, yv) in enumerate(zip(x, y)):
            err = abs(xv - yv)
            assert err <= tol, f"{what} {name}[{i}]: expert parallel {xv!r}, data parallel {yv!r} (tolerance {tol:.3g})"
            worst = max(worst, err / tol if tol else 0.0)
        values += len(x)
    return worst, values


def grads(ep_path, dp_path):
    ep, dp = st.read(ep_path), st.read(dp_path)
    names = sorted(k for k in dp if k.startswith("grad."))
    assert names and set(names) == {k for k in ep if k.startswith("grad.")}, "different gradient names"
    assert any(".experts." in n for n in names), "no expert tensors in the dump"
    worst, values = _compare(ep, dp, names, lambda y: 1e-5 * max(abs(v) for v in y), "step 1")
    for part in ("loss.total", "loss.lm", "loss.router_aux", "loss.router_z"):
        e, d = ep[part][2][0], dp[part][2][0]
        assert abs(e - d) <= 1e-5 * abs(d), f"{part}: expert parallel {e}, data parallel {d}"
    print(f"step 1: {len(names)} gradients equal ({values} values; worst {worst:.3f} of the tolerance)")


def params(ep_path, dp_path, lr, steps):
    ep, dp = st.read(ep_path), st.read(dp_path)
    names = sorted(dp)
    assert names and set(names) == set(ep), "different tensor names"
    tol = 0.05 * float(lr) * int(steps)
    worst, values = _compare(ep, dp, names, lambda y: tol, f"after {steps} steps:")
    print(f"after {steps} steps: {len(names)} parameters equal ({values} values; worst {worst:.3f} of {tol:.3g})")


if __name__ == "__main__":
    {"grads": grads, "params": params}[sys.argv[1]](*sys.argv[2:])
