#include "kernels/linear.h"

#include <algorithm>
#include <type_traits>

#include <openblas-openmp/cblas.h>

#include "absl/strings/str_cat.h"
#include "kernels/instantiate.h"
#include "openmoe/core/execution_spaces.h"
#include "kernels/launch.h"

#include "kernels/batched_gemm.h"
#include "kernels/buffer_pool.h"
#include "kernels/host_gemv.h"

namespace openmoe::kernels {
namespace {

std::string Shape(size_t a, size_t b) { return absl::StrCat("[", a, ", ", b, "]"); }

template <class View>
absl::Status CheckContiguous(const char* op, const View& v) {
  if (!v.span_is_contiguous() || (v.extent(0) > 1 && v.stride(0) != v.extent(1))) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": '", v.label(), "' must be a contiguous row-major matrix"));
  }
  return absl::OkStatus();
}

// y[m, n] (+)= x[m, :] . w[n, :] for a few rows m (a decode step) and few columns n (o_proj,
// down_proj, the router: N < 8192), where cuBLAS picks split-K kernels that read the weights at
// 30-60% of HBM speed. CUDA only, float32 accumulation and one rounding of the result, as
// cublasGemmEx with CUBLAS_COMPUTE_32F. Wide products stay with cuBLAS, which is faster there
// (decode_kernels_benchmark).
constexpr int64_t kSmallBatchRows = 4;
constexpr int64_t kSmallBatchMaxColumns = 8192;

// Warp per column: one warp per column n streams w's row as 16-byte packs, each lane with
// kInFlight loads issued before it uses them, in rounds, and the lanes' sums meet by shuffles.
constexpr int kTeamWarps = 4;  // columns per team
constexpr int kInFlight  = 8;  // w packs per lane in flight (16: 183 registers, two blocks per SM;
                               // 8 with predicated partial rounds measured 50% slower on the H200)

template <class T, class ExecSpace>
void WarpPerColumnLinear(const ExecSpace& space, ConstMatrix<T, ExecSpace> x, ConstMatrix<T, ExecSpace> w,
                         Matrix<T, ExecSpace> y, bool accumulate) {
  using Policy  = Kokkos::TeamPolicy<ExecSpace>;
  using Member  = typename Policy::member_type;
  using P       = Pack<T>;
  const int64_t M = x.extent(0), K = x.extent(1), N = w.extent(0), packs = K / P::kSize;
  const T* x_data = x.data();  // [M, K]
  const T* w_data = w.data();  // [N, K]
  DependentParallelForWaitsInside(
      "openmoe::kernels::WarpPerColumnLinear", Policy(space, (N + kTeamWarps - 1) / kTeamWarps, kTeamWarps, 32),
      KOKKOS_LAMBDA(const Member& team) {
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, kTeamWarps), [&](const int warp) {
          const int64_t n = team.league_rank() * kTeamWarps + warp;
          if (n >= N) return;
          const P* w_row = reinterpret_cast<const P*>(w_data + n * K);
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, 32), [&](const int lane) {
            float acc[kSmallBatchRows] = {0.0f, 0.0f, 0.0f, 0.0f};
            bool waited = false;  // the first round of w is loaded while the kernel before may still run
            int64_t p = lane;
            for (; p + (kInFlight - 1) * 32 < packs; p += kInFlight * 32) {
              P wp[kInFlight];
              for (int i = 0; i < kInFlight; ++i) wp[i] = w_row[p + i * 32];
              if (!waited) WaitForPrecedingKernels(), waited = true;
              for (int64_t m = 0; m < kSmallBatchRows; ++m) {
                if (m >= M) continue;  // fixed trip count: acc stays in registers
                const P* x_row = reinterpret_cast<const P*>(x_data + m * K);
                for (int i = 0; i < kInFlight; ++i) {
                  const P xp = x_row[p + i * 32];
                  for (int e = 0; e < P::kSize; ++e) acc[m] += ToFloat(xp.v[e]) * ToFloat(wp[i].v[e]);
                }
              }
            }
            if (!waited) WaitForPrecedingKernels();
            for (; p < packs; p += 32) {
              const P wp = w_row[p];
              for (int64_t m = 0; m < kSmallBatchRows; ++m) {
                if (m >= M) continue;
                const P xp = reinterpret_cast<const P*>(x_data + m * K)[p];
                for (int e = 0; e < P::kSize; ++e) acc[m] += ToFloat(xp.v[e]) * ToFloat(wp.v[e]);
              }
            }
            for (int64_t m = 0; m < kSmallBatchRows; ++m) {
              if (m >= M) continue;
              float sum = acc[m];
              for (int mask = 16; mask >= 1; mask /= 2) sum += LaneXor(sum, mask);
              if (lane == 0) y(m, n) = FromFloat<T>(accumulate ? ToFloat(y(m, n)) + sum : sum);
            }
          });
        });
      });
}

