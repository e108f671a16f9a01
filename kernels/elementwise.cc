#include "kernels/elementwise.h"

#include "absl/strings/str_cat.h"
#include "kernels/instantiate.h"
#include "kernels/launch.h"
#include "kernels/layer_math.h"

namespace openmoe::kernels {

template <class T, class ExecSpace>
absl::Status Embedding(const ExecSpace& space, ConstMatrix<T, ExecSpace> table,
                       ConstVector<int64_t, ExecSpace> ids, Matrix<T, ExecSpace> out) {
  const int64_t N = ids.extent(0), H = table.extent(1);
  if (out.extent(0) != size_t(N) || out.extent(1) != size_t(H)) {
    return absl::InvalidArgumentError(absl::StrCat("Embedding: output '", out.label(),
                                                   "' must be [", N, ", ", H, "]"));
  }
  DependentParallelFor(
      "openmoe::kernels::Embedding",
      FlatRange(space, N * H), KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t t = idx / H, h = idx % H;
        out(t, h) = table(ids(t), h);
      });
  return absl::OkStatus();
}

template <class T, class ExecSpace>
absl::Status AddInPlace(const ExecSpace& space, Matrix<T, ExecSpace> y, ConstMatrix<T, ExecSpace> x) {
  if (y.extent(0) != x.extent(0) || y.extent(1) != x.extent(1)) {
    return absl::InvalidArgumentError(absl::StrCat("AddInPlace: '", x.label(), "' and '",
                                                   y.label(), "' differ in shape"));
  }
  const int64_t N = y.extent(0), H = y.extent(1);
  DependentParallelFor(
      "openmoe::kernels::AddInPlace",
      FlatRange(space, N * H), KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t t = idx / H, h = idx % H;
        y(t, h) = FromFloat<T>(ToFloat(y(t, h)) + ToFloat(x(t, h)));
      });
  return absl::OkStatus();
}

template <class T, class ExecSpace>
absl::Status SwigluCombine(const ExecSpace& space, ConstMatrix<T, ExecSpace> gate,
                           ConstMatrix<T, ExecSpace> up, Matrix<T, ExecSpace> out) {
  const int64_t N = up.extent(0), I = up.extent(1);
  if (gate.extent(0) != size_t(N) || gate.extent(1) != size_t(2 * I) || out.extent(0) != size_t(N) ||
      out.extent(1) != size_t(I)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SwigluCombine: expected gate [", N, ", ", 2 * I, "], up and out [", N, ", ", I, "]; got gate [",
        gate.extent(0), ", ", gate.extent(1), "], out [", out.extent(0), ", ", out.extent(1), "]"));
  }
  DependentParallelFor(
      "openmoe::kernels::SwigluCombine",
      FlatRange(space, N * I), KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t t = idx / I, i = idx % I;
        out(t, i) = FromFloat<T>(Swiglu(ToFloat(gate(t, i)), ToFloat(gate(t, I + i)), ToFloat(up(t, i))));
      });
  return absl::OkStatus();
}

template <class T, class ExecSpace>
absl::Status SwigluCombineFused(const ExecSpace& space, ConstMatrix<T, ExecSpace> gate_up, Matrix<T, ExecSpace> out) {
  const int64_t N = out.extent(0), I = out.extent(1);
  if (gate_up.extent(0) != size_t(N) || gate_up.extent(1) != size_t(3 * I)) {
    return absl::InvalidArgumentError(absl::StrCat("SwigluCombineFused: expected gate_up [", N, ", ", 3 * I,
                                                   "], got [", gate_up.extent(0), ", ", gate_up.extent(1), "]"));
  }
  DependentParallelFor(
      "openmoe::kernels::SwigluCombineFused",
      FlatRange(space, N * I), KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t t = idx / I, i = idx % I;
        out(t, i) = FromFloat<T>(Swiglu(ToFloat(gate_up(t, i)), ToFloat(gate_up(t, I + i)),
                                        ToFloat(gate_up(t, 2 * I + i))));
      });
  return absl::OkStatus();
}

// Convert's unit of vector access: 8 consecutive elements (16 bytes of bf16 / f16, 32 of float).
constexpr int kConvertGroup = 8;
template <class T>
struct alignas(kConvertGroup * sizeof(T)) ConvertGroup {
  T v[kConvertGroup];
};
template <class T>
bool IsGroupAligned(const T* data) {
  return reinterpret_cast<uintptr_t>(data) % (kConvertGroup * sizeof(T)) == 0;
}

