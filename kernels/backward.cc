#include "kernels/backward.h"

#include <cfloat>
#include <cmath>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "kernels/attention_gemm.h"
#include "kernels/buffer_pool.h"
#include "kernels/instantiate.h"
#include "kernels/launch.h"
#include "kernels/layer_math.h"

namespace openmoe::kernels {
namespace {
constexpr int64_t kMaxHeadDim = 128;  // per-thread rows of the attention backward

// Team reductions that another may follow are followed by team.team_barrier(): Kokkos 3.4's CUDA
// team reductions (team_reduce, parallel_reduce over a TeamThreadRange) leave their result in one
// __shared__ buffer per value type and return without a barrier, so a warp that enters the next
// reduction of the same type (or the next league iteration) can overwrite a result that a slower
// warp has yet to read. Seen on an H100: back-to-back Sum<double> reductions gave wrong row sums.

// ---- RmsNormBackward ----
constexpr int kNormThreads = 256;       // GPU threads of a row team (dx) and of a column tile (dw)
constexpr int kNormRowBlock = 32;       // rows of one dw partial sum
constexpr int kNormColumnTile = 256;    // columns of one dw team: one per GPU thread

// dx [N, H] = r (w dy) - x r^3 mean(w dy x), one team per row; r [N] = 1 / rms(x) (written).
template <class ExecSpace>
void RmsNormBackwardDx(const ExecSpace& space, ConstMatrix<float, ExecSpace> x, ConstVector<float, ExecSpace> w,
                       ConstMatrix<float, ExecSpace> dy, float eps, Matrix<float, ExecSpace> dx,
                       Vector<float, ExecSpace> r) {
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  const int H = int(x.extent(1));
  const float inv_h = 1.0f / float(H);
  Kokkos::parallel_for(
      "openmoe::kernels::RmsNormBackward.dx", RowTeams(space, x.extent(0), kNormThreads),
      KOKKOS_LAMBDA(const Member& team) {
        const int t = team.league_rank();
        float sum_sq = 0.0f, sum_wdx = 0.0f;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, H), [&](const int j, float& s) { s += x(t, j) * x(t, j); }, sum_sq);
        team.team_barrier();
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, H), [&](const int j, float& s) { s += w(j) * dy(t, j) * x(t, j); }, sum_wdx);
        team.team_barrier();
        const float rt = 1.0f / Kokkos::Experimental::sqrt(sum_sq * inv_h + eps);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, H), [&](const int j) {
          dx(t, j) = rt * w(j) * dy(t, j) - x(t, j) * rt * rt * rt * sum_wdx * inv_h;
        });
        Kokkos::single(Kokkos::PerTeam(team), [&]() { r(t) = rt; });
      });
}

// dw [H] += sum_t dy x r, deterministic in two stages: partial [blocks, H] (scratch) = the sums
// over blocks of kNormRowBlock rows (float, rows in order; one team per (row block, column tile),
// a thread per column: coalesced rows), then per column the blocks in order (double).
template <class ExecSpace>
void RmsNormBackwardDw(const ExecSpace& space, ConstMatrix<float, ExecSpace> x, ConstMatrix<float, ExecSpace> dy,
                       ConstVector<float, ExecSpace> r, Matrix<float, ExecSpace> partial, Vector<float, ExecSpace> dw) {
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  const int N = int(x.extent(0)), H = int(x.extent(1));
  const int blocks = int(partial.extent(0)), tiles = (H + kNormColumnTile - 1) / kNormColumnTile;
  Kokkos::parallel_for(
      "openmoe::kernels::RmsNormBackward.dw_blocks", RowTeams(space, int64_t(blocks) * tiles, kNormThreads),
      KOKKOS_LAMBDA(const Member& team) {
        const int block = team.league_rank() / tiles, tile = team.league_rank() % tiles;
        const int t0 = block * kNormRowBlock, t1 = N - t0 < kNormRowBlock ? N : t0 + kNormRowBlock;
        const int j0 = tile * kNormColumnTile, j1 = H - j0 < kNormColumnTile ? H : j0 + kNormColumnTile;
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, j0, j1), [&](const int j) {
          float acc = 0.0f;
          for (int t = t0; t < t1; ++t) acc += dy(t, j) * x(t, j) * r(t);
          partial(block, j) = acc;
        });
      });
  Kokkos::parallel_for(
      "openmoe::kernels::RmsNormBackward.dw", FlatRange(space, H), KOKKOS_LAMBDA(const int64_t j) {
        double acc = dw(j);
        for (int block = 0; block < blocks; ++block) acc += partial(block, j);
        dw(j) = float(acc);
      });
}
}  // namespace

