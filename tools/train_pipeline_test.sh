#!/usr/bin/env bash
# //tools:train pipeline parallel (--plugin hybrid --pp_size 2 --ep_size 1 --dp_size 1, 1F1B over 2
# host ranks under mpirun), issue 17's `hybrid` plugin, first slice (pure pipeline):
#  1. on the tiny8b fixture (4 layers: stage 0 = embedding + layers 0-1 with MoE layer 1, stage 1 =
#     layers 2-3 with MoE layer 3 + final norm, LM head, loss), --batch_size 2 --microbatch_size 1
#     --shuffle=false: the dumped step-1 gradient and logged loss must be the mean of two
#     single-process batch-1 runs on example 0 and example 1 (compare_dp_grads.py check: each
#     microbatch computes exactly the single run's function; the only differences are the float32
#     accumulation of the two microbatches' weight gradients into one buffer, see the tolerance
#     there and below);
#  2. the parameters checkpointed after 3 steps equal those of pure data parallelism over 2 ranks
#     with --batch_size 1 (the same two examples per step; compare_ep_dp.py params);
#  3. ZeRO-2 with pipeline and a batch not divisible into microbatches are refused before any work.
# mpirun setup: tools/mpi_test_env.sh.
set -uo pipefail
train=tools/train
split=tools/compare_dp_grads.py
compare=tools/compare_ep_dp.py
data=tests/data/openmoe/tiny8b

source tools/mpi_test_env.sh train_pp

PYTHONPATH=tools/reference python3 "$split" split "$data/expected.safetensors" "$tmp" || fail "split"
lr=1e-5 steps=3
common=(--model "$data" --shuffle=false --lr "$lr" --progress=false)
for r in 0 1; do
  "$train" "${common[@]}" --dataset "$tmp/example$r.safetensors" --batch_size 1 --max_steps 1 --output_path "$tmp/single$r" \
    --dump_step_state "$tmp/single$r.safetensors" >"$tmp/single$r.log" 2>&1 || { cat "$tmp/single$r.log"; fail "single run $r"; }
done
pp=(--plugin hybrid --pp_size 2 --ep_size 1 --dp_size 1 --microbatch_size 1 --zero_stage 0)
mpi 2 "$train" "${common[@]}" "${pp[@]}" --dataset "$tmp/all.safetensors" --batch_size 2 --num_epochs "$steps" \
  --max_steps "$steps" --output_path "$tmp/pp" --dump_step_state "$tmp/pp.safetensors" >"$tmp/pp.log" 2>&1 \
  || { cat "$tmp/pp.log"; fail "mpirun -np 2 --plugin hybrid --pp_size 2"; }
grep -qF "pipeline parallel: 2 stages (1F1B)" "$tmp/pp.log" || { cat "$tmp/pp.log"; fail "no pipeline line"; }
[[ $(grep -c "^training " "$tmp/pp.log") == 1 ]] || { cat "$tmp/pp.log"; fail "more than rank 0 printed the run"; }
# Memory: each stage stores only its own tensors: the two stages' counts add up to the whole model
# and neither holds it all.
py - "$tmp/pp.log" <<'PY' || { cat "$tmp/pp.log"; fail "the stages do not store disjoint parts of the model"; }
import re, sys
lines = re.findall(r"pipeline stage (\d) of 2 stores (.*): (\d+) of the model's (\d+) parameters", open(sys.argv[1]).read())
assert sorted(int(s) for s, *_ in lines) == [0, 1], lines
stored, whole = [int(n) for _, _, n, _ in lines], int(lines[0][3])
assert sum(stored) == whole and max(stored) < whole, (stored, whole)
print("stages store", stored, "of", whole, "parameters:", [what for _, what, _, _ in sorted(lines)])
PY
[[ "$(cat "$tmp/pp/latest")" == "step-$steps" ]] || fail "rank 0's checkpoint under --plugin hybrid"
PYTHONPATH=tools/reference python3 "$split" check "$tmp/pp.safetensors" "$tmp/single0.safetensors" \
  "$tmp/single1.safetensors" "$tmp/pp/metrics.jsonl" || fail "the pipelined step-1 gradient / loss is not the mean of the single runs"

mpi 2 "$train" "${common[@]}" --plugin ep_zero --extra_dp_size 2 --zero_stage 0 --dataset "$tmp/all.safetensors" \
  --batch_size 1 --num_epochs "$steps" --max_steps "$steps" --output_path "$tmp/dp" >"$tmp/dp.log" 2>&1 \
  || { cat "$tmp/dp.log"; fail "mpirun -np 2 --plugin ep_zero"; }
PYTHONPATH=tools/reference python3 "$compare" params "$tmp/pp/step-$steps/model.safetensors" \
  "$tmp/dp/step-$steps/model.safetensors" "$lr" "$steps" || fail "the parameters after $steps steps differ from pure DP"

expect_error() {
  local want=$1; shift
  local rc=0
  mpi 2 "$train" "${common[@]}" --dataset "$tmp/all.safetensors" --output_path "$tmp/bad" "$@" >"$tmp/bad.log" 2>&1 || rc=$?
  [[ $rc != 0 ]] || fail "expected an error for: $*"
  [[ $rc != 124 && $rc != 137 ]] || fail "hung: $*"
  grep -qF -- "$want" "$tmp/bad.log" || { cat "$tmp/bad.log"; fail "'$want' not in the output for: $*"; }
  grep -q "^training " "$tmp/bad.log" && fail "work started for: $*"
  echo "refused ($rc): $*"
}
expect_error "--zero_stage 2 cannot be combined with pipeline parallelism" --plugin hybrid --pp_size 2 --ep_size 1 --dp_size 1 --zero_stage 2
expect_error "--batch_size 3 is not divisible by --microbatch_size 2" --plugin hybrid --pp_size 2 --ep_size 1 --dp_size 1 \
  --zero_stage 0 --batch_size 3 --microbatch_size 2
expect_error "the world size 2 is not divisible by --pp_size 2 x --ep_size 2 x --dp_size 1 = 4" --plugin hybrid --pp_size 2 --zero_stage 0
echo "pipeline parallel: PASS"
