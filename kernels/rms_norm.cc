#include "kernels/rms_norm.h"

#include "absl/strings/str_cat.h"
#include "kernels/instantiate.h"
#include "kernels/launch.h"

namespace openmoe::kernels {
namespace {
// Threads per row on GPUs: 8 elements each at H = 2048.
constexpr int kGpuThreads = 256;

// RMSNorm of rows of 16-byte packs (all pointers 16-byte aligned, hidden a whole number of packs);
// kAdd: h += delta first (rounded to T, written back), as AddRmsNorm. At H = 2048 (bf16) each of
// 256 threads loads one pack of h, delta and the weight at once (the weight before the
// reduction, so that the pass after it needs no memory round trip), and keeps its first kHeld
// packs in registers; packs beyond those (rows longer than kHeld x 256 packs, host teams) are
// read back from h. y may be h (each pack is read before it is written, by the same thread).
template <bool kAdd, class T, class ExecSpace>
void PackedNorm(const ExecSpace& space, T* h, const T* delta, const T* weight, T* y, int64_t rows, int64_t hidden,
                float eps) {
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  using P = Pack<T>;
  constexpr int kHeld = 2;
  const int64_t packs = hidden / P::kSize;
  const float inv_hidden = 1.0f / float(hidden);
  if (InlineOnHost<ExecSpace>(rows * hidden)) {  // a decode step's rows: the same sums on the calling thread
    for (int64_t t = 0; t < rows; ++t) {
      T* h_row = h + t * hidden;
      float sum_squares = 0.0f;
      for (int64_t j = 0; j < hidden; ++j) {
        if constexpr (kAdd) h_row[j] = FromFloat<T>(ToFloat(h_row[j]) + ToFloat(delta[t * hidden + j]));
        sum_squares += ToFloat(h_row[j]) * ToFloat(h_row[j]);
      }
      const float inv_rms = 1.0f / Kokkos::Experimental::sqrt(sum_squares * inv_hidden + eps);
      for (int64_t j = 0; j < hidden; ++j)
        y[t * hidden + j] = FromFloat<T>(ToFloat(weight[j]) * ToFloat(FromFloat<T>(ToFloat(h_row[j]) * inv_rms)));
    }
    return;
  }
  DependentParallelForWaitsInside(
      kAdd ? "openmoe::kernels::AddRmsNormPacked" : "openmoe::kernels::RmsNormPacked", RowTeams(space, rows, kGpuThreads),
      KOKKOS_LAMBDA(const Member& team) {
        const int64_t t = team.league_rank();
        const int64_t first = team.team_rank(), step = team.team_size();  // this thread's packs
        P* h_row       = reinterpret_cast<P*>(h + t * hidden);
        const P* d_row = reinterpret_cast<const P*>(delta + (kAdd ? t * hidden : 0));
        const P* w_row = reinterpret_cast<const P*>(weight);
        P* y_row       = reinterpret_cast<P*>(y + t * hidden);
        P held_x[kHeld], held_w[kHeld];
        float sum_squares = 0.0f;
        auto load = [&](const int64_t p, P& sum) {  // h (+ delta), its squares summed
          const P a = h_row[p];
          if constexpr (kAdd) {
            const P d = d_row[p];
            for (int e = 0; e < P::kSize; ++e) sum.v[e] = FromFloat<T>(ToFloat(a.v[e]) + ToFloat(d.v[e]));
            h_row[p] = sum;
          } else {
            sum = a;
          }
          for (int e = 0; e < P::kSize; ++e) sum_squares += ToFloat(sum.v[e]) * ToFloat(sum.v[e]);
        };
        for (int k = 0; k < kHeld; ++k) {
          const int64_t p = first + k * step;
          if (p < packs) held_w[k] = w_row[p];  // the weight, while the kernel before may still run
        }
        WaitForPrecedingKernels();
        for (int k = 0; k < kHeld; ++k) {
          const int64_t p = first + k * step;
          if (p < packs) load(p, held_x[k]);
        }
        for (int64_t p = first + kHeld * step; p < packs; p += step) {
          P sum;
          load(p, sum);
        }
        team.team_reduce(Kokkos::Sum<float>(sum_squares));
        const float inv_rms = 1.0f / Kokkos::Experimental::sqrt(sum_squares * inv_hidden + eps);
        auto store = [&](const int64_t p, const P& a, const P& w) {
          P out;
          for (int e = 0; e < P::kSize; ++e) {
            out.v[e] = FromFloat<T>(ToFloat(w.v[e]) * ToFloat(FromFloat<T>(ToFloat(a.v[e]) * inv_rms)));
          }
          y_row[p] = out;
        };
        for (int k = 0; k < kHeld; ++k) {
          const int64_t p = first + k * step;
          if (p < packs) store(p, held_x[k], held_w[k]);
        }
        // Each pack beyond the held ones is read back by the thread that wrote it.
        for (int64_t p = first + kHeld * step; p < packs; p += step) store(p, h_row[p], w_row[p]);
      });
}
}  // namespace

template <class T, class ExecSpace>
absl::Status RmsNorm(const ExecSpace& space, ConstMatrix<T, ExecSpace> x,
                     ConstVector<T, ExecSpace> weight, Matrix<T, ExecSpace> y, float eps) {
  const int64_t rows   = x.extent(0);  // T
  const int64_t hidden = x.extent(1);  // H
  if (weight.extent(0) != size_t(hidden)) {
    return absl::InvalidArgumentError(absl::StrCat("RmsNorm: weight '", weight.label(),
                                                   "' has shape [", weight.extent(0),
                                                   "], expected [", hidden, "] (x's last dim)"));
  }
  if (y.extent(0) != size_t(rows) || y.extent(1) != size_t(hidden)) {
    return absl::InvalidArgumentError(absl::StrCat("RmsNorm: output '", y.label(), "' has shape [",
                                                   y.extent(0), ", ", y.extent(1), "], expected [",
                                                   rows, ", ", hidden, "]"));
  }
  if (!(eps > 0.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("RmsNorm: eps must be > 0, got ", eps));
  }
  if (rows == 0 || hidden == 0) return absl::OkStatus();
  if (IsPackAligned(x.data(), hidden) && IsPackAligned(y.data(), hidden) && IsPackAligned(weight.data(), hidden)) {
    // Without kAdd, PackedNorm never writes its first argument: x stays read-only.
    PackedNorm<false, T, ExecSpace>(space, const_cast<T*>(x.data()), nullptr, weight.data(), y.data(), rows, hidden,
                                    eps);
    return absl::OkStatus();
  }

  using Policy = Kokkos::TeamPolicy<ExecSpace>;
  using Member = typename Policy::member_type;
  const float inv_hidden = 1.0f / float(hidden);
  DependentParallelFor(
      "openmoe::kernels::RmsNorm", RowTeams(space, rows, kGpuThreads),
      KOKKOS_LAMBDA(const Member& team) {
        const int64_t t   = team.league_rank();
        float sum_squares = 0.0f;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, hidden),
            [&](const int64_t h, float& partial) {
              const float v = ToFloat(x(t, h));
              partial += v * v;
            },
            sum_squares);
        const float inv_rms = 1.0f / Kokkos::Experimental::sqrt(sum_squares * inv_hidden + eps);
        // The reduction above is a team collective, so x(t, :) has been read; each h below is
        // read and written by the same thread, which keeps y == x (in place) correct.
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, hidden),
                             [&](const int64_t h) {
                               const float normed = ToFloat(FromFloat<T>(ToFloat(x(t, h)) * inv_rms));
                               y(t, h) = FromFloat<T>(ToFloat(weight(h)) * normed);
                             });
      });
  return absl::OkStatus();
}

