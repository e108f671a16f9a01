#!/usr/bin/env bash
# stage.sh DIR [TARGET_PATH...]: copies the CUDA-built binaries of bazel-bin and the non-system shared libraries
# they load (Debian's Abseil, Google Benchmark, ...) into DIR/bin and DIR/lib, so that they run
# on a GPU machine without Bazel: LD_LIBRARY_PATH=DIR/lib DIR/bin/<binary>.
# CUDA libraries (cuBLAS, cuBLASLt) are not copied: the GPU machine has them in /usr/local/cuda.
# The default set with two benchmarks is ~70 MB, more than a device call carries (64 MiB with the
# work tree): pack it (`tar cJf .dev/bins.tar.xz -C .device bin lib`, ~11 MB; .dev is ignored by
# git), carry .dev, and unpack first on the GPU machine (`tar xJf .dev/bins.tar.xz -C .device`).
set -euo pipefail
dest="${1:?usage: stage.sh DIR [bazel-bin relative binary paths]}"
shift
mkdir -p "$dest/bin" "$dest/lib"
binaries=("$@")
if ((${#binaries[@]} == 0)); then
  # The tests and tools of run_suite.sh; benchmarks are staged by name when needed (the device
  # call carries at most 64 MiB, test data included).
  binaries=(kernels/rms_norm_test kernels/linear_test kernels/attention_test kernels/batched_gemm_test kernels/moe_test
            kernels/argmax_test kernels/backward_test kernels/execution_context_test kernels/buffer_pool_test
            kernels/dependent_launch_test kernels/elementwise_test openmoe/decode_graph_test tests/kokkos_toolchain_test
            tests/parity_test tests/bf16_parity_test tests/generation_test tests/decode_graph_generation_test
            tests/train_parity_test tests/adamw_test tests/loss_test
            tools/kokkos_info tools/logits)
fi
for b in "${binaries[@]}"; do
  [[ -x "bazel-bin/$b" ]] || { echo "stage.sh: bazel-bin/$b missing; build with --config=cuda" >&2; exit 1; }
  cp -f "bazel-bin/$b" "$dest/bin/"
  ldd "bazel-bin/$b" | awk '/=> \// {print $3}' \
    | { grep -E 'libabsl|libbenchmark|libsentencepiece|libgtest|libgmock|libatomic' || true; } \
    | xargs -r -I{} cp -fL {} "$dest/lib/" || true
done
chmod -R u+w "$dest" && strip "$dest"/bin/*  # the device call carries at most 64 MiB
ls -la "$dest/bin" "$dest/lib" | head -80
