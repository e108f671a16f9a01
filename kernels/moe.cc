#include "kernels/moe.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/buffer_pool.h"
#include "kernels/host_gemv.h"
#include "kernels/instantiate.h"
#include "kernels/launch.h"
#include "kernels/layer_math.h"
#include "openmoe/core/execution_spaces.h"

namespace openmoe::kernels {

int64_t ExpertCapacity(int64_t num_tokens, int64_t num_experts, double capacity_factor,
                       int64_t min_capacity, int64_t top_k) {
  int64_t capacity = int64_t(std::floor(double(top_k) * capacity_factor * double(num_tokens) /
                                        double(num_experts)));
  capacity += capacity % 2;
  return capacity > min_capacity ? capacity : min_capacity;
}

template <class T, class ExecSpace>
absl::Status RouterTop2(const ExecSpace& space, ConstMatrix<T, ExecSpace> logits,
                        Matrix<float, ExecSpace> probs, Matrix<int32_t, ExecSpace> experts) {
  const int64_t N = logits.extent(0), E = logits.extent(1);
  if (E < 2 || probs.extent(0) != size_t(N) || probs.extent(1) != size_t(E) ||
      experts.extent(0) != size_t(N) || experts.extent(1) != 2) {
    return absl::InvalidArgumentError(absl::StrCat("RouterTop2: expected logits/probs [", N, ", E>=2], experts [",
                                                   N, ", 2]"));
  }
  SmallRangeFor(
      "openmoe::kernels::RouterTop2", space, N, N * E,
      KOKKOS_LAMBDA(const int64_t t) {
        // Three passes over the row's logits (independent loads); probabilities are recomputed,
        // never read back from global memory (a round trip per expert on GPUs).
        float max_logit = ToFloat(logits(t, 0));
        for (int64_t e = 1; e < E; ++e) {
          const float z = ToFloat(logits(t, e));
          max_logit     = z > max_logit ? z : max_logit;
        }
        float sum = 0.0f;
        for (int64_t e = 0; e < E; ++e) sum += Kokkos::Experimental::exp(ToFloat(logits(t, e)) - max_logit);
        const float inv_sum = 1.0f / sum;
        // Top-2 in one pass, strict comparisons in index order: ties keep the lowest index, for
        // the first and (among the others) the second choice.
        int32_t first = 0, second = -1;
        float p_first = 0.0f, p_second = 0.0f;
        for (int64_t e = 0; e < E; ++e) {
          const float p = Kokkos::Experimental::exp(ToFloat(logits(t, e)) - max_logit) * inv_sum;
          probs(t, e)   = p;
          if (e == 0) {
            p_first = p;
          } else if (p > p_first) {
            second = first, p_second = p_first;
            first = int32_t(e), p_first = p;
          } else if (second < 0 || p > p_second) {
            second = int32_t(e), p_second = p;
          }
        }
        experts(t, 0) = first;
        experts(t, 1) = second;
      });
  return absl::OkStatus();
}

namespace {
constexpr int kSlotThreads = 256;  // team threads per expert on CUDA (host backends: Kokkos' choice)
constexpr int kSlotTokens  = 8;    // consecutive tokens per thread in one chunk of a queue
}  // namespace

template <class ExecSpace>
absl::Status AssignSlots(const ExecSpace& space, ConstMatrix<int32_t, ExecSpace> experts,
                         int64_t num_experts, Matrix<int32_t, ExecSpace> rank) {
  const int64_t N = experts.extent(0);
  if (rank.extent(0) != size_t(N) || rank.extent(1) != 2 || experts.extent(1) != 2) {
    return absl::InvalidArgumentError("AssignSlots: experts and rank must both be [N, 2]");
  }
  // Expert e's queue: its top-1 assignments in token order, then its top-2 ones, so
  //   rank(t, 0) = #{t' < t : experts(t', 0) == e},
  //   rank(t, 1) = #{t' : experts(t', 0) == e} + #{t' < t : experts(t', 1) == e}.
  if (InlineOnHost<ExecSpace>(num_experts * N)) {
    // A few tokens on a host backend (a decode step): each expert walks its queues on the calling
    // thread, no parallel region.
    for (int64_t e = 0; e < num_experts; ++e) {
      int32_t next = 0;
      for (int64_t t = 0; t < N; ++t) {
        if (experts(t, 0) == e) rank(t, 0) = next++;
      }
      for (int64_t t = 0; t < N; ++t) {
        if (experts(t, 1) == e) rank(t, 1) = next++;
      }
    }
    return absl::OkStatus();
  }
  // One team per expert walks its top-1 queue, then its top-2 queue, in chunks of team_size x
  // kSlotTokens tokens: thread r takes kSlotTokens consecutive tokens of the chunk and counts its
  // matches; an exclusive team scan of the counts, plus the matches of the earlier chunks and
  // queue (`carried`), is the rank of its first match. 2 N / chunk steps per expert instead of
  // 2 N serial ones; no atomics, so deterministic.
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  DependentParallelFor(
      "openmoe::kernels::AssignSlots", RowTeams(space, num_experts, kSlotThreads), KOKKOS_LAMBDA(const Member& team) {
        const int32_t e     = int32_t(team.league_rank());
        const int64_t chunk = int64_t(team.team_size()) * kSlotTokens;
        int32_t carried     = 0;  // assignments of e ahead of this chunk in e's queue
        for (int k = 0; k < 2; ++k) {
          for (int64_t base = 0; base < N; base += chunk) {
            const int64_t t0 = base + int64_t(team.team_rank()) * kSlotTokens;  // this thread's first token
            bool match[kSlotTokens];
            int32_t count = 0;
            for (int i = 0; i < kSlotTokens; ++i) {
              match[i] = t0 + i < N && experts(t0 + i, k) == e;
              count += match[i] ? 1 : 0;
            }
            const int32_t before = team.team_scan(count);  // matches of the chunk's earlier threads
            int32_t next         = carried + before;
            for (int i = 0; i < kSlotTokens; ++i) {
              if (match[i]) rank(t0 + i, k) = next++;
            }
            // The chunk's matches, as the last thread sees them. Scans and broadcasts share one
            // team buffer; Kokkos 3.4 synchronises on entry to each, the barriers are defensive.
            int32_t chunk_total = before + count;
            team.team_barrier();
            team.team_broadcast(chunk_total, team.team_size() - 1);
            team.team_barrier();  // (defensive) every thread has read the broadcast before the next scan
            carried += chunk_total;
          }
        }
      });
  return absl::OkStatus();
}

template <class T, class ExecSpace>
absl::Status Dispatch(const ExecSpace& space, ConstMatrix<T, ExecSpace> x,
                      ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,
                      int64_t capacity, Matrix<T, ExecSpace> buffer) {
  const int64_t N = x.extent(0), H = x.extent(1);
  if (buffer.extent(1) != size_t(H) || buffer.extent(0) % size_t(capacity) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("Dispatch: buffer '", buffer.label(),
                                                   "' must be [E * ", capacity, ", ", H, "]"));
  }
  ZeroFill(space, buffer);  // slots past an expert's tokens (Kokkos 3.4's deep_copy(view, 0): ~0.2 of the bandwidth)
  DependentParallelFor(
      "openmoe::kernels::Dispatch",
      FlatRange(space, N * 2 * H), KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t h = idx % H, k = (idx / H) % 2, t = idx / (2 * H);
        const int32_t slot = rank(t, k);
        if (slot < capacity) buffer(experts(t, k) * capacity + slot, h) = x(t, h);
      });
  return absl::OkStatus();
}

