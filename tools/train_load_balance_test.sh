#!/usr/bin/env bash
# //tools:train --load_balance under mpirun on host ranks (issue 17): moving experts between EP
# ranks never changes what the model computes.
#  1. Move invariance: `--plugin ep` on 2 ranks, and `--plugin ep_zero --extra_dp_size 2` on 4
#     ranks with ZeRO-1 and ZeRO-2 (the moved moments, and in bf16 the fp32 masters, are split over
#     the replicas), fp32 and bf16,
#     with --load_balance --load_balance_interval 1 (a rebalancing after every step) against the
#     same run without it: rank 0 must report moves, every step's logged loss and the checkpoint
#     after 4 steps (the weights file's bytes; the AdamW moments put together from the ranks' shards,
#     in canonical expert order) must be the same,
#     the logged gradient norms equal to 1e-12 (the order of the optimizer's sum of squares follows
#     where the experts are stored; without clipping the norm does not touch the update).
#     Also EP size 4 (`ep` on 4 ranks: swaps chain, ranks sit swaps out) with --comm_overlap, and
#     `hybrid` pp 2 x ep 2 (each stage balances its own layers) with --comm_overlap.
#  2. Resume after moves (2 steps rebalancing, --resume 2 more) equals the plain 4-step run.
#  3. --load_balance without expert parallelism is refused before any work, naming the flag.
# mpirun setup: tools/mpi_test_env.sh.
set -uo pipefail
train=tools/train
data=tests/data/openmoe/tiny8b

source tools/mpi_test_env.sh train_load_balance

py tools/compare_dp_grads.py split "$data/expected.safetensors" "$tmp" >/dev/null || fail "split"
py tools/compare_dp_grads.py grow "$tmp/all.safetensors" "$tmp/six.safetensors" 2 >/dev/null || fail "six examples"
steps=4
common=(--model "$data" --dataset "$tmp/six.safetensors" --batch_size 1 --shuffle=false --num_epochs 4
        --max_steps "$steps" --lr 1e-2 --progress=false)

# Every step's loss as the exact JSON text.
losses() { python3 -c 'import json, sys; [print(json.dumps(j["loss"])) for j in map(json.loads, open(sys.argv[1]))]' "$1"; }
# The logged gradient norms to 1e-12 (relative): a move changes the order in which the optimizer
# adds the experts' squares (the slots a rank stores, each rank's partial sum), not the gradient.
same_norms() {
  python3 -c '
import json, sys
a, b = ([j["grad_norm"] for j in map(json.loads, open(f))] for f in sys.argv[1:3])
assert len(a) == len(b) and all(abs(x - y) <= 1e-12 * abs(x) for x, y in zip(a, b)), (a, b)' "$1" "$2"
}

check() {  # NAME NP FLAGS...
  local name=$1 np=$2; shift 2
  mpi "$np" "$train" "${common[@]}" "$@" --output_path "$tmp/$name.plain" >"$tmp/$name.plain.log" 2>&1 \
    || { cat "$tmp/$name.plain.log"; fail "$name without --load_balance"; }
  mpi "$np" "$train" "${common[@]}" "$@" --load_balance --load_balance_interval 1 --output_path "$tmp/$name.lb" \
    >"$tmp/$name.lb.log" 2>&1 || { cat "$tmp/$name.lb.log"; fail "$name with --load_balance"; }
  grep -q "^load balance at step 1: MoE layer .* swap" "$tmp/$name.lb.log" \
    || { cat "$tmp/$name.lb.log"; fail "$name: no experts moved after step 1"; }
  [[ "$(losses "$tmp/$name.plain/metrics.jsonl")" == "$(losses "$tmp/$name.lb/metrics.jsonl")" ]] \
    || { paste <(losses "$tmp/$name.plain/metrics.jsonl") <(losses "$tmp/$name.lb/metrics.jsonl"); fail "$name: losses differ"; }
  same_norms "$tmp/$name.plain/metrics.jsonl" "$tmp/$name.lb/metrics.jsonl" || fail "$name: gradient norms differ"
  cmp -s "$tmp/$name.plain/step-$steps/model.safetensors" "$tmp/$name.lb/step-$steps/model.safetensors" \
    || fail "$name: step-$steps/model.safetensors differs"
  # The moments, put together from the ranks' optimizer shards (each rank writes the experts it
  # holds at the time, so the files themselves differ after moves).
  py -c 'import sys, safetensors_lite as st; assert st.read_moments(sys.argv[1]) == st.read_moments(sys.argv[2])' \
    "$tmp/$name.plain/step-$steps" "$tmp/$name.lb/step-$steps" || fail "$name: step-$steps AdamW moments differ"
  echo "$name: $(grep -c '^load balance at step' "$tmp/$name.lb.log") rebalancings, identical losses and checkpoint"
}

