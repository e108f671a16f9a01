#!/usr/bin/env bash
# //tools:train from the command line:
#  1. --dump_step_state on the fixtures (pre-tokenized batch, one step, the fixtures' AdamW
#     settings): loss, every gradient and every parameter after the step against the float64
#     reference, with the fixture README's tolerances;
#  2. a run resumed from its step-3 checkpoint (--resume alone: the checkpoint gives the model and
#     the run's options) ends bit-identical to an uninterrupted run, and so does a run killed while
#     saving a checkpoint, resumed from the last complete one (metrics.jsonl: every step once);
#  3. bad input (malformed / incomplete / empty data, unwritable output, mismatched resume,
#     unsupported flags, a loss that becomes NaN) stops with a clear message, keeping the last
#     checkpoint;
#  4. the default run (no --model/--dataset) uses the settings README.md states (one step).
set -euo pipefail
train=tools/train
data=tests/data/openmoe
tmp="${TEST_TMPDIR:-/tmp}/train_cli"
rm -rf "$tmp" && mkdir -p "$tmp"
py() { PYTHONPATH=tools/reference python3 "$@"; }

for case in tiny8b tinybase; do
  py - "$data/$case/expected.safetensors" "$tmp/$case.batch.safetensors" <<'PY'
import sys, safetensors_lite as st
t = st.read(sys.argv[1])
st.write(sys.argv[2], {"input_ids": t["input_ids"], "attention_mask": t["attention_mask"]})
PY
  "$train" --model "$data/$case" --dataset "$tmp/$case.batch.safetensors" --batch_size 2 --shuffle=false \
    --max_steps 1 --lr 1e-3 --weight_decay 0.01 --output_path "$tmp/$case.out" \
    --dump_step_state "$tmp/$case.step1.safetensors" 2>"$tmp/$case.log"
  py - "$tmp/$case.step1.safetensors" "$data/$case" <<'PY'
import json, sys, safetensors_lite as st
ours, want = st.read(sys.argv[1]), st.read(sys.argv[2] + "/expected.safetensors")
ref = json.load(open(sys.argv[2] + "/expected.json"))
total = ours["loss.total"][2][0]
assert abs(total - ref["loss_total"]) <= 1e-4 * abs(ref["loss_total"]), (total, ref["loss_total"])
lr = ref["adamw"]["lr"]
checked = 0
for name in [k[len("grad."):] for k in ours if k.startswith("grad.")]:
    g, r = ours["grad." + name][2], want["grad." + name][2]
    big = max(abs(x) for x in r)
    assert all(abs(a - b) <= 1e-3 * big for a, b in zip(g, r)), "grad." + name
    p, q = ours["param." + name][2], want["adamw_step1." + name][2]
    for a, b, gr in zip(p, q, r):
        assert abs(a - b) <= (1e-6 if abs(gr) >= 1e-3 * big else 2 * lr), ("param." + name, a, b, gr)
    checked += 1
assert checked == sum(1 for k in want if k.startswith("grad.")), checked
print(f"{sys.argv[2]}: loss {total:.6f} (reference {ref['loss_total']:.6f}), {checked} gradients and parameters match")
PY
done

# Resume: 6 steps straight vs 3 steps + resume to 6. The resume gives no --model, --dataset, --seed
# or --output_path: the checkpoint supplies the weights and the run's options; --max_steps 6
# overrides the saved 3.
common=(--model tools/default_model/openmoe-tiny-random --dataset tools/train_data/tiny_instructions.jsonl
        --max_length 16 --batch_size 4 --lr 1e-3 --seed 5 --progress=false)