template <class T, class ExecSpace>
absl::Status Combine(const ExecSpace& space, ConstMatrix<T, ExecSpace> expert_out,
                     ConstMatrix<float, ExecSpace> probs, ConstMatrix<int32_t, ExecSpace> experts,
                     ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity,
                     Matrix<T, ExecSpace> y) {
  const int64_t N = y.extent(0), H = y.extent(1);
  if (expert_out.extent(1) != size_t(H) || probs.extent(0) != size_t(N)) {
    return absl::InvalidArgumentError("Combine: expert_out must be [E * C, H] and probs [N, E]");
  }
  DependentParallelFor(
      "openmoe::kernels::Combine",
      FlatRange(space, N * H), KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t t = idx / H, h = idx % H;
        float acc = 0.0f;
        for (int k = 0; k < 2; ++k) {
          const int32_t e = experts(t, k), slot = rank(t, k);
          if (slot < capacity) acc += probs(t, e) * ToFloat(expert_out(e * capacity + slot, h));
        }
        y(t, h) = FromFloat<T>(acc);
      });
  return absl::OkStatus();
}

namespace {
constexpr int kExpertWarps = 8;      // team threads; each takes every 8th row of the slice
constexpr int kExpertLanes = 32;     // lanes; each takes one 16-byte pack of columns
constexpr int kExpertInFlight = 16;  // row loads per lane in flight
constexpr int64_t kTargetTeams = 512;  // more splits make the consumers (which add them up) slower
}  // namespace

