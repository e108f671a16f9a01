#!/usr/bin/env bash
# //tools:train expert parallelism with expert replicas and ZeRO under mpirun on host ranks (issue 17):
#  1. `mpirun -np 4 train --plugin ep_zero --extra_dp_size 2 --zero_stage 1` (EP groups {0,2} and
#     {1,3} of 2 ranks, 4 of the tiny8b fixture's 8 experts a rank, each expert on 2 ranks) equals
#     `mpirun -np 4 train --plugin ep_zero --extra_dp_size 4 --zero_stage 0` (pure data parallelism,
#     itself checked against single-process runs by train_data_parallel_test) on 4 examples with
#     --batch_size 1 --shuffle=false (rank r takes example r): the dumped step-1 gradients (the mean
#     over the 4 ranks of each rank's gradient of its own loss) and the parameters after 3 steps,
#     to compare_ep_dp.py's tolerances (float32 order of the experts' sums differs; see there);
#  2. `mpirun -np 2 train --plugin ep --zero_stage 1` and `--zero_stage 2` equal `--zero_stage 0`
#     bit for bit after 3 clipped steps (losses, weights, AdamW moments: compare_zero_runs.py says
#     why exact), and the ZeRO-2 step-1 gradient dump equals ZeRO-0's;
#  3. --extra_dp_size not dividing the world size, and an EP size not dividing num_experts (8
#     experts; -np 3 --extra_dp_size 1, -np 6 --extra_dp_size 2), are refused before any work,
#     naming the flag;
#  and each rank makes every group of its plugin once (the counts at `communicators` below).
# mpirun setup as train_data_parallel_test.sh (4 ranks on 2 cores: --oversubscribe, one thread).
set -uo pipefail
train=tools/train
data=tests/data/openmoe/tiny8b

source tools/mpi_test_env.sh train_ep_zero

# communicators LOG NP N: each of the NP ranks says it made N communicators ("rank R: communicators:
# N (...)"; tools/train.cc's ProcessGroups: the world once, each distinct group of ranks once).
communicators() {
  [[ $(grep -cE "^rank [0-9]+: communicators: $3 \(" "$1") == "$2" ]] \
    || { grep "communicators:" "$1"; fail "$(basename "$1"): expected $3 communicators on each of $2 ranks"; }
}

# The fixture's 2 examples plus 2 more (their non-zero tokens remapped inside the vocabulary, same
# masks), so that 4 ranks each take a different example.
py tools/compare_dp_grads.py split "$data/expected.safetensors" "$tmp" || fail "split"
py tools/compare_dp_grads.py grow "$tmp/all.safetensors" "$tmp/four.safetensors" 1 || fail "four examples"

# 1. ep_zero k = 2 (EP size 2) with ZeRO-1 against pure data parallelism on 4 ranks.
lr=1e-5 steps=3
common=(--model "$data" --dataset "$tmp/four.safetensors" --batch_size 1 --shuffle=false --num_epochs "$steps"
        --max_steps "$steps" --lr "$lr" --progress=false)
mpi 4 "$train" "${common[@]}" --plugin ep_zero --extra_dp_size 2 --zero_stage 1 --output_path "$tmp/epz" \
  --dump_step_state "$tmp/epz.safetensors" >"$tmp/epz.log" 2>&1 || { cat "$tmp/epz.log"; fail "mpirun -np 4 ep_zero k=2 ZeRO-1"; }
grep -qF "expert parallel: 8 experts over 2 ranks (4 each), each expert on 2 ranks; EP groups {0,2} {1,3}" "$tmp/epz.log" \
  || { cat "$tmp/epz.log"; fail "no EP group line"; }
grep -qF "with ZeRO-1" "$tmp/epz.log" || { cat "$tmp/epz.log"; fail "no ZeRO-1 line"; }
# Communicators, each group once: ep_zero k = 2 on 4 ranks makes the world (also the data-parallel
# hooks' and ZeRO's group: dense DP is every rank), the EP group ({0,2} / {1,3}) and the expert
# replicas ({0,1} / {2,3}) -> 3; pure DP (k = 4) the world alone -> 1; ep on 2 ranks the world
# (also the EP group: every rank) and the replicas (each rank alone) -> 2.
communicators "$tmp/epz.log" 4 3
mpi 4 "$train" "${common[@]}" --plugin ep_zero --extra_dp_size 4 --zero_stage 0 --output_path "$tmp/dp" \
  --dump_step_state "$tmp/dp.safetensors" >"$tmp/dp.log" 2>&1 || { cat "$tmp/dp.log"; fail "mpirun -np 4 pure DP"; }