"$train" "${common[@]}" --max_steps 6 --save_interval 3 --output_path "$tmp/straight" 2>/dev/null
"$train" "${common[@]}" --max_steps 3 --output_path "$tmp/resumed" 2>/dev/null
[[ "$(cat "$tmp/resumed/latest")" == "step-3" ]]
"$train" --resume "$tmp/resumed" --max_steps 6 2>"$tmp/resume.log"
grep -qxF "resuming from step 3 of $tmp/resumed/step-3" "$tmp/resume.log" \
  || { echo "FAIL: no 'resuming from step 3' line:"; cat "$tmp/resume.log"; exit 1; }
grep -qF "training 187 examples of 16 tokens, batch 4, 6 steps (from step 3), lr 0.001 (constant), fp32, seed 5," "$tmp/resume.log" \
  || { echo "FAIL: the resume did not restore the run's options:"; cat "$tmp/resume.log"; exit 1; }
[[ "$(cat "$tmp/resumed/latest")" == "step-6" ]] || { echo "FAIL: resumed latest is $(cat "$tmp/resumed/latest")"; exit 1; }
for f in model.safetensors trainer_state.safetensors; do
  cmp "$tmp/straight/step-6/$f" "$tmp/resumed/step-6/$f" || { echo "FAIL: resumed $f differs"; exit 1; }
done
# steps + losses of a metrics.jsonl: every step exactly once, the same losses as the straight run.
same_metrics() {  # same_metrics FILE
  py - "$tmp/straight/metrics.jsonl" "$1" <<'PY'
import json, sys
want = [(j["step"], j["loss"], j["grad_norm"]) for j in map(json.loads, open(sys.argv[1]))]
got = [(j["step"], j["loss"], j["grad_norm"]) for j in map(json.loads, open(sys.argv[2]))]
assert [s for s, _, _ in want] == [1, 2, 3, 4, 5, 6], want
assert [s for s, _, _ in got] == [1, 2, 3, 4, 5, 6], f"{sys.argv[2]}: steps {[s for s, _, _ in got]}"
assert got == want, f"{sys.argv[2]}: {got} vs {want}"
PY
}
same_metrics "$tmp/resumed/metrics.jsonl"
# Killed while saving step-4 (test hook: SIGKILL with the temporary folder written, before its
# rename): step-2 stays the last complete checkpoint; metrics.jsonl already logged steps 3, 4.
if OPENMOE_TRAIN_TEST_KILL_BEFORE_RENAME_AT_STEP=4 "$train" "${common[@]}" --max_steps 6 --save_interval 2 \
     --output_path "$tmp/killed" 2>/dev/null; then
  echo "FAIL: the run was not killed"; exit 1
else
  rc=$?; [[ $rc -eq 137 ]] || { echo "FAIL: killed run exited $rc"; exit 1; }
fi
[[ "$(cat "$tmp/killed/latest")" == "step-2" && ! -e "$tmp/killed/step-4" ]] \
  || { echo "FAIL: after the kill: latest $(cat "$tmp/killed/latest"), folders $(ls "$tmp/killed")"; exit 1; }
stale=("$tmp"/killed/.step-4.tmp-*)
[[ -f "${stale[0]}/model.safetensors" && -f "${stale[0]}/trainer_state.json" ]] \
  || { echo "FAIL: no temporary step-4 folder left by the kill: $(ls -a "$tmp/killed")"; exit 1; }
[[ $(wc -l <"$tmp/killed/metrics.jsonl") -eq 4 ]] || { echo "FAIL: the killed run did not log steps 1-4"; exit 1; }
# A stale `latest` temporary too, as a kill while replacing `latest` leaves (pid 2^22+1: none).
echo step-9 >"$tmp/killed/latest.tmp-4194305"
"$train" --resume "$tmp/killed" 2>"$tmp/killed_resume.log"
grep -qxF "resuming from step 2 of $tmp/killed/step-2" "$tmp/killed_resume.log" \
  || { echo "FAIL: not resumed from step-2:"; cat "$tmp/killed_resume.log"; exit 1; }