int64_t GroupedExpertSplits(int64_t assignments, int64_t inner, int64_t cols, int64_t pack_size) {
  const int64_t col_blocks = (cols + kExpertLanes * pack_size - 1) / (kExpertLanes * pack_size);
  int64_t splits = (kTargetTeams + assignments * col_blocks - 1) / (assignments * col_blocks);
  const int64_t max_splits = inner / 64 > 1 ? inner / 64 : 1;  // >= 64 rows per slice
  return splits < 1 ? 1 : (splits > max_splits ? max_splits : splits);
}

template <class T>
bool GroupedExpertShapesFit(const T* weights, int64_t cols) {
  return IsPackAligned(weights, cols) && cols % Pack<T>::kSize == 0;
}

namespace {
// GroupedExpertProduct on host backends: one task per (assignment a, slice s), tasks of one
// assignment adjacent so that a thread's tasks are consecutive rows of the expert's weights;
// each streams whole rows [k0, k1) of W_e [K, cols] (a contiguous block) into partial[s, a, :]
// (host_gemv.h: widened in registers, float32 sums). x's slice is widened in chunks of
// kHostXChunk values. Host kernels are synchronous.
constexpr int64_t kHostXChunk = 256;

template <class T, class ExecSpace>
void HostGroupedExpertProduct(const ExecSpace& space, ConstMatrix<T, ExecSpace> x, bool x_per_token,
                              ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,
                              int64_t capacity, const T* weights, Partials<ExecSpace> partial) {
  const int64_t K = x.extent(1), A = partial.extent(1), splits = partial.extent(0), cols = partial.extent(2);
  const int64_t rows_per_split = (K + splits - 1) / splits;
  Kokkos::parallel_for(
      "openmoe::kernels::HostGroupedExpertProduct",
      Kokkos::RangePolicy<ExecSpace, Kokkos::IndexType<int64_t>>(space, 0, A * splits), [=](const int64_t task) {
        const int64_t a = task / splits, split = task % splits, t = a / 2, k = a % 2;
        if (rank(t, k) >= capacity) return;  // dropped: the consumers skip it
        const int64_t e = experts(t, k), row = x_per_token ? t : a;
        const int64_t k0 = std::min(K, split * rows_per_split), k1 = std::min(K, k0 + rows_per_split);
        const T* w = weights + e * K * cols;  // [K, cols]
        float* acc = &partial(split, a, 0);   // [cols]
        std::fill(acc, acc + cols, 0.0f);
        float xf[kHostXChunk];
        for (int64_t c0 = k0; c0 < k1; c0 += kHostXChunk) {
          const int64_t n = std::min(kHostXChunk, k1 - c0);
          for (int64_t i = 0; i < n; ++i) xf[i] = ToFloat(x(row, c0 + i));
          HostAxpyRows(xf, 0, 1, n, w + c0 * cols, cols, cols, acc, cols);
        }
      });
}
}  // namespace

