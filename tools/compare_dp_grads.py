"""Helpers of the multi-rank train tests (stdlib + tools/reference/safetensors_lite only).

  compare_dp_grads.py split EXPECTED.safetensors DIR
      DIR/all.safetensors: the fixture's input_ids / attention_mask [N, S]; DIR/example<r>.safetensors:
      row r alone [1, S] (what DistributedSampler gives rank r of N ranks with --shuffle=false).
  compare_dp_grads.py grow ALL.safetensors OUT.safetensors COPIES
      ALL's examples followed by COPIES remapped copies of them (non-zero tokens mapped to other ids
      inside the vocabulary, the same masks): more distinct examples for more ranks or steps.
  compare_dp_grads.py check DP.safetensors SINGLE0.safetensors SINGLE1.safetensors METRICS.jsonl
      Every grad.<p> of the data-parallel dump against the mean of the two single runs' grad.<p>,
      and loss.total (dump and metrics.jsonl) against the mean of their losses.

Tolerance: each rank computes its gradient exactly as the single run on its example does (same
example, batch 1, one OpenMP thread), so the only difference is the float32 all-reduce: the sum
a + b rounded once (at most half an ulp of |a + b| <= 2 max(|a|, |b|)), then the exact halving.
|got - (a + b) / 2| <= 2^-23 max(|a|, |b|) per element; we allow 4x that (2^-21), far below the
gap of a wrong reduction (sum instead of mean, one rank's gradient alone: relative errors ~1).
The losses are averaged in float64 and dumped as float32: relative 1e-6.
"""
import json
import sys

import safetensors_lite as st


def split(expected, out):
    t = st.read(expected)
    ids, mask = t["input_ids"], t["attention_mask"]
    n, s = ids[1]
    st.write(f"{out}/all.safetensors", {"input_ids": ids, "attention_mask": mask})
    for r in range(n):
        st.write(f"{out}/example{r}.safetensors",
                 {"input_ids": (ids[0], [1, s], ids[2][r * s:(r + 1) * s]),
                  "attention_mask": (mask[0], [1, s], mask[2][r * s:(r + 1) * s])})


def grow(src, out, copies):
    t = st.read(src)
    (di, (n, s), ids), (dm, _, mask) = t["input_ids"], t["attention_mask"]
    remaps = [(7, 5), (11, 3)][:int(copies)]
    more = [[0 if v == 0 else 1 + (v * a + b) % 319 for v in ids] for a, b in remaps]
    rows = n * (1 + len(more))
    st.write(out, {"input_ids": (di, [rows, s], list(ids) + sum(more, [])),
                   "attention_mask": (dm, [rows, s], list(mask) * (1 + len(more)))})


def check(dp_path, single0, single1, metrics):
    dp, a, b = st.read(dp_path), st.read(single0), st.read(single1)
    names = sorted(k for k in a if k.startswith("grad."))
    assert names and set(names) == {k for k in dp if k.startswith("grad.")}, "different gradient names"
    worst, differ = 0.0, 0
    for name in names:
        g, x, y = dp[name][2], a[name][2], b[name][2]
        assert dp[name][1] == a[name][1] == b[name][1], name
        for i, (gv, xv, yv) in enumerate(zip(g, x, y)):
            mean = (xv + yv) / 2
            tol = 2.0 ** -21 * max(abs(xv), abs(yv))
            err = abs(gv - mean)
            assert err <= tol, f"{name}[{i}]: data parallel {gv!r}, mean of the single runs {mean!r} ({xv!r}, {yv!r})"
            worst = max(worst, err / tol if tol else 0.0)
            differ += xv != yv
    assert differ > 0, "the two examples gave the same gradient: the test could not tell mean from either"
    want = (a["loss.total"][2][0] + b["loss.total"][2][0]) / 2
    got = dp["loss.total"][2][0]
    logged = json.loads(open(metrics).readline())["loss"]
    for what, v in (("dumped", got), ("logged", logged)):
        assert abs(v - want) <= 1e-6 * abs(want), f"{what} loss {v} vs the mean of the single runs {want}"
    print(f"{len(names)} gradients = mean of the single runs (worst error {worst:.3f} of the tolerance; "
          f"{differ} elements differ between the examples); loss {got:.6f} = mean {want:.6f}")


if __name__ == "__main__":
    {"split": split, "grow": grow, "check": check}[sys.argv[1]](*sys.argv[2:])
