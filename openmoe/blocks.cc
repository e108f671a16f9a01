#include "openmoe/blocks.h"

#include "kernels/elementwise.h"
#include "kernels/instantiate.h"
#include "kernels/linear.h"
#include "kernels/moe.h"
#include "openmoe/core/status_macros.h"

namespace openmoe {

template <class T, class ExecSpace>
absl::Status DenseMlpForward(const ExecSpace& space, ConstMatrix<T, ExecSpace> x, ConstMatrix<T, ExecSpace> gate_up_weight,
                             ConstMatrix<T, ExecSpace> down_weight, Matrix<T, ExecSpace> gate_up, Matrix<T, ExecSpace> act,
                             Matrix<T, ExecSpace> out) {
  OPENMOE_RETURN_IF_ERROR(kernels::Linear<T>(space, x, gate_up_weight, gate_up));
  OPENMOE_RETURN_IF_ERROR(kernels::SwigluCombineFused<T>(space, ConstMatrix<T, ExecSpace>(gate_up), act));
  return kernels::Linear<T>(space, ConstMatrix<T, ExecSpace>(act), down_weight, out);
}

template <class T, class ExecSpace>
absl::StatusOr<int64_t> RouteTokens(const ExecSpace& space, ConstMatrix<T, ExecSpace> x,
                                    ConstMatrix<T, ExecSpace> router_weight, double capacity_factor, int64_t min_capacity,
                                    Matrix<T, ExecSpace> logits, Matrix<float, ExecSpace> probs,
                                    Matrix<int32_t, ExecSpace> experts, Matrix<int32_t, ExecSpace> rank) {
  const int64_t N = x.extent(0), E = router_weight.extent(0);
  OPENMOE_RETURN_IF_ERROR(kernels::Linear<T>(space, x, router_weight, logits));
  OPENMOE_RETURN_IF_ERROR(kernels::RouterTop2<T>(space, logits, probs, experts));
  OPENMOE_RETURN_IF_ERROR(kernels::AssignSlots<ExecSpace>(space, experts, E, rank));
  return kernels::ExpertCapacity(N, E, capacity_factor, min_capacity);
}

template <class T, class ExecSpace>
absl::Status ExpertForward(const ExecSpace& space, ConstMatrix<T, ExecSpace> in, ConstMatrix<T, ExecSpace> wi_gate,
                           ConstMatrix<T, ExecSpace> wi_up, ConstMatrix<T, ExecSpace> wo, Matrix<T, ExecSpace> gate,
                           Matrix<T, ExecSpace> up, Matrix<T, ExecSpace> act, Matrix<T, ExecSpace> out) {
  OPENMOE_RETURN_IF_ERROR(kernels::MatMul<T>(space, in, wi_gate, gate));
  OPENMOE_RETURN_IF_ERROR(kernels::MatMul<T>(space, in, wi_up, up));
  OPENMOE_RETURN_IF_ERROR(kernels::SwigluCombine<T>(space, gate, up, act));
  return kernels::MatMul<T>(space, ConstMatrix<T, ExecSpace>(act), wo, out);
}

#define OPENMOE_INSTANTIATE_BLOCKS(Space, T)                                                                          \
  template absl::Status DenseMlpForward<T, Space>(const Space&, ConstMatrix<T, Space>, ConstMatrix<T, Space>,         \
                                                  ConstMatrix<T, Space>, Matrix<T, Space>, Matrix<T, Space>,          \
                                                  Matrix<T, Space>);                                                  \
  template absl::StatusOr<int64_t> RouteTokens<T, Space>(const Space&, ConstMatrix<T, Space>, ConstMatrix<T, Space>,  \
                                                         double, int64_t, Matrix<T, Space>, Matrix<float, Space>,     \
                                                         Matrix<int32_t, Space>, Matrix<int32_t, Space>);             \
  template absl::Status ExpertForward<T, Space>(const Space&, ConstMatrix<T, Space>, ConstMatrix<T, Space>,           \
                                                ConstMatrix<T, Space>, ConstMatrix<T, Space>, Matrix<T, Space>,       \
                                                Matrix<T, Space>, Matrix<T, Space>, Matrix<T, Space>);
OPENMOE_FOR_EACH_SPACE_AND_KERNEL_DTYPE(OPENMOE_INSTANTIATE_BLOCKS)

}  // namespace openmoe
