// File: kernels/rms_norm.h
// RMSNorm (T5 / Llama style) over Kokkos Views, one implementation for every backend.
//
//   y[t, h] = w[h] * (x[t, h] * rsqrt(mean_h(x[t, :]^2) + eps))
//
// The mean of squares is accumulated in float32 (as HF's T5LayerNorm / OpenMoE's
// OpenMoeRMSNorm do, which upcast to float32). One team per row; a team-level reduction over
// the hidden dimension, then a team-parallel scale.
//
// T is float, bf16 or f16 (storage); the arithmetic is float32. As HF's LlamaRMSNorm in bf16, the
// normalised value is rounded to T before the weight multiply.
// The packed CUDA path loads w before it waits for the kernel before it (dependent_launch.h): in
// a captured decode graph, w must not be written by another kernel of the same graph.
//
// Example:
//   Matrix<float, Kokkos::Cuda> x("x", T, H), y("y", T, H);  // [T, H]
//   Vector<float, Kokkos::Cuda> w("w", H);                   // [H]
//   absl::Status s = RmsNorm<float>(Kokkos::Cuda(), x, w, y, 1e-6f);
#ifndef KERNELS_RMS_NORM_H_
#define KERNELS_RMS_NORM_H_

#include "absl/status/status.h"
#include "openmoe/core/tensor_types.h"

namespace openmoe::kernels {

inline constexpr float kRmsNormDefaultEps = 1e-6f;

// \param [in]  space  execution space instance (its stream on CUDA); the call is asynchronous
// \param [in]  x      [T, H]
// \param [in]  weight [H]
// \param [out] y      [T, H]; may alias x
// \return InvalidArgument naming the tensor on a shape mismatch or a non-positive eps.
template <class T, class ExecSpace>
absl::Status RmsNorm(const ExecSpace& space, ConstMatrix<T, ExecSpace> x,
                     ConstVector<T, ExecSpace> weight, Matrix<T, ExecSpace> y,
                     float eps = kRmsNormDefaultEps);

// Fused residual add and norm (one launch instead of two): h += delta, then y = RmsNorm(h).
// Same arithmetic as AddInPlace followed by RmsNorm, so results are identical.
// \param [in,out] h     [T, H] residual stream
// \param [in]     delta [T, H]
// \param [out]    y     [T, H]; must not alias h or delta
template <class T, class ExecSpace>
absl::Status AddRmsNorm(const ExecSpace& space, Matrix<T, ExecSpace> h, ConstMatrix<T, ExecSpace> delta,
                        ConstVector<T, ExecSpace> weight, Matrix<T, ExecSpace> y,
                        float eps = kRmsNormDefaultEps);

}  // namespace openmoe::kernels

#endif  // KERNELS_RMS_NORM_H_