// Split-K: one team per column n, `warps` warps that each own consecutive slices of 32 x kLoads
// packs of w's row, so that every lane issues all kLoads 16-byte loads of a slice before it uses
// any (a whole row in flight at once, for K up to warps x 32 x kLoads x 8 bf16). Lanes meet by
// shuffles, warps through kSmallBatchRows floats each of shared memory. kExact: the slices cover
// the row exactly (no bounds checks on the loads). Faster than warp-per-column where its rows end
// in a partial round (o_proj, K = 3072: 8.2 vs 9.1 us on the H200), slower where they do not
// (down_proj, K = 8192: 15.9 vs 14.3 us; 8 loads per lane: 18.0 us), decode_kernels_benchmark.
constexpr int kLoads = 4;

template <class T, bool kExact, class ExecSpace>
void SplitKLinear(const ExecSpace& space, ConstMatrix<T, ExecSpace> x, ConstMatrix<T, ExecSpace> w,
                  Matrix<T, ExecSpace> y, bool accumulate, int warps, int rounds) {
  using Policy  = Kokkos::TeamPolicy<ExecSpace>;
  using Member  = typename Policy::member_type;
  using P       = Pack<T>;
  const int64_t M = x.extent(0), K = x.extent(1), N = w.extent(0), packs = K / P::kSize;
  const T* x_data = x.data();  // [M, K]
  const T* w_data = w.data();  // [N, K]
  const size_t partial_bytes = size_t(warps) * kSmallBatchRows * sizeof(float);
  Policy policy(space, N, warps, 32);
  policy.set_scratch_size(0, Kokkos::PerTeam(partial_bytes));
  DependentParallelForWaitsInside(
      "openmoe::kernels::SplitKLinear", policy, KOKKOS_LAMBDA(const Member& team) {
        const int64_t n = team.league_rank();
        const int warp = team.team_rank();
        float* partial = static_cast<float*>(team.team_shmem().get_shmem(partial_bytes));  // [warps, rows]
        const P* w_row = reinterpret_cast<const P*>(w_data + n * K);
        Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, 32), [&](const int lane) {
          float acc[kSmallBatchRows] = {0.0f, 0.0f, 0.0f, 0.0f};
          for (int r = 0; r < rounds; ++r) {
            const int64_t first = (int64_t(r) * warps + warp) * (32 * kLoads) + lane;  // this lane's first pack
            P wp[kLoads];
            for (int i = 0; i < kLoads; ++i)
              if (kExact || first + i * 32 < packs) wp[i] = w_row[first + i * 32];
            if (r == 0) WaitForPrecedingKernels();  // round 0 of w loaded while the kernel before may still run
            for (int64_t m = 0; m < kSmallBatchRows; ++m) {
              if (m >= M) continue;  // fixed trip count: acc stays in registers
              const P* x_row = reinterpret_cast<const P*>(x_data + m * K);
              for (int i = 0; i < kLoads; ++i) {
                if (!kExact && first + i * 32 >= packs) continue;
                const P xp = x_row[first + i * 32];
                for (int e = 0; e < P::kSize; ++e) acc[m] += ToFloat(xp.v[e]) * ToFloat(wp[i].v[e]);
              }
            }
          }
          if (rounds == 0) WaitForPrecedingKernels();  // (K = 0) before y is written
          for (int64_t m = 0; m < kSmallBatchRows; ++m) {
            float sum = acc[m];
            for (int mask = 16; mask >= 1; mask /= 2) sum += LaneXor(sum, mask);
            if (lane == 0) partial[warp * kSmallBatchRows + m] = sum;
          }
        });
        team.team_barrier();
        if (warp == 0) {
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, kSmallBatchRows), [&](const int m) {
            if (m >= M) return;
            float sum = 0.0f;
            for (int v = 0; v < warps; ++v) sum += partial[v * kSmallBatchRows + m];
            y(m, n) = FromFloat<T>(accumulate ? ToFloat(y(m, n)) + sum : sum);
          });
        }
      });
}