template <class T, class ExecSpace>
absl::Status GroupedExpertProduct(const ExecSpace& space, ConstMatrix<T, ExecSpace> x, bool x_per_token,
                                  ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,
                                  int64_t capacity, const T* weights, int64_t num_experts,
                                  Partials<ExecSpace> partial) {
  using P = Pack<T>;
  const int64_t K = x.extent(1), A = 2 * experts.extent(0);
  const int64_t splits = partial.extent(0), cols = partial.extent(2);
  if (partial.extent(1) != size_t(A) || x.extent(0) != size_t(x_per_token ? A / 2 : A) ||
      splits != GroupedExpertSplits(A, K, cols, P::kSize) || !GroupedExpertShapesFit(weights, cols) || num_experts <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("GroupedExpertProduct: partial [", partial.extent(0), ", ",
                                                   partial.extent(1), ", ", cols, "] does not fit x [",
                                                   x.extent(0), ", ", K, "] and ", A, " assignments"));
  }
  if constexpr (!kIsCuda<ExecSpace>) {
    HostGroupedExpertProduct<T, ExecSpace>(space, x, x_per_token, experts, rank, capacity, weights, partial);
    return absl::OkStatus();
  }
  constexpr int64_t kCols = kExpertLanes * P::kSize;  // columns per team
  const int64_t col_blocks = (cols + kCols - 1) / kCols, rows_per_split = (K + splits - 1) / splits;
  using Member  = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  using Scratch = Kokkos::View<float**, Kokkos::LayoutRight, typename ExecSpace::scratch_memory_space,
                               Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  auto policy = WarpTeams(space, A * col_blocks * splits, kExpertWarps);
  policy.set_scratch_size(0, Kokkos::PerTeam(Scratch::shmem_size(kExpertWarps, kCols)));
  DependentParallelFor(
      "openmoe::kernels::GroupedExpertProduct", policy, KOKKOS_LAMBDA(const Member& team) {
        const int64_t split = team.league_rank() % splits, block = (team.league_rank() / splits) % col_blocks;
        const int64_t a = team.league_rank() / (splits * col_blocks), t = a / 2, k = a % 2;
        if (rank(t, k) >= capacity) return;  // dropped: the consumers skip it
        const int64_t e = experts(t, k), row = x_per_token ? t : a;
        const int64_t k0 = split * rows_per_split, k1 = k0 + rows_per_split < K ? k0 + rows_per_split : K;
        const T* w = weights + e * K * cols;  // [K, cols]
        Scratch sums(team.team_scratch(0), kExpertWarps, kCols);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, kExpertWarps), [&](const int warp) {
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, kExpertLanes), [&](const int lane) {
            const int64_t col0 = block * kCols + lane * P::kSize;
            float acc[P::kSize];
            for (int i = 0; i < P::kSize; ++i) acc[i] = 0.0f;
            if (col0 < cols) {
              // Rounds of kExpertInFlight row loads per lane, all issued before any is used.
              constexpr int64_t kStep = kExpertWarps;
              for (int64_t r0 = k0 + warp; r0 < k1; r0 += kExpertInFlight * kStep) {
                P wp[kExpertInFlight];
                float xr[kExpertInFlight];
                for (int i = 0; i < kExpertInFlight; ++i) {
                  const int64_t r = r0 + i * kStep;
                  const bool in = r < k1;
                  wp[i] = *reinterpret_cast<const P*>(w + (in ? r : r0) * cols + col0);
                  xr[i] = in ? ToFloat(x(row, r)) : 0.0f;
                }
                for (int i = 0; i < kExpertInFlight; ++i)
                  for (int j = 0; j < P::kSize; ++j) acc[j] += xr[i] * ToFloat(wp[i].v[j]);
              }
            }
            for (int i = 0; i < P::kSize; ++i) sums(warp, lane * P::kSize + i) = acc[i];
          });
        });
        team.team_barrier();
        Kokkos::parallel_for(Kokkos::TeamVectorRange(team, kCols), [&](const int64_t c) {
          const int64_t col = block * kCols + c;
          if (col < cols) {
            float total = 0.0f;
            for (int warp = 0; warp < kExpertWarps; ++warp) total += sums(warp, c);
            partial(split, a, col) = total;
          }
        });
      });
  return absl::OkStatus();
}

