// File: kernels/batched_gemm.h
// Strided batched matrix products in cuBLAS's column-major convention, for the products over
// (batch row, head) that attention with materialised scores is made of:
//
//   for i < batch:  C_i[m, n] = op(A_i)[m, k] op(B_i)[k, n] + beta C_i,
//                   A_i = a + i * stride_a (leading dimension lda), likewise B_i, C_i;
//                   op(X) = X^T when trans_x.
//
// A row-major [r, c] matrix with row stride ld is the column-major [c, r] matrix with leading
// dimension ld, so row-major callers pass their operands swapped (C^T = op(B)^T op(A)^T).
// Float32 accumulation for every type: cublasGemmStridedBatchedEx with CUBLAS_COMPUTE_32F on
// CUDA (for float inputs no TF32, like PyTorch's default). Host backends: OpenBLAS's sgemm per
// batch entry for float; 16-bit operands widened to float32 in scratch and sgemm where each is
// reused enough (batched_gemm.cc), else a float32-accumulating Kokkos loop.
#ifndef KERNELS_BATCHED_GEMM_H_
#define KERNELS_BATCHED_GEMM_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/execution_context.h"

namespace openmoe::kernels {

struct BatchedGemmShape {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  int64_t lda = 0, ldb = 0, ldc = 0;
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;
  int64_t batch = 1;
  float beta = 0.0f;
  // Float operands on CUDA: TF32 tensor cores (inputs rounded to 10-bit mantissas, float32
  // accumulation). Ignored for 16-bit operands and on host backends (exact float32 there).
  bool tf32 = false;
};

// TIn: float, bf16 or f16; TOut: float or TIn. Pointers are in ExecSpace's memory.
template <class TIn, class TOut, class ExecSpace>
absl::Status StridedBatchedGemm(const ExecutionContext<ExecSpace>& ctx, const BatchedGemmShape& shape, const TIn* a, const TIn* b,
                                TOut* c);

}  // namespace openmoe::kernels

#endif  // KERNELS_BATCHED_GEMM_H_