// Splits a row of `packs` 16-byte packs into slices of 32 x kLoads packs over at most 8 warps per
// team, as many as divide the slices evenly (4 or more, else 8 with bounds checks), more rounds
// per warp beyond.
template <class T, class ExecSpace>
void SplitKLinearFor(const ExecSpace& space, ConstMatrix<T, ExecSpace> x, ConstMatrix<T, ExecSpace> w,
                     Matrix<T, ExecSpace> y, bool accumulate) {
  constexpr int64_t kMaxWarps = 8;
  const int64_t packs = x.extent(1) / Pack<T>::kSize;
  const int64_t slices = (packs + 32 * kLoads - 1) / (32 * kLoads);
  int64_t warps = std::min(slices, kMaxWarps);
  while (slices % warps != 0 && warps > 4) --warps;
  if (slices % warps != 0) warps = std::min(slices, kMaxWarps);
  const int64_t rounds = (slices + warps - 1) / warps;
  const bool exact = rounds * warps * 32 * kLoads == packs;
  exact ? SplitKLinear<T, true, ExecSpace>(space, x, w, y, accumulate, int(warps), int(rounds))
        : SplitKLinear<T, false, ExecSpace>(space, x, w, y, accumulate, int(warps), int(rounds));
}

// Host products of few rows (batch-1 to batch-4 decode, the LM head's last rows, experts with
// few tokens), float32 and 16-bit alike: every weight is read once by the streaming loops of
// host_gemv.h (widened in registers, float32 sums), and each result is rounded once; 16-bit x is
// widened once per call into ctx.Scratch. Linear (w [N, K]): tasks of kHostColumnsPerTask
// columns, each a contiguous slab of w rows, split over the threads. MatMul (w [K, N]): column
// tiles of at most kHostAxpyColumns (as many tiles as a multiple of the threads), each streaming
// its segment of every w row. Products of fewer than kHostInlineWeights weights (the router) run
// on the calling thread: a parallel region costs more than they do. Host kernels are
// synchronous: x and w are ready.
constexpr int64_t kHostColumnsPerTask = 64;        // Linear: w rows per task (K 768 bf16: 96 KiB)
constexpr int64_t kHostAxpyColumns = 256;          // MatMul: columns of y per tile (4 rows: 4 KiB of sums)
constexpr int64_t kHostInlineWeights = int64_t(1) << 16;

