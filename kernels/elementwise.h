// File: kernels/elementwise.h
// Small element-wise ops of the OpenMoE forward pass. T is the storage type (float, bf16, f16);
// arithmetic is float32, rounded to T on store.
#ifndef KERNELS_ELEMENTWISE_H_
#define KERNELS_ELEMENTWISE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "openmoe/core/tensor_types.h"

namespace openmoe::kernels {

// out[t, :] = table[ids[t], :].  table [V, H], ids [T], out [T, H]. Ids must be validated by the
// caller (the model checks them against V on the host before any kernel runs).
template <class T, class ExecSpace>
absl::Status Embedding(const ExecSpace& space, ConstMatrix<T, ExecSpace> table,
                       ConstVector<int64_t, ExecSpace> ids, Matrix<T, ExecSpace> out);

// x *= factor (float32 gradients: loss-scale removal, clipping).
template <class ExecSpace>
absl::Status Scale(const ExecSpace& space, Vector<float, ExecSpace> x, float factor);

// y += x, both [T, H].
// y = x element-wise in another storage type (float <-> bf16 / f16: exact widening, round to
// nearest even when narrowing). x, y [N, C].
template <class TIn, class TOut, class ExecSpace>
absl::Status Convert(const ExecSpace& space, ConstMatrix<TIn, ExecSpace> x, Matrix<TOut, ExecSpace> y);

template <class T, class ExecSpace>
absl::Status AddInPlace(const ExecSpace& space, Matrix<T, ExecSpace> y, ConstMatrix<T, ExecSpace> x);

// OpenMoE's "swiglu" 3-way product: out = g[:, :I] * silu(g[:, I:]) * up.
// gate [T, 2I], up [T, I], out [T, I]. (The first half of the gate is linear.)
template <class T, class ExecSpace>
absl::Status SwigluCombine(const ExecSpace& space, ConstMatrix<T, ExecSpace> gate,
                           ConstMatrix<T, ExecSpace> up, Matrix<T, ExecSpace> out);

// The same with gate and up side by side, as one fused projection writes them:
// gate_up [T, 3I] = [g1 | g2 | up] -> out [T, I] = g1 * silu(g2) * up.
template <class T, class ExecSpace>
absl::Status SwigluCombineFused(const ExecSpace& space, ConstMatrix<T, ExecSpace> gate_up,
                                Matrix<T, ExecSpace> out);

}  // namespace openmoe::kernels

#endif  // KERNELS_ELEMENTWISE_H_
