// File: kernels/reference/ops.h
// Scalar double-precision references of the forward-pass ops (row-major std::vector data):
// the ground truth of the kernel tests. Written from docs/openmoe_spec.md, not from the kernels.
#ifndef KERNELS_REFERENCE_OPS_H_
#define KERNELS_REFERENCE_OPS_H_

#include <cstdint>
#include <vector>

namespace openmoe::kernels::reference {

// y[M, N] = x[M, K] @ w^T (w [N, K]) if w_is_out_in, else x @ w (w [K, N]).
std::vector<double> MatMul(const std::vector<float>& x, const std::vector<float>& w, int64_t M,
                           int64_t K, int64_t N, bool w_is_out_in);

// Rotate-half RoPE of x [B, S, heads * head_dim] at positions offset + s.
std::vector<double> Rope(const std::vector<double>& x, int64_t B, int64_t S, int64_t width,
                         int64_t head_dim, int64_t offset);

// OpenMoE attention: q [B, Sq, Nh*Dh], k/v [B, Sk, Nkv*Dh], key_mask [B, Sk]; query s at
// position q_offset + s sees keys j <= position with mask 1, and key 0 always; no scaling.
std::vector<double> Attention(const std::vector<double>& q, const std::vector<double>& k,
                              const std::vector<double>& v, const std::vector<int64_t>& key_mask,
                              int64_t B, int64_t Sq, int64_t Sk, int64_t Nh, int64_t Nkv,
                              int64_t Dh, int64_t q_offset);

struct Top2Routing {
  std::vector<double> probs;    // [T, E]
  std::vector<int32_t> expert;  // [T, 2]
  std::vector<int32_t> rank;    // [T, 2]
};

// Softmax, top-2 (lowest index on ties), queue ranks (all top-1 before top-2, token order).
Top2Routing RouteTop2(const std::vector<float>& logits, int64_t T, int64_t E);

}  // namespace openmoe::kernels::reference

#endif  // KERNELS_REFERENCE_OPS_H_