template <class ExecSpace>
absl::Status RmsNormBackward(const ExecutionContext<ExecSpace>& ctx, ConstMatrix<float, ExecSpace> x,
                             ConstVector<float, ExecSpace> w, ConstMatrix<float, ExecSpace> dy, float eps,
                             Matrix<float, ExecSpace> dx, Vector<float, ExecSpace> dw) {
  const ExecSpace& space = ctx.space();
  const int64_t N = x.extent(0), H = x.extent(1);
  if (w.extent(0) != size_t(H) || dw.extent(0) != size_t(H) || dy.extent(0) != size_t(N) || dy.extent(1) != size_t(H) ||
      dx.extent(0) != size_t(N) || dx.extent(1) != size_t(H)) {
    return absl::InvalidArgumentError(absl::StrCat("RmsNormBackward: shapes do not fit x [", N, ", ", H, "]"));
  }
  if (N == 0 || H == 0) return absl::OkStatus();
  if (N > INT32_MAX / 2 || H > INT32_MAX / 2) {
    return absl::InvalidArgumentError(absl::StrCat("RmsNormBackward: x [", N, ", ", H, "] too large for 32-bit indices"));
  }
  // The context's scratch (kept between calls, no allocation per call): r [N], then the dw partial
  // sums [blocks, H].
  const int64_t blocks = (N + kNormRowBlock - 1) / kNormRowBlock;
  auto scratch = ctx.template Scratch<float>("rms_backward.scratch", size_t(N + blocks * H));
  Vector<float, ExecSpace> r(scratch.data(), N);
  RmsNormBackwardDx(space, x, w, dy, eps, dx, r);
  RmsNormBackwardDw(space, x, dy, ConstVector<float, ExecSpace>(r), Matrix<float, ExecSpace>(scratch.data() + N, blocks, H),
                    dw);
  return absl::OkStatus();
}

template <class ExecSpace>
absl::Status SwigluBackward(const ExecSpace& space, ConstMatrix<float, ExecSpace> gate, ConstMatrix<float, ExecSpace> up,
                            ConstMatrix<float, ExecSpace> dact, Matrix<float, ExecSpace> dgate,
                            Matrix<float, ExecSpace> dup) {
  const int64_t N = up.extent(0), I = up.extent(1);
  if (gate.extent(0) != size_t(N) || gate.extent(1) != size_t(2 * I) || dact.extent(0) != size_t(N) ||
      dact.extent(1) != size_t(I) || dgate.extent(1) != size_t(2 * I) || dup.extent(1) != size_t(I)) {
    return absl::InvalidArgumentError(absl::StrCat("SwigluBackward: expected gate [N, ", 2 * I, "], up/dact [N, ", I, "]"));
  }
  Kokkos::parallel_for(
      "openmoe::kernels::SwigluBackward", FlatRange(space, N * I), KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t t = idx / I, i = idx % I;
        SwigluGradient(gate(t, i), gate(t, I + i), up(t, i), dact(t, i), dgate(t, i), dgate(t, I + i), dup(t, i));
      });
  return absl::OkStatus();
}

template <class ExecSpace>
absl::Status SwigluBackwardFused(const ExecSpace& space, ConstMatrix<float, ExecSpace> gate_up,
                                 ConstMatrix<float, ExecSpace> dact, Matrix<float, ExecSpace> d_gate_up) {
  const int64_t N = dact.extent(0), I = dact.extent(1);
  if (gate_up.extent(0) != size_t(N) || gate_up.extent(1) != size_t(3 * I) || d_gate_up.extent(0) != size_t(N) ||
      d_gate_up.extent(1) != size_t(3 * I)) {
    return absl::InvalidArgumentError(absl::StrCat("SwigluBackwardFused: expected gate_up / d_gate_up [", N, ", ", 3 * I,
                                                   "] for dact [", N, ", ", I, "]"));
  }
  Kokkos::parallel_for(
      "openmoe::kernels::SwigluBackwardFused", FlatRange(space, N * I), KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t t = idx / I, i = idx % I;
        SwigluGradient(gate_up(t, i), gate_up(t, I + i), gate_up(t, 2 * I + i), dact(t, i), d_gate_up(t, i),
                       d_gate_up(t, I + i), d_gate_up(t, 2 * I + i));
      });
  return absl::OkStatus();
}