[[ "$(cat "$tmp/killed/latest")" == "step-6" ]] || { echo "FAIL: killed run's latest is $(cat "$tmp/killed/latest")"; exit 1; }
for f in model.safetensors trainer_state.safetensors; do
  cmp "$tmp/straight/step-6/$f" "$tmp/killed/step-6/$f" || { echo "FAIL: killed + resumed $f differs"; exit 1; }
done
same_metrics "$tmp/killed/metrics.jsonl"
leftover=$(cd "$tmp/killed" && ls -A | grep -F .tmp || true)
[[ -z "$leftover" ]] || { echo "FAIL: temporary files left after the next save: $leftover"; exit 1; }
[[ "$(ls "$tmp/killed" | grep '^step-' | tr '\n' ' ')" == "step-4 step-6 " ]]
# And the finished run resumes again (its step-6 checkpoint), here to 8 steps.
"$train" --resume "$tmp/killed" --max_steps 8 2>"$tmp/killed_resume2.log"
grep -qxF "resuming from step 6 of $tmp/killed/step-6" "$tmp/killed_resume2.log"
[[ "$(cat "$tmp/killed/latest")" == "step-8" && $(wc -l <"$tmp/killed/metrics.jsonl") -eq 8 ]]
echo "kill while saving: resumed from step-2, step-6 bit-identical, metrics steps 1..6 once each"
# Sharded checkpoints (tiny shards here): the same weights, readable through the index.
"$train" "${common[@]}" --max_steps 6 --max_shard_bytes 200000 --output_path "$tmp/sharded" 2>/dev/null
ls "$tmp/sharded/step-6" | grep -q "model-00001-of-" && [[ -f "$tmp/sharded/step-6/model.safetensors.index.json" ]]
py - "$tmp/straight/step-6/model.safetensors" "$tmp/sharded/step-6" <<'PY'
import glob, json, sys, safetensors_lite as st
one = st.read(sys.argv[1])
index = json.load(open(sys.argv[2] + "/model.safetensors.index.json"))["weight_map"]
shards = {f: st.read(sys.argv[2] + "/" + f) for f in set(index.values())}
assert set(index) == set(one), "index does not list every tensor"
assert all(shards[index[n]][n] == one[n] for n in one), "sharded weights differ"
print(f"sharded checkpoint: {len(shards)} shards, same {len(one)} tensors")
PY
"$train" "${common[@]}" --max_steps 7 --max_shard_bytes 200000 --resume "$tmp/sharded" --output_path "$tmp/sharded" 2>/dev/null
[[ "$(cat "$tmp/sharded/latest")" == "step-7" ]]  # the sharded folder loads (resume reads it)
# bf16 mixed precision runs (fp32 checkpoints; the loss goes down like the fp32 run's).
"$train" "${common[@]}" --max_steps 6 --precision bf16 --output_path "$tmp/bf16" 2>/dev/null
py - "$tmp/straight/metrics.jsonl" "$tmp/bf16/metrics.jsonl" <<'PY'
import json, sys
a = [json.loads(l)["loss"] for l in open(sys.argv[1])]
b = [json.loads(l)["loss"] for l in open(sys.argv[2])]
assert len(a) == len(b) == 6 and b[-1] < b[0], (a, b)
assert all(abs(x - y) <= 0.02 * x for x, y in zip(a, b)), (a, b)
print(f"bf16: loss {b[0]:.2f} -> {b[-1]:.2f} (fp32 {a[0]:.2f} -> {a[-1]:.2f})")
PY
# fp16 with dynamic loss scaling. The tiny model's <pad> (= BOS) embedding row is 0, so position 0
# enters every RMSNorm as a zero vector and its gradient grows 1000x per norm: beyond fp16 at any
# scale (checked with the errors below). A copy with a non-zero row (as trained checkpoints have)
# trains: the first steps overflow at 2^16 and 2^15 and are skipped (no update; hysteresis 2),
# then the steps apply and the loss goes down; a resumed run continues bit-identically.
py - tools/default_model/openmoe-tiny-random "$tmp/nonzero_pad" <<'PY'
import math, os, shutil, sys, safetensors_lite as st
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst)
for f in ("config.json", "tokenizer.model"):
    shutil.copy(os.path.join(src, f), dst)
