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

// OpenMoE's LM loss of one row (spec section 3): label-smoothed cross entropy with z-loss,
//   loss = -sum_v target_v log_softmax_v + z logZ^2 - K,
//   target = 1 - ls on the label, ls / (V - 1) elsewhere,
//   K = -[(1 - ls) ln(1 - ls) + ls ln(ls / (V - 1) + 1e-20)],
// and its gradient dloss/dlogit_v = softmax_v (1 + 2 z logZ) - target_v (sum_v target_v = 1).
// logits [V] of one row; label in [0, V).
struct LmLossRow {
  double loss = 0;
  std::vector<double> grad;     // [V]
  std::vector<double> softmax;  // [V]
};
LmLossRow LmLoss(const float* logits, int64_t V, int64_t label, double label_smoothing, double z_loss_factor);

}  // namespace openmoe::kernels::reference

#endif  // KERNELS_REFERENCE_OPS_H_
