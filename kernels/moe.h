// File: kernels/moe.h
// OpenMoE top-2 routing with capacity (spec 2.5): Router -> slot assignment -> Dispatch ->
// (experts, by the model) -> Combine.
//
//   probs = softmax(logits) in float32 over E; e1 = argmax, e2 = argmax without e1 (ties go to
//   the lowest index); C = ExpertCapacity(N); an expert's queue holds all its top-1 assignments in
//   token order, then its top-2 assignments in token order; rank >= C is dropped; the output is
//   y[t] = sum over kept k of probs[t, e_k] * expert_out[e_k, rank_k] (raw probabilities, no
//   renormalisation); a token dropped twice gets y = 0.
#ifndef KERNELS_MOE_H_
#define KERNELS_MOE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "openmoe/core/tensor_types.h"

namespace openmoe::kernels {

// floor(k * cf * N / E), rounded up to even, at least min_capacity (Colossal-AI's get_capacity).
int64_t ExpertCapacity(int64_t num_tokens, int64_t num_experts, double capacity_factor,
                       int64_t min_capacity, int64_t top_k = 2);

// logits [T, E] -> probs [T, E] (float32 softmax), experts [T, 2] (top-1, top-2 expert ids).
// T is the storage type of logits, tokens and expert outputs (float or bf16); probabilities are
// float32.
template <class T, class ExecSpace>
absl::Status RouterTop2(const ExecSpace& space, ConstMatrix<T, ExecSpace> logits,
                        Matrix<float, ExecSpace> probs, Matrix<int32_t, ExecSpace> experts);

// experts [T, 2] -> rank [T, 2]: each assignment's place in its expert's queue.
template <class ExecSpace>
absl::Status AssignSlots(const ExecSpace& space, ConstMatrix<int32_t, ExecSpace> experts,
                         int64_t num_experts, Matrix<int32_t, ExecSpace> rank);

// buffer [E * C, H] (zeroed here); row e * C + rank of each kept assignment gets x[t].
template <class T, class ExecSpace>
absl::Status Dispatch(const ExecSpace& space, ConstMatrix<T, ExecSpace> x,
                      ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,
                      int64_t capacity, Matrix<T, ExecSpace> buffer);

// y [T, H] = probability-weighted sum of the kept expert outputs, expert_out [E * C, H].
template <class T, class ExecSpace>
absl::Status Combine(const ExecSpace& space, ConstMatrix<T, ExecSpace> expert_out,
                     ConstMatrix<float, ExecSpace> probs, ConstMatrix<int32_t, ExecSpace> experts,
                     ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity,
                     Matrix<T, ExecSpace> y);

}  // namespace openmoe::kernels

#endif  // KERNELS_MOE_H_