template <class T, class ExecSpace>
absl::Status SwigluFromPartials(const ExecSpace& space, Partials<ExecSpace> gate_partial,
                                Partials<ExecSpace> up_partial, Matrix<T, ExecSpace> act) {
  const int64_t A = act.extent(0), I = act.extent(1);
  const int64_t gate_splits = gate_partial.extent(0), up_splits = up_partial.extent(0);
  if (gate_partial.extent(1) != size_t(A) || gate_partial.extent(2) != size_t(2 * I) ||
      up_partial.extent(1) != size_t(A) || up_partial.extent(2) != size_t(I)) {
    return absl::InvalidArgumentError(absl::StrCat("SwigluFromPartials: partials do not fit act [", A, ", ", I, "]"));
  }
  DependentParallelFor(
      "openmoe::kernels::SwigluFromPartials", FlatRange(space, A * I), KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t a = idx / I, i = idx % I;
        float linear = 0.0f, gated = 0.0f, up = 0.0f;
        for (int64_t s = 0; s < gate_splits; ++s) linear += gate_partial(s, a, i), gated += gate_partial(s, a, I + i);
        for (int64_t s = 0; s < up_splits; ++s) up += up_partial(s, a, i);
        linear = ToFloat(FromFloat<T>(linear)), gated = ToFloat(FromFloat<T>(gated)), up = ToFloat(FromFloat<T>(up));
        act(a, i) = FromFloat<T>(Swiglu(linear, gated, up));
      });
  return absl::OkStatus();
}

template <class T, class ExecSpace>
absl::Status CombineFromPartials(const ExecSpace& space, Partials<ExecSpace> out_partial,
                                 ConstMatrix<float, ExecSpace> probs, ConstMatrix<int32_t, ExecSpace> experts,
                                 ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity, Matrix<T, ExecSpace> y) {
  const int64_t N = y.extent(0), H = y.extent(1), splits = out_partial.extent(0);
  if (out_partial.extent(1) != size_t(2 * N) || out_partial.extent(2) != size_t(H) || probs.extent(0) != size_t(N)) {
    return absl::InvalidArgumentError("CombineFromPartials: out_partial must be [splits, 2N, H] and probs [N, E]");
  }
  DependentParallelFor(
      "openmoe::kernels::CombineFromPartials", FlatRange(space, N * H), KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t t = idx / H, h = idx % H;
        float acc = 0.0f;
        for (int k = 0; k < 2; ++k) {
          if (rank(t, k) >= capacity) continue;
          float out = 0.0f;
          for (int64_t s = 0; s < splits; ++s) out += out_partial(s, 2 * t + k, h);
          acc += probs(t, experts(t, k)) * ToFloat(FromFloat<T>(out));
        }
        y(t, h) = FromFloat<T>(acc);
      });
  return absl::OkStatus();
}

#if defined(KOKKOS_ENABLE_CUDA)
namespace {
struct ExpertConditionHandles {  // kernel argument: cudaGraphConditionalHandle per expert
  unsigned long long handle[kMaxExpertConditions];
};

// One thread per expert: condition e = 1 when a kept assignment (rank < capacity) went to e.
// A plain CUDA kernel, not a Kokkos one: the handles make the functor larger than the 512 bytes
// up to which Kokkos 3.4 passes functors as kernel arguments, and its constant-memory launch
// (event synchronize + copy to a symbol) cannot be captured into a graph.
__global__ void SetExpertConditionsKernel(const int32_t* experts, const int32_t* rank, int64_t assignments,
                                          int64_t capacity, int64_t num_experts, ExpertConditionHandles handles) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= num_experts) return;
  unsigned int in_use = 0;
  for (int64_t a = 0; a < assignments; ++a) in_use |= experts[a] == e && rank[a] < capacity;
  cudaGraphSetConditional(cudaGraphConditionalHandle(handles.handle[e]), in_use);
}
}  // namespace

