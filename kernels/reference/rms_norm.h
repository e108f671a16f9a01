// File: kernels/reference/rms_norm.h
// Scalar host reference of T5/Llama RMSNorm: the ground truth for kernel tests.
//
//   y[t, h] = w[h] * x[t, h] / sqrt(mean_h(x[t, :]^2) + eps)
//
// Accumulates in double, so that it is more exact than any float32 kernel it checks.
#ifndef KERNELS_REFERENCE_RMS_NORM_H_
#define KERNELS_REFERENCE_RMS_NORM_H_

#include <cstdint>
#include <vector>

namespace openmoe::kernels::reference {

// \param [in]  x      [rows, hidden] row-major
// \param [in]  weight [hidden]
// \param [out] y      [rows, hidden] row-major, resized by the call
void RmsNorm(const std::vector<float>& x, const std::vector<float>& weight, int64_t rows,
             int64_t hidden, float eps, std::vector<float>& y);

// The backward of RmsNorm in double, by the chain rule through r = (mean_h x^2 + eps)^-1/2:
//   dx[t, i] = r dy[t, i] w[i] - x[t, i] r^3 / hidden * sum_j dy[t, j] w[j] x[t, j]
//   dw[h]    = sum_t dy[t, h] x[t, h] r_t
// \param [in]  x, dy [rows, hidden] row-major; weight [hidden]
// \param [out] dx [rows, hidden], dw [hidden], resized by the call
void RmsNormBackward(const std::vector<float>& x, const std::vector<float>& weight, const std::vector<float>& dy,
                     int64_t rows, int64_t hidden, float eps, std::vector<double>& dx, std::vector<double>& dw);

}  // namespace openmoe::kernels::reference

#endif  // KERNELS_REFERENCE_RMS_NORM_H_
