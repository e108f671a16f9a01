#!/usr/bin/env bash
# //tools:train expert parallel (--plugin ep) under mpirun on host ranks, issue 17's `ep` plugin:
#  1. EP equal to pure DP: on the tiny8b fixture (8 experts, 2 examples), `mpirun -np 2 train
#     --plugin ep --zero_stage 0` (4 experts per rank, tokens exchanged by all-to-all) and `mpirun
#     -np 2 train --plugin ep_zero --extra_dp_size 2 --zero_stage 0` (every expert on every rank;
#     itself checked against single-process runs by train_data_parallel_test) with --batch_size 1
#     --shuffle=false: the dumped step-1 gradients and the parameters checkpointed after 3 steps
#     must agree (tolerances and their reasons: compare_ep_dp.py);
#     each rank stores the dense parameters and only its own experts (its flat buffers' size);
#  2. an expert count that does not split over the ranks (8 experts on 3 ranks) stops before any
#     work, naming --plugin ep and num_experts, without hanging.
# mpirun setup: tools/mpi_test_env.sh.
set -uo pipefail
train=tools/train
compare=tools/compare_ep_dp.py
split=tools/compare_dp_grads.py
data=tests/data/openmoe/tiny8b

source tools/mpi_test_env.sh train_ep

PYTHONPATH=tools/reference python3 "$split" split "$data/expected.safetensors" "$tmp" || fail "split"
lr=1e-5 steps=3
common=(--model "$data" --dataset "$tmp/all.safetensors" --batch_size 1 --shuffle=false --num_epochs "$steps"
        --max_steps "$steps" --lr "$lr" --progress=false)
mpi 2 "$train" "${common[@]}" --plugin ep --zero_stage 0 --output_path "$tmp/ep" \
  --dump_step_state "$tmp/ep.safetensors" >"$tmp/ep.log" 2>&1 || { cat "$tmp/ep.log"; fail "mpirun -np 2 --plugin ep"; }
grep -qF "expert parallel: 8 experts over 2 ranks (4 each)" "$tmp/ep.log" || { cat "$tmp/ep.log"; fail "no expert-parallel line"; }
[[ $(grep -c "^training " "$tmp/ep.log") == 1 ]] || { cat "$tmp/ep.log"; fail "more than rank 0 printed the run"; }
# Memory: each rank stores the dense parameters and only its 4 of the 8 experts (counted here from
# the fixture's own tensors, independently of the trainer's layout).
stored=$(PYTHONPATH=tools/reference python3 -c '
import sys, safetensors_lite as st
t = st.read(sys.argv[1])
dense = sum(len(v[2]) for k, v in t.items() if ".experts." not in k)
experts = sum(len(v[2]) for k, v in t.items() if ".experts." in k)
print(f"{dense + experts // 2} of the model'"'"'s {dense + experts} parameters")' "$data/model.safetensors") \
  || fail "counting the fixture's parameters"
grep -qF "expert parallel: each rank stores its own experts only: $stored" "$tmp/ep.log" \
  || { cat "$tmp/ep.log"; fail "ranks do not store only their experts ($stored expected)"; }
mpi 2 "$train" "${common[@]}" --plugin ep_zero --extra_dp_size 2 --zero_stage 0 --output_path "$tmp/dp" \
  --dump_step_state "$tmp/dp.safetensors" >"$tmp/dp.log" 2>&1 || { cat "$tmp/dp.log"; fail "mpirun -np 2 --plugin ep_zero"; }
[[ "$(cat "$tmp/ep/latest")" == "step-$steps" ]] || fail "rank 0's checkpoint under --plugin ep"
PYTHONPATH=tools/reference python3 "$compare" grads "$tmp/ep.safetensors" "$tmp/dp.safetensors" \
  || fail "the expert-parallel step-1 gradient is not the data-parallel one"
PYTHONPATH=tools/reference python3 "$compare" params "$tmp/ep/step-$steps/model.safetensors" \
  "$tmp/dp/step-$steps/model.safetensors" "$lr" "$steps" || fail "the parameters after $steps steps differ"

# 8 experts do not split over 3 ranks: refused before any work, naming the flag and the count.
rc=0
mpi 3 "$train" "${common[@]}" --plugin ep --zero_stage 0 --output_path "$tmp/bad" >"$tmp/bad.log" 2>&1 || rc=$?
[[ $rc != 0 ]] || fail "8 experts on 3 ranks ran"
[[ $rc != 124 && $rc != 137 ]] || fail "8 experts on 3 ranks hung"
grep -qE "^rank [012]: INVALID_ARGUMENT: --plugin ep .*8 experts \(num_experts\) cannot be split evenly over 3 ranks" \
  "$tmp/bad.log" || { cat "$tmp/bad.log"; fail "no error naming --plugin ep and num_experts"; }
grep -q "^training " "$tmp/bad.log" && fail "work started with 8 experts on 3 ranks"
echo "refused ($rc): 8 experts on 3 ranks"
echo "expert parallel: PASS"
