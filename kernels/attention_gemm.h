// File: kernels/attention_gemm.h
// Causal attention (the semantics of attention.h: no 1/sqrt(Dh), key 0 always visible, float32
// softmax) as strided batched GEMMs over heads with the scores materialised, one batch row and
// one chunk of query rows at a time (scores [Nh, chunk, keys] float32, kept between calls):
//
//   forward:  S = Q K^T (cuBLAS) -> masked softmax P (kernel) -> O = P V (cuBLAS)
//   backward: S = Q K^T -> P;  dP = dO V^T;  dS = P * (dP - rowsum(P * dP));
//             dV += P^T dO;  dK += dS^T Q;  dQ = dS K            (all products cuBLAS)
//
// This is how prefill and training run on CUDA (tensor-core / SGEMM throughput instead of one
// team per query row); decode steps keep the split-key kernel of attention.cc, host backends the
// fused kernels. CausalAttention and CausalAttentionBackward choose the path (UseGemmAttention);
// tests force either one through the context's tuning and compare them.
// With T = bf16, P enters P V as two bf16 halves (hi + lo) summed in float32, so that rounding P
// to bf16 (what flash attention does) does not cost accuracy: bf16 training's router gradients
// are sensitive to it (train_parity_test).
#ifndef KERNELS_ATTENTION_GEMM_H_
#define KERNELS_ATTENTION_GEMM_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/attention.h"
#include "kernels/execution_context.h"

namespace openmoe::kernels {

// tuning.attention_path kAuto: GEMMs on CUDA for >= 16 query rows; tuning.max_score_elements
// caps the scores chunk.
template <class ExecSpace>
bool UseGemmAttention(const Tuning& tuning, int64_t query_rows);

// Shapes as CausalAttention (validated there); no device offset.
template <class T, class ExecSpace>
absl::Status GemmAttention(const ExecutionContext<ExecSpace>& ctx, Tensor3<const T, ExecSpace> q, Tensor3<const T, ExecSpace> k,
                           Tensor3<const T, ExecSpace> v,
                           Kokkos::View<const int64_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space> key_mask,
                           int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, int64_t num_keys,
                           int64_t q_offset, Tensor3<T, ExecSpace> out);

// Shapes as CausalAttentionBackward (validated there): q_offset 0, Sq = Sk = S; dq, dk, dv written.
template <class ExecSpace>
absl::Status GemmAttentionBackward(const ExecutionContext<ExecSpace>& ctx, Tensor3<const float, ExecSpace> q,
                                   Tensor3<const float, ExecSpace> k, Tensor3<const float, ExecSpace> v,
                                   Kokkos::View<const int64_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space> mask,
                                   Tensor3<const float, ExecSpace> dout, int64_t num_heads, int64_t num_kv_heads,
                                   int64_t head_dim, Tensor3<float, ExecSpace> dq, Tensor3<float, ExecSpace> dk,
                                   Tensor3<float, ExecSpace> dv, bool tf32_products);

}  // namespace openmoe::kernels

#endif  // KERNELS_ATTENTION_GEMM_H_
