#!/usr/bin/env bash
# //tools:train --plugin hybrid with data and expert parallelism inside the pipeline stages (issue 17),
# 4 host ranks under mpirun (rank = stage * (e d) + ep_index * d + replica; docs/parallel.md):
#  1. pipeline x DP: `--pp_size 2 --ep_size 1 --dp_size 2` (pipelines {0,2} {1,3}, data ranks 0 / 1
#     inside each stage, ZeRO-1 over them) with --batch_size 1 --microbatch_size 1 --shuffle=false;
#  2. pipeline x EP: `--pp_size 2 --ep_size 2 --dp_size 1` (EP groups {0,1} and {2,3}, 4 of the
#     tiny8b fixture's 8 experts a rank; data ranks 0 / 1), ZeRO-0;
#  each against `mpirun -np 2 --plugin ep_zero --extra_dp_size 2 --zero_stage 0` (pure data
#  parallelism with the same two data ranks and batch: rank r takes examples r, r + 2, ... of 4;
#  itself checked against single-process runs by train_data_parallel_test): the dumped step-1
#  gradient and loss (the mean over the data ranks of each one's gradient of its own loss) and the
#  parameters after 3 steps, to compare_ep_dp.py's tolerances (float32 orders differ: the
#  pipeline's sums over stages / the experts' sums over EP ranks; see there);
#  3. against `mpirun -np 4 --plugin ep_zero --extra_dp_size 4 --zero_stage 0` with --batch_size 1
#     (the same 4 examples a step, each its own routing group), step-1 gradient and weights after 3
#     steps: pipeline x DP with --batch_size 2 --microbatch_size 1 (2 microbatches per pipeline,
#     1F1B's steady state), and the full mesh --pp_size 2 --ep_size 2 --dp_size 2 on 8 ranks
#     (pipelines {0,4} {1,5} {2,6} {3,7}, EP groups {0,2} {1,3} / {4,6} {5,7}, ZeRO-1 over 4 ranks);
#  4. a world other than P x e x d, and an --ep_size not dividing num_experts, refused before work;
#  and each rank makes every group of its mesh once (the counts at `communicators` below).
# mpirun setup: tools/mpi_test_env.sh (4 and 8 ranks on 2 cores: --oversubscribe, one thread).
set -uo pipefail
train=tools/train
data=tests/data/openmoe/tiny8b

source tools/mpi_test_env.sh train_hybrid

# communicators LOG NP N: each of the NP ranks says it made N communicators ("rank R: communicators:
# N (...)"; tools/train.cc's ProcessGroups: the world once, each distinct group of ranks once).
communicators() {
  [[ $(grep -cE "^rank [0-9]+: communicators: $3 \(" "$1") == "$2" ]] \
    || { grep "communicators:" "$1"; fail "$(basename "$1"): expected $3 communicators on each of $2 ranks"; }
}

# The fixture's 2 examples plus 2 more (as train_ep_zero_test.sh): 4 different examples.
py tools/compare_dp_grads.py split "$data/expected.safetensors" "$tmp" || fail "split"
py tools/compare_dp_grads.py grow "$tmp/all.safetensors" "$tmp/four.safetensors" 1 || fail "four examples"

lr=1e-5 steps=3
common=(--model "$data" --dataset "$tmp/four.safetensors" --shuffle=false --num_epochs "$steps" --max_steps "$steps"
        --lr "$lr" --progress=false)
run() {  # run NAME NP flags...
  local name=$1 np=$2; shift 2
  mpi "$np" "$train" "${common[@]}" --output_path "$tmp/$name" --dump_step_state "$tmp/$name.safetensors" "$@" \
    >"$tmp/$name.log" 2>&1 || { cat "$tmp/$name.log"; fail "mpirun -np $np $*"; }
  [[ $(grep -c "^training " "$tmp/$name.log") == 1 ]] || { cat "$tmp/$name.log"; fail "$name: not rank 0 alone printed the run"; }
  [[ "$(cat "$tmp/$name/latest")" == "step-$steps" ]] || fail "$name: rank 0's checkpoint"
}
run dp2 2 --plugin ep_zero --extra_dp_size 2 --zero_stage 0 --batch_size 1
communicators "$tmp/dp2.log" 2 1  # pure DP: the world alone

# 1. pipeline x DP.
run ppdp 4 --plugin hybrid --pp_size 2 --ep_size 1 --dp_size 2 --zero_stage 1 --batch_size 1 --microbatch_size 1
grep -qF "hybrid: 2 data-parallel ranks (--ep_size 1 x --dp_size 2) in each of 2 stages; pipelines {0,2} {1,3}" \
  "$tmp/ppdp.log" || { cat "$tmp/ppdp.log"; fail "no hybrid mesh line"; }
