#!/usr/bin/env bash
# run_generate_bench.sh OUTDIR [BIN_DIRS...]: on the GPU machine, the generation benchmark of issue
# 19 with its peer in the same call: for each staged binary directory (default .device/bin;
# several directories compare binaries, e.g. before / after a change), generate_benchmark at 8B
# shapes, bf16, 512-token prompts, 64 new tokens, batches 1 and 16; then the peer,
# tools/reference/bench_hf_generate.py (PyTorch eager, same shapes). ROUNDS=N repeats the binaries
# N times (alternating, to see drift). With NCU=1, also an ncu kernel-time profile of a batch-16
# prefill of the first directory (OUTDIR/ncu_prefill.csv, summarised with ncu_summary.py).
# Every RESULT line goes to OUTDIR/generate_bench.log.
set -uo pipefail
out="${1:?usage: run_generate_bench.sh OUTDIR [BIN_DIRS...]}"
shift
dirs=("$@")
((${#dirs[@]})) || dirs=(.device/bin)
mkdir -p "$out"
export PYTHONUNBUFFERED=1
log="$out/generate_bench.log"
shape=(--preset=8b --dtype=bf16 --prompt_len=512 --new_tokens=64)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$log"
for ((round = 1; round <= ${ROUNDS:-1}; ++round)); do
  for dir in "${dirs[@]}"; do
    echo "=== round $round: $dir/generate_benchmark ${shape[*]} --batches=1,16" | tee -a "$log"
    "$dir/generate_benchmark" "${shape[@]}" --batches=1,16 2>&1 | tee -a "$log"
  done
done
echo "=== bench_hf_generate.py --preset 8b --prompt_len 512 --new_tokens 64 --batches 1,16" | tee -a "$log"
python3 tools/reference/bench_hf_generate.py --preset 8b --prompt_len 512 --new_tokens 64 --batches 1,16 2>&1 \
  | grep -E "RESULT|Error|error" | tee -a "$log"
if [[ "${NCU:-0}" == 1 ]]; then
  timeout 200 ncu --csv --cache-control none --clock-control none --metrics gpu__time_duration.sum \
    "${dirs[0]}/generate_benchmark" --preset=8b --dtype=bf16 --prompt_len=512 --new_tokens=1 --batches=16 \
    > "$out/ncu_prefill.csv" 2>&1
  python3 tools/device/ncu_summary.py "$out/ncu_prefill.csv" 25
fi
grep RESULT "$log"