template <class ExecSpace>
absl::Status CausalAttentionBackward(const ExecutionContext<ExecSpace>& ctx, Tensor3<const float, ExecSpace> q,
                                     Tensor3<const float, ExecSpace> k, Tensor3<const float, ExecSpace> v,
                                     Kokkos::View<const int64_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space> mask,
                                     Tensor3<const float, ExecSpace> dout, int64_t Nh, int64_t Nkv, int64_t Dh,
                                     Tensor3<float, ExecSpace> dq, Tensor3<float, ExecSpace> dk,
                                     Tensor3<float, ExecSpace> dv, bool tf32_products) {
  const auto& space = ctx.space();
  const int64_t B = q.extent(0), S = q.extent(1);
  if (Nkv <= 0 || Nh % Nkv != 0 || q.extent(2) != size_t(Nh * Dh) || k.extent(2) != size_t(Nkv * Dh) ||
      k.extent(1) < size_t(S) || dk.extent(1) != size_t(S) || dq.extent(1) != size_t(S)) {
    return absl::InvalidArgumentError("CausalAttentionBackward: q, k, v, dq, dk, dv do not fit [B, S, heads * Dh]");
  }
  if (UseGemmAttention<ExecSpace>(ctx.tuning(), S)) {  // CUDA (attention_gemm.h)
    return GemmAttentionBackward<ExecSpace>(ctx, q, k, v, mask, dout, Nh, Nkv, Dh, dq, dk, dv, tf32_products);
  }
  if (Dh > kMaxHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat("CausalAttentionBackward: head_dim ", Dh, " > ", kMaxHeadDim));
  }
  const int64_t group = Nh / Nkv;
  using MemSpace = typename ExecSpace::memory_space;
  Kokkos::View<float***, Kokkos::LayoutRight, MemSpace> lse("attention_backward.lse", B, S, Nh);    // log-sum-exp
  Kokkos::View<float***, Kokkos::LayoutRight, MemSpace> delta("attention_backward.delta", B, S, Nh);  // sum_j P dP
  auto visible = KOKKOS_LAMBDA(const int64_t b, const int64_t i, const int64_t j) {
    return j <= i && (j == 0 || mask(b, j) != 0);
  };
  // Pass 1, per query row (rows vary fastest, so the threads of a warp walk the same key row:
  // broadcast loads): online softmax statistics, then in one more walk
  // delta = sum_j P dP, A = sum_j P dP k_j and Pk = sum_j P k_j, so dq = A - delta * Pk.
  // The row's q and dout and the accumulators live in per-thread arrays (coalesced local memory).
  Kokkos::parallel_for(
      "openmoe::kernels::CausalAttentionBackward.dq", FlatRange(space, B * S * Nh), KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t i = idx % S, h = (idx / S) % Nh, b = idx / (Nh * S);
        const int64_t qc = h * Dh, kc = (h / group) * Dh;
        float q_row[kMaxHeadDim], do_row[kMaxHeadDim], acc[kMaxHeadDim], pk[kMaxHeadDim];
        for (int64_t d = 0; d < Dh; ++d) q_row[d] = q(b, i, qc + d), do_row[d] = dout(b, i, qc + d), acc[d] = pk[d] = 0.0f;
        float m = -FLT_MAX, sum = 0.0f;
        for (int64_t j = 0; j <= i; ++j) {
          if (!visible(b, i, j)) continue;
          float s = 0.0f;
          for (int64_t d = 0; d < Dh; ++d) s += q_row[d] * k(b, j, kc + d);
          if (s > m) sum = sum * Kokkos::Experimental::exp(m - s), m = s;
          sum += Kokkos::Experimental::exp(s - m);
        }
        const float log_sum = m + Kokkos::Experimental::log(sum);
        float dsum = 0.0f;
        for (int64_t j = 0; j <= i; ++j) {
          if (!visible(b, i, j)) continue;
          float s = 0.0f, dp = 0.0f;
          for (int64_t d = 0; d < Dh; ++d) s += q_row[d] * k(b, j, kc + d), dp += do_row[d] * v(b, j, kc + d);
          const float p = Kokkos::Experimental::exp(s - log_sum);
          dsum += p * dp;
          for (int64_t d = 0; d < Dh; ++d) acc[d] += p * dp * k(b, j, kc + d), pk[d] += p * k(b, j, kc + d);
        }
        lse(b, i, h) = log_sum, delta(b, i, h) = dsum;
        for (int64_t d = 0; d < Dh; ++d) dq(b, i, qc + d) = acc[d] - dsum * pk[d];
      });
  // Pass 2, per key row and kv head (key rows vary fastest; every thread of a warp starts its
  // query walk at the warp's first key row, so they read the same query row: broadcast): dk and
  // dv summed over the queries (and heads) that see the key.
  Kokkos::parallel_for(
      "openmoe::kernels::CausalAttentionBackward.dkdv", FlatRange(space, B * S * Nkv), KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t j = idx % S, g = (idx / S) % Nkv, b = idx / (Nkv * S);
        const int64_t kc = g * Dh;
        float k_row[kMaxHeadDim], v_row[kMaxHeadDim], dk_row[kMaxHeadDim], dv_row[kMaxHeadDim];
        for (int64_t d = 0; d < Dh; ++d) k_row[d] = k(b, j, kc + d), v_row[d] = v(b, j, kc + d), dk_row[d] = dv_row[d] = 0.0f;
        for (int64_t h = g * group; h < (g + 1) * group; ++h) {
          const int64_t qc = h * Dh;
          for (int64_t i = j - j % 32; i < S; ++i) {
            if (i < j || !visible(b, i, j)) continue;
            float s = 0.0f, dp = 0.0f;
            for (int64_t d = 0; d < Dh; ++d) s += q(b, i, qc + d) * k_row[d], dp += dout(b, i, qc + d) * v_row[d];
            const float p  = Kokkos::Experimental::exp(s - lse(b, i, h));
            const float ds = p * (dp - delta(b, i, h));
            for (int64_t d = 0; d < Dh; ++d) dk_row[d] += ds * q(b, i, qc + d), dv_row[d] += p * dout(b, i, qc + d);
          }
        }
        for (int64_t d = 0; d < Dh; ++d) dk(b, j, kc + d) = dk_row[d], dv(b, j, kc + d) = dv_row[d];
      });
  return absl::OkStatus();
}

