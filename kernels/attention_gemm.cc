#include "kernels/attention_gemm.h"

#include <algorithm>
#include <cfloat>
#include <type_traits>

#include "kernels/batched_gemm.h"
#include "kernels/buffer_pool.h"
#include "kernels/instantiate.h"
#include "kernels/launch.h"
#include "openmoe/core/status_macros.h"

namespace openmoe::kernels {
namespace {

constexpr int64_t kGemmMinQueryRows = 16;


template <class ExecSpace>
using MaskView = Kokkos::View<const int64_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space>;

// The products below run per batch row over the heads h = kv * group + r: one call per r, batched
// over the kv heads. Row-major operands, leading dimensions in elements:
//   x [rows, Nh*Dh] (q, dout),  y [keys, Nkv*Dh] (k, v),  p [Nh, rows, keys] (scores, probs).
struct HeadGeometry {
  int64_t rows, keys, head_dim, num_kv_heads, group;
  bool tf32 = false;  // float products on TF32 tensor cores (BatchedGemmShape::tf32)
};

// p[h] [rows, keys] = x_h [rows, Dh] . y_kv [keys, Dh]^T.
template <class T, class TOut, class ExecSpace>
absl::Status RowsTimesKeysT(const ExecutionContext<ExecSpace>& ctx, const HeadGeometry& g, const T* x, int64_t ldx, const T* y,
                            int64_t ldy, TOut* p) {
  const auto& space = ctx.space();
  BatchedGemmShape s;
  s.trans_a = true, s.m = g.keys, s.n = g.rows, s.k = g.head_dim;
  s.lda = ldy, s.ldb = ldx, s.ldc = g.keys;
  s.stride_a = g.head_dim, s.stride_b = g.group * g.head_dim, s.stride_c = g.group * g.rows * g.keys;
  s.batch = g.num_kv_heads, s.tf32 = g.tf32;
  for (int64_t r = 0; r < g.group; ++r) {
    OPENMOE_RETURN_IF_ERROR(
        (StridedBatchedGemm<T, TOut, ExecSpace>(ctx, s, y, x + r * g.head_dim, p + r * g.rows * g.keys)));
  }
  return absl::OkStatus();
}

// out_h [rows, Dh] (leading dimension ldo) (+)= p[h] [rows, keys] . y_kv [keys, Dh].
template <class T, class TOut, class ExecSpace>
absl::Status ProbsTimesKeys(const ExecutionContext<ExecSpace>& ctx, const HeadGeometry& g, const T* p, const T* y, int64_t ldy,
                            TOut* out, int64_t ldo, bool accumulate = false) {
  const auto& space = ctx.space();
  BatchedGemmShape s;
  s.m = g.head_dim, s.n = g.rows, s.k = g.keys;
  s.lda = ldy, s.ldb = g.keys, s.ldc = ldo;
  s.stride_a = g.head_dim, s.stride_b = g.group * g.rows * g.keys, s.stride_c = g.group * g.head_dim;
  s.batch = g.num_kv_heads, s.beta = accumulate ? 1.0f : 0.0f, s.tf32 = g.tf32;
  for (int64_t r = 0; r < g.group; ++r) {
    OPENMOE_RETURN_IF_ERROR(
        (StridedBatchedGemm<T, TOut, ExecSpace>(ctx, s, y, p + r * g.rows * g.keys, out + r * g.head_dim)));
  }
  return absl::OkStatus();
}

// out_kv [keys, Dh] (leading dimension ldo) += sum over the group's heads of p[h]^T . x_h [rows, Dh].
template <class ExecSpace>
absl::Status AddProbsTTimesRows(const ExecutionContext<ExecSpace>& ctx, const HeadGeometry& g, const float* p, const float* x,
                                int64_t ldx, float* out, int64_t ldo) {
  const auto& space = ctx.space();
  BatchedGemmShape s;
  s.trans_b = true, s.m = g.head_dim, s.n = g.keys, s.k = g.rows;
  s.lda = ldx, s.ldb = g.keys, s.ldc = ldo;
  s.stride_a = g.group * g.head_dim, s.stride_b = g.group * g.rows * g.keys, s.stride_c = g.head_dim;
  s.batch = g.num_kv_heads, s.beta = 1.0f, s.tf32 = g.tf32;
  for (int64_t r = 0; r < g.group; ++r) {
    OPENMOE_RETURN_IF_ERROR(
        (StridedBatchedGemm<float, float, ExecSpace>(ctx, s, x + r * g.head_dim, p + r * g.rows * g.keys, out)));
  }
  return absl::OkStatus();
}

// probs[row] = softmax over the visible keys of scores[row] (0 elsewhere), rows = heads x chunk
// rows; the query of chunk row i is at position first_position + i. probs may alias scores.
// With probs_low (bf16), each weight is stored as two bf16 values, probs + probs_low, whose sum
// keeps 16 significant bits: P.V as hi.V + lo.V then has the accuracy of float P.
template <class TP, class ExecSpace>
void MaskedSoftmax(const ExecSpace& space, const float* scores, TP* probs, TP* probs_low, MaskView<ExecSpace> mask,
                   int64_t b, const HeadGeometry& g, int64_t first_position) {
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  const int64_t rows = g.rows, keys = g.keys;
  DependentParallelFor(
      "openmoe::kernels::GemmAttention.softmax", RowTeams(space, g.num_kv_heads * g.group * rows, 256),
      KOKKOS_LAMBDA(const Member& team) {
        const int64_t row = team.league_rank(), position = first_position + row % rows;
        const int64_t visible_end = position + 1 < keys ? position + 1 : keys;  // causal
        const float* s = scores + row * keys;
        TP* p = probs + row * keys;
        float max_score = -FLT_MAX;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, visible_end),
            [&](const int64_t j, float& m) {
              if ((j == 0 || mask(b, j) != 0) && s[j] > m) m = s[j];
            },
            Kokkos::Max<float>(max_score));
        // Kokkos 3.4 (CUDA) hands a team reduction's result back through one shared buffer and returns
        // without a barrier: the next reduction must not overwrite it before every thread has read it.
        team.team_barrier();
        float sum = 0.0f;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, visible_end),
            [&](const int64_t j, float& acc) {
              if (j == 0 || mask(b, j) != 0) acc += Kokkos::Experimental::exp(s[j] - max_score);
            },
            sum);
        const float inv_sum = 1.0f / sum;
        team.team_barrier();  // every read of s before any write of p (they may alias)
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, keys), [&](const int64_t j) {
          const bool visible = j < visible_end && (j == 0 || mask(b, j) != 0);
          const float weight = visible ? Kokkos::Experimental::exp(s[j] - max_score) * inv_sum : 0.0f;
          const TP high = FromFloat<TP>(weight);
          p[j] = high;
          if (probs_low != nullptr) probs_low[row * keys + j] = FromFloat<TP>(weight - ToFloat(high));
        });
      });
}

