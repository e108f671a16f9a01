#include "openmoe/train/expert_balance.h"

#include <algorithm>
#include <utility>

namespace openmoe::train {

ExpertPlacement ExpertPlacement::Identity(int64_t experts, int64_t positions) {
  ExpertPlacement p;
  p.experts = experts, p.positions = positions;
  p.slot_expert.resize(experts), p.expert_slot.resize(experts);
  for (int64_t e = 0; e < experts; ++e) p.slot_expert[e] = p.expert_slot[e] = int32_t(e);
  return p;
}

bool ExpertPlacement::identity() const {
  for (int64_t s = 0; s < experts; ++s) {
    if (slot_expert[s] != s) return false;
  }
  return true;
}

void ExpertPlacement::Swap(const ExpertSwap& swap) {
  const int64_t El = local_experts();
  const int64_t sa = swap.position_a * El + swap.local, sb = swap.position_b * El + swap.local;
  std::swap(slot_expert[sa], slot_expert[sb]);
  expert_slot[slot_expert[sa]] = int32_t(sa);
  expert_slot[slot_expert[sb]] = int32_t(sb);
}

std::vector<int64_t> ExpertPlacement::PositionLoads(const std::vector<int64_t>& loads) const {
  std::vector<int64_t> per_position(positions, 0);
  for (int64_t s = 0; s < experts; ++s) per_position[s / local_experts()] += loads[slot_expert[s]];
  return per_position;
}

std::vector<ExpertSwap> PlanExpertSwaps(const ExpertPlacement& placement, const std::vector<int64_t>& loads) {
  std::vector<ExpertSwap> swaps;
  if (placement.positions < 2 || int64_t(loads.size()) != placement.experts) return swaps;
  ExpertPlacement p = placement;
  const int64_t El = p.local_experts();
  for (int64_t round = 0; round < El; ++round) {
    const std::vector<int64_t> per_position = p.PositionLoads(loads);
    // The busiest and the least busy positions (lowest index on ties).
    const int64_t a = std::max_element(per_position.begin(), per_position.end()) - per_position.begin();
    const int64_t b = std::min_element(per_position.begin(), per_position.end()) - per_position.begin();
    if (a == b) break;
    int64_t best_local = -1, best_max = per_position[a];
    for (int64_t j = 0; j < El; ++j) {
      const int64_t la = loads[p.slot_expert[a * El + j]], lb = loads[p.slot_expert[b * El + j]];
      const int64_t new_max = std::max(per_position[a] - la + lb, per_position[b] - lb + la);
      if (new_max < best_max) best_max = new_max, best_local = j;
    }
    if (best_local < 0) break;
    const ExpertSwap swap{a, b, best_local};
    p.Swap(swap);
    swaps.push_back(swap);
  }
  return swaps;
}

}  // namespace openmoe::train