absl::Status SetExpertConditions(const Kokkos::Cuda& space, ConstMatrix<int32_t, Kokkos::Cuda> experts,
                                 ConstMatrix<int32_t, Kokkos::Cuda> rank, int64_t capacity,
                                 const std::vector<uint64_t>& conditions) {
  const int64_t E = int64_t(conditions.size()), T = experts.extent(0);
  if (E > kMaxExpertConditions || rank.extent(0) != experts.extent(0) || experts.extent(1) != 2 || rank.extent(1) != 2 ||
      !experts.span_is_contiguous() || !rank.span_is_contiguous()) {
    return absl::InvalidArgumentError(absl::StrCat("SetExpertConditions: ", E, " experts (at most ", kMaxExpertConditions,
                                                   "), experts [", experts.extent(0), ", ", experts.extent(1),
                                                   "] and rank [", rank.extent(0), ", ", rank.extent(1),
                                                   "] must both be contiguous [T, 2]"));
  }
  if (E == 0) return absl::OkStatus();
  ExpertConditionHandles handles{};
  for (int64_t e = 0; e < E; ++e) handles.handle[e] = conditions[e];
  SetExpertConditionsKernel<<<1, unsigned(E), 0, space.cuda_stream()>>>(experts.data(), rank.data(), 2 * T, capacity, E,
                                                                       handles);
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) {
    return absl::InternalError(absl::StrCat("SetExpertConditions: kernel launch failed: ", cudaGetErrorString(error)));
  }
  return absl::OkStatus();
}
#endif

#define OPENMOE_INSTANTIATE_MOE(Space, T)                                                         \
  template absl::Status RouterTop2<T, Space>(const Space&, ConstMatrix<T, Space>, Matrix<float, Space>, \
                                             Matrix<int32_t, Space>);                             \
  template absl::Status Dispatch<T, Space>(const Space&, ConstMatrix<T, Space>,                   \
                                           ConstMatrix<int32_t, Space>, ConstMatrix<int32_t, Space>, \
                                           int64_t, Matrix<T, Space>);                            \
  template absl::Status Combine<T, Space>(const Space&, ConstMatrix<T, Space>, ConstMatrix<float, Space>, \
                                          ConstMatrix<int32_t, Space>, ConstMatrix<int32_t, Space>, \
                                          int64_t, Matrix<T, Space>);                            \
  template absl::Status GroupedExpertProduct<T, Space>(const Space&, ConstMatrix<T, Space>, bool,  \
                                                       ConstMatrix<int32_t, Space>, ConstMatrix<int32_t, Space>, \
                                                       int64_t, const T*, int64_t, Partials<Space>); \
  template absl::Status SwigluFromPartials<T, Space>(const Space&, Partials<Space>, Partials<Space>, \
                                                     Matrix<T, Space>);                           \
  template absl::Status CombineFromPartials<T, Space>(const Space&, Partials<Space>,            \
                                                      ConstMatrix<float, Space>, ConstMatrix<int32_t, Space>, \
                                                      ConstMatrix<int32_t, Space>, int64_t, Matrix<T, Space>);
#define OPENMOE_INSTANTIATE_SLOTS(Space)                                                          \
  template absl::Status AssignSlots<Space>(const Space&, ConstMatrix<int32_t, Space>, int64_t,    \
                                           Matrix<int32_t, Space>);
OPENMOE_FOR_EACH_SPACE_AND_KERNEL_DTYPE(OPENMOE_INSTANTIATE_MOE)
OPENMOE_FOR_EACH_EXECUTION_SPACE(OPENMOE_INSTANTIATE_SLOTS)
template bool GroupedExpertShapesFit<float>(const float*, int64_t);
template bool GroupedExpertShapesFit<bf16>(const bf16*, int64_t);

}  // namespace openmoe::kernels
