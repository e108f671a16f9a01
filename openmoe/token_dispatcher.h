// File: openmoe/token_dispatcher.h
// The seam of the MoE block where expert parallelism plugs in: routing (router logits -> top-2 ->
// queue slots) happens before it, the experts run on the expert-major rows it produces, and it
// brings their outputs back to the tokens.
//
//   route:    experts [N, 2], rank [N, 2], probs [N, E], capacity C      (the same on every rank)
//   Dispatch: x [N, H]                        -> dispatched [E_local * R, H] (this rank's experts)
//   experts:  dispatched                      -> expert_out [E_local * R, H]
//   Combine:  expert_out, probs               -> y [N, H]
// where R = rows_per_expert(C) is the rows each local expert runs on: C on one rank, ep * C (the
// slots of every EP rank, rank-major) under expert parallelism.
// and, for training, the float32 gradients of both steps in the reverse direction. Dispatch and
// Combine take the activation types of the models (float, bf16, f16).
//
// RunExpertBlock / RunExpertBlockBackward are the whole expert block around the model's expert
// products, which the model hands over as a callback on a range of its local experts: by default
// Dispatch, the callback on every local expert, Combine (and the mirror for the gradients); an
// expert-parallel dispatcher may instead exchange the rows of a few local experts at a time and run
// the callback on each such chunk while the next chunk's rows travel (--comm_overlap). Each expert's
// products then run on the same rows with the same calls, so the results are the same bits.
//
// SingleRankDispatcher holds every expert (E_local = E) and moves rows within the device: what the
// model did before the seam existed. An expert-parallel dispatcher (parallel/) exchanges the
// capacity-padded rows [ep, E_local, C, H] with an equal-count all-to-all (openmoe/comm) and
// returns them the same way; every implementation keeps an expert's rows in slot order.
#ifndef OPENMOE_TOKEN_DISPATCHER_H_
#define OPENMOE_TOKEN_DISPATCHER_H_

#include <cstdint>
#include <functional>

#include "absl/status/status.h"
#include "openmoe/core/bf16.h"
#include "openmoe/core/tensor_types.h"

namespace openmoe {

#define OPENMOE_DISPATCH_METHODS_(T, SPEC)                                                                          \
  /* dispatched [local_experts * R, H] (R = rows_per_expert(C)): on one rank row e * C + slot holds the token */   \
  /* in that slot of local expert e; empty slots are 0. */                                                          \
  virtual absl::Status Dispatch(const ExecSpace& space, ConstMatrix<T, ExecSpace> x,                                \
                                ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,      \
                                int64_t capacity, Matrix<T, ExecSpace> dispatched) SPEC;                            \
  /* y [N, H] (written) = sum over each token's kept assignments of probs(t, e) * its expert's row. */             \
  virtual absl::Status Combine(const ExecSpace& space, ConstMatrix<T, ExecSpace> expert_out,                        \
                               ConstMatrix<float, ExecSpace> probs, ConstMatrix<int32_t, ExecSpace> experts,        \
                               ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity, Matrix<T, ExecSpace> y) SPEC;

// The expert block forward: Dispatch(x -> dispatched), run_experts on local experts [0, local) (it
// writes their rows of expert_out), Combine(expert_out -> y). Overridable: see the file comment.
#define OPENMOE_EXPERT_BLOCK_METHOD_(T)                                                                             \
  virtual absl::Status RunExpertBlock(const ExecSpace& space, ConstMatrix<T, ExecSpace> x,                          \
                                      ConstMatrix<float, ExecSpace> probs, ConstMatrix<int32_t, ExecSpace> experts, \
                                      ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity,                       \
                                      Matrix<T, ExecSpace> dispatched, Matrix<T, ExecSpace> expert_out,             \
                                      const ExpertRange& run_experts, Matrix<T, ExecSpace> y) {                     \
    return ExpertBlockInOrder<T>(space, x, probs, experts, rank, capacity, dispatched, expert_out, run_experts, y); \
  }

template <class ExecSpace>
class TokenDispatcher {
 public:
  virtual ~TokenDispatcher() = default;

  // The experts this rank runs: [first_local_expert(), first_local_expert() + local_experts(E)).
  virtual int64_t first_local_expert() const = 0;
  virtual int64_t local_experts(int64_t num_experts) const = 0;
  // Rows of each local expert in the expert-major buffers [local_experts * R, H] that Dispatch
  // writes and Combine reads (and their gradients), for this rank's routing capacity C. The default,
  // C, is one rank's own slots; an expert-parallel dispatcher returns ep * C.
  virtual int64_t rows_per_expert(int64_t capacity) const { return capacity; }

  OPENMOE_DISPATCH_METHODS_(float, = 0)
  OPENMOE_DISPATCH_METHODS_(bf16, = 0)
  OPENMOE_DISPATCH_METHODS_(f16, = 0)

  // The model's local experts [first, end) (0 <= first < end <= local_experts) on their rows
  // [first * R, end * R) of the expert-major buffers, enqueued on the space of the Run call: forward,
  // dispatched -> expert_out; backward, d_expert_out -> d_dispatched and the experts' weight gradients.
  // Called on consecutive ranges covering every local expert once, in order.
  using ExpertRange = std::function<absl::Status(int64_t first, int64_t end)>;