template <class TIn, class TOut, class ExecSpace>
absl::Status Convert(const ExecSpace& space, ConstMatrix<TIn, ExecSpace> x, Matrix<TOut, ExecSpace> y) {
  const int64_t N = x.extent(0), C = x.extent(1);
  if (y.extent(0) != size_t(N) || y.extent(1) != size_t(C)) {
    return absl::InvalidArgumentError(absl::StrCat("Convert: '", x.label(), "' and '", y.label(), "' differ in shape"));
  }
  if (x.span_is_contiguous() && y.span_is_contiguous()) {  // flat: no index division per element
    const TIn* in = x.data();
    TOut* out     = y.data();
    const int64_t total = N * C, groups = total / kConvertGroup;
    if (IsGroupAligned(in) && IsGroupAligned(out)) {
      // Groups of 8 elements as whole vector loads and stores (one 16-byte access per 8 16-bit
      // elements, two per 8 floats); index `groups` converts the tail of fewer than 8.
      DependentParallelFor(
          "openmoe::kernels::Convert", FlatRange(space, groups + (total % kConvertGroup != 0 ? 1 : 0)),
          KOKKOS_LAMBDA(const int64_t g) {
            if (g < groups) {
              const ConvertGroup<TIn> a = reinterpret_cast<const ConvertGroup<TIn>*>(in)[g];
              ConvertGroup<TOut> b;
              for (int e = 0; e < kConvertGroup; ++e) b.v[e] = FromFloat<TOut>(ToFloat(a.v[e]));
              reinterpret_cast<ConvertGroup<TOut>*>(out)[g] = b;
            } else {
              for (int64_t i = groups * kConvertGroup; i < total; ++i) out[i] = FromFloat<TOut>(ToFloat(in[i]));
            }
          });
      return absl::OkStatus();
    }
    DependentParallelFor(
        "openmoe::kernels::Convert", FlatRange(space, total),
        KOKKOS_LAMBDA(const int64_t i) { out[i] = FromFloat<TOut>(ToFloat(in[i])); });
    return absl::OkStatus();
  }
  DependentParallelFor(
      "openmoe::kernels::Convert", FlatRange(space, N * C), KOKKOS_LAMBDA(const int64_t idx) {
        y(idx / C, idx % C) = FromFloat<TOut>(ToFloat(x(idx / C, idx % C)));
      });
  return absl::OkStatus();
}

template <class ExecSpace>
absl::Status Scale(const ExecSpace& space, Vector<float, ExecSpace> x, float factor) {
  DependentParallelFor("openmoe::kernels::Scale", FlatRange(space, x.extent(0)),
                       KOKKOS_LAMBDA(const int64_t i) { x(i) *= factor; });
  return absl::OkStatus();
}

#define OPENMOE_INSTANTIATE_SCALE(Space) \
  template absl::Status Scale<Space>(const Space&, Vector<float, Space>, float);
OPENMOE_FOR_EACH_EXECUTION_SPACE(OPENMOE_INSTANTIATE_SCALE)

#define OPENMOE_INSTANTIATE_CONVERT(Space, T)                                                                  \
  template absl::Status Convert<float, T, Space>(const Space&, ConstMatrix<float, Space>, Matrix<T, Space>);     \
  template absl::Status Convert<T, float, Space>(const Space&, ConstMatrix<T, Space>, Matrix<float, Space>);
#define OPENMOE_INSTANTIATE_CONVERT_16(Space) \
  OPENMOE_INSTANTIATE_CONVERT(Space, ::openmoe::bf16) OPENMOE_INSTANTIATE_CONVERT(Space, ::openmoe::f16)
OPENMOE_FOR_EACH_EXECUTION_SPACE(OPENMOE_INSTANTIATE_CONVERT_16)

#define OPENMOE_INSTANTIATE_ELEMENTWISE(Space, T)                                           \
  template absl::Status Embedding<T, Space>(const Space&, ConstMatrix<T, Space>,            \
                                            ConstVector<int64_t, Space>, Matrix<T, Space>); \
  template absl::Status AddInPlace<T, Space>(const Space&, Matrix<T, Space>, ConstMatrix<T, Space>); \
  template absl::Status SwigluCombine<T, Space>(const Space&, ConstMatrix<T, Space>,        \
                                                ConstMatrix<T, Space>, Matrix<T, Space>);     \
  template absl::Status SwigluCombineFused<T, Space>(const Space&, ConstMatrix<T, Space>, Matrix<T, Space>);
OPENMOE_FOR_EACH_SPACE_AND_KERNEL_DTYPE(OPENMOE_INSTANTIATE_ELEMENTWISE)

}  // namespace openmoe::kernels
