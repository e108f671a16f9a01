// File: kernels/argmax.h
// Greedy token choice on the device: the first index of each row's largest logit, so that a
// greedy decode step copies B ids to the host instead of B x V logits (0.5 MB per row at
// OpenMoE's vocabulary) and does not scan them on the host.
//
//   RowArgmax<bf16>(space, logits /*[B, V]*/, allowed /*<= V*/, ids /*[B]*/);
#ifndef KERNELS_ARGMAX_H_
#define KERNELS_ARGMAX_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/execution_context.h"
#include "openmoe/core/tensor_types.h"

namespace openmoe::kernels {

// ids[b] = the smallest j < allowed with logits[b, j] maximal (torch.argmax's first maximum;
// a NaN counts as the largest value, as in torch).
template <class T, class ExecSpace>
absl::Status RowArgmax(const ExecutionContext<ExecSpace>& ctx, ConstMatrix<T, ExecSpace> logits, int64_t allowed,
                       Vector<int64_t, ExecSpace> ids);

}  // namespace openmoe::kernels

#endif  // KERNELS_ARGMAX_H_
