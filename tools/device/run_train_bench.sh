#!/usr/bin/env bash
# run_train_bench.sh OUTDIR [BIN_DIRS...]: on the GPU machine, the training-step benchmark of
# issue 19 with its peer in the same call: for each staged binary directory (default .device/bin;
# several directories compare binaries, e.g. before / after a change), train_benchmark at base
# fp32, base bf16 and 8B shapes (6 of 24 layers) bf16, batch 1 x 2048 tokens; then the peer,
# tools/reference/bench_hf_train.py (PyTorch eager / autocast bf16), at the same shapes. With
# NCU=1, also an ncu kernel-time profile of one step of the first directory at base bf16 (or at
# the train_benchmark flags in NCU_ARGS), OUTDIR/ncu_train.csv, summarised with
# tools/device/ncu_summary.py.
# Every RESULT line goes to OUTDIR/train_bench.log.
set -uo pipefail
out="${1:?usage: run_train_bench.sh OUTDIR [BIN_DIRS...]}"
shift
dirs=("$@")
((${#dirs[@]})) || dirs=(.device/bin)
mkdir -p "$out"
export PYTHONUNBUFFERED=1
log="$out/train_bench.log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$log"
shapes=("--preset=base --precision=fp32" "--preset=base --precision=bf16" "--preset=8b --layers=6 --precision=bf16")
for dir in "${dirs[@]}"; do
  for shape in "${shapes[@]}"; do
    echo "=== $dir/train_benchmark $shape --seq=2048 --steps=3" | tee -a "$log"
    # shellcheck disable=SC2086
    "$dir/train_benchmark" $shape --seq=2048 --steps=3 2>&1 | tee -a "$log"
  done
done
peer=("--preset base" "--preset base --precision bf16" "--preset 8b --layers 6 --precision bf16")
for shape in "${peer[@]}"; do
  echo "=== bench_hf_train.py $shape --seq 2048 --steps 3" | tee -a "$log"
  # shellcheck disable=SC2086
  python3 tools/reference/bench_hf_train.py $shape --seq 2048 --steps 3 2>&1 | grep -E "RESULT|Error|error" | tee -a "$log"
done
if [[ "${NCU:-0}" == 1 ]]; then
  # shellcheck disable=SC2086
  timeout 300 ncu --csv --cache-control none --clock-control none --metrics gpu__time_duration.sum \
    "${dirs[0]}/train_benchmark" ${NCU_ARGS:---preset=base --precision=bf16} --seq=2048 --steps=1 > "$out/ncu_train.csv" 2>&1
  python3 tools/device/ncu_summary.py "$out/ncu_train.csv" 25
fi
grep RESULT "$log"