template <class ExecSpace>
absl::Status EmbeddingBackward(const ExecSpace& space, ConstVector<int64_t, ExecSpace> ids,
                               ConstMatrix<float, ExecSpace> dh, int64_t pad_id, Matrix<float, ExecSpace> dtable) {
  const int64_t N = ids.extent(0), H = dh.extent(1), V = dtable.extent(0);
  if (dh.extent(0) != size_t(N) || dtable.extent(1) != size_t(H)) {
    return absl::InvalidArgumentError("EmbeddingBackward: dh must be [N, H] and dtable [V, H]");
  }
  Kokkos::parallel_for(
      "openmoe::kernels::EmbeddingBackward", FlatRange(space, H), KOKKOS_LAMBDA(const int64_t h) {
        for (int64_t t = 0; t < N; ++t) {  // tokens in order: deterministic sums
          const int64_t id = ids(t);
          if (id != pad_id && id >= 0 && id < V) dtable(id, h) += dh(t, h);
        }
      });
  return absl::OkStatus();
}

namespace {
// ---- LmLossBackward ----
// Each row of logits is cut into segments of kLossSegment logits (the last one shorter), one team
// of kLossThreads GPU threads each: at R = 256 rows of V = 256,384, 256 x 32 teams of 8 packs of
// 4 floats per thread (one team per row gave 256 blocks for 132 SMs).
constexpr int kLossSegment = 8192;
constexpr int kLossThreads = 256;
constexpr int kLossBatch = 4;  // packs a thread loads before it uses the first (loads in flight)

// Partial sums of a stretch of a row: the largest logit, sum exp(x - max) and sum x.
struct LogitSums {
  double max = -FLT_MAX;
  double sum_exp = 0, sum = 0;
};

// One thread's LogitSums, built online (one read of each logit): exp in float32, each pack's four
// terms summed in float32, the running sums in double (relative error ~1e-7 on sum_exp).
struct OnlineLogitSums {
  float max = -FLT_MAX;
  double sum_exp = 0, sum = 0;