t = st.read(os.path.join(src, "model.safetensors"))
dtype, shape, values = t["model.embed_tokens.weight"]
values = list(values)
values[: shape[1]] = [0.02 * math.sin(1.0 + h) for h in range(shape[1])]
t["model.embed_tokens.weight"] = (dtype, shape, values)
st.write(os.path.join(dst, "model.safetensors"), t)
PY
fp16=(--model "$tmp/nonzero_pad" "${common[@]:2}" --precision fp16)
"$train" "${fp16[@]}" --max_steps 12 --output_path "$tmp/fp16" 2>/dev/null
"$train" "${fp16[@]}" --max_steps 6 --output_path "$tmp/fp16_part" 2>/dev/null
"$train" "${fp16[@]}" --max_steps 12 --resume "$tmp/fp16_part" --output_path "$tmp/fp16_part" 2>/dev/null
cmp "$tmp/fp16/step-12/model.safetensors" "$tmp/fp16_part/step-12/model.safetensors" \
  || { echo "FAIL: a resumed fp16 run differs"; exit 1; }
py - "$tmp/fp16/metrics.jsonl" <<'PY'
import json, math, sys
steps = [json.loads(l) for l in open(sys.argv[1])]
scales = [x["loss_scale"] for x in steps]
skipped = [x["skipped"] for x in steps]
assert len(steps) == 12 and skipped[:4] == [True] * 4 and not any(skipped[4:]), steps
assert scales[:5] == [65536, 65536, 32768, 32768, 16384] and set(scales[4:]) == {16384}, scales
applied = [x["loss"] for x in steps[4:]]
assert all(math.isfinite(x) and math.isfinite(s["grad_norm"]) for x, s in zip(applied, steps[4:])), steps
assert applied[-1] < applied[0], applied
print(f"fp16: 4 overflowing steps skipped (scale 2^16 -> 2^14), then loss {applied[0]:.2f} -> {applied[-1]:.2f}")
PY
# Activation recomputation changes nothing either.
"$train" "${common[@]}" --max_steps 6 --grad_checkpoint --output_path "$tmp/recomputed" 2>/dev/null
cmp "$tmp/straight/step-6/model.safetensors" "$tmp/recomputed/step-6/model.safetensors" \
  || { echo "FAIL: --grad_checkpoint changed the weights"; exit 1; }
[[ -f "$tmp/resumed/loss_curve.png" && $(wc -l <"$tmp/resumed/metrics.jsonl") -eq 6 ]]
echo "resume: step-6 weights and optimizer state bit-identical"

expect_error() {  # expect_error "<text the message must contain>" args...
  local want="$1"; shift
  if "$train" "$@" >"$tmp/out.txt" 2>&1; then echo "FAIL: expected an error for: $*"; exit 1; fi
  grep -qF -- "$want" "$tmp/out.txt" || { echo "FAIL: '$want' not in: $(cat "$tmp/out.txt")"; exit 1; }
}
printf '{"prompt": "a", "completion": "b"}\n{"prompt": oops}\n' >"$tmp/bad.jsonl"
printf '{"prompt": "a"}\n' >"$tmp/missing.jsonl"
printf '\n' >"$tmp/empty.jsonl"
m=(--model tools/default_model/openmoe-tiny-random --output_path "$tmp/bad_out" --progress=false)
expect_error "bad.jsonl:2: malformed JSON line" "${m[@]}" --dataset "$tmp/bad.jsonl"
expect_error 'missing.jsonl:1: missing field "completion"' "${m[@]}" --dataset "$tmp/missing.jsonl"
expect_error "holds no records" "${m[@]}" --dataset "$tmp/empty.jsonl"
expect_error "is not writable" "${m[@]}" --dataset tools/train_data/tiny_instructions.jsonl --output_path /proc/no_such_dir
expect_error "the checkpoint's vocab_size is 640, --model has 320" --model "$data/tiny8b" --resume "$tmp/straight" \
  --dataset tools/train_data/tiny_instructions.jsonl --output_path "$tmp/x"