// grad[row] = probs[row] * (grad[row] - probs[row] . grad[row]): dP becomes dS in place.
template <class ExecSpace>
void SoftmaxBackward(const ExecSpace& space, const float* probs, float* grad, int64_t rows, int64_t keys) {
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  DependentParallelFor(
      "openmoe::kernels::GemmAttention.softmax_backward", RowTeams(space, rows, 256),
      KOKKOS_LAMBDA(const Member& team) {
        const float* p = probs + team.league_rank() * keys;
        float* g = grad + team.league_rank() * keys;
        float dot = 0.0f;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, keys), [&](const int64_t j, float& acc) { acc += p[j] * g[j]; }, dot);
        team.team_barrier();
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, keys), [&](const int64_t j) { g[j] = p[j] * (g[j] - dot); });
      });
}

// out[i] = round(sum[i]) for i < count (a function of its own: nvcc forbids device lambdas under
// if constexpr).
template <class T, class ExecSpace>
void RoundInto(const ExecSpace& space, const float* sum, T* out, int64_t count) {
  DependentParallelFor("openmoe::kernels::GemmAttention.round", FlatRange(space, count),
                       KOKKOS_LAMBDA(const int64_t i) { out[i] = FromFloat<T>(sum[i]); });
}

// Query rows per chunk: the scores of all heads for the chunk stay within max_score_elements.
int64_t ChunkRows(const Tuning& tuning, int64_t num_heads, int64_t query_rows, int64_t keys) {
  return std::clamp<int64_t>(tuning.max_score_elements / std::max<int64_t>(1, num_heads * keys), 1, query_rows);
}

}  // namespace