  KOKKOS_INLINE_FUNCTION void Rescale(float new_max) {  // new_max >= max
    sum_exp *= Kokkos::Experimental::exp(double(max) - double(new_max));
    max = new_max;
  }
  KOKKOS_INLINE_FUNCTION void Add(float x) {
    if (x > max) Rescale(x);
    sum_exp += double(Kokkos::Experimental::exp(x - max));
    sum += double(x);
  }
  KOKKOS_INLINE_FUNCTION void Add(const Pack<float>& p) {
    const float m = Kokkos::Experimental::fmax(Kokkos::Experimental::fmax(p.v[0], p.v[1]),
                                               Kokkos::Experimental::fmax(p.v[2], p.v[3]));
    if (m > max) Rescale(m);
    float pack_exp = 0.0f, pack_sum = 0.0f;
    for (int e = 0; e < Pack<float>::kSize; ++e) {
      pack_exp += Kokkos::Experimental::exp(p.v[e] - max);
      pack_sum += p.v[e];
    }
    sum_exp += double(pack_exp), sum += double(pack_sum);
  }
  // The team's sums, in every thread (team reductions: a fixed order for a fixed team size).
  template <class Member>
  KOKKOS_INLINE_FUNCTION LogitSums OverTeam(const Member& team) {
    float team_max = max;
    team.team_reduce(Kokkos::Max<float>(team_max));
    team.team_barrier();
    Rescale(team_max);
    team.team_reduce(Kokkos::Sum<double>(sum_exp));
    team.team_barrier();
    team.team_reduce(Kokkos::Sum<double>(sum));
    team.team_barrier();
    LogitSums sums;
    sums.max = max, sums.sum_exp = sum_exp, sums.sum = sum;
    return sums;
  }
};

// What the gradient pass needs of a row: dloss/dlogit_v = grad_scale * (softmax_v (1 + 2 z logZ)
// - target_v) = exp(x_v - max) * coefficient - grad_scale * target_v.
struct RowScale {
  double max = 0;          // the row's largest logit (a float32 value)
  double coefficient = 0;  // grad_scale * (1 + 2 z logZ) / sum_v exp(x_v - max)
};

// The team thread's share of row[begin, end) (T: float or const float): pack(p, x) for its 16-byte
// packs p, x holding their 4 logits, kLossBatch packs loaded before the first call (the compiler
// may not move a load above a store to the same row); for a non-const row, x is stored back after
// the call. Then scalar(v) for its elements after the last whole pack. packed: the row is 16-byte
// aligned and begin a multiple of 4 (otherwise scalar(v) for every element). Threads stride by the
// team size (coalesced).
template <class T, class Member, class PackFn, class ScalarFn>
KOKKOS_INLINE_FUNCTION void ForEachOfSegment(const Member& team, T* row, bool packed, int begin, int end,
                                             const PackFn& pack, const ScalarFn& scalar) {
  using P = Pack<float>;
  constexpr bool kStore = !std::is_const_v<T>;
  const int step = team.team_size();
  int tail = begin;
  if (packed) {
    using PackPointer = std::conditional_t<kStore, P*, const P*>;
    const PackPointer packs = reinterpret_cast<PackPointer>(row);
    const int first = begin / P::kSize, last = first + (end - begin) / P::kSize;
    for (int base = first + team.team_rank(); base < last; base += kLossBatch * step) {
      P x[kLossBatch];
      for (int u = 0; u < kLossBatch; ++u) {
        if (base + u * step < last) x[u] = packs[base + u * step];
      }
      for (int u = 0; u < kLossBatch; ++u) {
        const int p = base + u * step;
        if (p >= last) break;
        pack(p, x[u]);
        if constexpr (kStore) packs[p] = x[u];
      }
    }
    tail = begin + (last - first) * P::kSize;
  }
  for (int v = tail + team.team_rank(); v < end; v += step) scalar(v);
}

// Pass 1: partial [R * segments] = LogitSums of each row segment (rows with label < 0 skipped).
template <class ExecSpace>
void LmLossSegmentSums(const ExecSpace& space, ConstMatrix<float, ExecSpace> logits,
                       ConstVector<int64_t, ExecSpace> labels, int segments, bool packed,
                       Kokkos::View<LogitSums*, typename ExecSpace::memory_space> partial) {
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  const int V = int(logits.extent(1));
  Kokkos::parallel_for(
      "openmoe::kernels::LmLossBackward.sums", RowTeams(space, int64_t(logits.extent(0)) * segments, kLossThreads),
      KOKKOS_LAMBDA(const Member& team) {
        const int r = team.league_rank() / segments, segment = team.league_rank() % segments;
        if (labels(r) < 0) return;
        const int begin = segment * kLossSegment, end = V - begin < kLossSegment ? V : begin + kLossSegment;
        const float* row = &logits(r, 0);
        OnlineLogitSums sums;
        ForEachOfSegment(
            team, row, packed, begin, end, [&](const int, const Pack<float>& x) { sums.Add(x); },
            [&](const int v) { sums.Add(row[v]); });
        const LogitSums total = sums.OverTeam(team);
        Kokkos::single(Kokkos::PerTeam(team), [&]() { partial(team.league_rank()) = total; });
      });
}

// Pass 2, a team per row, its threads over the segments: logZ, loss [R] and RowScale [R].
template <class ExecSpace>
void LmLossRows(const ExecSpace& space, ConstMatrix<float, ExecSpace> logits, ConstVector<int64_t, ExecSpace> labels,
                int segments, Kokkos::View<const LogitSums*, typename ExecSpace::memory_space> partial,
                double label_smoothing, double z_loss_factor, double grad_scale, Vector<double, ExecSpace> loss,
                Kokkos::View<RowScale*, typename ExecSpace::memory_space> scale) {
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  const int64_t V = logits.extent(1);
  const double ls = label_smoothing, off = ls / double(V - 1), z = z_loss_factor;
  const double constant = -((1 - ls) * std::log(1 - ls) + double(V - 1) * off * std::log(off + 1e-20));
  Kokkos::parallel_for(
      "openmoe::kernels::LmLossBackward.rows", RowTeams(space, logits.extent(0), 32), KOKKOS_LAMBDA(const Member& team) {
        const int r = team.league_rank();
        const int64_t label = labels(r);
        if (label < 0) {
          Kokkos::single(Kokkos::PerTeam(team), [&]() { loss(r) = 0.0, scale(r) = RowScale(); });
          return;
        }
        const LogitSums* part = &partial(int64_t(r) * segments);  // [segments]
        double max = -DBL_MAX, sum_exp = 0.0, sum_logits = 0.0;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, segments),
            [&](const int s, double& m) { m = part[s].max > m ? part[s].max : m; }, Kokkos::Max<double>(max));
        team.team_barrier();
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, segments),
            [&](const int s, double& acc) { acc += part[s].sum_exp * Kokkos::Experimental::exp(part[s].max - max); },
            sum_exp);
        team.team_barrier();
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, segments), [&](const int s, double& acc) { acc += part[s].sum; }, sum_logits);
        team.team_barrier();
        Kokkos::single(Kokkos::PerTeam(team), [&]() {
          const double log_z = max + Kokkos::Experimental::log(sum_exp);
          const double label_term = double(logits(r, label)) - log_z, all_terms = sum_logits - double(V) * log_z;
          const double cross = (1 - ls) * label_term + off * (all_terms - label_term);
          loss(r) = -cross + z * log_z * log_z - constant;
          scale(r).max = max;
          scale(r).coefficient = grad_scale * (1.0 + 2.0 * z * log_z) / sum_exp;
        });
      });
}

