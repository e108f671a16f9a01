#include "parallel/inference_expert_dispatcher.h"

#include <string>
#include <utility>

#include <Kokkos_Core.hpp>

#include "absl/strings/str_cat.h"
#include "kernels/instantiate.h"
#include "kernels/moe.h"
#include "openmoe/core/status_macros.h"

namespace openmoe::parallel {

template <class ExecSpace>
absl::StatusOr<std::shared_ptr<InferenceExpertDispatcher<ExecSpace>>> InferenceExpertDispatcher<ExecSpace>::Create(
    std::shared_ptr<comm::Communicator<ExecSpace>> comm, int64_t num_experts) {
  if (comm == nullptr) return absl::InvalidArgumentError("InferenceExpertDispatcher: no communicator");
  if (num_experts <= 0 || num_experts % comm->size() != 0) {
    return absl::InvalidArgumentError(absl::StrCat("expert parallelism: ", num_experts,
                                                   " experts cannot be split evenly over ", comm->size(), " ranks"));
  }
  return std::shared_ptr<InferenceExpertDispatcher>(new InferenceExpertDispatcher(std::move(comm), num_experts));
}

template <class ExecSpace>
absl::Status InferenceExpertDispatcher<ExecSpace>::CheckLocalRows(const char* op, int64_t rows, int64_t capacity) const {
  if (rows != local_ * capacity) {
    return absl::InvalidArgumentError(absl::StrCat("InferenceExpertDispatcher::", op, ": the local experts' buffer has ",
                                                   rows, " rows, expected ", local_, " experts x capacity ", capacity));
  }
  return absl::OkStatus();
}

template <class ExecSpace>
template <class T>
absl::Status InferenceExpertDispatcher<ExecSpace>::DispatchT(const ExecSpace& space, ConstMatrix<T, ExecSpace> x,
                                                             ConstMatrix<int32_t, ExecSpace> experts,
                                                             ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity,
                                                             Matrix<T, ExecSpace> dispatched) {
  OPENMOE_RETURN_IF_ERROR(CheckLocalRows("Dispatch", int64_t(dispatched.extent(0)), capacity));
  const int64_t H = x.extent(1), first = int64_t(comm_->rank()) * local_;
  // Every expert's queue as on one device (empty slots 0), then this rank's experts' rows.
  Matrix<T, ExecSpace> all(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string("iep.all")), experts_ * capacity, H);
  OPENMOE_RETURN_IF_ERROR(kernels::Dispatch<T>(space, x, experts, rank, capacity, all));
  Kokkos::deep_copy(space, dispatched,
                    Kokkos::subview(all, std::make_pair(first * capacity, (first + local_) * capacity), Kokkos::ALL));
  return absl::OkStatus();
}

template <class ExecSpace>
template <class T>
absl::Status InferenceExpertDispatcher<ExecSpace>::CombineT(const ExecSpace& space, ConstMatrix<T, ExecSpace> expert_out,
                                                            ConstMatrix<float, ExecSpace> probs,
                                                            ConstMatrix<int32_t, ExecSpace> experts,
                                                            ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity,
                                                            Matrix<T, ExecSpace> y) {
  OPENMOE_RETURN_IF_ERROR(CheckLocalRows("Combine", int64_t(expert_out.extent(0)), capacity));
  // [P, E/P * C, H] = [E * C, H]: rank p's block holds experts [p * E/P, (p + 1) * E/P). Rows past an
  // expert's kept slots are whatever its owner left there; Combine reads kept slots only.
  Matrix<T, ExecSpace> all(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string("iep.all_out")),
                           experts_ * capacity, expert_out.extent(1));
  OPENMOE_RETURN_IF_ERROR(comm_->AllGather(space, expert_out, all));
  return kernels::Combine<T>(space, all, probs, experts, rank, capacity, y);
}

#define OPENMOE_INFERENCE_EP_(T)                                                                                    \
  template <class ExecSpace>                                                                                        \
  absl::Status InferenceExpertDispatcher<ExecSpace>::Dispatch(                                                      \
      const ExecSpace& space, ConstMatrix<T, ExecSpace> x, ConstMatrix<int32_t, ExecSpace> experts,                 \
      ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity, Matrix<T, ExecSpace> dispatched) {                    \
    return DispatchT<T>(space, x, experts, rank, capacity, dispatched);                                             \
  }                                                                                                                 \
  template <class ExecSpace>                                                                                        \
  absl::Status InferenceExpertDispatcher<ExecSpace>::Combine(                                                       \
      const ExecSpace& space, ConstMatrix<T, ExecSpace> expert_out, ConstMatrix<float, ExecSpace> probs,            \
      ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity,              \
      Matrix<T, ExecSpace> y) {                                                                                     \
    return CombineT<T>(space, expert_out, probs, experts, rank, capacity, y);                                       \
  }
OPENMOE_INFERENCE_EP_(float)
OPENMOE_INFERENCE_EP_(bf16)
OPENMOE_INFERENCE_EP_(f16)
#undef OPENMOE_INFERENCE_EP_

#define OPENMOE_INSTANTIATE_INFERENCE_EP_DISPATCHER(Space) template class InferenceExpertDispatcher<Space>;
OPENMOE_FOR_EACH_EXECUTION_SPACE(OPENMOE_INSTANTIATE_INFERENCE_EP_DISPATCHER)

}  // namespace openmoe::parallel
