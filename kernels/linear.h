// File: kernels/linear.h
// Row-major matrix products over Kokkos Views: OpenBLAS's cblas_sgemm on host backends (Serial,
// OpenMP), cuBLAS on CUDA.
//
//   Linear<T>(ctx, x, w, y);   // y[M, N] = x[M, K] @ w[N, K]^T   (nn.Linear weight [out, in])
//   MatMul<T>(ctx, x, w, y);   // y[M, N] = x[M, K] @ w[K, N]     (OpenMoE expert weights, x@W)
// With accumulate = true the product is added to y (beta = 1).
// All Views must be contiguous row-major. On host backends, products of at most 4 rows (decode
// steps) of every dtype stream the weights once through the GEMV of host_gemv.h (float32 sums,
// columns or column tiles split over the threads); larger ones go, T = float, through
// cblas_sgemm (cuBLAS on CUDA), T = bf16 / f16 through StridedBatchedGemm (batched_gemm.h: cuBLAS
// with float32 compute on CUDA; on host, operands widened to float32 and sgemm); on CUDA, Linear
// with at most 4 rows (a decode step) and fewer than 8192
// output columns (o_proj, down_proj, router) uses the project's own weight-streaming kernel
// instead (one warp per output column, 16-byte loads), which reads the weights faster
// than the split-K kernels cuBLAS picks for these shapes (decode_kernels_benchmark). That kernel
// loads its first weights before it waits for the kernel before it (dependent_launch.h), so in a
// captured decode graph w must not be written by another kernel of the same graph.
//
//   Linear<float>(ctx, x, w, y);
#ifndef KERNELS_LINEAR_H_
#define KERNELS_LINEAR_H_

#include "absl/status/status.h"
#include "kernels/execution_context.h"
#include "openmoe/core/tensor_types.h"

namespace openmoe::kernels {

template <class T, class ExecSpace>
absl::Status Linear(const ExecutionContext<ExecSpace>& ctx, ConstMatrix<T, ExecSpace> x, ConstMatrix<T, ExecSpace> w,
                    Matrix<T, ExecSpace> y, bool accumulate = false);

template <class T, class ExecSpace>
absl::Status MatMul(const ExecutionContext<ExecSpace>& ctx, ConstMatrix<T, ExecSpace> x, ConstMatrix<T, ExecSpace> w,
                    Matrix<T, ExecSpace> y, bool accumulate = false);

// y[M, N] (+)= x[M, K] @ op(w) into float32 y, op(w) = w^T for Linear's w [N, K] (w_is_out_in) or w
// for MatMul's w [K, N]: the input gradients of mixed-precision training, whose sum stays float32
// (16-bit operands, float32 accumulation and output; no rounding to 16 bits and no conversion
// pass). T = float: exactly Linear / MatMul.
template <class T, class ExecSpace>
absl::Status ProductIntoFloat(const ExecutionContext<ExecSpace>& ctx, ConstMatrix<T, ExecSpace> x, ConstMatrix<T, ExecSpace> w,
                              Matrix<float, ExecSpace> y, bool w_is_out_in, bool accumulate = false);

// c[P, Q] += a[M, P]^T b[M, Q], c float32: the weight gradients of training, accumulated
// (accumulate = false: c = a^T b, c's old contents never read, NaN included).
//   Linear's w [N, K]:  AddTransposedProduct(ctx, dy, x, dw)   (dw += dy^T x)
//   MatMul's w [K, N]:  AddTransposedProduct(ctx, x, dy, dw)   (dw += x^T dy)
// T = float (SGEMM), or bf16 / f16 operands with float32 accumulation and output (mixed
// precision, through StridedBatchedGemm: cuBLAS on CUDA, a loop on host backends).
// The input gradients are products the forward ops already compute: dx = MatMul(dy, w) for
// Linear, dx = Linear(dy, w) for MatMul.
template <class T, class ExecSpace>
absl::Status AddTransposedProduct(const ExecutionContext<ExecSpace>& ctx, ConstMatrix<T, ExecSpace> a, ConstMatrix<T, ExecSpace> b,
                                  Matrix<float, ExecSpace> c, bool accumulate = true);

// Which kernel Linear uses for <= 4 rows on CUDA: ctx.tuning().decode_linear_kernel, kAuto (a
// weight-streaming kernel for fewer than 8192 columns: warp per column where K is a multiple of
// 2048 16-bit elements, split-K otherwise; cuBLAS beyond), or one forced for every width
// (kCublas, kWarpPerColumn, kSplitK), for benchmarks and tests that compare them in one run.

}  // namespace openmoe::kernels

#endif  // KERNELS_LINEAR_H_