// Pass 3, teams as pass 1: logits become the gradient (each logit read and written by one thread;
// exp in float32, the rest in double); rows with label < 0 become 0.
template <class ExecSpace>
void LmLossGradient(const ExecSpace& space, Matrix<float, ExecSpace> logits, ConstVector<int64_t, ExecSpace> labels,
                    int segments, bool packed, Kokkos::View<const RowScale*, typename ExecSpace::memory_space> scale,
                    double label_smoothing, double grad_scale) {
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  const int V = int(logits.extent(1));
  const double on_label = grad_scale * (1 - label_smoothing), off_label = grad_scale * label_smoothing / double(V - 1);
  Kokkos::parallel_for(
      "openmoe::kernels::LmLossBackward.gradient", RowTeams(space, int64_t(logits.extent(0)) * segments, kLossThreads),
      KOKKOS_LAMBDA(const Member& team) {
        const int r = team.league_rank() / segments, segment = team.league_rank() % segments;
        const int begin = segment * kLossSegment, end = V - begin < kLossSegment ? V : begin + kLossSegment;
        float* row = &logits(r, 0);
        const int64_t label64 = labels(r);
        if (label64 < 0) {
          ForEachOfSegment(
              team, row, packed, begin, end, [&](const int, Pack<float>& x) { x = Pack<float>{}; },
              [&](const int v) { row[v] = 0.0f; });
          return;
        }
        const int label = int(label64);
        const float max = float(scale(r).max);
        const double coefficient = scale(r).coefficient;
        auto gradient = [&](const int v, const float x) {
          return float(double(Kokkos::Experimental::exp(x - max)) * coefficient - (v == label ? on_label : off_label));
        };
        ForEachOfSegment(
            team, row, packed, begin, end,
            [&](const int p, Pack<float>& x) {
              for (int e = 0; e < Pack<float>::kSize; ++e) x.v[e] = gradient(p * Pack<float>::kSize + e, x.v[e]);
            },
            [&](const int v) { row[v] = gradient(v, row[v]); });
      });
}

// ---- CombineBackward ----
constexpr int kCombineThreads = 256;  // GPU threads of a token's team (over H)

}  // namespace

template <class ExecSpace>
absl::Status LmLossBackward(const ExecutionContext<ExecSpace>& ctx, Matrix<float, ExecSpace> logits,
                            ConstVector<int64_t, ExecSpace> labels, double label_smoothing, double z_loss_factor,
                            Vector<double, ExecSpace> loss, double grad_scale) {
  const ExecSpace& space = ctx.space();
  const int64_t R = logits.extent(0), V = logits.extent(1);
  if (labels.extent(0) != size_t(R) || loss.extent(0) != size_t(R) || V < 2) {
    return absl::InvalidArgumentError("LmLossBackward: labels and loss must have one entry per logits row");
  }
  if (R == 0) return absl::OkStatus();
  const int64_t segments = (V + kLossSegment - 1) / kLossSegment;
  if (V > INT32_MAX - kLossSegment || R * segments > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("LmLossBackward: logits [", R, ", ", V, "] too large"));
  }
  // 16-byte packs where every row starts on a 16-byte boundary (segments start at multiples of 4).
  const bool packed = IsPackAligned(logits.data(), int64_t(logits.stride(0)));
  using MemSpace = typename ExecSpace::memory_space;
  // The context's scratch (of doubles, kept between calls): the segments' LogitSums [R * segments],
  // then RowScale [R].
  static_assert(sizeof(LogitSums) == 3 * sizeof(double) && sizeof(RowScale) == 2 * sizeof(double));
  auto scratch = ctx.template Scratch<double>("lm_loss.scratch", size_t(R * segments * 3 + R * 2));
  Kokkos::View<LogitSums*, MemSpace> partial(reinterpret_cast<LogitSums*>(scratch.data()), R * segments);
  Kokkos::View<RowScale*, MemSpace> scale(reinterpret_cast<RowScale*>(scratch.data() + R * segments * 3), R);
  LmLossSegmentSums(space, ConstMatrix<float, ExecSpace>(logits), labels, int(segments), packed, partial);
  LmLossRows(space, ConstMatrix<float, ExecSpace>(logits), labels, int(segments),
             Kokkos::View<const LogitSums*, MemSpace>(partial), label_smoothing, z_loss_factor, grad_scale, loss, scale);
  LmLossGradient(space, logits, labels, int(segments), packed, Kokkos::View<const RowScale*, MemSpace>(scale),
                 label_smoothing, grad_scale);
  return absl::OkStatus();
}

template <class ExecSpace>
absl::Status CombineBackward(const ExecSpace& space, ConstMatrix<float, ExecSpace> dy,
                             ConstMatrix<float, ExecSpace> expert_out, ConstMatrix<float, ExecSpace> probs,
                             ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,
                             int64_t capacity, Matrix<float, ExecSpace> d_expert_out, Matrix<float, ExecSpace> dprobs) {
  const int64_t N = dy.extent(0), H = dy.extent(1), E = probs.extent(1);
  if (expert_out.extent(1) != size_t(H) || d_expert_out.extent(0) != expert_out.extent(0) ||
      dprobs.extent(0) != size_t(N) || dprobs.extent(1) != size_t(E)) {
    return absl::InvalidArgumentError("CombineBackward: expert_out [E*C, H], probs/dprobs [N, E] and dy [N, H] must agree");
  }
  ZeroFill(space, d_expert_out);  // (Kokkos 3.4's 2-D deep_copy(m, 0) ran at ~200 GB/s on an H100)
  ZeroFill(space, dprobs);
  if (N == 0) return absl::OkStatus();
  if (H > INT32_MAX) return absl::InvalidArgumentError(absl::StrCat("CombineBackward: H = ", H, " too large"));
  // One team per token, its threads over H: for each kept assignment (e, slot), the row e*C + slot
  // of d_expert_out = probs(t, e) dy[t] and dprobs(t, e) = dy[t] . expert_out[e*C + slot] (a team
  // reduction: fixed order). The two experts of a token differ, kept slots are unique: no overlap.
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  const int width = int(H);
  Kokkos::parallel_for(
      "openmoe::kernels::CombineBackward", RowTeams(space, N, kCombineThreads), KOKKOS_LAMBDA(const Member& team) {
        const int t = team.league_rank();
        for (int k = 0; k < 2; ++k) {
          const int32_t e = experts(t, k), slot = rank(t, k);
          if (slot >= capacity) continue;  // dropped: the whole team skips it
          const int64_t row = int64_t(e) * capacity + slot;
          const float p = probs(t, e);
          float dot = 0.0f;
          Kokkos::parallel_reduce(
              Kokkos::TeamThreadRange(team, width),
              [&](const int h, float& acc) {
                const float g = dy(t, h);
                acc += g * expert_out(row, h);
                d_expert_out(row, h) = p * g;
              },
              dot);
          team.team_barrier();
          Kokkos::single(Kokkos::PerTeam(team), [&]() { dprobs(t, e) = dot; });
        }
      });
  return absl::OkStatus();
}

