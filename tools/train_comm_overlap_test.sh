#!/usr/bin/env bash
# //tools:train --comm_overlap under mpirun on host ranks (issue 17): the MoE all-to-alls in chunks
# of local experts, each chunk's experts run between its exchanges, must give the same bits as one
# exchange each way. Each case runs 3 clipped steps twice, without and with --comm_overlap, and
# compare_overlap_runs.py requires the step-1 dumps (losses, gradients, parameters after the step),
# every step's loss and grad norm, and the step-3 weights and AdamW moments to be equal floats:
#  1. --plugin ep on 2 ranks (4 local experts): fp32 in 4 chunks (the default), bf16 in 3 (1 + 1 + 2
#     experts), and fp32 on constant-token examples, where each rank routes everything to two experts,
#     so some experts receive no token at all (the dump shows their zero gradients): no hang, same bits;
#  2. --plugin ep_zero --extra_dp_size 2 on 4 ranks (EP groups {0,2} {1,3}): fp32 ZeRO-1 with
#     --grad_checkpoint in 2 chunks, bf16 ZeRO-2 in 4, on two fixture and two constant-token examples;
#  3. --comm_overlap without expert parallelism (one process; pure data parallelism; a hybrid
#     pipeline with --ep_size 1), --comm_overlap_chunks 0 and --comm_overlap_chunks without --comm_overlap are
#     refused before any work, naming the flag.
# mpirun setup: tools/mpi_test_env.sh.
set -uo pipefail
train=tools/train
data=tests/data/openmoe/tiny8b

source tools/mpi_test_env.sh train_comm_overlap

py tools/compare_dp_grads.py split "$data/expected.safetensors" "$tmp" || fail "split"
py tools/compare_overlap_runs.py constant "$tmp/all.safetensors" "$tmp/constant.safetensors" 5 9 || fail "constant"
py tools/compare_overlap_runs.py concat "$tmp/mixed.safetensors" "$tmp/all.safetensors" "$tmp/constant.safetensors" \
  || fail "mixed"  # rank r takes example r: ranks 0, 1 the fixture's, ranks 2, 3 constant tokens

steps=3
run() {  # run NAME NP DATASET flags...
  local name=$1 np=$2 dataset=$3 rc=0
  shift 3
  mpi "$np" "$train" --model "$data" --dataset "$dataset" --batch_size 1 --shuffle=false --num_epochs "$steps" \
    --max_steps "$steps" --lr 1e-2 --max_grad_norm 0.5 --progress=false --output_path "$tmp/$name" \
    --dump_step_state "$tmp/$name.safetensors" "$@" >"$tmp/$name.log" 2>&1 || rc=$?
  [[ $rc != 124 && $rc != 137 ]] || { cat "$tmp/$name.log"; fail "$name hung"; }
  [[ $rc == 0 ]] || { cat "$tmp/$name.log"; fail "$name: exit status $rc"; }
}
pair() {  # pair NAME NP DATASET CHUNKS flags...: no overlap, then --comm_overlap [--comm_overlap_chunks CHUNKS]
  local name=$1 np=$2 dataset=$3 chunks=$4 given=()
  shift 4
  [[ $chunks == default ]] && chunks=4 || given=(--comm_overlap_chunks "$chunks")
  run "$name.plain" "$np" "$dataset" "$@"
  run "$name.overlap" "$np" "$dataset" "$@" --comm_overlap "${given[@]}"
  grep -qF -- "--comm_overlap: all-to-alls in $chunks chunks of local experts" "$tmp/$name.overlap.log" \
    || { cat "$tmp/$name.overlap.log"; fail "$name: no '$chunks chunks' line"; }
  grep -q -- "--comm_overlap" "$tmp/$name.plain.log" && fail "$name: the plain run overlapped"
  py tools/compare_overlap_runs.py same "$tmp/$name.plain" "$tmp/$name.plain.safetensors" \
    "$tmp/$name.overlap" "$tmp/$name.overlap.safetensors" || fail "$name: --comm_overlap changed the results"
  echo "$name: same bits"
}

# 1. ep on 2 ranks.
pair ep_fp32 2 "$tmp/all.safetensors" default --plugin ep --zero_stage 0
pair ep_bf16 2 "$tmp/all.safetensors" 3 --plugin ep --zero_stage 1 --precision bf16
pair ep_silent 2 "$tmp/constant.safetensors" 2 --plugin ep --zero_stage 0
py tools/compare_overlap_runs.py silent_expert "$tmp/ep_silent.overlap.safetensors" || fail "no expert without tokens"

# 2. ep_zero k = 2 on 4 ranks.
pair epz_fp32 4 "$tmp/mixed.safetensors" 2 --plugin ep_zero --extra_dp_size 2 --zero_stage 1 --grad_checkpoint
pair epz_bf16 4 "$tmp/mixed.safetensors" default --plugin ep_zero --extra_dp_size 2 --zero_stage 2 --precision bf16

# 3. Refused before any work.
expect_error() {  # expect_error NP WANT flags...
  local np=$1 want=$2 rc=0
  shift 2
  local common=(--model "$data" --dataset "$tmp/all.safetensors" --max_steps 1 --progress=false --output_path "$tmp/bad")
  if [[ $np == 1 ]]; then
    timeout -k 5 60 "$train" "${common[@]}" "$@" >"$tmp/bad.log" 2>&1 || rc=$?
  else
    mpi "$np" "$train" "${common[@]}" "$@" >"$tmp/bad.log" 2>&1 || rc=$?
  fi
  [[ $rc != 0 && $rc != 124 && $rc != 137 ]] || { cat "$tmp/bad.log"; fail "$* on $np: exit status $rc"; }
  grep -qE -- "$want" "$tmp/bad.log" || { cat "$tmp/bad.log"; fail "$* on $np: no error matching '$want'"; }
  grep -q "^training " "$tmp/bad.log" && fail "$* on $np: work started"
  echo "refused ($rc): $* on $np"
}
expect_error 1 "--comm_overlap .*is not expert parallel" --comm_overlap
expect_error 2 "--comm_overlap .*is not expert parallel" --comm_overlap --plugin ep_zero --extra_dp_size 2
expect_error 2 "--comm_overlap .*is not expert parallel" --comm_overlap --plugin hybrid --pp_size 2 --ep_size 1 --zero_stage 1
expect_error 2 "--comm_overlap_chunks must be at least 1, not 0" --comm_overlap --plugin ep --comm_overlap_chunks 0
expect_error 2 "--comm_overlap_chunks is given without --comm_overlap" --plugin ep --comm_overlap_chunks 2
echo "comm overlap: PASS"
