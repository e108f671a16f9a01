#include "kernels/batched_gemm.h"

#include <type_traits>

#include <Kokkos_Core.hpp>

#include "absl/strings/str_cat.h"
#include "kernels/cublas_handle.h"
#include "kernels/instantiate.h"
#include "kernels/launch.h"
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
  const cublasOperation_t op_a = s.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = s.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  // One product (Linear, weight gradients): plain cublasGemmEx, whose kernel choice the decode
  // and training benchmarks measured.
  const cublasStatus_t status =
      s.batch == 1
          ? cublasGemmEx(handle, op_a, op_b, int(s.m), int(s.n), int(s.k), &alpha, a, CudaType<TIn>(), int(s.lda), b,
                         CudaType<TIn>(), int(s.ldb), &beta, c, CudaType<TOut>(), int(s.ldc), CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT)
          : cublasGemmStridedBatchedEx(handle, op_a, op_b, int(s.m), int(s.n), int(s.k), &alpha, a, CudaType<TIn>(),
                                       int(s.lda), s.stride_a, b, CudaType<TIn>(), int(s.ldb), s.stride_b, &beta, c,
                                       CudaType<TOut>(), int(s.ldc), s.stride_c, int(s.batch), CUBLAS_COMPUTE_32F,
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