  OPENMOE_EXPERT_BLOCK_METHOD_(float)
  OPENMOE_EXPERT_BLOCK_METHOD_(bf16)
  OPENMOE_EXPERT_BLOCK_METHOD_(f16)

  // Training (float32): d_expert_out [local * R, H] and dprobs [N, E] (written) from dy [N, H].
  virtual absl::Status CombineBackward(const ExecSpace& space, ConstMatrix<float, ExecSpace> dy,
                                       ConstMatrix<float, ExecSpace> expert_out, ConstMatrix<float, ExecSpace> probs,
                                       ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,
                                       int64_t capacity, Matrix<float, ExecSpace> d_expert_out,
                                       Matrix<float, ExecSpace> dprobs) = 0;
  // dx [N, H] += the rows of d_dispatched [local * R, H] of each token's kept assignments.
  virtual absl::Status DispatchBackward(const ExecSpace& space, ConstMatrix<float, ExecSpace> d_dispatched,
                                        ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,
                                        int64_t capacity, Matrix<float, ExecSpace> dx) = 0;

  // The expert block backward: CombineBackward(dy -> d_expert_out, dprobs), run_experts_backward on
  // local experts [0, local) (d_expert_out -> d_dispatched rows), DispatchBackward(dx +=).
  virtual absl::Status RunExpertBlockBackward(const ExecSpace& space, ConstMatrix<float, ExecSpace> dy,
                                              ConstMatrix<float, ExecSpace> expert_out,
                                              ConstMatrix<float, ExecSpace> probs,
                                              ConstMatrix<int32_t, ExecSpace> experts,
                                              ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity,
                                              Matrix<float, ExecSpace> d_expert_out, Matrix<float, ExecSpace> dprobs,
                                              Matrix<float, ExecSpace> d_dispatched,
                                              const ExpertRange& run_experts_backward, Matrix<float, ExecSpace> dx) {
    return ExpertBlockBackwardInOrder(space, dy, expert_out, probs, experts, rank, capacity, d_expert_out, dprobs,
                                      d_dispatched, run_experts_backward, dx);
  }

 protected:
  // The default expert block: one exchange per step, the experts all at once between them.
  template <class T>
  absl::Status ExpertBlockInOrder(const ExecSpace& space, ConstMatrix<T, ExecSpace> x,
                                  ConstMatrix<float, ExecSpace> probs, ConstMatrix<int32_t, ExecSpace> experts,
                                  ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity,
                                  Matrix<T, ExecSpace> dispatched, Matrix<T, ExecSpace> expert_out,
                                  const ExpertRange& run_experts, Matrix<T, ExecSpace> y) {
    if (absl::Status s = Dispatch(space, x, experts, rank, capacity, dispatched); !s.ok()) return s;
    if (absl::Status s = run_experts(0, local_experts(int64_t(probs.extent(1)))); !s.ok()) return s;
    return Combine(space, ConstMatrix<T, ExecSpace>(expert_out), probs, experts, rank, capacity, y);
  }
  absl::Status ExpertBlockBackwardInOrder(const ExecSpace& space, ConstMatrix<float, ExecSpace> dy,
                                          ConstMatrix<float, ExecSpace> expert_out,
                                          ConstMatrix<float, ExecSpace> probs,
                                          ConstMatrix<int32_t, ExecSpace> experts,
                                          ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity,
                                          Matrix<float, ExecSpace> d_expert_out, Matrix<float, ExecSpace> dprobs,
                                          Matrix<float, ExecSpace> d_dispatched,
                                          const ExpertRange& run_experts_backward, Matrix<float, ExecSpace> dx) {
    if (absl::Status s = CombineBackward(space, dy, expert_out, probs, experts, rank, capacity, d_expert_out, dprobs);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = run_experts_backward(0, local_experts(int64_t(probs.extent(1)))); !s.ok()) return s;
    return DispatchBackward(space, ConstMatrix<float, ExecSpace>(d_dispatched), experts, rank, capacity, dx);
  }
};

// Every expert on this device: the rows move within its memory (kernels/moe.h, backward.h).
template <class ExecSpace>
class SingleRankDispatcher final : public TokenDispatcher<ExecSpace> {
 public:
  int64_t first_local_expert() const override { return 0; }
  int64_t local_experts(int64_t num_experts) const override { return num_experts; }

  OPENMOE_DISPATCH_METHODS_(float, override)
  OPENMOE_DISPATCH_METHODS_(bf16, override)
  OPENMOE_DISPATCH_METHODS_(f16, override)

  absl::Status CombineBackward(const ExecSpace& space, ConstMatrix<float, ExecSpace> dy,
                               ConstMatrix<float, ExecSpace> expert_out, ConstMatrix<float, ExecSpace> probs,
                               ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,
                               int64_t capacity, Matrix<float, ExecSpace> d_expert_out,
                               Matrix<float, ExecSpace> dprobs) override;
  absl::Status DispatchBackward(const ExecSpace& space, ConstMatrix<float, ExecSpace> d_dispatched,
                                ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,
                                int64_t capacity, Matrix<float, ExecSpace> dx) override;
};

#undef OPENMOE_DISPATCH_METHODS_
#undef OPENMOE_EXPERT_BLOCK_METHOD_

}  // namespace openmoe

#endif  // OPENMOE_TOKEN_DISPATCHER_H_