template <class T, class ExecSpace>
absl::Status HostFewRowsGemm(const ExecutionContext<ExecSpace>& ctx, ConstMatrix<T, ExecSpace> x,
                             ConstMatrix<T, ExecSpace> w, Matrix<T, ExecSpace> y, bool w_is_out_in, bool accumulate) {
  const auto& space = ctx.space();
  const int64_t M = x.extent(0), K = x.extent(1), N = y.extent(1);
  const float* xf = nullptr;  // [M, K]
  if constexpr (std::is_same_v<T, float>) {
    xf = x.data();
  } else {
    float* widened = ctx.template Scratch<float>("linear.host_gemv_x", size_t(M * K)).data();
    const T* x_data = x.data();
    for (int64_t i = 0; i < M * K; ++i) widened[i] = ToFloat(x_data[i]);
    xf = widened;
  }
  const T* w_data = w.data();
  T* y_data = y.data();
  auto store = [=](int64_t m, int64_t n, float sum) {
    T& out = y_data[m * N + n];
    out = FromFloat<T>(accumulate ? ToFloat(out) + sum : sum);
  };
  int64_t tasks = 0, width = 0;
  if (w_is_out_in) {
    width = kHostColumnsPerTask;
    tasks = (N + width - 1) / width;
  } else {
    const int64_t threads = std::max<int64_t>(1, space.concurrency());
    tasks = (N + kHostAxpyColumns - 1) / kHostAxpyColumns;
    tasks = std::min(N, (tasks + threads - 1) / threads * threads);
    width = (N + tasks - 1) / tasks;
    tasks = (N + width - 1) / width;
  }
  auto task = [=](const int64_t t) {
    const int64_t n0 = t * width, cols = std::min(width, N - n0);
    if (w_is_out_in) {
      float sums[kHostGemvRows * kHostColumnsPerTask];  // [M, cols]
      HostDotColumns(xf, M, K, w_data + n0 * K, cols, sums);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t j = 0; j < cols; ++j) store(m, n0 + j, sums[m * cols + j]);
    } else {
      float acc[kHostGemvRows * kHostAxpyColumns];  // [M, cols]
      std::fill(acc, acc + M * cols, 0.0f);
      HostAxpyRows(xf, K, M, K, w_data + n0, N, cols, acc, cols);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t j = 0; j < cols; ++j) store(m, n0 + j, acc[m * cols + j]);
    }
  };
  if (N * K < kHostInlineWeights) {
    for (int64_t t = 0; t < tasks; ++t) task(t);
  } else {
    Kokkos::parallel_for("openmoe::kernels::HostFewRowsGemm",
                         Kokkos::RangePolicy<ExecSpace, Kokkos::IndexType<int64_t>>(space, 0, tasks), task);
  }
  return absl::OkStatus();
}

// y[M, N] (+)= x[M, K] @ op(w) through StridedBatchedGemm (cuBLAS on the caller's stream on CUDA,
// OpenBLAS or a float32 loop on host: batched_gemm.cc): 16-bit products everywhere, float32
// products on CUDA; y in T or float32 (TOut). Column-major
// view of row-major data: y^T[N, M] = op(w)^T[N, K] x^T[K, M].
template <class T, class TOut, class ExecSpace>
absl::Status StridedGemm(const ExecutionContext<ExecSpace>& ctx, const T* x, const T* w, TOut* y, int64_t M, int64_t K,
                         int64_t N, bool w_is_out_in, bool accumulate) {
  BatchedGemmShape s;
  s.trans_a = w_is_out_in, s.m = N, s.n = M, s.k = K;
  s.lda = w_is_out_in ? K : N, s.ldb = K, s.ldc = N, s.beta = accumulate ? 1.0f : 0.0f;
  return StridedBatchedGemm<T, TOut, ExecSpace>(ctx, s, w, x, y);
}

