#include "kernels/batched_gemm.h"

#include <algorithm>
#include <type_traits>

#include <Kokkos_Core.hpp>
#include <openblas-openmp/cblas.h>

#include "absl/strings/str_cat.h"
#include "kernels/cublas_handle.h"
#include "kernels/instantiate.h"
#include "kernels/launch.h"
#include "openmoe/core/execution_spaces.h"
#include "openmoe/core/tensor_types.h"

namespace openmoe::kernels {
namespace {

// One thread per output element of every batch entry; float32 sums.
template <class TIn, class TOut, class ExecSpace>
void LoopBatchedGemm(const ExecSpace& space, const BatchedGemmShape& s, const TIn* a, const TIn* b, TOut* c) {
  const BatchedGemmShape shape = s;
  Kokkos::parallel_for(
      "openmoe::kernels::LoopBatchedGemm", FlatRange(space, s.batch * s.m * s.n), KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t i = idx % shape.m, j = (idx / shape.m) % shape.n, batch = idx / (shape.m * shape.n);
        const TIn* a_i = a + batch * shape.stride_a;
        const TIn* b_i = b + batch * shape.stride_b;
        TOut* c_i      = c + batch * shape.stride_c;
        float acc = 0.0f;
        for (int64_t l = 0; l < shape.k; ++l) {
          const float x = ToFloat(shape.trans_a ? a_i[l + i * shape.lda] : a_i[i + l * shape.lda]);
          const float y = ToFloat(shape.trans_b ? b_i[j + l * shape.ldb] : b_i[l + j * shape.ldb]);
          acc += x * y;
        }
        TOut& out = c_i[i + j * shape.ldc];
        out = FromFloat<TOut>(shape.beta != 0.0f ? acc + shape.beta * ToFloat(out) : acc);
      });
}

// Host backends (Serial, OpenMP): OpenBLAS's sgemm, one call per batch entry, in the same
// column-major convention. Host kernels are synchronous: the operands are ready.
void HostSgemm(const BatchedGemmShape& s, const float* a, const float* b, float* c) {
  const CBLAS_TRANSPOSE op_a = s.trans_a ? CblasTrans : CblasNoTrans, op_b = s.trans_b ? CblasTrans : CblasNoTrans;
  for (int64_t i = 0; i < s.batch; ++i) {
    cblas_sgemm(CblasColMajor, op_a, op_b, blasint(s.m), blasint(s.n), blasint(s.k), 1.0f, a + i * s.stride_a,
                blasint(s.lda), b + i * s.stride_b, blasint(s.ldb), s.beta, c + i * s.stride_c, blasint(s.ldc));
  }
}

// Elements from the first of a strided batch of column-major [rows, cols] matrices to the last.
int64_t BatchSpan(int64_t rows, int64_t cols, int64_t ld, int64_t stride, int64_t batch) {
  return (batch - 1) * stride + (cols - 1) * ld + rows;
}

// 16-bit operands on host: Debian's OpenBLAS (0.3.21) is built without BUILD_BFLOAT16, so there is
// no cblas_sbgemm. Where each operand element is used at least kHostWidenMinReuse times, the
// operands are widened to float32 (exact) into scratch and multiplied by sgemm, which sums in
// float32 like the loop; 16-bit outputs go through a float32 scratch and are rounded once, as the
// loop rounds. Products of one row (decode: one row of x against a weight matrix) stay with the
// loop, which reads the 16-bit weights once instead of widening them first: widening those too
// (threshold 1) cut batch-1 decode by about half; 2 and 4 measured alike, well above 16 in
// prefill, where experts get few rows (generate_benchmark --preset=base --dtype=bf16 on the
// 2-core EPYC, benchmarks/RESULTS.md). A vectorised 16-bit GEMV would beat both for one row.
constexpr int64_t kHostWidenMinReuse = 2;

template <class TIn, class TOut, class ExecSpace>
void HostWidenedGemm(const ExecutionContext<ExecSpace>& ctx, const BatchedGemmShape& s, const TIn* a, const TIn* b,
                     TOut* c) {
  const auto& space = ctx.space();
  const int64_t span_a = BatchSpan(s.trans_a ? s.k : s.m, s.trans_a ? s.m : s.k, s.lda, s.stride_a, s.batch);
  const int64_t span_b = BatchSpan(s.trans_b ? s.n : s.k, s.trans_b ? s.k : s.n, s.ldb, s.stride_b, s.batch);
  float* a32 = ctx.template Scratch<float>("batched_gemm.host_a", size_t(span_a)).data();
  float* b32 = ctx.template Scratch<float>("batched_gemm.host_b", size_t(span_b)).data();
  Kokkos::parallel_for(
      "openmoe::kernels::HostWiden", FlatRange(space, span_a + span_b), KOKKOS_LAMBDA(const int64_t i) {
        if (i < span_a) a32[i] = ToFloat(a[i]);
        else b32[i - span_a] = ToFloat(b[i - span_a]);
      });
  if constexpr (std::is_same_v<TOut, float>) {
    HostSgemm(s, a32, b32, c);
  } else {
    // C_i (16-bit) = round(A_i B_i + beta C_i) through c32 [batch][m, n] (leading dimension m).
    BatchedGemmShape s32 = s;
    s32.ldc = s.m, s32.stride_c = s.m * s.n, s32.beta = 0.0f;
    float* c32 = ctx.template Scratch<float>("batched_gemm.host_c", size_t(s.batch * s.m * s.n)).data();
    HostSgemm(s32, a32, b32, c32);
    const BatchedGemmShape shape = s;
    Kokkos::parallel_for(
        "openmoe::kernels::HostRound", FlatRange(space, s.batch * s.m * s.n), KOKKOS_LAMBDA(const int64_t idx) {
          const int64_t i = idx % shape.m, j = (idx / shape.m) % shape.n, batch = idx / (shape.m * shape.n);
          TOut& out = c[batch * shape.stride_c + i + j * shape.ldc];
          out = FromFloat<TOut>(shape.beta != 0.0f ? c32[idx] + shape.beta * ToFloat(out) : c32[idx]);
        });
  }
}

#if defined(KOKKOS_ENABLE_CUDA)

template <class TIn, class TOut>
absl::Status CublasBatchedGemm(const ExecutionContext<Kokkos::Cuda>& ctx, const BatchedGemmShape& s, const TIn* a, const TIn* b,
                               TOut* c) {
  const auto& space = ctx.space();
  cublasHandle_t handle = ctx.Cublas();
  if (handle == nullptr) {
    return absl::InternalError("cuBLAS handle unavailable (cublasCreate, its 32 MiB workspace allocation, "
                               "cublasSetStream or cublasSetWorkspace failed)");
  }
  const float alpha = 1.0f, beta = s.beta;
  const cublasComputeType_t compute =
      std::is_same_v<TIn, float> && s.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  const cublasOperation_t op_a = s.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = s.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  // One product (Linear, weight gradients): plain cublasGemmEx, whose kernel choice the decode
  // and training benchmarks measured.
  const cublasStatus_t status =
      s.batch == 1
          ? cublasGemmEx(handle, op_a, op_b, int(s.m), int(s.n), int(s.k), &alpha, a, CudaType<TIn>(), int(s.lda), b,
                         CudaType<TIn>(), int(s.ldb), &beta, c, CudaType<TOut>(), int(s.ldc), compute,
                         CUBLAS_GEMM_DEFAULT)
          : cublasGemmStridedBatchedEx(handle, op_a, op_b, int(s.m), int(s.n), int(s.k), &alpha, a, CudaType<TIn>(),
                                       int(s.lda), s.stride_a, b, CudaType<TIn>(), int(s.ldb), s.stride_b, &beta, c,
                                       CudaType<TOut>(), int(s.ldc), s.stride_c, int(s.batch), compute,
                                       CUBLAS_GEMM_DEFAULT);
  if (status != CUBLAS_STATUS_SUCCESS) {
    return absl::InternalError(absl::StrCat("cuBLAS GEMM failed with status ", int(status), " (m ", s.m, ", n ", s.n,
                                            ", k ", s.k, ", batch ", s.batch, ")"));
  }
  return absl::OkStatus();
}
#endif

}  // namespace