template <class ExecSpace>
absl::Status DispatchBackward(const ExecSpace& space, ConstMatrix<float, ExecSpace> d_dispatched,
                              ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,
                              int64_t capacity, Matrix<float, ExecSpace> dx) {
  const int64_t N = dx.extent(0), H = dx.extent(1);
  if (d_dispatched.extent(1) != size_t(H)) return absl::InvalidArgumentError("DispatchBackward: widths differ");
  Kokkos::parallel_for(
      "openmoe::kernels::DispatchBackward", FlatRange(space, N * H), KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t t = idx / H, h = idx % H;
        float acc = dx(t, h);
        for (int k = 0; k < 2; ++k) {
          const int32_t slot = rank(t, k);
          if (slot < capacity) acc += d_dispatched(experts(t, k) * capacity + slot, h);
        }
        dx(t, h) = acc;
      });
  return absl::OkStatus();
}

template <class ExecSpace>
absl::Status RouterLossBackward(const ExecSpace& space, ConstMatrix<float, ExecSpace> logits,
                                ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<float, ExecSpace> dprobs,
                                double aux_weight, double z_weight, double grad_scale, Matrix<float, ExecSpace> d_logits,
                                Kokkos::View<double*, typename ExecSpace::memory_space> parts) {
  using MemSpace = typename ExecSpace::memory_space;
  const int64_t N = logits.extent(0), E = logits.extent(1);
  if (N == 0 || E < 2 || experts.extent(0) != size_t(N) || experts.extent(1) != 2 || dprobs.extent(0) != size_t(N) ||
      dprobs.extent(1) != size_t(E) || d_logits.extent(0) != size_t(N) || d_logits.extent(1) != size_t(E) ||
      parts.extent(0) < 2) {
    return absl::InvalidArgumentError(absl::StrCat("RouterLossBackward: logits [", N, ", ", E, "] with experts [",
                                                   experts.extent(0), ", ", experts.extent(1), "], dprobs [",
                                                   dprobs.extent(0), ", ", dprobs.extent(1), "], d_logits [",
                                                   d_logits.extent(0), ", ", d_logits.extent(1), "], parts [",
                                                   parts.extent(0), "]: need N > 0, E >= 2, [N, 2], [N, E], [N, E], [2]"));
  }
  Kokkos::View<double*, MemSpace> log_z(Kokkos::view_alloc(Kokkos::WithoutInitializing, "router.log_z"), N);  // [N]
  Kokkos::View<double*, MemSpace> fraction(Kokkos::view_alloc(Kokkos::WithoutInitializing, "router.fraction"), E);  // [E]
  Kokkos::View<double*, MemSpace> mean_prob(Kokkos::view_alloc(Kokkos::WithoutInitializing, "router.mean_prob"), E);  // [E]
  Kokkos::parallel_for(
      "openmoe::kernels::RouterLogZ", FlatRange(space, N), KOKKOS_LAMBDA(const int64_t t) {
        double max_logit = logits(t, 0);
        for (int64_t e = 1; e < E; ++e) max_logit = max_logit > logits(t, e) ? max_logit : double(logits(t, e));
        double sum = 0;
        for (int64_t e = 0; e < E; ++e) sum += Kokkos::Experimental::exp(double(logits(t, e)) - max_logit);
        log_z(t) = max_logit + Kokkos::Experimental::log(sum);
      });
  // Per expert, over the tokens in order: f_e and P_e.
  using Team = Kokkos::TeamPolicy<ExecSpace>;
  Kokkos::parallel_for(
      "openmoe::kernels::RouterFractions", Team(space, E, Kokkos::AUTO), KOKKOS_LAMBDA(const typename Team::member_type& team) {
        const int64_t e = team.league_rank();
        double count = 0, prob = 0;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, N),
            [&](const int64_t t, double& c) { c += double(experts(t, 0) == e) + double(experts(t, 1) == e); }, count);
        team.team_barrier();  // see the note on team reductions at the top
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, N),
            [&](const int64_t t, double& p) { p += Kokkos::Experimental::exp(double(logits(t, e)) - log_z(t)); }, prob);
        Kokkos::single(Kokkos::PerTeam(team), [&]() { fraction(e) = count / double(N), mean_prob(e) = prob / double(N); });
      });
  // The two loss values: one team, its threads splitting the tokens (the z-sum over N was one
  // thread's loop before: N = 2048 serial iterations per MoE layer on a GPU).
  Kokkos::parallel_for(
      "openmoe::kernels::RouterLossParts", Team(space, 1, Kokkos::AUTO), KOKKOS_LAMBDA(const typename Team::member_type& team) {
        double balance = 0, z_sum = 0;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, E), [&](const int64_t e, double& b) { b += fraction(e) * mean_prob(e); }, balance);
        team.team_barrier();  // see the note on team reductions at the top
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, N), [&](const int64_t t, double& z) { z += log_z(t) * log_z(t); }, z_sum);
        Kokkos::single(Kokkos::PerTeam(team), [&]() { parts(0) = double(E) * balance, parts(1) = z_sum / double(N); });
      });
  const double aux_coefficient = grad_scale * aux_weight * double(E) / double(N);  // d aux / d P_e(t) = E f_e / N
  const double z_coefficient   = grad_scale * z_weight * 2.0 / double(N);         // d z / d logZ_t = 2 logZ_t / N
  Kokkos::parallel_for(
      "openmoe::kernels::RouterLossBackward", FlatRange(space, N), KOKKOS_LAMBDA(const int64_t t) {
        // Softmax backward: dlogit_e = p_e (dp_e - sum_j p_j dp_j), plus the z-loss term.
        double dot = 0;
        for (int64_t e = 0; e < E; ++e) {
          const double p = Kokkos::Experimental::exp(double(logits(t, e)) - log_z(t));
          dot += p * (double(dprobs(t, e)) + aux_coefficient * fraction(e));
        }
        for (int64_t e = 0; e < E; ++e) {
          const double p = Kokkos::Experimental::exp(double(logits(t, e)) - log_z(t));
          const double dp = double(dprobs(t, e)) + aux_coefficient * fraction(e);
          d_logits(t, e) = float(p * (dp - dot) + z_coefficient * log_z(t) * p);
        }
      });
  return absl::OkStatus();
}

