"""Helper of train_comm_overlap_test.sh (stdlib + tools/reference/safetensors_lite only).

  compare_overlap_runs.py constant ALL.safetensors OUT.safetensors TOKEN [TOKEN ...]
      One example per TOKEN, of ALL's sequence length, every position that token with a full mask.
      Identical tokens give (nearly) identical hidden states at every position, so each MoE layer
      routes the whole example to the same two experts: the other experts get no token from that rank.
  compare_overlap_runs.py concat OUT.safetensors A.safetensors B.safetensors
      A's examples followed by B's (same sequence length).
  compare_overlap_runs.py same RUN DUMP OTHER_RUN OTHER_DUMP
      --comm_overlap against no overlap, no tolerance: every tensor of the step-1 dumps (loss.*,
      grad.*, param.*), every step's loss and grad_norm in metrics.jsonl, and the last checkpoint's
      weights and AdamW moments must be the same floats (each expert's products run on the same rows
      with the same calls either way; see parallel/expert_parallel_dispatcher.h).
  compare_overlap_runs.py silent_expert DUMP
      Some expert of some MoE layer has an all-zero step-1 gradient in every one of its weights
      (it received no token on any rank), and some other expert does not.
"""
import json
import os
import sys

import safetensors_lite as st


def constant(src, out, *tokens):
    ids = st.read(src)["input_ids"]
    dtype, (_, s), _ = ids
    rows = len(tokens)
    st.write(out, {"input_ids": (dtype, [rows, s], [int(t) for t in tokens for _ in range(s)]),
                   "attention_mask": (dtype, [rows, s], [1] * (rows * s))})


def concat(out, a_path, b_path):
    a, b = st.read(a_path), st.read(b_path)
    joined = {}
    for key in ("input_ids", "attention_mask"):
        (da, (na, s), va), (db, (nb, sb), vb) = a[key], b[key]
        assert da == db and s == sb, f"{key}: {da} [{na}, {s}] vs {db} [{nb}, {sb}]"
        joined[key] = (da, [na + nb, s], list(va) + list(vb))
    st.write(out, joined)


def _same_tensors(path, other, what, read=st.read):
    a, b = read(path), read(other)
    assert sorted(a) == sorted(b), f"{what}: different tensor names"
    for key in a:
        assert a[key][1] == b[key][1], f"{what} {key}: shapes {a[key][1]} vs {b[key][1]}"
        if a[key][2] != b[key][2]:
            i = next(i for i, (u, v) in enumerate(zip(a[key][2], b[key][2])) if u != v)
            raise AssertionError(f"{what} {key}[{i}]: no overlap {a[key][2][i]!r}, overlap {b[key][2][i]!r}")
    return len(a)


def same(run, dump, other_run, other_dump):
    tensors = _same_tensors(dump, other_dump, "step-1 dump")
    lines = [[json.loads(l) for l in open(f"{r}/metrics.jsonl")] for r in (run, other_run)]
    assert [m["step"] for m in lines[0]] == [m["step"] for m in lines[1]], "different steps"
    for x, y in zip(*lines):
        for field in ("loss", "grad_norm"):
            assert x[field] == y[field], f"step {x['step']} {field}: no overlap {x[field]!r}, overlap {y[field]!r}"
    last = open(f"{run}/latest").read().strip()
    assert last == open(f"{other_run}/latest").read().strip(), "different last checkpoints"
    tensors += _same_tensors(f"{run}/{last}/model.safetensors", f"{other_run}/{last}/model.safetensors",
                             f"{last}/model.safetensors")
    tensors += _same_tensors(f"{run}/{last}", f"{other_run}/{last}", f"{last} AdamW moments", st.read_moments)
    print(f"identical: {tensors} tensors (step-1 dump, {last} checkpoint), losses and grad norms of "
          f"{len(lines[0])} steps")


def silent_expert(dump):
    t = st.read(dump)
    layers = sorted({k[len("grad."):k.index(".mlp.experts.")] for k in t if k.startswith("grad.") and ".mlp.experts." in k})
    assert layers, "no expert gradients in the dump"
    silent, busy = [], 0
    for layer in layers:
        weights = [k for k in t if k.startswith(f"grad.{layer}.mlp.experts.")]
        experts = t[weights[0]][1][0]
        for e in range(experts):
            zero = True
            for w in weights:
                values = t[w][2]
                per = len(values) // experts
                zero = zero and not any(values[e * per:(e + 1) * per])
            if zero:
                silent.append(f"{layer} expert {e}")
            else:
                busy += 1
    assert silent, "every expert received tokens: the run does not test an expert without tokens"
    assert busy, "no expert received tokens"
    print(f"experts without any token (zero gradient): {', '.join(silent)}; {busy} with tokens")


if __name__ == "__main__":
    {"constant": constant, "concat": concat, "same": same, "silent_expert": silent_expert}[sys.argv[1]](*sys.argv[2:])