grep -q "expert parallel" "$tmp/dp.log" && fail "pure data parallelism ran expert parallel"
communicators "$tmp/dp.log" 4 1
[[ "$(cat "$tmp/epz/latest")" == "step-$steps" ]] || fail "rank 0's checkpoint under ep_zero k=2"
py tools/compare_ep_dp.py grads "$tmp/epz.safetensors" "$tmp/dp.safetensors" \
  || fail "the ep_zero (k=2, ZeRO-1) step-1 gradient is not the data-parallel one"
py tools/compare_ep_dp.py params "$tmp/epz/step-$steps/model.safetensors" "$tmp/dp/step-$steps/model.safetensors" \
  "$lr" "$steps" || fail "the parameters after $steps steps differ (ep_zero k=2 ZeRO-1 vs pure DP)"

# 2. --plugin ep on 2 ranks: ZeRO-1 and ZeRO-2 equal ZeRO-0 bit for bit (clipping active, large lr).
zcommon=(--model "$data" --dataset "$tmp/all.safetensors" --plugin ep --batch_size 1 --shuffle=false --num_epochs 3
         --max_steps 3 --progress=false --lr 1e-2 --max_grad_norm 0.5)
for z in 0 1 2; do
  mpi 2 "$train" "${zcommon[@]}" --zero_stage $z --output_path "$tmp/ep_z$z" --dump_step_state "$tmp/ep_z$z.safetensors" \
    >"$tmp/ep_z$z.log" 2>&1 || { cat "$tmp/ep_z$z.log"; fail "mpirun -np 2 --plugin ep --zero_stage $z"; }
  grep -qF "expert parallel: 8 experts over 2 ranks (4 each)" "$tmp/ep_z$z.log" || { cat "$tmp/ep_z$z.log"; fail "no EP line"; }
  communicators "$tmp/ep_z$z.log" 2 2
done
py tools/compare_zero_runs.py moved "$tmp/ep_z0" "$data/model.safetensors" || fail "ep ZeRO-0 did not train"
py tools/compare_zero_runs.py "$tmp/ep_z0" "$tmp/ep_z1" "$tmp/ep_z2" || fail "ep ZeRO-1/2 differ from ZeRO-0"
py tools/compare_ep_dp.py grads "$tmp/ep_z2.safetensors" "$tmp/ep_z0.safetensors" || fail "ep ZeRO-2 step-1 gradient"

# 3. Refused before any work.
expect_error() {  # expect_error NP WANT train flags...
  local np=$1 want=$2; shift 2
  local rc=0
  mpi "$np" "$train" --model "$data" --dataset "$tmp/four.safetensors" --output_path "$tmp/bad" --progress=false "$@" \
    >"$tmp/bad.log" 2>&1 || rc=$?
  [[ $rc != 0 ]] || fail "expected an error for: $*"
  [[ $rc != 124 && $rc != 137 ]] || fail "hung: $*"
  grep -qF -- "$want" "$tmp/bad.log" || { cat "$tmp/bad.log"; fail "'$want' not in the output for: $*"; }
  grep -q "^training " "$tmp/bad.log" && fail "work started for: $*"
  echo "refused ($rc): -np $np $*"
}
expect_error 4 "--extra_dp_size must divide the world size (the EP size is world / --extra_dp_size), not 3 on 4 ranks" \
  --plugin ep_zero --extra_dp_size 3 --zero_stage 1
expect_error 3 "--plugin ep_zero --extra_dp_size 1 splits the experts over the ranks, but the model's 8 experts (num_experts) cannot be split evenly over 3 ranks" \
  --plugin ep_zero --extra_dp_size 1 --zero_stage 0
expect_error 6 "--plugin ep_zero --extra_dp_size 2 splits the experts over EP groups of 6 / 2 = 3 ranks, but the model's 8 experts (num_experts) cannot be split evenly over 3 ranks" \
  --plugin ep_zero --extra_dp_size 2 --zero_stage 1
echo "ep_zero / ep with ZeRO: PASS"