// y[M, N] (+)= x[M, K] @ op(w), op(w) = w^T (w is [N, K]) or w (w is [K, N]); y in T, or in
// float32 for 16-bit T (TOut = float: ProductIntoFloat, always through StridedGemm).
template <class T, class TOut, class ExecSpace>
absl::Status Gemm(const ExecutionContext<ExecSpace>& ctx, const char* op, ConstMatrix<T, ExecSpace> x,
                  ConstMatrix<T, ExecSpace> w, Matrix<TOut, ExecSpace> y, bool w_is_out_in,
                  bool accumulate) {
  static_assert(std::is_same_v<TOut, T> || std::is_same_v<TOut, float>, "Gemm: the output is T or float32");
  constexpr bool kSameType = std::is_same_v<TOut, T>;
  const auto& space = ctx.space();
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
    if (!accumulate) Kokkos::deep_copy(space, y, FromFloat<TOut>(0.0f));
    return absl::OkStatus();
  }
  if constexpr (!kIsCuda<ExecSpace> && kSameType) {  // host backends, few rows (decode): the streaming GEMV, any dtype
    if (M <= size_t(kHostGemvRows)) return HostFewRowsGemm<T, ExecSpace>(ctx, x, w, y, w_is_out_in, accumulate);
  }
  if constexpr (std::is_same_v<T, float> && !kIsCuda<ExecSpace>) {
    // float32 on host backends (Serial, OpenMP): OpenBLAS's sgemm on the row-major operands,
    // y[M, N] = x[M, K] op(w) (+ y), op(w) = w^T for w [N, K]. Host kernels are synchronous, so
    // x and w are ready. (On CUDA float32 goes to cuBLAS below, on the caller's stream.)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, w_is_out_in ? CblasTrans : CblasNoTrans, blasint(M), blasint(N),
                blasint(K), 1.0f, x.data(), blasint(K), w.data(), blasint(w_is_out_in ? K : N),
                accumulate ? 1.0f : 0.0f, y.data(), blasint(N));
    return absl::OkStatus();
  } else {
#if defined(KOKKOS_ENABLE_CUDA)
    if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda> && !std::is_same_v<T, float> && kSameType) {  // 16-bit decode kernels
      const DecodeLinearKernel kernel = ctx.tuning().decode_linear_kernel;
      const bool fits = w_is_out_in && M <= size_t(kSmallBatchRows) && IsPackAligned(x.data(), K) &&
                        IsPackAligned(w.data(), K);
      // Automatic choice: streaming below 8192 columns, warp per column where K is a whole
      // number of its 8-load rounds (256 packs), split-K otherwise.
      const bool whole_rounds = (K / Pack<T>::kSize) % (32 * kInFlight) == 0;
      const bool automatic = kernel == DecodeLinearKernel::kAuto && N < size_t(kSmallBatchMaxColumns);
      if (fits && ((automatic && whole_rounds) || kernel == DecodeLinearKernel::kWarpPerColumn)) {
        WarpPerColumnLinear<T, ExecSpace>(space, x, w, y, accumulate);
        return absl::OkStatus();
      }
      if (fits && ((automatic && !whole_rounds) || kernel == DecodeLinearKernel::kSplitK)) {
        SplitKLinearFor<T, ExecSpace>(space, x, w, y, accumulate);
        return absl::OkStatus();
      }
    }
#endif
    return StridedGemm<T, TOut, ExecSpace>(ctx, x.data(), w.data(), y.data(), M, K, N, w_is_out_in, accumulate);
  }
}

}  // namespace


template <class T, class ExecSpace>
absl::Status Linear(const ExecutionContext<ExecSpace>& ctx, ConstMatrix<T, ExecSpace> x, ConstMatrix<T, ExecSpace> w,
                    Matrix<T, ExecSpace> y, bool accumulate) {
  const auto& space = ctx.space();
  return Gemm<T, T, ExecSpace>(ctx, "Linear", x, w, y, /*w_is_out_in=*/true, accumulate);
}

template <class T, class ExecSpace>
absl::Status MatMul(const ExecutionContext<ExecSpace>& ctx, ConstMatrix<T, ExecSpace> x, ConstMatrix<T, ExecSpace> w,
                    Matrix<T, ExecSpace> y, bool accumulate) {
  const auto& space = ctx.space();
  return Gemm<T, T, ExecSpace>(ctx, "MatMul", x, w, y, /*w_is_out_in=*/false, accumulate);
}

template <class T, class ExecSpace>
absl::Status ProductIntoFloat(const ExecutionContext<ExecSpace>& ctx, ConstMatrix<T, ExecSpace> x, ConstMatrix<T, ExecSpace> w,
                              Matrix<float, ExecSpace> y, bool w_is_out_in, bool accumulate) {
  return Gemm<T, float, ExecSpace>(ctx, "ProductIntoFloat", x, w, y, w_is_out_in, accumulate);
}

