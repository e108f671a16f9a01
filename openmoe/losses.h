// File: openmoe/losses.h
// OpenMoE's training losses (spec section 3), evaluated on the host in double precision from
// float32 logits; the forward half of //tools:train's objective.
//
//   LM (summed over rows and positions, labels = input ids shifted by one, padding not masked):
//     CE = -sum_v target_v log_softmax_v + z_loss_factor * logZ^2 - K
//     target = 1 - ls on the label, ls / (V - 1) elsewhere; K makes a perfect soft prediction 0:
//     K = -[(1 - ls) ln(1 - ls) + ls ln(ls / (V - 1) + 1e-20)]
//   Router, per MoE layer, then averaged over layers:
//     aux = E^2 * mean_e(f_e * P_e), f_e = fraction of tokens with e in their top 2 (before any
//     capacity drop), P_e = mean router probability;  z = mean_n logsumexp(router_logits[n])^2
//   total = LM + router_aux_loss_factor * aux + router_z_loss_factor * z
#ifndef OPENMOE_LOSSES_H_
#define OPENMOE_LOSSES_H_

#include <cstdint>
#include <vector>

#include "openmoe/config.h"

namespace openmoe {

struct LossParts {
  double lm         = 0;  // summed label-smoothed CE with z-loss
  double router_aux = 0;  // factor * mean over MoE layers
  double router_z   = 0;  // factor * mean over MoE layers
  double total      = 0;
};

// logits [B, S, V]; input_ids [B, S].
double LanguageModelLoss(const std::vector<float>& logits, const std::vector<int64_t>& input_ids,
                         int64_t batch, int64_t seq_len, int64_t vocab, double label_smoothing,
                         double z_loss_factor);

// router_logits [N, E] of one MoE layer: the unweighted (aux, z) pair.
void RouterLosses(const std::vector<float>& router_logits, int64_t num_tokens, int64_t num_experts,
                  double& aux, double& z);

// All parts with the config's factors; `router_logits` holds one [N, E] per MoE layer.
LossParts TrainingLoss(const OpenMoeConfig& config, const std::vector<float>& logits,
                       const std::vector<int64_t>& input_ids, int64_t batch, int64_t seq_len,
                       const std::vector<std::vector<float>>& router_logits);

}  // namespace openmoe

#endif  // OPENMOE_LOSSES_H_
