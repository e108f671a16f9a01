// File: openmoe/blocks.h
// The layer pieces that inference (model.h) and training (trainable_model.h) share: one
// implementation of the attention block's forward, of the dense MLP's forward, of the router and
// of one expert. Each takes its
// weights as views and writes into buffers the caller owns (inference reuses work buffers,
// training keeps what its backward pass reads).
//
//   AttentionForward: x [N, H] -> qkv [N, Wq + 2Wkv] = x [q_proj; k_proj; v_proj]^T, RoPE on q and
//                     k, keys/values appended to a cache, causal attention, out [N, H] =
//                     attn o_proj^T                                                   (spec 2.3)
//   DenseMlpForward:  x [N, H] -> gate_up [N, 3I] = x [gate_proj; up_proj]^T, act [N, I] =
//                     swiglu(gate_up), out [N, H] = act down_proj^T               (spec 2.4)
//   RouteTokens:      x [N, H] -> router logits [N, E] (T), probabilities [N, E] (float32),
//                     top-2 experts [N, 2], queue slots [N, 2]; returns the capacity C   (spec 2.5)
//   ExpertForward:    one expert on rows [R, H] of its queue: gate [R, 2I] = in wi_gate, up [R, I]
//                     = in wi_up, act [R, I] = swiglu(gate, up), out [R, H] = act wo     (spec 2.5)
#ifndef OPENMOE_BLOCKS_H_
#define OPENMOE_BLOCKS_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "kernels/attention.h"
#include "kernels/execution_context.h"
#include "openmoe/core/op_timer.h"
#include "openmoe/core/tensor_types.h"

namespace openmoe {

struct AttentionHeads {
  int64_t num_heads = 0, num_kv_heads = 0, head_dim = 0;  // Nh, Nkv, Dh: Wq = Nh Dh, Wkv = Nkv Dh
};

// The buffers of one attention block call. x [B*S, H]; qkv [B*S, Wq + 2Wkv] (work); q [B, S, Wq]
// receives the rotated queries; keys / values [B, capacity, Wkv] receive the rotated keys and the
// values at columns [offset, offset + S) and hold the earlier columns (a KV cache; training
// passes buffers of capacity S at offset 0 and keeps q, keys, values and attn for its backward);
// key_mask [B, capacity] (1 = attendable); attn [B, S, Wq]; out [B*S, H].
template <class T, class ExecSpace>
struct AttentionBuffers {
  ConstMatrix<T, ExecSpace> x;
  Matrix<T, ExecSpace> qkv;
  kernels::Tensor3<T, ExecSpace> q, keys, values;
  Kokkos::View<const int64_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space> key_mask;
  kernels::Tensor3<T, ExecSpace> attn;
  Matrix<T, ExecSpace> out;
};

// qkv_weight [Wq + 2Wkv, H]: q_proj, k_proj and v_proj as adjacent rows of the parameter store;
// o_weight [H, Wq]. Query row s is at position offset + s and sees the cache's columns up to it.
// Decode strategy: with `decode_position` (a device pointer; S = 1), the column is read when the
// kernels run (steps replayed as CUDA graphs) and RoPE, the cache append and the attention are
// one fused kernel where the backend has it (q is then not written). `profile` (may be null)
// is charged per phase.
template <class T, class ExecSpace>
absl::Status AttentionForward(const kernels::ExecutionContext<ExecSpace>& ctx, AttentionHeads heads, ConstMatrix<T, ExecSpace> qkv_weight,
                              ConstMatrix<T, ExecSpace> o_weight, int64_t offset, const int64_t* decode_position,
                              const AttentionBuffers<T, ExecSpace>& b, OpTimer* profile = nullptr);

// gate_up_weight [3I, H]: the rows of gate_proj [2I, H] followed by those of up_proj [I, H];
// down_weight [H, I].
template <class T, class ExecSpace>
absl::Status DenseMlpForward(const kernels::ExecutionContext<ExecSpace>& ctx, ConstMatrix<T, ExecSpace> x, ConstMatrix<T, ExecSpace> gate_up_weight,
                             ConstMatrix<T, ExecSpace> down_weight, Matrix<T, ExecSpace> gate_up, Matrix<T, ExecSpace> act,
                             Matrix<T, ExecSpace> out);

// router_weight [E, H]. capacity = ExpertCapacity(N, E, capacity_factor, min_capacity).
template <class T, class ExecSpace>
absl::StatusOr<int64_t> RouteTokens(const kernels::ExecutionContext<ExecSpace>& ctx, ConstMatrix<T, ExecSpace> x,
                                    ConstMatrix<T, ExecSpace> router_weight, double capacity_factor, int64_t min_capacity,
                                    Matrix<T, ExecSpace> logits, Matrix<float, ExecSpace> probs,
                                    Matrix<int32_t, ExecSpace> experts, Matrix<int32_t, ExecSpace> rank);

// wi_gate [H, 2I], wi_up [H, I], wo [I, H]: the expert's slices of the stacked expert tensors
// (x W layout, not nn.Linear's).
template <class T, class ExecSpace>
absl::Status ExpertForward(const kernels::ExecutionContext<ExecSpace>& ctx, ConstMatrix<T, ExecSpace> in, ConstMatrix<T, ExecSpace> wi_gate,
                           ConstMatrix<T, ExecSpace> wi_up, ConstMatrix<T, ExecSpace> wo, Matrix<T, ExecSpace> gate,
                           Matrix<T, ExecSpace> up, Matrix<T, ExecSpace> act, Matrix<T, ExecSpace> out);

}  // namespace openmoe

#endif  // OPENMOE_BLOCKS_H_