#define OPENMOE_INSTANTIATE_BACKWARD(Space)                                                                        \
  template absl::Status RmsNormBackward<Space>(const ExecutionContext<Space>&, ConstMatrix<float, Space>, ConstVector<float, Space>,  \
                                               ConstMatrix<float, Space>, float, Matrix<float, Space>,             \
                                               Vector<float, Space>);                                              \
  template absl::Status SwigluBackward<Space>(const Space&, ConstMatrix<float, Space>, ConstMatrix<float, Space>,   \
                                              ConstMatrix<float, Space>, Matrix<float, Space>, Matrix<float, Space>); \
  template absl::Status SwigluBackwardFused<Space>(const Space&, ConstMatrix<float, Space>, ConstMatrix<float, Space>, \
                                                   Matrix<float, Space>);                                           \
  template absl::Status CausalAttentionBackward<Space>(                                                            \
      const ExecutionContext<Space>&, Tensor3<const float, Space>, Tensor3<const float, Space>, Tensor3<const float, Space>,         \
      Kokkos::View<const int64_t**, Kokkos::LayoutRight, typename Space::memory_space>, Tensor3<const float, Space>, \
      int64_t, int64_t, int64_t, Tensor3<float, Space>, Tensor3<float, Space>, Tensor3<float, Space>, bool);       \
  template absl::Status EmbeddingBackward<Space>(const Space&, ConstVector<int64_t, Space>, ConstMatrix<float, Space>, \
                                                 int64_t, Matrix<float, Space>);                                    \
  template absl::Status LmLossBackward<Space>(const ExecutionContext<Space>&, Matrix<float, Space>, ConstVector<int64_t, Space>,      \
                                              double, double, Vector<double, Space>, double);                              \
  template absl::Status CombineBackward<Space>(const Space&, ConstMatrix<float, Space>, ConstMatrix<float, Space>,  \
                                               ConstMatrix<float, Space>, ConstMatrix<int32_t, Space>,             \
                                               ConstMatrix<int32_t, Space>, int64_t, Matrix<float, Space>,          \
                                               Matrix<float, Space>);                                               \
  template absl::Status DispatchBackward<Space>(const Space&, ConstMatrix<float, Space>, ConstMatrix<int32_t, Space>, \
                                                ConstMatrix<int32_t, Space>, int64_t, Matrix<float, Space>);          \
  template absl::Status RouterLossBackward<Space>(const Space&, ConstMatrix<float, Space>, ConstMatrix<int32_t, Space>, \
                                                  ConstMatrix<float, Space>, double, double, double,                  \
                                                  Matrix<float, Space>, Kokkos::View<double*, typename Space::memory_space>);
OPENMOE_FOR_EACH_EXECUTION_SPACE(OPENMOE_INSTANTIATE_BACKWARD)

}  // namespace openmoe::kernels
