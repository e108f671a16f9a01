#include "openmoe/blocks.h"

#include "kernels/attention.h"
#include "kernels/elementwise.h"
#include "kernels/instantiate.h"
#include "kernels/linear.h"
#include "kernels/moe.h"
#include "openmoe/core/status_macros.h"

namespace openmoe {

template <class T, class ExecSpace>
absl::Status AttentionForward(const kernels::ExecutionContext<ExecSpace>& ctx, AttentionHeads heads, ConstMatrix<T, ExecSpace> qkv_weight,
                              ConstMatrix<T, ExecSpace> o_weight, int64_t offset, const int64_t* decode_position,
                              const AttentionBuffers<T, ExecSpace>& b, OpTimer* profile) {
  const auto& space = ctx.space();
  auto mark = [&](const char* phase) {
    if (profile != nullptr) profile->Mark(ctx.space(), phase);
  };
  const int64_t B = b.q.extent(0), S = b.q.extent(1), Wq = heads.num_heads * heads.head_dim;
  const int64_t Wkv = heads.num_kv_heads * heads.head_dim;
  kernels::Tensor3<const T, ExecSpace> qkv(b.qkv.data(), B, S, Wq + 2 * Wkv);  // [B, S, Wq + 2Wkv]
  // Benchmark ablation (kernels::Tuning::decode_leave_out): decode steps may skip parts.
  const uint32_t leave_out = decode_position != nullptr ? ctx.tuning().decode_leave_out : 0;
  const bool products = !(leave_out & kernels::kLeaveOutAttentionProducts);
  if (products) OPENMOE_RETURN_IF_ERROR(kernels::Linear<T>(ctx, b.x, qkv_weight, b.qkv));
  mark("attn.qkv_proj");
  if (leave_out & kernels::kLeaveOutAttentionCore) {
    // (skipped: benchmark ablation)
  } else if (decode_position != nullptr) {  // a decode step (S = 1): one fused kernel on CUDA
    OPENMOE_RETURN_IF_ERROR(kernels::RopeAppendAttention<T>(ctx, qkv, b.q, b.keys, b.values, b.key_mask,
                                                            heads.num_heads, heads.num_kv_heads, heads.head_dim,
                                                            b.attn, decode_position));
    mark("attn.rope+cache+scores+softmax+pv");
  } else {
    OPENMOE_RETURN_IF_ERROR(kernels::RopeAndAppend<T>(space, qkv, heads.head_dim, Wkv, offset, b.q, b.keys, b.values));
    mark("attn.rope+cache");
    OPENMOE_RETURN_IF_ERROR(kernels::CausalAttention<T>(
        ctx, kernels::Tensor3<const T, ExecSpace>(b.q), kernels::Tensor3<const T, ExecSpace>(b.keys),
        kernels::Tensor3<const T, ExecSpace>(b.values), b.key_mask, heads.num_heads, heads.num_kv_heads,
        heads.head_dim, /*num_keys=*/offset + S, /*q_offset=*/offset, b.attn));
    mark("attn.scores+softmax+pv");
  }
  if (products) OPENMOE_RETURN_IF_ERROR(kernels::Linear<T>(ctx, ConstMatrix<T, ExecSpace>(b.attn.data(), B * S, Wq), o_weight, b.out));
  mark("attn.o_proj");
  return absl::OkStatus();
}

template <class T, class ExecSpace>
absl::Status DenseMlpForward(const kernels::ExecutionContext<ExecSpace>& ctx, ConstMatrix<T, ExecSpace> x, ConstMatrix<T, ExecSpace> gate_up_weight,
                             ConstMatrix<T, ExecSpace> down_weight, Matrix<T, ExecSpace> gate_up, Matrix<T, ExecSpace> act,
                             Matrix<T, ExecSpace> out) {
  const auto& space = ctx.space();
  OPENMOE_RETURN_IF_ERROR(kernels::Linear<T>(ctx, x, gate_up_weight, gate_up));
  OPENMOE_RETURN_IF_ERROR(kernels::SwigluCombineFused<T>(space, ConstMatrix<T, ExecSpace>(gate_up), act));
  return kernels::Linear<T>(ctx, ConstMatrix<T, ExecSpace>(act), down_weight, out);
}

template <class T, class ExecSpace>
absl::StatusOr<int64_t> RouteTokens(const kernels::ExecutionContext<ExecSpace>& ctx, ConstMatrix<T, ExecSpace> x,
                                    ConstMatrix<T, ExecSpace> router_weight, double capacity_factor, int64_t min_capacity,
                                    Matrix<T, ExecSpace> logits, Matrix<float, ExecSpace> probs,
                                    Matrix<int32_t, ExecSpace> experts, Matrix<int32_t, ExecSpace> rank) {
  const auto& space = ctx.space();
  const int64_t N = x.extent(0), E = router_weight.extent(0);
  OPENMOE_RETURN_IF_ERROR(kernels::Linear<T>(ctx, x, router_weight, logits));
  OPENMOE_RETURN_IF_ERROR(kernels::RouterTop2<T>(space, logits, probs, experts));
  OPENMOE_RETURN_IF_ERROR(kernels::AssignSlots<ExecSpace>(space, experts, E, rank));
  return kernels::ExpertCapacity(N, E, capacity_factor, min_capacity);
}

template <class T, class ExecSpace>
absl::Status ExpertForward(const kernels::ExecutionContext<ExecSpace>& ctx, ConstMatrix<T, ExecSpace> in, ConstMatrix<T, ExecSpace> wi_gate,
                           ConstMatrix<T, ExecSpace> wi_up, ConstMatrix<T, ExecSpace> wo, Matrix<T, ExecSpace> gate,
                           Matrix<T, ExecSpace> up, Matrix<T, ExecSpace> act, Matrix<T, ExecSpace> out) {
  const auto& space = ctx.space();
  OPENMOE_RETURN_IF_ERROR(kernels::MatMul<T>(ctx, in, wi_gate, gate));
  OPENMOE_RETURN_IF_ERROR(kernels::MatMul<T>(ctx, in, wi_up, up));
  OPENMOE_RETURN_IF_ERROR(kernels::SwigluCombine<T>(space, gate, up, act));
  return kernels::MatMul<T>(ctx, ConstMatrix<T, ExecSpace>(act), wo, out);
}

#define OPENMOE_INSTANTIATE_BLOCKS(Space, T)                                                                          \
  template absl::Status AttentionForward<T, Space>(const kernels::ExecutionContext<Space>&, AttentionHeads, ConstMatrix<T, Space>,               \
                                                   ConstMatrix<T, Space>, int64_t, const int64_t*,                    \
                                                   const AttentionBuffers<T, Space>&, OpTimer*);                      \
  template absl::Status DenseMlpForward<T, Space>(const kernels::ExecutionContext<Space>&, ConstMatrix<T, Space>, ConstMatrix<T, Space>,         \
                                                  ConstMatrix<T, Space>, Matrix<T, Space>, Matrix<T, Space>,          \
                                                  Matrix<T, Space>);                                                  \
  template absl::StatusOr<int64_t> RouteTokens<T, Space>(const kernels::ExecutionContext<Space>&, ConstMatrix<T, Space>, ConstMatrix<T, Space>,  \
                                                         double, int64_t, Matrix<T, Space>, Matrix<float, Space>,     \
                                                         Matrix<int32_t, Space>, Matrix<int32_t, Space>);             \
  template absl::Status ExpertForward<T, Space>(const kernels::ExecutionContext<Space>&, ConstMatrix<T, Space>, ConstMatrix<T, Space>,           \
                                                ConstMatrix<T, Space>, ConstMatrix<T, Space>, Matrix<T, Space>,       \
                                                Matrix<T, Space>, Matrix<T, Space>, Matrix<T, Space>);
OPENMOE_FOR_EACH_SPACE_AND_KERNEL_DTYPE(OPENMOE_INSTANTIATE_BLOCKS)

}  // namespace openmoe
