#include "kernels/attention_gemm.h"

#include <algorithm>
#include <cfloat>
#include <type_traits>

#include "kernels/batched_gemm.h"
#include "kernels/buffer_pool.h"
#include "kernels/elementwise.h"
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

// Rows of the softmax kernels per team: on CUDA one warp per row (the row's keys over 32 lanes,
// its reductions as warp shuffles, no block barrier), 8 warps per block.
constexpr int kSoftmaxRowsPerTeam = 8;

template <class ExecSpace>
Kokkos::TeamPolicy<ExecSpace> SoftmaxTeams(const ExecSpace& space, int64_t rows) {
  return WarpTeams(space, (rows + kSoftmaxRowsPerTeam - 1) / kSoftmaxRowsPerTeam, kSoftmaxRowsPerTeam);
}

// Keys a query sees under the causal rule: 0 .. position (at most `keys`).
KOKKOS_INLINE_FUNCTION int64_t CausalKeys(int64_t position, int64_t keys) {
  return position + 1 < keys ? position + 1 : keys;
}

// probs[row] = softmax over the visible keys of scores[row] (0 elsewhere), rows = heads x chunk
// rows; the query of chunk row i is at position first_position + i. probs may alias scores.
// With probs_low (bf16), each weight is stored as two bf16 values, probs + probs_low, whose sum
// keeps 16 significant bits: P.V as hi.V + lo.V then has the accuracy of float P.
// Scores past the causal end are never read (about half of them in training and prefill).
template <class TP, class ExecSpace>
void MaskedSoftmaxLoops(const ExecSpace& space, const float* scores, TP* probs, TP* probs_low, MaskView<ExecSpace> mask,
                        int64_t b, const HeadGeometry& g, int64_t first_position) {
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  const int64_t rows = g.rows, keys = g.keys, total_rows = g.num_kv_heads * g.group * rows;
  DependentParallelFor(
      "openmoe::kernels::GemmAttention.softmax", SoftmaxTeams(space, total_rows), KOKKOS_LAMBDA(const Member& team) {
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, kSoftmaxRowsPerTeam), [&](const int r) {
          const int64_t row = team.league_rank() * kSoftmaxRowsPerTeam + r;
          if (row >= total_rows) return;
          const int64_t visible_end = CausalKeys(first_position + row % rows, keys);
          const float* s = scores + row * keys;
          TP* p = probs + row * keys;
          float max_score = -FLT_MAX;
          Kokkos::parallel_reduce(
              Kokkos::ThreadVectorRange(team, visible_end),
              [&](const int64_t j, float& m) {
                if ((j == 0 || mask(b, j) != 0) && s[j] > m) m = s[j];
              },
              Kokkos::Max<float>(max_score));
          float sum = 0.0f;
          Kokkos::parallel_reduce(
              Kokkos::ThreadVectorRange(team, visible_end),
              [&](const int64_t j, float& acc) {
                if (j == 0 || mask(b, j) != 0) acc += Kokkos::Experimental::exp(s[j] - max_score);
              },
              sum);
          const float inv_sum = 1.0f / sum;
          // (Each lane writes only the keys it read itself, so aliasing p and s is safe.)
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, keys), [&](const int64_t j) {
            const bool visible = j < visible_end && (j == 0 || mask(b, j) != 0);
            const float weight = visible ? Kokkos::Experimental::exp(s[j] - max_score) * inv_sum : 0.0f;
            const TP high = FromFloat<TP>(weight);
            p[j] = high;
            if (probs_low != nullptr) probs_low[row * keys + j] = FromFloat<TP>(weight - ToFloat(high));
          });
        });
      });
}

// The same on CUDA for rows of at most 32 x kPerLane keys, the row held in registers: lane l
// loads keys l, l + 32, ... all at once (the loops above wait for one load per step: at 512 keys
// a row took ~20 us of latency), then max, sum and the weights come from registers, the
// reductions as warp shuffles.
template <int kPerLane, class TP, class ExecSpace>
void MaskedSoftmaxInRegisters(const ExecSpace& space, const float* scores, TP* probs, TP* probs_low,
                              MaskView<ExecSpace> mask, int64_t b, const HeadGeometry& g, int64_t first_position) {
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  const int64_t rows = g.rows, keys = g.keys, total_rows = g.num_kv_heads * g.group * rows;
  DependentParallelFor(
      "openmoe::kernels::GemmAttention.softmax_registers", SoftmaxTeams(space, total_rows),
      KOKKOS_LAMBDA(const Member& team) {
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, kSoftmaxRowsPerTeam), [&](const int r) {
          const int64_t row = team.league_rank() * kSoftmaxRowsPerTeam + r;
          if (row >= total_rows) return;
          const int64_t visible_end = CausalKeys(first_position + row % rows, keys);
          const float* s = scores + row * keys;
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, 32), [&](const int lane) {
            float w[kPerLane];  // score, then weight, of key lane + 32 i; -FLT_MAX: not visible
            float max_score = -FLT_MAX;
            for (int i = 0; i < kPerLane; ++i) {
              const int64_t j = lane + 32 * int64_t(i);
              w[i] = j < visible_end && (j == 0 || mask(b, j) != 0) ? s[j] : -FLT_MAX;
            }
            for (int i = 0; i < kPerLane; ++i) max_score = w[i] > max_score ? w[i] : max_score;
            for (int m = 16; m >= 1; m /= 2) {
              const float other = LaneXor(max_score, m);
              max_score = other > max_score ? other : max_score;
            }
            float sum = 0.0f;
            for (int i = 0; i < kPerLane; ++i) {
              w[i] = w[i] == -FLT_MAX ? 0.0f : Kokkos::Experimental::exp(w[i] - max_score);
              sum += w[i];
            }
            for (int m = 16; m >= 1; m /= 2) sum += LaneXor(sum, m);
            const float inv_sum = 1.0f / sum;
            // Each lane writes only the keys it loaded itself, so p may alias s.
            TP* p = probs + row * keys;
            for (int i = 0; i < kPerLane; ++i) {
              const int64_t j = lane + 32 * int64_t(i);
              if (j >= keys) break;
              const float weight = w[i] != 0.0f ? w[i] * inv_sum : 0.0f;  // exact 0 past the end, NaN rows too
              const TP high = FromFloat<TP>(weight);
              p[j] = high;
              if (probs_low != nullptr) probs_low[row * keys + j] = FromFloat<TP>(weight - ToFloat(high));
            }
          });
        });
      });
}