expect_error "--plugin hybrid: the world size 1 is not divisible by --pp_size 2 x --ep_size 2" "${m[@]}" --dataset tools/train_data/tiny_instructions.jsonl --plugin hybrid
expect_error "--extra_dp_size must divide the world size" "${m[@]}" --dataset tools/train_data/tiny_instructions.jsonl --plugin ep_zero --extra_dp_size 2
expect_error "fp16 overflow at step 1 even at loss scale 1" "${m[@]}" --dataset tools/train_data/tiny_instructions.jsonl \
  --precision fp16 --initial_loss_scale 1 --max_length 16
expect_error "--initial_loss_scale must be a finite number >= 1" "${m[@]}" --dataset tools/train_data/tiny_instructions.jsonl --precision fp16 --initial_loss_scale 0.5
expect_error "--precision must be fp32, bf16 or fp16" "${m[@]}" --dataset tools/train_data/tiny_instructions.jsonl --precision fp8
expect_error "has no tokenizer.model" --model_name base --dataset tools/train_data/tiny_instructions.jsonl --output_path "$tmp/x"
expect_error "no trainer_state.json and no \`latest\` file" "${m[@]}" --dataset tools/train_data/tiny_instructions.jsonl --resume "$tmp"
expect_error "give exactly one of --model DIR and --model_name" --model tools/default_model/openmoe-tiny-random --model_name base \
  --dataset tools/train_data/tiny_instructions.jsonl --output_path "$tmp/x"
expect_error "--batch_size must be positive" "${m[@]}" --dataset tools/train_data/tiny_instructions.jsonl --batch_size 0
# A learning rate that blows the weights up: the loss is not finite at step 2; step-1 stays.
expect_error "the last checkpoint" "${common[@]}" --lr 1e30 --max_steps 5 --save_interval 1 --output_path "$tmp/nan"
[[ "$(cat "$tmp/nan/latest")" == "step-1" ]] || { echo "FAIL: latest is $(cat "$tmp/nan/latest")"; exit 1; }
echo "bad input refused with clear messages"

# The default run (no --model/--dataset) uses the settings README.md's "The default run" states;
# one step only (the full run is too slow for a test): 187 examples of 28 tokens (the longest
# record is 27 tokens with <pad>, so none is cut), batch 16, lr 3e-3 cosine, 20 warmup steps,
# 100 epochs, clipping at 1.
"$train" --max_steps 1 --output_path "$tmp/default" --progress=false 2>"$tmp/default.log"
grep -qF "training 187 examples of 28 tokens, batch 16, 1 steps (from step 0), lr 0.003 (cosine), fp32, seed 42," "$tmp/default.log" \
  || { echo "FAIL: the default run's settings changed (update README.md's default-run paragraph):"; cat "$tmp/default.log"; exit 1; }
py - "$tmp/default/step-1/run_config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
want = {"num_epochs": 100, "batch_size": 16, "max_length": 28, "lr": 3e-3, "lr_schedule": "cosine",
        "warmup_steps": 20, "max_grad_norm": 1.0, "weight_decay": 0.0, "precision": "fp32"}
got = {k: c[k] for k in want}
assert got == want, f"default run settings {got} != README's {want}"
assert c["model"].endswith("tools/default_model/openmoe-tiny-random"), c["model"]
assert c["dataset"].endswith("tools/train_data/tiny_instructions.jsonl"), c["dataset"]
PY
echo "default run settings as in README.md"
