#!/usr/bin/env bash
# run_decode_leave_out.sh OUTDIR [BASELINE_DIR]: on the GPU machine, what each part of a batch-1
# decode step costs inside the replayed CUDA graph (issue 19). generate_benchmark of .device/bin at
# 8B shapes, bf16, prompt 512, 64 new tokens, batch 1: the whole step, then the step with each part
# left out (--leave_out: timing only, the tokens are then wrong), ROUNDS times (default 2); with
# BASELINE_DIR, that directory's generate_benchmark first in each round (same call, same card).
# Cost of a part = step time without it subtracted from the whole step's. Log: OUTDIR/leave_out.log.
set -uo pipefail
out="${1:?usage: run_decode_leave_out.sh OUTDIR [BASELINE_DIR]}"
baseline="${2:-}"
mkdir -p "$out"
export LD_LIBRARY_PATH="$PWD/.device/lib:/usr/local/cuda/lib64"
[[ -x .device/bin/generate_benchmark ]] || { echo ".device/bin/generate_benchmark missing (stage.sh .device benchmarks/generate_benchmark)" >&2; exit 1; }
log="$out/leave_out.log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$log"
gen=(--preset=8b --dtype=bf16 --prompt_len=512 --new_tokens=64 --batches=1)
run() {
  echo "=== $*" | tee -a "$log"
  "$@" > "$out/last_run.txt" 2>&1
  local rc=$?
  grep -E "RESULT|rror|leave_out" "$out/last_run.txt" | tee -a "$log"
  ((rc == 0)) || { echo "=== exit status $rc:" | tee -a "$log"; tail -5 "$out/last_run.txt" | tee -a "$log"; }
}
for ((round = 1; round <= ${ROUNDS:-2}; ++round)); do
  [[ -n "$baseline" ]] && run "$baseline/generate_benchmark" "${gen[@]}"
  run .device/bin/generate_benchmark "${gen[@]}"
  for part in norms attention_core attention_products dense_mlp moe norms,attention_core \
              norms,attention_core,attention_products,dense_mlp,moe; do
    run .device/bin/generate_benchmark "${gen[@]}" --leave_out=$part
  done
done