// MaskedSoftmax: the register kernel on CUDA where the keys fit it, the loops otherwise.
template <class TP, class ExecSpace>
void MaskedSoftmax(const ExecSpace& space, const float* scores, TP* probs, TP* probs_low, MaskView<ExecSpace> mask,
                   int64_t b, const HeadGeometry& g, int64_t first_position) {
#if defined(KOKKOS_ENABLE_CUDA)
  if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda>) {
    if (g.keys <= 32 * 16) {
      return MaskedSoftmaxInRegisters<16, TP, ExecSpace>(space, scores, probs, probs_low, mask, b, g, first_position);
    }
    if (g.keys <= 32 * 64) {
      return MaskedSoftmaxInRegisters<64, TP, ExecSpace>(space, scores, probs, probs_low, mask, b, g, first_position);
    }
  }
#endif
  MaskedSoftmaxLoops<TP, ExecSpace>(space, scores, probs, probs_low, mask, b, g, first_position);
}

// grad[row] = probs[row] * (grad[row] - probs[row] . grad[row]): dP becomes dS in place. Rows as
// MaskedSoftmax's (heads x chunk rows from first_position): past the causal end P is 0, so dS
// is 0 there and neither P nor dP is read.
template <class ExecSpace>
void SoftmaxBackward(const ExecSpace& space, const float* probs, float* grad, const HeadGeometry& g,
                     int64_t first_position) {
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  const int64_t rows = g.rows, keys = g.keys, total_rows = g.num_kv_heads * g.group * rows;
  DependentParallelFor(
      "openmoe::kernels::GemmAttention.softmax_backward", SoftmaxTeams(space, total_rows),
      KOKKOS_LAMBDA(const Member& team) {
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, kSoftmaxRowsPerTeam), [&](const int r) {
          const int64_t row = team.league_rank() * kSoftmaxRowsPerTeam + r;
          if (row >= total_rows) return;
          const int64_t visible_end = CausalKeys(first_position + row % rows, keys);
          const float* p = probs + row * keys;
          float* d = grad + row * keys;
          float dot = 0.0f;
          Kokkos::parallel_reduce(
              Kokkos::ThreadVectorRange(team, visible_end), [&](const int64_t j, float& acc) { acc += p[j] * d[j]; },
              dot);
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, keys), [&](const int64_t j) {
            d[j] = j < visible_end ? p[j] * (d[j] - dot) : 0.0f;
          });
        });
      });
}

// out[i] = round(sum[i]) for i < count: the vectorised Convert over the flat buffers.
template <class T, class ExecSpace>
absl::Status RoundInto(const ExecSpace& space, const float* sum, T* out, int64_t count) {
  return Convert<float, T, ExecSpace>(space, ConstMatrix<float, ExecSpace>(sum, 1, count),
                                      Matrix<T, ExecSpace>(out, 1, count));
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
  // float: P in place of the scores, P.V written to out. 16-bit T, tuning.split_16bit_probs: P as
  // two T halves (MaskedSoftmax), P.V summed in float32 (a chunk-sized buffer) and rounded once
  // into out; otherwise P rounded to T and P.V written to out by the GEMM.
  constexpr bool k16Bit = !std::is_same_v<T, float>;
  const bool split = k16Bit && ctx.tuning().split_16bit_probs;
  T* probs = nullptr;
  T* probs_low = nullptr;
  float* out_f = nullptr;
  if constexpr (k16Bit) {
    probs = ctx.template Scratch<T>("attention_gemm.probs", (split ? 2 : 1) * score_count).data();
    if (split) {
      probs_low = probs + score_count;
      out_f     = ctx.template Scratch<float>("attention_gemm.out", chunk * Wq).data();
    }
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
      if constexpr (k16Bit) {
        if (split) {
          OPENMOE_RETURN_IF_ERROR((ProbsTimesKeys<T, float, ExecSpace>(ctx, g, probs, v_b, Wkv, out_f, Wq)));
          OPENMOE_RETURN_IF_ERROR(
              (ProbsTimesKeys<T, float, ExecSpace>(ctx, g, probs_low, v_b, Wkv, out_f, Wq, /*accumulate=*/true)));
          OPENMOE_RETURN_IF_ERROR((RoundInto<T, ExecSpace>(space, out_f, out_rows, rows * Wq)));
          continue;
        }
      }
      OPENMOE_RETURN_IF_ERROR((ProbsTimesKeys<T, T, ExecSpace>(ctx, g, probs, v_b, Wkv, out_rows, Wq)));
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
      SoftmaxBackward<ExecSpace>(space, probs.data(), grad.data(), g, q0);
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
