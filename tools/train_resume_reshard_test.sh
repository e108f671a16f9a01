#!/usr/bin/env bash
# //tools:train --resume across world sizes, plugins and ZeRO stages (issue 17: "resume on another
# world size equal to an uninterrupted run"). Checkpoints are consolidated (rank 0 writes the full
# weights, the full AdamW moments and the position); a resumed rank takes its ZeRO slice of the
# whole moments for ITS world size (AdamWOptimizer::SetMoments), and the data position is the
# epoch's global example index (trainer_state.json next_example), continued in this run's global
# batches (ResumePosition, openmoe/train/checkpoint.h).
#
# What is compared, and why these pairs. Upstream's semantics make each rank's batch (under a
# pipeline each microbatch) its own routing group: capacity from its own tokens, its own loss, the
# step's gradient the mean over them. So `mpirun -np 2 ... --batch_size 1` (2 groups of 1 example)
# and a plain single process with --batch_size 2 (1 group of 2 examples: other capacity, router aux
# loss over both, token mean over both) are NOT the same function, and a resume from one to the
# other cannot equal either uninterrupted run. The single-process side here is therefore
# `--plugin hybrid --pp_size 1 --ep_size 1 --dp_size 1 --microbatch_size 1 --batch_size 2` (no
# mpirun: a one-stage pipeline of 2 microbatches, each its own routing group, the gradient the mean
# over them), which computes the same function as 2 data-parallel ranks with --batch_size 1 on the
# same global batch of 2 (train_pipeline_test checks that equality for the np 2 pipeline). The
# global batch stays 2 throughout; DistributedSampler order makes global batch b the positions
# [2b, 2b + 2) of the epoch order whichever way it is split over ranks / microbatches.
#
# Data: the fixture's 2 examples plus 4 remapped ones (6 examples, shuffled with the seed: 3 steps
# an epoch; --num_epochs 2 so that a position one batch late still trains, on other examples), so
# the resume after step 2 lands mid-epoch (next_example 4) and a wrong position takes other examples. Reference U: `mpirun -np 2 --plugin ep_zero --extra_dp_size 2 --zero_stage 1
# --batch_size 1`, 3 steps. Each case runs 2 steps, then --resume for step 3, and must equal U
# (losses per step, step-3 weights and AdamW moments, compare_resume_runs.py tolerances: float32
# order differs between plugins, see there):
#  A  np 2 ep_zero (pure DP, k = 2) ZeRO-1, batch 1  ->  1 process, pipeline of one stage, batch 2
#     (world 2 -> 1; the brief's "single process with --batch_size 2", as the same function)
#  B  1 process, pipeline of one stage, batch 2      ->  np 2 --plugin ep ZeRO-2, batch 1 (world 1 -> 2)
#  C  np 2 ep_zero ZeRO-2 (pure DP)                   ->  np 2 --plugin ep ZeRO-0 (plugin and stage)
#  D  np 2 --plugin ep ZeRO-1                         ->  np 2 --plugin hybrid --pp_size 2 ZeRO-1, batch 2
# Then a resume whose global batch does not divide the saved position (3 into 4; A's step-2) is refused.
# mpirun setup: tools/mpi_test_env.sh.
set -uo pipefail
train=tools/train
compare=tools/compare_resume_runs.py
data=tests/data/openmoe/tiny8b

source tools/mpi_test_env.sh train_resume_reshard

py tools/compare_dp_grads.py split "$data/expected.safetensors" "$tmp" || fail "split"
py tools/compare_dp_grads.py grow "$tmp/all.safetensors" "$tmp/six.safetensors" 2 || fail "six examples"
lr=1e-3
common=(--shuffle=true --seed 7 --num_epochs 2 --lr "$lr" --progress=false)
# Parallel configurations (each global batch = 2 examples).
dp_z1=(np2 --plugin ep_zero --extra_dp_size 2 --zero_stage 1 --batch_size 1)
dp_z2=(np2 --plugin ep_zero --extra_dp_size 2 --zero_stage 2 --batch_size 1)
ep_z0=(np2 --plugin ep --zero_stage 0 --batch_size 1)
ep_z1=(np2 --plugin ep --zero_stage 1 --batch_size 1)
ep_z2=(np2 --plugin ep --zero_stage 2 --batch_size 1)
pp2_z1=(np2 --plugin hybrid --pp_size 2 --ep_size 1 --dp_size 1 --microbatch_size 1 --zero_stage 1 --batch_size 2)
pp1=(np1 --plugin hybrid --pp_size 1 --ep_size 1 --dp_size 1 --microbatch_size 1 --zero_stage 0 --batch_size 2)

