// File: openmoe/blocks.h
// The layer pieces that inference (model.h) and training (trainable_model.h) share: one
// implementation of the dense MLP's forward, of the router and of one expert. Each takes its
// weights as views and writes into buffers the caller owns (inference reuses work buffers,
// training keeps what its backward pass reads).
//
//   DenseMlpForward:  x [N, H] -> gate_up [N, 3I] = x [gate_proj; up_proj]^T, act [N, I] =
//                     swiglu(gate_up), out [N, H] = act down_proj^T               (spec 2.4)
//   RouteTokens:      x [N, H] -> router logits [N, E] (T), probabilities [N, E] (float32),
//                     top-2 experts [N, 2], queue slots [N, 2]; returns the capacity C   (spec 2.5)
//   ExpertForward:    one expert on rows [R, H] of its queue: gate [R, 2I] = in wi_gate, up [R, I]
//                     = in wi_up, act [R, I] = swiglu(gate, up), out [R, H] = act wo     (spec 2.5)
#ifndef OPENMOE_BLOCKS_H_
#define OPENMOE_BLOCKS_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "openmoe/core/tensor_types.h"

namespace openmoe {

// gate_up_weight [3I, H]: the rows of gate_proj [2I, H] followed by those of up_proj [I, H];
// down_weight [H, I].
template <class T, class ExecSpace>
absl::Status DenseMlpForward(const ExecSpace& space, ConstMatrix<T, ExecSpace> x, ConstMatrix<T, ExecSpace> gate_up_weight,
                             ConstMatrix<T, ExecSpace> down_weight, Matrix<T, ExecSpace> gate_up, Matrix<T, ExecSpace> act,
                             Matrix<T, ExecSpace> out);

// router_weight [E, H]. capacity = ExpertCapacity(N, E, capacity_factor, min_capacity).
template <class T, class ExecSpace>
absl::StatusOr<int64_t> RouteTokens(const ExecSpace& space, ConstMatrix<T, ExecSpace> x,
                                    ConstMatrix<T, ExecSpace> router_weight, double capacity_factor, int64_t min_capacity,
                                    Matrix<T, ExecSpace> logits, Matrix<float, ExecSpace> probs,
                                    Matrix<int32_t, ExecSpace> experts, Matrix<int32_t, ExecSpace> rank);

// wi_gate [H, 2I], wi_up [H, I], wo [I, H]: the expert's slices of the stacked expert tensors
// (x W layout, not nn.Linear's).
template <class T, class ExecSpace>
absl::Status ExpertForward(const ExecSpace& space, ConstMatrix<T, ExecSpace> in, ConstMatrix<T, ExecSpace> wi_gate,
                           ConstMatrix<T, ExecSpace> wi_up, ConstMatrix<T, ExecSpace> wo, Matrix<T, ExecSpace> gate,
                           Matrix<T, ExecSpace> up, Matrix<T, ExecSpace> act, Matrix<T, ExecSpace> out);

}  // namespace openmoe

#endif  // OPENMOE_BLOCKS_H_
