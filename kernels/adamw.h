// File: kernels/adamw.h
// One AdamW step (PyTorch's torch.optim.AdamW: decoupled weight decay, bias correction) on
// float32 master weights, element-wise over flat Views:
//   p *= 1 - lr * weight_decay
//   m = beta1 m + (1 - beta1) g;   v = beta2 v + (1 - beta2) g^2
//   p -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
#ifndef KERNELS_ADAMW_H_
#define KERNELS_ADAMW_H_

#include <cstdint>

#include "absl/status/status.h"
#include "openmoe/core/bf16.h"
#include "openmoe/core/tensor_types.h"

namespace openmoe::kernels {

struct AdamWOptions {
  double lr           = 1e-5;  // upstream train.py default
  double beta1        = 0.9;
  double beta2        = 0.999;
  double eps          = 1e-8;
  double weight_decay = 0.0;  // upstream default
};

// param, grad, m, v: [n]; step counts from 1.
template <class ExecSpace>
absl::Status AdamWStep(const ExecSpace& space, Vector<float, ExecSpace> param,
                       ConstVector<float, ExecSpace> grad, Vector<float, ExecSpace> m,
                       Vector<float, ExecSpace> v, int64_t step, const AdamWOptions& options);

// The same step, also writing the updated weights rounded to T (bf16 or f16) into working [n]:
// the 16-bit copy a mixed-precision step computes with, refreshed in the optimizer's pass over
// the weights instead of a separate conversion. param, m, v as AdamWStep's, bit for bit.
template <class T, class ExecSpace>
absl::Status AdamWStepAndCast(const ExecSpace& space, Vector<float, ExecSpace> param,
                              ConstVector<float, ExecSpace> grad, Vector<float, ExecSpace> m,
                              Vector<float, ExecSpace> v, int64_t step, const AdamWOptions& options,
                              Vector<T, ExecSpace> working);

}  // namespace openmoe::kernels

#endif  // KERNELS_ADAMW_H_