template <class T, class ExecSpace>
absl::Status AddRmsNorm(const ExecSpace& space, Matrix<T, ExecSpace> h, ConstMatrix<T, ExecSpace> delta,
                        ConstVector<T, ExecSpace> weight, Matrix<T, ExecSpace> y, float eps) {
  const int64_t rows = h.extent(0), hidden = h.extent(1);
  if (delta.extent(0) != size_t(rows) || delta.extent(1) != size_t(hidden)) {
    return absl::InvalidArgumentError(absl::StrCat("AddRmsNorm: delta '", delta.label(), "' differs in shape from '",
                                                   h.label(), "'"));
  }
  if (weight.extent(0) != size_t(hidden) || y.extent(0) != size_t(rows) || y.extent(1) != size_t(hidden)) {
    return absl::InvalidArgumentError(absl::StrCat("AddRmsNorm: weight '", weight.label(), "' or output '",
                                                   y.label(), "' do not fit [", rows, ", ", hidden, "]"));
  }
  if (!(eps > 0.0f)) return absl::InvalidArgumentError(absl::StrCat("AddRmsNorm: eps must be > 0, got ", eps));
  if (rows == 0 || hidden == 0) return absl::OkStatus();
  using Policy = Kokkos::TeamPolicy<ExecSpace>;
  using Member = typename Policy::member_type;
  const float inv_hidden = 1.0f / float(hidden);
  if (IsPackAligned(h.data(), hidden) && IsPackAligned(delta.data(), hidden) && IsPackAligned(y.data(), hidden) &&
      IsPackAligned(weight.data(), hidden)) {
    PackedNorm<true, T, ExecSpace>(space, h.data(), delta.data(), weight.data(), y.data(), rows, hidden, eps);
    return absl::OkStatus();
  }
  DependentParallelFor(
      "openmoe::kernels::AddRmsNorm", RowTeams(space, rows, kGpuThreads), KOKKOS_LAMBDA(const Member& team) {
        const int64_t t   = team.league_rank();
        float sum_squares = 0.0f;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, hidden),
            [&](const int64_t j, float& partial) {
              const T sum   = FromFloat<T>(ToFloat(h(t, j)) + ToFloat(delta(t, j)));
              h(t, j)       = sum;
              const float v = ToFloat(sum);
              partial += v * v;
            },
            sum_squares);
        const float inv_rms = 1.0f / Kokkos::Experimental::sqrt(sum_squares * inv_hidden + eps);
        // Each j is written and read back by the same thread (same TeamThreadRange split).
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, hidden), [&](const int64_t j) {
          const float normed = ToFloat(FromFloat<T>(ToFloat(h(t, j)) * inv_rms));
          y(t, j)            = FromFloat<T>(ToFloat(weight(j)) * normed);
        });
      });
  return absl::OkStatus();
}

#define OPENMOE_INSTANTIATE_RMS_NORM(Space, T)                                                          \
  template absl::Status RmsNorm<T, Space>(const Space&, ConstMatrix<T, Space>, ConstVector<T, Space>,    \
                                          Matrix<T, Space>, float);                                     \
  template absl::Status AddRmsNorm<T, Space>(const Space&, Matrix<T, Space>, ConstMatrix<T, Space>,      \
                                             ConstVector<T, Space>, Matrix<T, Space>, float);
OPENMOE_FOR_EACH_SPACE_AND_KERNEL_DTYPE(OPENMOE_INSTANTIATE_RMS_NORM)

}  // namespace openmoe::kernels
