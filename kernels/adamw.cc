#include "kernels/adamw.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/instantiate.h"

namespace openmoe::kernels {

namespace {

// One AdamW update of every element; `store(i, p)` receives each updated weight.
template <class ExecSpace, class Store>
absl::Status Update(const ExecSpace& space, Vector<float, ExecSpace> param, ConstVector<float, ExecSpace> grad,
                    Vector<float, ExecSpace> m, Vector<float, ExecSpace> v, int64_t step, const AdamWOptions& o,
                    int64_t working_size, Store store) {
  const size_t n = param.extent(0);
  if (grad.extent(0) != n || m.extent(0) != n || v.extent(0) != n || (working_size >= 0 && size_t(working_size) != n)) {
    return absl::InvalidArgumentError(absl::StrCat("AdamWStep: '", param.label(), "' has ", n,
                                                   " elements but its gradient, moments or working copy differ"));
  }
  if (step < 1) return absl::InvalidArgumentError("AdamWStep: step counts from 1");
  const float lr = float(o.lr), beta1 = float(o.beta1), beta2 = float(o.beta2), eps = float(o.eps);
  // 1 - beta in double, as PyTorch passes it (a Python float) to the float32 op: in float32,
  // 1 - 0.999f is 0.00099998713, 1.3e-5 relative off 0.001.
  const float one_minus_beta1 = float(1.0 - o.beta1), one_minus_beta2 = float(1.0 - o.beta2);
  const float decay = float(1.0 - o.lr * o.weight_decay);
  const float correction1 = float(1.0 - std::pow(o.beta1, double(step)));
  const float correction2 = float(1.0 - std::pow(o.beta2, double(step)));
  Kokkos::parallel_for(
      "openmoe::kernels::AdamWStep", Kokkos::RangePolicy<ExecSpace>(space, 0, n), KOKKOS_LAMBDA(const size_t i) {
        const float g = grad(i);
        const float m_i = beta1 * m(i) + one_minus_beta1 * g;
        const float v_i = beta2 * v(i) + one_minus_beta2 * g * g;
        m(i) = m_i, v(i) = v_i;
        const float denom = Kokkos::Experimental::sqrt(v_i / correction2) + eps;
        const float p = param(i) * decay - lr * (m_i / correction1) / denom;
        param(i) = p;
        store(i, p);
      });
  return absl::OkStatus();
}

struct NoStore {
  KOKKOS_INLINE_FUNCTION void operator()(size_t, float) const {}
};

template <class T, class ExecSpace>
struct StoreRounded {
  Vector<T, ExecSpace> working;
  KOKKOS_INLINE_FUNCTION void operator()(size_t i, float p) const { working(i) = FromFloat<T>(p); }
};

}  // namespace

template <class ExecSpace>
absl::Status AdamWStep(const ExecSpace& space, Vector<float, ExecSpace> param, ConstVector<float, ExecSpace> grad,
                       Vector<float, ExecSpace> m, Vector<float, ExecSpace> v, int64_t step,
                       const AdamWOptions& o) {
  return Update(space, param, grad, m, v, step, o, -1, NoStore{});
}

template <class T, class ExecSpace>
absl::Status AdamWStepAndCast(const ExecSpace& space, Vector<float, ExecSpace> param, ConstVector<float, ExecSpace> grad,
                              Vector<float, ExecSpace> m, Vector<float, ExecSpace> v, int64_t step,
                              const AdamWOptions& o, Vector<T, ExecSpace> working) {
  return Update(space, param, grad, m, v, step, o, int64_t(working.extent(0)), StoreRounded<T, ExecSpace>{working});
}

#define OPENMOE_INSTANTIATE_ADAMW(Space)                                                            \
  template absl::Status AdamWStep<Space>(const Space&, Vector<float, Space>, ConstVector<float, Space>, \
                                         Vector<float, Space>, Vector<float, Space>, int64_t,          \
                                         const AdamWOptions&);
OPENMOE_FOR_EACH_EXECUTION_SPACE(OPENMOE_INSTANTIATE_ADAMW)

#define OPENMOE_INSTANTIATE_ADAMW_AND_CAST(Space, T)                                                       \
  template absl::Status AdamWStepAndCast<T, Space>(const Space&, Vector<float, Space>, ConstVector<float, Space>, \
                                                   Vector<float, Space>, Vector<float, Space>, int64_t,          \
                                                   const AdamWOptions&, Vector<T, Space>);
OPENMOE_FOR_EACH_SPACE_AND_KERNEL_DTYPE(OPENMOE_INSTANTIATE_ADAMW_AND_CAST)

}  // namespace openmoe::kernels
