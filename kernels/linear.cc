#include "kernels/linear.h"

#include <KokkosBlas3_gemm.hpp>

#include "absl/strings/str_cat.h"
#include "kernels/instantiate.h"

namespace openmoe::kernels {
namespace {

template <class ExecSpace>
using ColMajor = Kokkos::View<float**, Kokkos::LayoutLeft, ExecSpace,
                              Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
template <class ExecSpace>
using ConstColMajor = Kokkos::View<const float**, Kokkos::LayoutLeft, ExecSpace,
                                   Kokkos::MemoryTraits<Kokkos::Unmanaged>>;

std::string Shape(size_t a, size_t b) { return absl::StrCat("[", a, ", ", b, "]"); }

template <class View>
absl::Status CheckContiguous(const char* op, const View& v) {
  if (!v.span_is_contiguous() || (v.extent(0) > 1 && v.stride(0) != v.extent(1))) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": '", v.label(), "' must be a contiguous row-major matrix"));
  }
  return absl::OkStatus();
}

// y[M, N] (+)= x[M, K] @ op(w), op(w) = w^T (w is [N, K]) or w (w is [K, N]).
template <class ExecSpace>
absl::Status Gemm(const char* op, ConstMatrix<float, ExecSpace> x, ConstMatrix<float, ExecSpace> w,
                  Matrix<float, ExecSpace> y, bool w_is_out_in, bool accumulate) {
  const size_t M = x.extent(0), K = x.extent(1);
  const size_t N = w_is_out_in ? w.extent(0) : w.extent(1);
  const size_t w_k = w_is_out_in ? w.extent(1) : w.extent(0);
  if (w_k != K) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": weight '", w.label(), "' has shape ",
                                                   Shape(w.extent(0), w.extent(1)),
                                                   ", incompatible with input '", x.label(),
                                                   "' of shape ", Shape(M, K)));
  }
  if (y.extent(0) != M || y.extent(1) != N) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": output '", y.label(), "' has shape ",
                                                   Shape(y.extent(0), y.extent(1)), ", expected ",
                                                   Shape(M, N)));
  }
  for (absl::Status s : {CheckContiguous(op, x), CheckContiguous(op, w), CheckContiguous(op, y)}) {
    if (!s.ok()) return s;
  }
  if (M == 0 || N == 0) return absl::OkStatus();
  if (K == 0) {
    if (!accumulate) Kokkos::deep_copy(y, 0.0f);
    return absl::OkStatus();
  }
  // Row-major [r, c] memory is column-major [c, r]: y^T[N, M] = op(w)^T[N, K] x^T[K, M].
  ConstColMajor<ExecSpace> x_t(x.data(), K, M);
  ColMajor<ExecSpace> y_t(y.data(), N, M);
  if (w_is_out_in) {
    ConstColMajor<ExecSpace> w_t(w.data(), K, N);  // w^T as stored; transposed in the call
    KokkosBlas::gemm("T", "N", 1.0f, w_t, x_t, accumulate ? 1.0f : 0.0f, y_t);
  } else {
    ConstColMajor<ExecSpace> w_t(w.data(), N, K);
    KokkosBlas::gemm("N", "N", 1.0f, w_t, x_t, accumulate ? 1.0f : 0.0f, y_t);
  }
  return absl::OkStatus();
}

}  // namespace

template <class ExecSpace>
absl::Status Linear(const ExecSpace&, ConstMatrix<float, ExecSpace> x,
                    ConstMatrix<float, ExecSpace> w, Matrix<float, ExecSpace> y, bool accumulate) {
  return Gemm<ExecSpace>("Linear", x, w, y, /*w_is_out_in=*/true, accumulate);
}

template <class ExecSpace>
absl::Status MatMul(const ExecSpace&, ConstMatrix<float, ExecSpace> x,
                    ConstMatrix<float, ExecSpace> w, Matrix<float, ExecSpace> y, bool accumulate) {
  return Gemm<ExecSpace>("MatMul", x, w, y, /*w_is_out_in=*/false, accumulate);
}

#define OPENMOE_INSTANTIATE_LINEAR(Space)                                                    \
  template absl::Status Linear<Space>(const Space&, ConstMatrix<float, Space>,               \
                                      ConstMatrix<float, Space>, Matrix<float, Space>, bool); \
  template absl::Status MatMul<Space>(const Space&, ConstMatrix<float, Space>,               \
                                      ConstMatrix<float, Space>, Matrix<float, Space>, bool);
OPENMOE_FOR_EACH_EXECUTION_SPACE(OPENMOE_INSTANTIATE_LINEAR)

}  // namespace openmoe::kernels
