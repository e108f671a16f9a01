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
#include <vector>

#include "absl/status/status.h"
#include "openmoe/core/tensor_types.h"

namespace openmoe::kernels {

// floor(k * cf * N / E), rounded up to even, at least min_capacity (Colossal-AI's get_capacity).
int64_t ExpertCapacity(int64_t num_tokens, int64_t num_experts, double capacity_factor,
                       int64_t min_capacity, int64_t top_k = 2);

// logits [T, E] -> probs [T, E] (float32 softmax), experts [T, 2] (top-1, top-2 expert ids).
// T is the storage type of logits, tokens and expert outputs (float, bf16, f16); probabilities are
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

// ---- Decode steps: the experts of a few tokens without a host round trip -------------------
// Assignment a = 2 t + k (token t's k-th choice, expert e = experts(t, k)) is kept when
// rank(t, k) < capacity. Each kept assignment is multiplied by its own expert's weights; the
// products are written as float32 partial sums over `splits` slices of the inner dimension,
// which the consumers below add up (deterministic, no atomics).
template <class Space>
using Partials = Kokkos::View<float***, Kokkos::LayoutRight, typename Space::memory_space>;  // [splits, 2T, N]

// How many inner-dimension slices GroupedExpertProduct uses (the caller sizes `partial` by it).
int64_t GroupedExpertSplits(int64_t assignments, int64_t inner, int64_t cols, int64_t pack_size);

// Whether weights [E, inner, cols] can be read as 16-byte packs (else use Dispatch/Combine).
template <class T>
bool GroupedExpertShapesFit(const T* weights, int64_t cols);

// partial[s, a, :] = x[row(a), slice s] @ W_e[slice s, :] for kept a, W = weights [E, K, cols]
// row-major (OpenMoE's x @ W layout); row(a) = t when x holds tokens [T, K] (x_per_token), a
// when x holds one row per assignment [2T, K]. Host backends: one task per (a, s), streaming the
// slice's whole rows of W_e (host_gemv.h).
template <class T, class ExecSpace>
absl::Status GroupedExpertProduct(const ExecSpace& space, ConstMatrix<T, ExecSpace> x, bool x_per_token,
                                  ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,
                                  int64_t capacity, const T* weights, int64_t num_experts,
                                  Partials<ExecSpace> partial);

// act[a, i] = swiglu(g[a, i], g[a, I + i], u[a, i]) (OpenMoE's: linear first half, SiLU second),
// g and u the partial sums rounded to T as a GEMM output would be; act [2T, I].
template <class T, class ExecSpace>
absl::Status SwigluFromPartials(const ExecSpace& space, Partials<ExecSpace> gate_partial,
                                Partials<ExecSpace> up_partial, Matrix<T, ExecSpace> act);

// y[t, :] = sum over kept k of probs(t, e_k) * T(sum_s out_partial[s, 2t + k, :]), as Combine.
template <class T, class ExecSpace>
absl::Status CombineFromPartials(const ExecSpace& space, Partials<ExecSpace> out_partial,
                                 ConstMatrix<float, ExecSpace> probs, ConstMatrix<int32_t, ExecSpace> experts,
                                 ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity, Matrix<T, ExecSpace> y);

#if defined(KOKKOS_ENABLE_CUDA)
// ---- Decode graphs: only the experts in use run (openmoe/decode_graph.h) --------------------
inline constexpr int64_t kMaxExpertConditions = 64;
// Sets condition e (a cudaGraphConditionalHandle of the graph being captured, which this kernel
// joins) to 1 when expert e holds a kept assignment (rank < capacity), else to 0.
// conditions.size() = E <= kMaxExpertConditions.
absl::Status SetExpertConditions(const Kokkos::Cuda& space, ConstMatrix<int32_t, Kokkos::Cuda> experts,
                                 ConstMatrix<int32_t, Kokkos::Cuda> rank, int64_t capacity,
                                 const std::vector<uint64_t>& conditions);
#endif

}  // namespace openmoe::kernels

#endif  // KERNELS_MOE_H_