template <class ExecSpace>
bool UseGemmAttention(const Tuning& tuning, int64_t query_rows) {
  if (tuning.attention_path != AttentionPath::kAuto) return tuning.attention_path == AttentionPath::kGemm;
  return std::is_same_v<typename ExecSpace::memory_space, Kokkos::HostSpace> ? false
                                                                              : query_rows >= kGemmMinQueryRows;
}

template <class T, class ExecSpace>
absl::Status GemmAttention(const ExecutionContext<ExecSpace>& ctx, Tensor3<const T, ExecSpace> q, Tensor3<const T, ExecSpace> k,
                           Tensor3<const T, ExecSpace> v, MaskView<ExecSpace> key_mask, int64_t num_heads,
                           int64_t num_kv_heads, int64_t head_dim, int64_t num_keys, int64_t q_offset,
                           Tensor3<T, ExecSpace> out) {
  const auto& space = ctx.space();
  using MemSpace = typename ExecSpace::memory_space;
  const int64_t B = q.extent(0), Sq = q.extent(1), Sk_max = k.extent(1);
  const int64_t Wq = num_heads * head_dim, Wkv = num_kv_heads * head_dim;
  const int64_t chunk = ChunkRows(ctx.tuning(), num_heads, Sq, num_keys);
  const int64_t score_count = num_heads * chunk * num_keys;
  auto scores = ctx.template Scratch<float>("attention_gemm.scores", score_count);
  // float: P in place of the scores, P.V written to out. bf16: P as two bf16 halves (MaskedSoftmax),
  // P.V summed in float32 (a chunk-sized buffer) and rounded once into out.
  constexpr bool kSplit = !std::is_same_v<T, float>;
  T* probs = nullptr;
  T* probs_low = nullptr;
  float* out_f = nullptr;
  if constexpr (kSplit) {
    probs     = ctx.template Scratch<T>("attention_gemm.probs", 2 * score_count).data();
    probs_low = probs + score_count;
    out_f     = ctx.template Scratch<float>("attention_gemm.out", chunk * Wq).data();
  } else {
    probs = reinterpret_cast<T*>(scores.data());
  }
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t q0 = 0; q0 < Sq; q0 += chunk) {
      const int64_t rows = std::min(chunk, Sq - q0);
      const HeadGeometry g{rows, std::min(num_keys, q_offset + q0 + rows), head_dim, num_kv_heads,
                           num_heads / num_kv_heads};
      const T* q_rows = q.data() + (b * Sq + q0) * Wq;
      OPENMOE_RETURN_IF_ERROR((RowsTimesKeysT<T, float, ExecSpace>(ctx, g, q_rows, Wq, k.data() + b * Sk_max * Wkv,
                                                                   Wkv, scores.data())));
      MaskedSoftmax<T, ExecSpace>(space, scores.data(), probs, probs_low, key_mask, b, g, q_offset + q0);
      const T* v_b = v.data() + b * Sk_max * Wkv;
      T* out_rows  = out.data() + (b * Sq + q0) * Wq;
      if constexpr (kSplit) {
        OPENMOE_RETURN_IF_ERROR((ProbsTimesKeys<T, float, ExecSpace>(ctx, g, probs, v_b, Wkv, out_f, Wq)));
        OPENMOE_RETURN_IF_ERROR(
            (ProbsTimesKeys<T, float, ExecSpace>(ctx, g, probs_low, v_b, Wkv, out_f, Wq, /*accumulate=*/true)));
        RoundInto<T, ExecSpace>(space, out_f, out_rows, rows * Wq);
      } else {
        OPENMOE_RETURN_IF_ERROR((ProbsTimesKeys<T, T, ExecSpace>(ctx, g, probs, v_b, Wkv, out_rows, Wq)));
      }
    }
  }
  return absl::OkStatus();
}