check ep_fp32 2 --plugin ep --zero_stage 0
check ep_bf16 2 --plugin ep --zero_stage 1 --precision bf16
check epz_zero1 4 --plugin ep_zero --extra_dp_size 2 --zero_stage 1
check epz_zero2 4 --plugin ep_zero --extra_dp_size 2 --zero_stage 2
# bf16 ZeRO-1 keeps only each replica's share of the experts' fp32 masters: the swaps move those
# pieces (and the 16-bit working copy's slots) like the moment pieces.
check epz_bf16 4 --plugin ep_zero --extra_dp_size 2 --zero_stage 1 --precision bf16
check ep4_overlap 4 --plugin ep --zero_stage 1 --comm_overlap --comm_overlap_chunks 2
# Inside a pipeline: each stage balances its own MoE layers (2 stages x EP 2 on 4 ranks, with overlap).
check hybrid_overlap 4 --plugin hybrid --pp_size 2 --ep_size 2 --dp_size 1 --zero_stage 1 --comm_overlap

# Resume after moves: 2 steps with rebalancing, then --resume for 2 more (the checkpoint holds the
# experts in canonical order; the resumed run starts from the identity placement) equals the plain
# 4-step run.
mpi 2 "$train" "${common[@]}" --plugin ep --zero_stage 1 --load_balance --load_balance_interval 1 --max_steps 2 \
  --output_path "$tmp/resumed" >"$tmp/resumed.a.log" 2>&1 || { cat "$tmp/resumed.a.log"; fail "2 steps with moves"; }
grep -q "^load balance at step" "$tmp/resumed.a.log" || { cat "$tmp/resumed.a.log"; fail "no moves before the resume"; }
mpi 2 "$train" --resume "$tmp/resumed" --max_steps "$steps" --plugin ep --zero_stage 1 --load_balance \
  --load_balance_interval 1 >"$tmp/resumed.b.log" 2>&1 || { cat "$tmp/resumed.b.log"; fail "--resume after moves"; }
mpi 2 "$train" "${common[@]}" --plugin ep --zero_stage 1 --output_path "$tmp/straight" >"$tmp/straight.log" 2>&1 \
  || { cat "$tmp/straight.log"; fail "4 plain steps"; }
cmp -s "$tmp/straight/step-$steps/model.safetensors" "$tmp/resumed/step-$steps/model.safetensors" \
  || fail "resumed after moves: step-$steps/model.safetensors differs from the plain run"
py -c 'import sys, safetensors_lite as st; assert st.read_moments(sys.argv[1]) == st.read_moments(sys.argv[2])' \
  "$tmp/straight/step-$steps" "$tmp/resumed/step-$steps" || fail "resumed after moves: AdamW moments differ"
echo "resume after moves: identical to the plain run"

# Without expert parallelism: refused, naming the flag.
rc=0
mpi 2 "$train" "${common[@]}" --plugin ep_zero --extra_dp_size 2 --load_balance --output_path "$tmp/bad" \
  >"$tmp/bad.log" 2>&1 || rc=$?
[[ $rc != 0 && $rc != 124 && $rc != 137 ]] || { cat "$tmp/bad.log"; fail "--load_balance on pure data parallelism: rc $rc"; }
grep -q "load_balance moves experts between expert-parallel ranks" "$tmp/bad.log" \
  || { cat "$tmp/bad.log"; fail "no error naming --load_balance"; }
grep -q "^training " "$tmp/bad.log" && fail "work started"
echo "load balance: PASS"