template <class T, class ExecSpace>
absl::Status AddTransposedProduct(const ExecutionContext<ExecSpace>& ctx, ConstMatrix<T, ExecSpace> a, ConstMatrix<T, ExecSpace> b,
                                  Matrix<float, ExecSpace> c, bool accumulate) {
  const auto& space = ctx.space();
  const size_t M = a.extent(0), P = a.extent(1), Q = b.extent(1);
  if (b.extent(0) != M || c.extent(0) != P || c.extent(1) != Q) {
    return absl::InvalidArgumentError(absl::StrCat("AddTransposedProduct: '", c.label(), "' ", Shape(c.extent(0), c.extent(1)),
                                                   " does not fit '", a.label(), "' ", Shape(M, P), " and '", b.label(),
                                                   "' ", Shape(b.extent(0), Q)));
  }
  for (absl::Status s : {CheckContiguous("AddTransposedProduct", a), CheckContiguous("AddTransposedProduct", b),
                         CheckContiguous("AddTransposedProduct", c)}) {
    if (!s.ok()) return s;
  }
  if (P == 0 || Q == 0) return absl::OkStatus();
  if (M == 0) {  // an empty sum
    if (!accumulate) ZeroFill(space, c);
    return absl::OkStatus();
  }
  const float beta = accumulate ? 1.0f : 0.0f;  // BLAS and cuBLAS do not read c when beta is 0
  if constexpr (std::is_same_v<T, float> && !kIsCuda<ExecSpace>) {
    // Host backends: OpenBLAS's sgemm on the row-major operands, c[P, Q] (+)= a^T[P, M] b[M, Q].
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, blasint(P), blasint(Q), blasint(M), 1.0f, a.data(),
                blasint(P), b.data(), blasint(Q), beta, c.data(), blasint(Q));
    return absl::OkStatus();
  } else {
    // 16-bit operands (and float32 on CUDA: cuBLAS on the caller's stream), float32 c: the same
    // column-major product through StridedBatchedGemm.
    BatchedGemmShape shape;
    shape.trans_b = true, shape.m = Q, shape.n = P, shape.k = M;
    shape.lda = Q, shape.ldb = P, shape.ldc = Q, shape.beta = beta;
    return StridedBatchedGemm<T, float, ExecSpace>(ctx, shape, b.data(), a.data(), c.data());
  }
}

#define OPENMOE_INSTANTIATE_TRANSPOSED_PRODUCT(Space, T)                                                   \
  template absl::Status AddTransposedProduct<T, Space>(const ExecutionContext<Space>&, ConstMatrix<T, Space>, ConstMatrix<T, Space>, \
                                                       Matrix<float, Space>, bool);
OPENMOE_FOR_EACH_SPACE_AND_KERNEL_DTYPE(OPENMOE_INSTANTIATE_TRANSPOSED_PRODUCT)

#define OPENMOE_INSTANTIATE_LINEAR(Space, T)                                                   \
  template absl::Status Linear<T, Space>(const ExecutionContext<Space>&, ConstMatrix<T, Space>, ConstMatrix<T, Space>, \
                                         Matrix<T, Space>, bool);                               \
  template absl::Status MatMul<T, Space>(const ExecutionContext<Space>&, ConstMatrix<T, Space>, ConstMatrix<T, Space>, \
                                         Matrix<T, Space>, bool);                               \
  template absl::Status ProductIntoFloat<T, Space>(const ExecutionContext<Space>&, ConstMatrix<T, Space>,             \
                                                   ConstMatrix<T, Space>, Matrix<float, Space>, bool, bool);
OPENMOE_FOR_EACH_SPACE_AND_KERNEL_DTYPE(OPENMOE_INSTANTIATE_LINEAR)

}  // namespace openmoe::kernels
