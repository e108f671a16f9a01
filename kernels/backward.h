// File: kernels/backward.h
// Gradients of the OpenMoE layers for training (float32), over Kokkos Views on every backend.
// Each op's forward lives in its own file (rms_norm.h, elementwise.h, attention.h, moe.h); RoPE's
// backward is ApplyRope with inverse = true, the weight gradients of the projections are
// linear.h's AddTransposedProduct.
// Every kernel is deterministic (no atomics): sums over rows run in a fixed order.
#ifndef KERNELS_BACKWARD_H_
#define KERNELS_BACKWARD_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/attention.h"
#include "kernels/execution_context.h"
#include "openmoe/core/tensor_types.h"

namespace openmoe::kernels {

// y = w * x / rms(x): dx = r (w dy) - x r^3 mean(w dy x); dw += sum_rows dy x r.
// x, dy, dx [N, H]; w, dw [H]. dw sums fixed blocks of 32 rows (float), then the blocks in order.
template <class ExecSpace>
absl::Status RmsNormBackward(const ExecutionContext<ExecSpace>& ctx, ConstMatrix<float, ExecSpace> x, ConstVector<float, ExecSpace> w,
                             ConstMatrix<float, ExecSpace> dy, float eps, Matrix<float, ExecSpace> dx,
                             Vector<float, ExecSpace> dw);

// act = g[:, :I] * silu(g[:, I:]) * u  ->  dg [N, 2I], du [N, I] (written).
template <class ExecSpace>
absl::Status SwigluBackward(const ExecSpace& space, ConstMatrix<float, ExecSpace> gate, ConstMatrix<float, ExecSpace> up,
                            ConstMatrix<float, ExecSpace> dact, Matrix<float, ExecSpace> dgate,
                            Matrix<float, ExecSpace> dup);

// The same for the fused layout gate_up [N, 3I] = [g1 | g2 | up] (SwigluCombineFused's input):
// d_gate_up [N, 3I] (written).
template <class ExecSpace>
absl::Status SwigluBackwardFused(const ExecSpace& space, ConstMatrix<float, ExecSpace> gate_up,
                                 ConstMatrix<float, ExecSpace> dact, Matrix<float, ExecSpace> d_gate_up);

// Gradients of CausalAttention (q_offset 0, Sq = Sk = S) with respect to its rotated q, k and v:
// dq [B, S, Nh*Dh], dk, dv [B, S, Nkv*Dh] (written). The softmax is recomputed.
// tf32_products: the CUDA GEMM path's float products on TF32 tensor cores (operands rounded to
// 10-bit mantissas, float32 accumulation), for 16-bit training runs, whose q, k, v are 16-bit values
// (exact in TF32): the float32 probabilities and gradients keep 3 more mantissa bits than autocast's
// bf16 products. Ignored on host backends.
template <class ExecSpace>
absl::Status CausalAttentionBackward(const ExecutionContext<ExecSpace>& ctx, Tensor3<const float, ExecSpace> q,
                                     Tensor3<const float, ExecSpace> k, Tensor3<const float, ExecSpace> v,
                                     Kokkos::View<const int64_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space> mask,
                                     Tensor3<const float, ExecSpace> dout, int64_t num_heads, int64_t num_kv_heads,
                                     int64_t head_dim, Tensor3<float, ExecSpace> dq, Tensor3<float, ExecSpace> dk,
                                     Tensor3<float, ExecSpace> dv, bool tf32_products = false);

// dtable[ids[t]] += dh[t] for every token whose id is not pad_id (nn.Embedding(padding_idx)).
template <class ExecSpace>
absl::Status EmbeddingBackward(const ExecSpace& space, ConstVector<int64_t, ExecSpace> ids,
                               ConstMatrix<float, ExecSpace> dh, int64_t pad_id, Matrix<float, ExecSpace> dtable);

// Label-smoothed cross entropy with z-loss, row by row, in place: logits [R, V] become dloss/dlogits
// = softmax * (1 + 2 z logZ) - target (target: 1 - ls on the label, ls / (V - 1) elsewhere); rows
// whose label is < 0 get zero gradient and zero loss. loss [R] = the row's loss (losses.h).
// grad_scale multiplies the gradient (fp16 loss scaling), not the loss. exp is float32 per logit,
// the row sums (max, sum of exp, sum of logits, over fixed row segments) are double: each softmax
// term is within ~1e-7 relative of the float64 one, the loss ~1e-9.
template <class ExecSpace>
absl::Status LmLossBackward(const ExecutionContext<ExecSpace>& ctx, Matrix<float, ExecSpace> logits, ConstVector<int64_t, ExecSpace> labels,
                            double label_smoothing, double z_loss_factor, Vector<double, ExecSpace> loss,
                            double grad_scale = 1.0);

// Backward of Combine: d_expert_out [E*C, H] = probs(t, e) dy[t] in kept slots, 0 elsewhere;
// dprobs [N, E] = dy[t] . expert_out[slot] for kept assignments, 0 elsewhere.
template <class ExecSpace>
absl::Status CombineBackward(const ExecSpace& space, ConstMatrix<float, ExecSpace> dy,
                             ConstMatrix<float, ExecSpace> expert_out, ConstMatrix<float, ExecSpace> probs,
                             ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,
                             int64_t capacity, Matrix<float, ExecSpace> d_expert_out, Matrix<float, ExecSpace> dprobs);

// Backward of Dispatch: dx[t] += d_dispatched[e * C + rank] over t's kept assignments.
template <class ExecSpace>
absl::Status DispatchBackward(const ExecSpace& space, ConstMatrix<float, ExecSpace> d_dispatched,
                              ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,
                              int64_t capacity, Matrix<float, ExecSpace> dx);

// OpenMoE's router losses of one MoE layer (losses.h) and their backward, on the device.
// logits [N, E]: the router's logits as float32 (converted from the run dtype); experts [N, 2]: the top-2 choices RouterTop2 made
// from them (f_e counts them, before capacity drops, and is held constant in the gradient);
// dprobs [N, E]: the gradient reaching the router probabilities through Combine (already times
// grad_scale). aux_weight / z_weight: this layer's weights in the loss (the factors over the
// number of MoE layers). Writes d_logits [N, E] = grad_scale * dLoss/dlogits, and parts [2] =
// this layer's unweighted (aux, z): aux = E sum_e f_e P_e, z = mean_t logsumexp(logits_t)^2.
// Softmax, sums and the aux/z values in double; deterministic (fixed-order sums, no atomics).
template <class ExecSpace>
absl::Status RouterLossBackward(const ExecSpace& space, ConstMatrix<float, ExecSpace> logits,
                                ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<float, ExecSpace> dprobs,
                                double aux_weight, double z_weight, double grad_scale, Matrix<float, ExecSpace> d_logits,
                                Kokkos::View<double*, typename ExecSpace::memory_space> parts);

}  // namespace openmoe::kernels

#endif  // KERNELS_BACKWARD_H_