template <class TIn, class TOut, class ExecSpace>
absl::Status StridedBatchedGemm(const ExecutionContext<ExecSpace>& ctx, const BatchedGemmShape& shape, const TIn* a, const TIn* b,
                                TOut* c) {
  const auto& space = ctx.space();
  if (shape.m < 0 || shape.n < 0 || shape.k < 0 || shape.batch < 0) {
    return absl::InvalidArgumentError("StridedBatchedGemm: negative extent");
  }
  if (shape.m == 0 || shape.n == 0 || shape.batch == 0) return absl::OkStatus();
#if defined(KOKKOS_ENABLE_CUDA)
  if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda>) return CublasBatchedGemm(ctx, shape, a, b, c);
#endif
  if constexpr (!kIsCuda<ExecSpace>) {  // host backends: OpenBLAS
    if (shape.k > 0) {
      if constexpr (std::is_same_v<TIn, float>) {
        HostSgemm(shape, a, b, c);
        return absl::OkStatus();
      } else if (std::min(shape.m, shape.n) >= kHostWidenMinReuse) {
        HostWidenedGemm<TIn, TOut, ExecSpace>(ctx, shape, a, b, c);
        return absl::OkStatus();
      }
    }
  }
  LoopBatchedGemm<TIn, TOut, ExecSpace>(space, shape, a, b, c);
  return absl::OkStatus();
}

#define OPENMOE_INSTANTIATE_BATCHED_GEMM(Space, T) \
  template absl::Status StridedBatchedGemm<T, T, Space>(const ExecutionContext<Space>&, const BatchedGemmShape&, const T*, const T*, T*);
OPENMOE_FOR_EACH_SPACE_AND_KERNEL_DTYPE(OPENMOE_INSTANTIATE_BATCHED_GEMM)
#define OPENMOE_INSTANTIATE_BATCHED_GEMM_TO_FLOAT(Space)                                                         \
  template absl::Status StridedBatchedGemm<bf16, float, Space>(const ExecutionContext<Space>&, const BatchedGemmShape&, const bf16*, \
                                                               const bf16*, float*);                               \
  template absl::Status StridedBatchedGemm<f16, float, Space>(const ExecutionContext<Space>&, const BatchedGemmShape&, const f16*,   \
                                                              const f16*, float*);
OPENMOE_FOR_EACH_EXECUTION_SPACE(OPENMOE_INSTANTIATE_BATCHED_GEMM_TO_FLOAT)

}  // namespace openmoe::kernels
