#!/usr/bin/env bash
# //tools:train data parallel under mpirun (host ranks), issue 17's first plugin configuration:
#  1. `mpirun -np 2 train --plugin ep_zero --extra_dp_size 2 --zero_stage 0 --batch_size 1
#     --shuffle=false` on the tiny8b fixture batch (2 examples): rank r takes example r, so the
#     dumped step-1 gradient must be the mean of the gradients of two single-process runs, one on
#     each example alone, and the dumped loss the mean of their losses (compare_dp_grads.py);
#  2. unsupported plugin / ZeRO combinations under -np 2 stop before any work, non-zero, naming
#     the flag;
#  3. an error on the ranks (too few examples for 2 ranks) ends the job, naming the rank, no hang;
#  and each rank of 1. makes one communicator (the world, shared by the hooks and ZeRO).
# mpirun setup: tools/mpi_test_env.sh.
set -uo pipefail
train=tools/train
compare=tools/compare_dp_grads.py
data=tests/data/openmoe/tiny8b

source tools/mpi_test_env.sh train_dp

# communicators LOG NP N: each of the NP ranks says it made N communicators ("rank R: communicators:
# N (...)"; tools/train.cc's ProcessGroups: the world once, each distinct group of ranks once).
communicators() {
  [[ $(grep -cE "^rank [0-9]+: communicators: $3 \(" "$1") == "$2" ]] \
    || { grep "communicators:" "$1"; fail "$(basename "$1"): expected $3 communicators on each of $2 ranks"; }
}

# The fixture batch, and each of its examples alone.
PYTHONPATH=tools/reference python3 "$compare" split "$data/expected.safetensors" "$tmp" || fail "split"
common=(--model "$data" --batch_size 1 --shuffle=false --max_steps 1 --progress=false)
for r in 0 1; do
  "$train" "${common[@]}" --dataset "$tmp/example$r.safetensors" --output_path "$tmp/single$r" \
    --dump_step_state "$tmp/single$r.safetensors" 2>"$tmp/single$r.log" || { cat "$tmp/single$r.log"; fail "single run $r"; }
done
mpi 2 "$train" "${common[@]}" --plugin ep_zero --extra_dp_size 2 --zero_stage 0 --dataset "$tmp/all.safetensors" \
  --output_path "$tmp/dp" --dump_step_state "$tmp/dp.safetensors" >"$tmp/dp.log" 2>&1 \
  || { cat "$tmp/dp.log"; fail "mpirun -np 2 data-parallel run"; }
grep -qF "data parallel over 2 ranks" "$tmp/dp.log" || { cat "$tmp/dp.log"; fail "no 'data parallel over 2 ranks' line"; }
[[ $(grep -c "^training " "$tmp/dp.log") == 1 ]] || { cat "$tmp/dp.log"; fail "more than rank 0 printed the run"; }
# Pure data parallelism: the world is the data-parallel hooks' and ZeRO's group, and no other
# group exists -> 1 communicator per rank.
communicators "$tmp/dp.log" 2 1
[[ "$(cat "$tmp/dp/latest")" == "step-1" && $(wc -l <"$tmp/dp/metrics.jsonl") == 1 ]] || fail "rank 0's checkpoint / metrics"
PYTHONPATH=tools/reference python3 "$compare" check "$tmp/dp.safetensors" "$tmp/single0.safetensors" \
  "$tmp/single1.safetensors" "$tmp/dp/metrics.jsonl" || fail "the data-parallel step is not the mean of the single runs"

# Unsupported combinations: refused before any work, naming the flag.
expect_error() {  # expect_error "<text>" train args...
  local want=$1; shift
  local rc=0
  mpi 2 "$train" --model "$data" --dataset "$tmp/all.safetensors" --output_path "$tmp/bad" --progress=false "$@" \
    >"$tmp/bad.log" 2>&1 || rc=$?
  [[ $rc != 0 ]] || fail "expected an error for: $*"
  [[ $rc != 124 && $rc != 137 ]] || fail "hung: $*"
  grep -qF -- "$want" "$tmp/bad.log" || { cat "$tmp/bad.log"; fail "'$want' not in the output for: $*"; }
  grep -q "^training " "$tmp/bad.log" && fail "work started for: $*"
  [[ $want != INVALID_ARGUMENT* ]] || grep -qE "^rank [01]: $want" "$tmp/bad.log" || fail "no rank named: $(cat "$tmp/bad.log")"
  echo "refused ($rc): $*"
}
expect_error "--zero_stage must be 0, 1 or 2, not 3" --plugin ep_zero --extra_dp_size 2 --zero_stage 3
expect_error "--zero_stage must be 0, 1 or 2, not 3" --plugin ep --zero_stage 3
expect_error "--plugin hybrid: the world size 2 is not divisible by --pp_size 2 x --ep_size 2" --plugin hybrid
expect_error "--extra_dp_size must divide the world size (the EP size is world / --extra_dp_size), not 3" --plugin ep_zero --extra_dp_size 3 --zero_stage 0
expect_error "--pp_size is not supported yet" --plugin ep_zero --extra_dp_size 2 --zero_stage 0 --pp_size 2
# A failure on the ranks (one example cannot feed 2 ranks) ends the job, naming the rank.
expect_error "INVALID_ARGUMENT: --dataset has 1 examples, fewer than one batch" --plugin ep_zero --extra_dp_size 2 --zero_stage 0 --dataset "$tmp/example0.safetensors"
echo "data parallel: PASS"
