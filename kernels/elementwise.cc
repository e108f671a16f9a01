#include "kernels/elementwise.h"

#include "absl/strings/str_cat.h"
#include "kernels/instantiate.h"

namespace openmoe::kernels {

template <class ExecSpace>
absl::Status Embedding(const ExecSpace& space, ConstMatrix<float, ExecSpace> table,
                       ConstVector<int64_t, ExecSpace> ids, Matrix<float, ExecSpace> out) {
  const int64_t T = ids.extent(0), H = table.extent(1);
  if (out.extent(0) != size_t(T) || out.extent(1) != size_t(H)) {
    return absl::InvalidArgumentError(absl::StrCat("Embedding: output '", out.label(),
                                                   "' must be [", T, ", ", H, "]"));
  }
  Kokkos::parallel_for(
      "openmoe::kernels::Embedding",
      Kokkos::MDRangePolicy<ExecSpace, Kokkos::Rank<2>>(space, {0, 0}, {T, H}),
      KOKKOS_LAMBDA(const int64_t t, const int64_t h) { out(t, h) = table(ids(t), h); });
  return absl::OkStatus();
}

template <class ExecSpace>
absl::Status AddInPlace(const ExecSpace& space, Matrix<float, ExecSpace> y,
                        ConstMatrix<float, ExecSpace> x) {
  if (y.extent(0) != x.extent(0) || y.extent(1) != x.extent(1)) {
    return absl::InvalidArgumentError(absl::StrCat("AddInPlace: '", x.label(), "' and '",
                                                   y.label(), "' differ in shape"));
  }
  const int64_t T = y.extent(0), H = y.extent(1);
  Kokkos::parallel_for(
      "openmoe::kernels::AddInPlace",
      Kokkos::MDRangePolicy<ExecSpace, Kokkos::Rank<2>>(space, {0, 0}, {T, H}),
      KOKKOS_LAMBDA(const int64_t t, const int64_t h) { y(t, h) += x(t, h); });
  return absl::OkStatus();
}

template <class ExecSpace>
absl::Status SwigluCombine(const ExecSpace& space, ConstMatrix<float, ExecSpace> gate,
                           ConstMatrix<float, ExecSpace> up, Matrix<float, ExecSpace> out) {
  const int64_t T = up.extent(0), I = up.extent(1);
  if (gate.extent(0) != size_t(T) || gate.extent(1) != size_t(2 * I) || out.extent(0) != size_t(T) ||
      out.extent(1) != size_t(I)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SwigluCombine: expected gate [", T, ", ", 2 * I, "], up and out [", T, ", ", I, "]; got gate [",
        gate.extent(0), ", ", gate.extent(1), "], out [", out.extent(0), ", ", out.extent(1), "]"));
  }
  Kokkos::parallel_for(
      "openmoe::kernels::SwigluCombine",
      Kokkos::MDRangePolicy<ExecSpace, Kokkos::Rank<2>>(space, {0, 0}, {T, I}),
      KOKKOS_LAMBDA(const int64_t t, const int64_t i) {
        const float linear = gate(t, i), gated = gate(t, I + i);
        const float silu   = gated / (1.0f + Kokkos::Experimental::exp(-gated));
        out(t, i)          = linear * silu * up(t, i);
      });
  return absl::OkStatus();
}

#define OPENMOE_INSTANTIATE_ELEMENTWISE(Space)                                                 \
  template absl::Status Embedding<Space>(const Space&, ConstMatrix<float, Space>,              \
                                         ConstVector<int64_t, Space>, Matrix<float, Space>);   \
  template absl::Status AddInPlace<Space>(const Space&, Matrix<float, Space>,                  \
                                          ConstMatrix<float, Space>);                          \
  template absl::Status SwigluCombine<Space>(const Space&, ConstMatrix<float, Space>,          \
                                             ConstMatrix<float, Space>, Matrix<float, Space>);
OPENMOE_FOR_EACH_EXECUTION_SPACE(OPENMOE_INSTANTIATE_ELEMENTWISE)

}  // namespace openmoe::kernels