grep -q "expert parallel" "$tmp/ppdp.log" && fail "--ep_size 1 ran expert parallel"
# Each group once: the world, the pipelines {0,2} {1,3} and the stages {0,1} {2,3} (data parallel
# and ZeRO) -> 3.
communicators "$tmp/ppdp.log" 4 3
py tools/compare_ep_dp.py grads "$tmp/ppdp.safetensors" "$tmp/dp2.safetensors" \
  || fail "pipeline x DP: the step-1 gradient / loss is not the data-parallel one"
py tools/compare_ep_dp.py params "$tmp/ppdp/step-$steps/model.safetensors" "$tmp/dp2/step-$steps/model.safetensors" \
  "$lr" "$steps" || fail "pipeline x DP: the parameters after $steps steps differ from pure DP"

# 2. pipeline x EP.
run ppep 4 --plugin hybrid --pp_size 2 --ep_size 2 --dp_size 1 --zero_stage 0 --batch_size 1 --microbatch_size 1
grep -qF "expert parallel: 8 experts over 2 ranks (4 each) in stage 0 (the same in each of the 2 stages); dense parameters data parallel over 2 ranks" \
  "$tmp/ppep.log" || { cat "$tmp/ppep.log"; fail "no EP line"; }
# The world, the pipelines, the stages (data parallel, and with --dp_size 1 also the EP group) and
# the expert replicas (each rank alone) -> 4.
communicators "$tmp/ppep.log" 4 4
py tools/compare_ep_dp.py grads "$tmp/ppep.safetensors" "$tmp/dp2.safetensors" \
  || fail "pipeline x EP: the step-1 gradient / loss is not the data-parallel one"
py tools/compare_ep_dp.py params "$tmp/ppep/step-$steps/model.safetensors" "$tmp/dp2/step-$steps/model.safetensors" \
  "$lr" "$steps" || fail "pipeline x EP: the parameters after $steps steps differ from pure DP"

# 3. Against 4 data-parallel ranks of one example each (the same 4 examples a step, each its own
#    routing group): two microbatches per pipeline, and the full mesh P = e = d = 2 on 8 ranks.
run dp4 4 --plugin ep_zero --extra_dp_size 4 --zero_stage 0 --batch_size 1
run ppdp_m2 4 --plugin hybrid --pp_size 2 --ep_size 1 --dp_size 2 --zero_stage 0 --batch_size 2 --microbatch_size 1
run ppepdp 8 --plugin hybrid --pp_size 2 --ep_size 2 --dp_size 2 --zero_stage 1 --batch_size 1 --microbatch_size 1
grep -qF "EP groups {0,2} {1,3} in stage 0 (the same in each of the 2 stages); dense parameters data parallel over 4 ranks" \
  "$tmp/ppepdp.log" || { cat "$tmp/ppepdp.log"; fail "no EP group line (8 ranks)"; }
# The world, the pipelines, the stages {0..3} {4..7}, the EP groups and the replica pairs -> 5;
# 4 data-parallel ranks: the world alone -> 1; P = 2 x DP 2 as in 1. -> 3.
communicators "$tmp/ppepdp.log" 8 5
communicators "$tmp/dp4.log" 4 1
communicators "$tmp/ppdp_m2.log" 4 3
for name in ppdp_m2 ppepdp; do
  py tools/compare_ep_dp.py grads "$tmp/$name.safetensors" "$tmp/dp4.safetensors" \
    || fail "$name: the step-1 gradient / loss is not the data-parallel one"
  py tools/compare_ep_dp.py params "$tmp/$name/step-$steps/model.safetensors" "$tmp/dp4/step-$steps/model.safetensors" \
    "$lr" "$steps" || fail "$name: the parameters after $steps steps differ from pure DP"
done

# 4. Refused before any work.
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
expect_error 4 "--plugin hybrid on 4 ranks with --pp_size 2 --ep_size 1 --dp_size 1 (2 ranks): a world larger than P x e x d is not supported yet" \
  --plugin hybrid --pp_size 2 --ep_size 1 --dp_size 1 --zero_stage 0
expect_error 3 "--plugin hybrid --ep_size 3 splits each stage's experts over EP groups of 3 ranks, but the model's 8 experts" \
  --plugin hybrid --pp_size 1 --ep_size 3 --dp_size 1 --zero_stage 0
echo "hybrid (pipeline x DP, pipeline x EP, pipeline x EP x DP): PASS"
