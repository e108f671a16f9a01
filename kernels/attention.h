// File: kernels/attention.h
// OpenMoE attention pieces: rotary embedding and causal scaled-free attention.
//
// RoPE (GPT-NeoX / HF-Llama rotate-half over the full head_dim, base 1e4):
//   inv_freq[j] = 10000^(-2j/Dh), angle = pos * inv_freq[j mod Dh/2]
//   x' = x * cos(angle) + rotate_half(x) * sin(angle), rotate_half(x) = [-x[Dh/2:], x[:Dh/2]]
//
// Attention (OpenMoE quirks, spec 2.3): scores are q.k with NO 1/sqrt(Dh) scaling; a query at
// absolute position p sees keys j <= p whose key_mask is 1, and key 0 always; softmax in float32.
#ifndef KERNELS_ATTENTION_H_
#define KERNELS_ATTENTION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/execution_context.h"
#include "openmoe/core/tensor_types.h"

namespace openmoe::kernels {

template <class T, class Space>
using Tensor3 = Kokkos::View<T***, Kokkos::LayoutRight, typename Space::memory_space>;

// Rotates x [B, S, Nh*Dh] in place; row s of every batch has position position_offset + s.
// With inverse, rotates by minus the angle: the transpose of the rotation, i.e. RoPE's backward
// (dx = R^T dx').
template <class T, class ExecSpace>
absl::Status ApplyRope(const ExecSpace& space, Tensor3<T, ExecSpace> x, int64_t head_dim,
                       int64_t position_offset, bool inverse = false);

// Fused step of a KV-cache update (one launch instead of four), from the output of one fused
// q/k/v projection: qkv [B, S, Nh*Dh + 2 Nkv*Dh] = [q | k | v]. Writes q rotated at positions
// offset + s into q_out [B, S, Nh*Dh], and the rotated k and the v into k_cache / v_cache
// [B, S_max, Nkv*Dh] at columns [offset, offset + S). Identical results to ApplyRope on q and k
// and two copies. With `device_offset` (a device pointer, for steps captured once and replayed
// as a CUDA graph), the columns start at offset + *device_offset, read when the kernel runs; the
// caller guarantees they fit the caches.
template <class T, class ExecSpace>
absl::Status RopeAndAppend(const ExecSpace& space, Tensor3<const T, ExecSpace> qkv, int64_t head_dim,
                           int64_t kv_width, int64_t offset, Tensor3<T, ExecSpace> q_out,
                           Tensor3<T, ExecSpace> k_cache, Tensor3<T, ExecSpace> v_cache,
                           const int64_t* device_offset = nullptr);

// q [B, Sq, Nh*Dh]; k, v [B, Sk_max, Nkv*Dh] of which the first num_keys rows are valid;
// key_mask [B, Sk_max] (1 = attendable); query row s is at absolute position q_offset + s.
// out [B, Sq, Nh*Dh]. Nkv divides Nh (grouped-query heads share k, v).
// T is the storage type (float, bf16, f16); scores, softmax and sums are float32.
// With `device_offset` (a device pointer, read when the kernel runs: steps replayed as a CUDA
// graph), the queries are at *device_offset + s and the valid keys are the first
// *device_offset + Sq; num_keys is then only an upper bound (the cache's capacity) and q_offset
// is ignored.
template <class T, class ExecSpace>
absl::Status CausalAttention(const ExecutionContext<ExecSpace>& ctx, Tensor3<const T, ExecSpace> q,
                             Tensor3<const T, ExecSpace> k, Tensor3<const T, ExecSpace> v,
                             Kokkos::View<const int64_t**, Kokkos::LayoutRight,
                                          typename ExecSpace::memory_space> key_mask,
                             int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                             int64_t num_keys, int64_t q_offset, Tensor3<T, ExecSpace> out,
                             const int64_t* device_offset = nullptr);

// Whether RopeAppendAttention has its one-kernel fused path on ExecSpace: only where the data is
// not in host memory (CUDA). Host backends always run RopeAndAppend then CausalAttention; on CUDA,
// shapes the fused kernel does not take still do (see RopeAppendAttention).
template <class ExecSpace>
constexpr bool FusedDecodeStepSupported() {
  return !Kokkos::SpaceAccessibility<Kokkos::HostSpace, typename ExecSpace::memory_space>::accessible;
}

// One decode step (Sq = 1) of a layer: RopeAndAppend of qkv [B, 1, Nh*Dh + 2 Nkv*Dh] at column
// *device_offset of the caches [B, capacity, Nkv*Dh], then CausalAttention of the rotated q over
// the caches into out [B, 1, Nh*Dh] (num_keys = capacity). On CUDA, one kernel does it all (q is
// then not written); elsewhere, or for shapes that kernel does not take, the two ops in turn
// with q [B, 1, Nh*Dh] as the rotated queries. Same rotations (cos/sin from a table computed by
// RopeAndAppend's formula) and the same attention maths either way.
template <class T, class ExecSpace>
absl::Status RopeAppendAttention(const ExecutionContext<ExecSpace>& ctx, Tensor3<const T, ExecSpace> qkv, Tensor3<T, ExecSpace> q,
                                 Tensor3<T, ExecSpace> k_cache, Tensor3<T, ExecSpace> v_cache,
                                 Kokkos::View<const int64_t**, Kokkos::LayoutRight,
                                              typename ExecSpace::memory_space> key_mask,
                                 int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, Tensor3<T, ExecSpace> out,
                                 const int64_t* device_offset);

}  // namespace openmoe::kernels

#endif  // KERNELS_ATTENTION_H_
