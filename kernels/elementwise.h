// File: kernels/elementwise.h
// Small element-wise ops of the OpenMoE forward pass.
#ifndef KERNELS_ELEMENTWISE_H_
#define KERNELS_ELEMENTWISE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "openmoe/core/tensor_types.h"

namespace openmoe::kernels {

// out[t, :] = table[ids[t], :].  table [V, H], ids [T], out [T, H]. Ids must be validated by the
// caller (the model checks them against V on the host before any kernel runs).
template <class ExecSpace>
absl::Status Embedding(const ExecSpace& space, ConstMatrix<float, ExecSpace> table,
                       ConstVector<int64_t, ExecSpace> ids, Matrix<float, ExecSpace> out);

// y += x, both [T, H].
template <class ExecSpace>
absl::Status AddInPlace(const ExecSpace& space, Matrix<float, ExecSpace> y,
                        ConstMatrix<float, ExecSpace> x);

// OpenMoE's "swiglu" 3-way product: out = g[:, :I] * silu(g[:, I:]) * up.
// gate [T, 2I], up [T, I], out [T, I]. (The first half of the gate is linear.)
template <class ExecSpace>
absl::Status SwigluCombine(const ExecSpace& space, ConstMatrix<float, ExecSpace> gate,
                           ConstMatrix<float, ExecSpace> up, Matrix<float, ExecSpace> out);

}  // namespace openmoe::kernels

#endif  // KERNELS_ELEMENTWISE_H_