template <class ExecSpace>
absl::Status GemmAttentionBackward(const ExecutionContext<ExecSpace>& ctx, Tensor3<const float, ExecSpace> q,
                                   Tensor3<const float, ExecSpace> k, Tensor3<const float, ExecSpace> v,
                                   MaskView<ExecSpace> mask, Tensor3<const float, ExecSpace> dout, int64_t num_heads,
                                   int64_t num_kv_heads, int64_t head_dim, Tensor3<float, ExecSpace> dq,
                                   Tensor3<float, ExecSpace> dk, Tensor3<float, ExecSpace> dv, bool tf32_products) {
  const auto& space = ctx.space();
  using MemSpace = typename ExecSpace::memory_space;
  const int64_t B = q.extent(0), S = q.extent(1), Sk_max = k.extent(1);
  const int64_t Wq = num_heads * head_dim, Wkv = num_kv_heads * head_dim;
  const int64_t chunk = ChunkRows(ctx.tuning(), num_heads, S, S);
  auto probs = ctx.template Scratch<float>("attention_gemm.scores", num_heads * chunk * S);
  auto grad  = ctx.template Scratch<float>("attention_gemm.grad", num_heads * chunk * S);
  ZeroFill(space, dk);  // accumulated over the query chunks below
  ZeroFill(space, dv);
  for (int64_t b = 0; b < B; ++b) {
    const float* k_b = k.data() + b * Sk_max * Wkv;
    const float* v_b = v.data() + b * Sk_max * Wkv;
    for (int64_t q0 = 0; q0 < S; q0 += chunk) {
      const int64_t rows = std::min(chunk, S - q0);
      const HeadGeometry g{rows, q0 + rows, head_dim, num_kv_heads, num_heads / num_kv_heads,
                           tf32_products};
      const float* q_rows  = q.data() + (b * S + q0) * Wq;
      const float* do_rows = dout.data() + (b * S + q0) * Wq;
      OPENMOE_RETURN_IF_ERROR((RowsTimesKeysT<float, float, ExecSpace>(ctx, g, q_rows, Wq, k_b, Wkv, probs.data())));
      MaskedSoftmax<float, ExecSpace>(space, probs.data(), probs.data(), nullptr, mask, b, g, q0);
      OPENMOE_RETURN_IF_ERROR((RowsTimesKeysT<float, float, ExecSpace>(ctx, g, do_rows, Wq, v_b, Wkv, grad.data())));
      SoftmaxBackward<ExecSpace>(space, probs.data(), grad.data(), num_heads * rows, g.keys);
      OPENMOE_RETURN_IF_ERROR(AddProbsTTimesRows<ExecSpace>(ctx, g, probs.data(), do_rows, Wq, dv.data() + b * S * Wkv, Wkv));
      OPENMOE_RETURN_IF_ERROR(AddProbsTTimesRows<ExecSpace>(ctx, g, grad.data(), q_rows, Wq, dk.data() + b * S * Wkv, Wkv));
      OPENMOE_RETURN_IF_ERROR((ProbsTimesKeys<float, float, ExecSpace>(ctx, g, grad.data(), k_b, Wkv,
                                                                dq.data() + (b * S + q0) * Wq, Wq)));
    }
  }
  return absl::OkStatus();
}

#define OPENMOE_INSTANTIATE_GEMM_ATTENTION(Space, T)                                                              \
  template absl::Status GemmAttention<T, Space>(const ExecutionContext<Space>&, Tensor3<const T, Space>, Tensor3<const T, Space>,   \
                                                Tensor3<const T, Space>, MaskView<Space>, int64_t, int64_t, int64_t, \
                                                int64_t, int64_t, Tensor3<T, Space>);
OPENMOE_FOR_EACH_SPACE_AND_KERNEL_DTYPE(OPENMOE_INSTANTIATE_GEMM_ATTENTION)

#define OPENMOE_INSTANTIATE_GEMM_ATTENTION_BACKWARD(Space)                                                          \
  template bool UseGemmAttention<Space>(const Tuning&, int64_t);                                                                   \
  template absl::Status GemmAttentionBackward<Space>(                                                               \
      const ExecutionContext<Space>&, Tensor3<const float, Space>, Tensor3<const float, Space>, Tensor3<const float, Space>,          \
      MaskView<Space>, Tensor3<const float, Space>, int64_t, int64_t, int64_t, Tensor3<float, Space>,                \
      Tensor3<float, Space>, Tensor3<float, Space>, bool);
OPENMOE_FOR_EACH_EXECUTION_SPACE(OPENMOE_INSTANTIATE_GEMM_ATTENTION_BACKWARD)

}  // namespace openmoe::kernels
