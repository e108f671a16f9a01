// File: parallel/inference_expert_dispatcher.h
// Expert-parallel inference (`generate --parallel expert`) behind openmoe's TokenDispatcher seam.
// Unlike the training `ep` plugin (expert_parallel_dispatcher.h: each rank its own tokens, an
// all-to-all to the experts' owners), every rank here holds the SAME tokens: the whole batch of
// the step, one routing group, so every rank routes identically with the single-device capacity C.
// Rank r owns experts [r * E/P, (r + 1) * E/P) and runs them on its own copy of their queues:
//
//   Dispatch:  x [N, H] --kernels::Dispatch--> [E * C, H] (every expert's queue) -> dispatched
//              [E/P * C, H], this rank's experts' rows (rows_per_expert(C) = C);
//   experts:   the model's loop over its local experts;
//   Combine:   expert_out [E/P * C, H] --AllGather--> [P, E/P * C, H] = [E * C, H] (global expert
//              order, since rank p's experts are contiguous) --kernels::Combine--> y [N, H].
//
// Every rank then ends with the same expert outputs as one device and runs the single-device
// Combine on them: y is the one device's y bit for bit, given the same expert rows (no sum of
// per-rank partial results in another order). The all-gather moves E * C * H values per layer,
// the same volume as the training all-to-all.
//
// Collective: every Dispatch / Combine is (all ranks call them for the same layers in the same
// order, which lockstep generation on the same batch gives). Inference only: the backward
// methods return Unimplemented.
#ifndef OPENMOE_PARALLEL_INFERENCE_EXPERT_DISPATCHER_H_
#define OPENMOE_PARALLEL_INFERENCE_EXPERT_DISPATCHER_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "openmoe/comm/communicator.h"
#include "openmoe/core/bf16.h"
#include "openmoe/core/tensor_types.h"
#include "openmoe/token_dispatcher.h"

namespace openmoe::parallel {

template <class ExecSpace>
class InferenceExpertDispatcher final : public TokenDispatcher<ExecSpace> {
 public:
  // InvalidArgument unless num_experts > 0 is divisible by comm->size().
  static absl::StatusOr<std::shared_ptr<InferenceExpertDispatcher>> Create(
      std::shared_ptr<comm::Communicator<ExecSpace>> comm, int64_t num_experts);

  int ep_size() const { return comm_->size(); }
  int64_t first_local_expert() const override { return int64_t(comm_->rank()) * local_; }
  int64_t local_experts(int64_t num_experts) const override { return num_experts / comm_->size(); }
  // Every rank's queues are its own full copies: C rows per local expert.
  int64_t rows_per_expert(int64_t capacity) const override { return capacity; }

#define OPENMOE_INFERENCE_EP_METHODS_(T)                                                                           \
  absl::Status Dispatch(const ExecSpace& space, ConstMatrix<T, ExecSpace> x, ConstMatrix<int32_t, ExecSpace> experts, \
                        ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity,                                     \
                        Matrix<T, ExecSpace> dispatched) override;                                                  \
  absl::Status Combine(const ExecSpace& space, ConstMatrix<T, ExecSpace> expert_out,                               \
                       ConstMatrix<float, ExecSpace> probs, ConstMatrix<int32_t, ExecSpace> experts,               \
                       ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity, Matrix<T, ExecSpace> y) override;
  OPENMOE_INFERENCE_EP_METHODS_(float)
  OPENMOE_INFERENCE_EP_METHODS_(bf16)
  OPENMOE_INFERENCE_EP_METHODS_(f16)
#undef OPENMOE_INFERENCE_EP_METHODS_

  absl::Status CombineBackward(const ExecSpace&, ConstMatrix<float, ExecSpace>, ConstMatrix<float, ExecSpace>,
                               ConstMatrix<float, ExecSpace>, ConstMatrix<int32_t, ExecSpace>,
                               ConstMatrix<int32_t, ExecSpace>, int64_t, Matrix<float, ExecSpace>,
                               Matrix<float, ExecSpace>) override {
    return absl::UnimplementedError("InferenceExpertDispatcher is for inference; training uses ExpertParallelDispatcher");
  }
  absl::Status DispatchBackward(const ExecSpace&, ConstMatrix<float, ExecSpace>, ConstMatrix<int32_t, ExecSpace>,
                                ConstMatrix<int32_t, ExecSpace>, int64_t, Matrix<float, ExecSpace>) override {
    return absl::UnimplementedError("InferenceExpertDispatcher is for inference; training uses ExpertParallelDispatcher");
  }

 private:
  InferenceExpertDispatcher(std::shared_ptr<comm::Communicator<ExecSpace>> comm, int64_t num_experts)
      : comm_(std::move(comm)), experts_(num_experts), local_(num_experts / comm_->size()) {}

  template <class T>
  absl::Status DispatchT(const ExecSpace& space, ConstMatrix<T, ExecSpace> x, ConstMatrix<int32_t, ExecSpace> experts,
                         ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity, Matrix<T, ExecSpace> dispatched);
  template <class T>
  absl::Status CombineT(const ExecSpace& space, ConstMatrix<T, ExecSpace> expert_out, ConstMatrix<float, ExecSpace> probs,
                        ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity,
                        Matrix<T, ExecSpace> y);
  absl::Status CheckLocalRows(const char* op, int64_t rows, int64_t capacity) const;

  std::shared_ptr<comm::Communicator<ExecSpace>> comm_;
  int64_t experts_, local_;
};

}  // namespace openmoe::parallel

#endif  // OPENMOE_PARALLEL_INFERENCE_EXPERT_DISPATCHER_H_
