#include "openmoe/losses.h"

#include <algorithm>
#include <cmath>

namespace openmoe {

double LanguageModelLoss(const std::vector<float>& logits, const std::vector<int64_t>& input_ids, int64_t B,
                         int64_t S, int64_t V, double ls, double z_factor) {
  const double off_target = ls / double(V - 1);
  const double constant   = -((1 - ls) * std::log(1 - ls) + double(V - 1) * off_target * std::log(off_target + 1e-20));
  double total = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s + 1 < S; ++s) {
      const float* row    = logits.data() + (b * S + s) * V;  // [V]
      const int64_t label = input_ids[b * S + s + 1];
      double max_logit    = row[0];
      for (int64_t v = 1; v < V; ++v) max_logit = std::max(max_logit, double(row[v]));
      double sum_exp = 0, sum_logits = 0;
      for (int64_t v = 0; v < V; ++v) sum_exp += std::exp(row[v] - max_logit), sum_logits += row[v];
      const double log_z = max_logit + std::log(sum_exp);
      // sum_v target_v log_softmax_v, with log_softmax_v = logit_v - logZ.
      const double label_term = double(row[label]) - log_z;
      const double all_terms  = sum_logits - double(V) * log_z;
      const double cross      = (1 - ls) * label_term + off_target * (all_terms - label_term);
      total += -cross + z_factor * log_z * log_z - constant;
    }
  return total;
}

void RouterLosses(const std::vector<float>& router_logits, int64_t N, int64_t E, double& aux, double& z) {
  std::vector<double> fraction(E, 0), mean_prob(E, 0), probs(E);
  double z_sum = 0;
  for (int64_t n = 0; n < N; ++n) {
    const float* row = router_logits.data() + n * E;
    double max_logit = row[0];
    for (int64_t e = 1; e < E; ++e) max_logit = std::max(max_logit, double(row[e]));
    double sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += probs[e] = std::exp(row[e] - max_logit);
    const double log_z = max_logit + std::log(sum);
    z_sum += log_z * log_z;
    int64_t first = 0;
    for (int64_t e = 0; e < E; ++e) {
      probs[e] /= sum;
      mean_prob[e] += probs[e] / double(N);
      if (probs[e] > probs[first]) first = e;
    }
    int64_t second = first == 0 ? 1 : 0;
    for (int64_t e = 0; e < E; ++e)
      if (e != first && probs[e] > probs[second]) second = e;
    fraction[first] += 1.0 / double(N), fraction[second] += 1.0 / double(N);
  }
  double balance = 0;
  for (int64_t e = 0; e < E; ++e) balance += fraction[e] * mean_prob[e];
  aux = double(E) * balance;  // = E^2 * mean_e(f_e P_e)
  z   = z_sum / double(N);
}

LossParts TrainingLoss(const OpenMoeConfig& c, const std::vector<float>& logits, const std::vector<int64_t>& input_ids,
                       int64_t batch, int64_t seq_len, const std::vector<std::vector<float>>& router_logits) {
  LossParts parts;
  parts.lm = LanguageModelLoss(logits, input_ids, batch, seq_len, c.vocab_size, c.label_smoothing, c.z_loss_factor);
  double aux_sum = 0, z_sum = 0;
  for (const std::vector<float>& layer : router_logits) {
    double aux = 0, z = 0;
    RouterLosses(layer, batch * seq_len, c.num_experts, aux, z);
    aux_sum += aux, z_sum += z;
  }
  const double layers = router_logits.empty() ? 1.0 : double(router_logits.size());
  parts.router_aux = c.router_aux_loss_factor * aux_sum / layers;
  parts.router_z   = c.router_z_loss_factor * z_sum / layers;
  parts.total      = parts.lm + parts.router_aux + parts.router_z;
  return parts;
}

}  // namespace openmoe
