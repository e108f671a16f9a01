// File: kernels/linear.h
// Row-major matrix products over Kokkos Views, through Kokkos Kernels' BLAS (cuBLAS on CUDA).
// Kokkos Kernels is instantiated for column-major (LayoutLeft) float only, so a row-major
// product is issued as the column-major product of the transposes: C^T = B^T A^T, with no copy.
//
//   Linear(space, x, w, y);   // y[M, N] = x[M, K] @ w[N, K]^T   (nn.Linear weight [out, in])
//   MatMul(space, x, w, y);   // y[M, N] = x[M, K] @ w[K, N]     (OpenMoE expert weights, x@W)
// With accumulate = true the product is added to y (beta = 1).
// All Views must be contiguous row-major.
#ifndef KERNELS_LINEAR_H_
#define KERNELS_LINEAR_H_

#include "absl/status/status.h"
#include "openmoe/core/tensor_types.h"

namespace openmoe::kernels {

template <class ExecSpace>
absl::Status Linear(const ExecSpace& space, ConstMatrix<float, ExecSpace> x,
                    ConstMatrix<float, ExecSpace> w, Matrix<float, ExecSpace> y,
                    bool accumulate = false);

template <class ExecSpace>
absl::Status MatMul(const ExecSpace& space, ConstMatrix<float, ExecSpace> x,
                    ConstMatrix<float, ExecSpace> w, Matrix<float, ExecSpace> y,
                    bool accumulate = false);

}  // namespace openmoe::kernels

#endif  // KERNELS_LINEAR_H_
