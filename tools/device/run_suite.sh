#!/usr/bin/env bash
# run_suite.sh OUTDIR: on the GPU machine, from the repository root, runs the staged CUDA test
# binaries (.device/bin, see stage.sh), the logits CLI against the fixtures, and the Hugging Face
# reference generator against the fixtures; logs go to OUTDIR.
set -uo pipefail
out="${1:?usage: run_suite.sh OUTDIR}"
export LD_LIBRARY_PATH="$PWD/.device/lib:/usr/local/cuda/lib64" PYTHONUNBUFFERED=1
status=0
step() { echo "=== $*"; "$@" || { echo "=== FAILED: $*"; status=1; }; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
step .device/bin/kokkos_info
for t in kokkos_toolchain_test rms_norm_test linear_test attention_test batched_gemm_test moe_test argmax_test backward_test \
         buffer_pool_test dependent_launch_test elementwise_test \
         decode_graph_test execution_context_test parity_test bf16_parity_test generation_test decode_graph_generation_test train_parity_test \
         adamw_test loss_test; do
  if [[ -x .device/bin/$t ]]; then step .device/bin/$t; else echo "=== MISSING: .device/bin/$t (stage.sh stages it)"; status=1; fi
done
data=tests/data/openmoe
for case in tiny8b tinybase; do
  for mode in eval train; do
    if [[ -x .device/bin/logits ]]; then
      step .device/bin/logits --model $data/$case --inputs $data/$case/expected.safetensors \
        --output "$out/ours_${case}_$mode.safetensors" --mode $mode
      step python3 tools/reference/compare_logits.py "$out/ours_${case}_$mode.safetensors" \
        $data/$case/expected.safetensors --golden-key logits_$mode
    fi
    if [[ -x .device/bin/logits ]]; then
      step .device/bin/logits --model $data/$case --inputs $data/$case/expected.safetensors \
        --output "$out/ours_bf16_${case}_$mode.safetensors" --mode $mode --dtype bf16
      # bf16 against the float64 goldens, with bf16_parity_test's error-model bounds.
      step python3 tools/reference/compare_logits.py "$out/ours_bf16_${case}_$mode.safetensors" \
        $data/$case/expected.safetensors --golden-key logits_$mode --max-nmse 2e-3 --min-argmax-agreement 0.9
    fi
    step python3 tools/reference/generate_goldens.py --model $data/$case \
      --inputs $data/$case/expected.safetensors --output "$out/hf_${case}_$mode.safetensors" --mode $mode
    step python3 tools/reference/compare_logits.py "$out/hf_${case}_$mode.safetensors" \
      $data/$case/expected.safetensors --golden-key logits_$mode
  done
done
for case in tiny8b tinybase; do
  step python3 tools/reference/check_hf_greedy.py $data/$case --device cuda
done
rm -f "$out"/*.safetensors
echo "=== suite status $status"
exit $status