go() {  # go LOG np1|np2 train args...
  local log=$1 np=$2; shift 2
  local launch=(timeout -k 5 60)
  [[ $np == np2 ]] && launch+=(mpirun -np 2 --oversubscribe --bind-to none)
  "${launch[@]}" "$train" "${common[@]}" "$@" >"$tmp/$log.log" 2>&1 || { cat "$tmp/$log.log"; fail "$log: $np $*"; }
}
fresh() {  # fresh NAME STEPS CONFIG...
  local name=$1 steps=$2; shift 2
  go "$name.a" "$@" --model "$data" --dataset "$tmp/six.safetensors" --max_steps "$steps" --output_path "$tmp/$name"
  [[ "$(cat "$tmp/$name/latest")" == "step-$steps" ]] || fail "$name: no step-$steps checkpoint"
}
resume() {  # resume NAME CONFIG...: step 3 from NAME's step-2 checkpoint
  local name=$1; shift
  go "$name.b" "$@" --resume "$tmp/$name" --max_steps 3
  grep -qF "resuming from step 2" "$tmp/$name.b.log" || { cat "$tmp/$name.b.log"; fail "$name: did not resume"; }
  grep -qF "(from step 2)" "$tmp/$name.b.log" || { cat "$tmp/$name.b.log"; fail "$name: not from step 2"; }
  [[ "$(cat "$tmp/$name/latest")" == "step-3" ]] || fail "$name: no step-3 checkpoint"
}

fresh U 3 "${dp_z1[@]}"
grep -qF "training 6 examples" "$tmp/U.a.log" || { cat "$tmp/U.a.log"; fail "U: not 6 examples"; }
fresh A 2 "${dp_z1[@]}"
resume A "${pp1[@]}"
grep -qF "pipeline parallel: 1 stages (1F1B), --batch_size 2 in microbatches of 1" "$tmp/A.b.log" \
  || { cat "$tmp/A.b.log"; fail "A: the single process did not run 2 microbatches"; }
fresh B 2 "${pp1[@]}"
resume B "${ep_z2[@]}"
grep -qF "with ZeRO-2" "$tmp/B.b.log" || { cat "$tmp/B.b.log"; fail "B: not ZeRO-2"; }
fresh C 2 "${dp_z2[@]}"
resume C "${ep_z0[@]}"
grep -qF "expert parallel: 8 experts over 2 ranks" "$tmp/C.b.log" || { cat "$tmp/C.b.log"; fail "C: not expert parallel"; }
fresh D 2 "${ep_z1[@]}"
resume D "${pp2_z1[@]}"
py "$compare" compare "$lr" 3 "$tmp/U" "$tmp/A" "$tmp/B" "$tmp/C" "$tmp/D" || fail "a resumed run differs from the uninterrupted one"

# No step boundary of a global batch of 3 at example 4: refused before training.
rc=0
timeout -k 5 60 "$train" "${common[@]}" --resume "$tmp/A/step-2" --batch_size 3 --output_path "$tmp/bad" >"$tmp/bad.log" 2>&1 || rc=$?
[[ $rc != 0 && $rc != 124 && $rc != 137 ]] || { cat "$tmp/bad.log"; fail "batch 3 at example 4: rc $rc"; }
grep -qF "stopped after 4 examples of epoch 0 (global batch 2 = --batch_size 1 x 2 data-parallel ranks); this run's global batch 3 = --batch_size 3 x 1 data-parallel rank does not divide that" "$tmp/bad.log" \
  || { cat "$tmp/bad.log"; fail "batch 3 at example 4: message"; }
grep -q "^training " "$tmp/bad.log" && fail "work started for a global batch of 3"
echo "resume across world sizes / plugins / ZeRO stages: PASS"
