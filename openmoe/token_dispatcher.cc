#include "openmoe/token_dispatcher.h"

#include "kernels/backward.h"
#include "kernels/instantiate.h"
#include "kernels/moe.h"

namespace openmoe {

#define OPENMOE_SINGLE_RANK_DISPATCH_(T)                                                                            \
  template <class ExecSpace>                                                                                        \
  absl::Status SingleRankDispatcher<ExecSpace>::Dispatch(const ExecSpace& space, ConstMatrix<T, ExecSpace> x,       \
                                                         ConstMatrix<int32_t, ExecSpace> experts,                   \
                                                         ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity,    \
                                                         Matrix<T, ExecSpace> dispatched) {                          \
    return kernels::Dispatch<T>(space, x, experts, rank, capacity, dispatched);                                     \
  }                                                                                                                 \
  template <class ExecSpace>                                                                                        \
  absl::Status SingleRankDispatcher<ExecSpace>::Combine(                                                            \
      const ExecSpace& space, ConstMatrix<T, ExecSpace> expert_out, ConstMatrix<float, ExecSpace> probs,            \
      ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity,              \
      Matrix<T, ExecSpace> y) {                                                                                     \
    return kernels::Combine<T>(space, expert_out, probs, experts, rank, capacity, y);                              \
  }
OPENMOE_SINGLE_RANK_DISPATCH_(float)
OPENMOE_SINGLE_RANK_DISPATCH_(bf16)
OPENMOE_SINGLE_RANK_DISPATCH_(f16)
#undef OPENMOE_SINGLE_RANK_DISPATCH_

template <class ExecSpace>
absl::Status SingleRankDispatcher<ExecSpace>::CombineBackward(
    const ExecSpace& space, ConstMatrix<float, ExecSpace> dy, ConstMatrix<float, ExecSpace> expert_out,
    ConstMatrix<float, ExecSpace> probs, ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,
    int64_t capacity, Matrix<float, ExecSpace> d_expert_out, Matrix<float, ExecSpace> dprobs) {
  return kernels::CombineBackward<ExecSpace>(space, dy, expert_out, probs, experts, rank, capacity, d_expert_out, dprobs);
}

template <class ExecSpace>
absl::Status SingleRankDispatcher<ExecSpace>::DispatchBackward(const ExecSpace& space,
                                                               ConstMatrix<float, ExecSpace> d_dispatched,
                                                               ConstMatrix<int32_t, ExecSpace> experts,
                                                               ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity,
                                                               Matrix<float, ExecSpace> dx) {
  return kernels::DispatchBackward<ExecSpace>(space, d_dispatched, experts, rank, capacity, dx);
}

#define OPENMOE_INSTANTIATE_DISPATCHER(Space) template class SingleRankDispatcher<Space>;
OPENMOE_FOR_EACH_EXECUTION_SPACE(OPENMOE_INSTANTIATE_DISPATCHER)

}  // namespace openmoe
