#include "openmoe/runtime/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace openmoe {

absl::Status ValidateSampling(const SamplingOptions& o) {
  if (!(o.temperature > 0)) return absl::InvalidArgumentError(absl::StrCat("--temperature must be > 0, got ", o.temperature));
  if (o.top_k < 0) return absl::InvalidArgumentError(absl::StrCat("--top_k must be >= 0, got ", o.top_k));
  if (!(o.top_p > 0 && o.top_p <= 1)) return absl::InvalidArgumentError(absl::StrCat("--top_p must be in (0, 1], got ", o.top_p));
  if (!(o.repetition_penalty > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("--repetition_penalty must be > 0, got ", o.repetition_penalty));
  }
  return absl::OkStatus();
}

int64_t SelectToken(const float* logits, int64_t allowed_vocab, const std::vector<int64_t>& history,
                    const SamplingOptions& o, std::mt19937_64& rng) {
  if (o.greedy && o.repetition_penalty == 1.0f) {  // the common decode path: no copy of the row
    return std::max_element(logits, logits + allowed_vocab) - logits;
  }
  std::vector<float> scores(logits, logits + allowed_vocab);
  if (o.repetition_penalty != 1.0f) {
    std::vector<bool> seen(allowed_vocab, false);
    for (int64_t id : history)
      if (id >= 0 && id < allowed_vocab && !seen[id]) {
        seen[id]   = true;
        scores[id] = scores[id] > 0 ? scores[id] / o.repetition_penalty : scores[id] * o.repetition_penalty;
      }
  }
  if (o.greedy) {  // first maximum, as torch.argmax
    return std::max_element(scores.begin(), scores.end()) - scores.begin();
  }
  // Candidates by descending score (stable: ties keep the lower id first).
  std::vector<int64_t> order(allowed_vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return scores[a] > scores[b]; });
  if (o.top_k > 0 && o.top_k < allowed_vocab) order.resize(o.top_k);
  std::vector<double> probs(order.size());
  const double max_score = scores[order[0]] / double(o.temperature);
  double sum = 0;
  for (size_t i = 0; i < order.size(); ++i) sum += probs[i] = std::exp(scores[order[i]] / double(o.temperature) - max_score);
  for (double& p : probs) p /= sum;
  if (o.top_p < 1.0f) {  // smallest prefix whose mass reaches top_p (at least one token)
    double mass = 0;
    size_t keep = 0;
    while (keep < probs.size() && (keep == 0 || mass < o.top_p)) mass += probs[keep++];
    probs.resize(keep);
    order.resize(keep);
  }
  std::discrete_distribution<size_t> pick(probs.begin(), probs.end());
  return order[pick(rng)];
}

}  // namespace openmoe
