#!/usr/bin/env bash
# //tools:train ZeRO-1/2 of pure data parallelism under mpirun (host ranks), issue 17:
#  1. `mpirun -np 2 train --plugin ep_zero --extra_dp_size 2 --zero_stage 0|1|2 --batch_size 1
#     --shuffle=false` on the tiny8b fixture batch (2 examples, rank r takes example r), 3 steps
#     with clipping active (--max_grad_norm) and a large lr: ZeRO-1 and ZeRO-2 log the same losses
#     as ZeRO-0 and their step-3 checkpoints hold the same weights and AdamW moments, bit for bit
#     (compare_zero_runs.py says why exact); each rank wrote its own optimizer shard (ZeRO-1/2:
#     about half the moments each; ZeRO-0: whole tensors alternately), every value in exactly one;
#  2. resume: ZeRO-1 2 steps, then --resume 1 more step equals the 3-step run (checkpoint's
#     complete state split again over the ranks); and ZeRO-2 resuming a ZeRO-0 checkpoint too;
#  3. --zero_stage 3 is refused before any work, naming the flag.
# mpirun setup: tools/mpi_test_env.sh.
set -uo pipefail
train=tools/train
compare=tools/compare_zero_runs.py
data=tests/data/openmoe/tiny8b

source tools/mpi_test_env.sh train_zero

py tools/compare_dp_grads.py split "$data/expected.safetensors" "$tmp" || fail "split"
common=(--plugin ep_zero --extra_dp_size 2 --batch_size 1 --shuffle=false --num_epochs 3 --progress=false
        --lr 1e-2 --max_grad_norm 0.5)
run() {  # run NAME ZERO_STAGE train args...
  local name=$1 stage=$2; shift 2
  mpi 2 "$train" "${common[@]}" --zero_stage "$stage" "$@" >"$tmp/$name.log" 2>&1 \
    || { cat "$tmp/$name.log"; fail "mpirun -np 2 run $name (ZeRO-$stage)"; }
}
for z in 0 1 2; do
  run z$z $z --model "$data" --dataset "$tmp/all.safetensors" --max_steps 3 --output_path "$tmp/z$z"
  [[ $z == 0 ]] || grep -qF "data parallel over 2 ranks with ZeRO-$z" "$tmp/z$z.log" || { cat "$tmp/z$z.log"; fail "no ZeRO-$z line"; }
done
py "$compare" moved "$tmp/z0" "$data/model.safetensors" || fail "ZeRO-0 did not train"
# The optimizer state is one shard per rank plus an index, no whole trainer_state.safetensors:
# under ZeRO-1/2 each rank wrote about half the moments (its partition); under ZeRO-0 (the same
# state on both) the tensors alternate between the ranks, so both wrote a real part of it.
for z in 0 1 2; do
  d="$tmp/z$z/step-3"
  [[ -f $d/optimizer/index.json && ! -e $d/trainer_state.safetensors ]] || { ls -R "$d"; fail "ZeRO-$z: no sharded optimizer state"; }
  py -c '
import sys, safetensors_lite as st
d, z = sys.argv[1], int(sys.argv[2])
files = [f"{d}/optimizer/rank-0000{r}-of-00002.safetensors" for r in (0, 1)]
counts = [sum(len(t[2]) for t in st.read(f).values()) for f in files]
total = sum(len(t[2]) for t in st.read_moments(d).values())
assert sum(counts) == total, (counts, total)
share = counts[1] / total
assert (0.4 < share < 0.6) if z else 0.1 < share < 0.9, f"ZeRO-{z}: rank 1 wrote {share:.3f} of the moments"
print(f"ZeRO-{z}: the ranks wrote {counts} of {total} moment values")' "$d" "$z" || fail "ZeRO-$z optimizer shards"
done
py "$compare" "$tmp/z0" "$tmp/z1" "$tmp/z2" || fail "ZeRO-1/2 differ from ZeRO-0"

# Resume under the same world size: 2 + 1 steps equal 3.
run r1a 1 --model "$data" --dataset "$tmp/all.safetensors" --max_steps 2 --output_path "$tmp/r1"
[[ "$(cat "$tmp/r1/latest")" == "step-2" ]] || fail "no step-2 checkpoint"
run r1b 1 --resume "$tmp/r1" --max_steps 3
grep -qF "resuming from step 2" "$tmp/r1b.log" || { cat "$tmp/r1b.log"; fail "did not resume"; }
run r2a 0 --model "$data" --dataset "$tmp/all.safetensors" --max_steps 2 --output_path "$tmp/r2"
run r2b 2 --resume "$tmp/r2" --max_steps 3
py "$compare" "$tmp/z0" "$tmp/r1" "$tmp/r2" || fail "resumed runs differ from the 3-step run"

rc=0
mpi 2 "$train" "${common[@]}" --zero_stage 3 --model "$data" --dataset "$tmp/all.safetensors" --output_path "$tmp/bad" \
  >"$tmp/bad.log" 2>&1 || rc=$?
[[ $rc != 0 && $rc != 124 && $rc != 137 ]] || fail "--zero_stage 3: rc $rc"
grep -qF -- "--zero_stage must be 0, 1 or 2, not 3" "$tmp/bad.log" || { cat "$tmp/bad.log"; fail "--zero_stage 3 message"; }
grep -q "^training " "$tmp/bad.log" && fail "work started for --zero_stage 3"
echo "ZeRO 0/1/2: PASS"
