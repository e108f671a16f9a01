// File: openmoe/train/expert_balance.h
// Expert load balancing (--load_balance): where each MoE layer's experts sit among the EP
// positions, and which moves make the busiest position less busy.
//
// Placement of one MoE layer: slot s = p * El + j (EP position p, local index j < El) holds expert
// slot_expert[s]; expert e sits in slot expert_slot[e]. The identity at the start. The router and
// its rows stay in canonical expert order: a move only changes where an expert's weights and
// AdamW moments are stored and which rank runs it, so the model's function is unchanged bit for bit.
//
// A move swaps the experts of the same local index j at two positions (a, j) <-> (b, j): both ranks
// store that slot at the same flat offsets (and, under ZeRO, split it over their replicas the same
// way), so a swap is a pairwise exchange of equal pieces.
//
//   ExpertPlacement placement = ExpertPlacement::Identity(E, P);
//   std::vector<ExpertSwap> swaps = PlanExpertSwaps(placement, loads);   // loads [E], tokens per expert
//   for (const ExpertSwap& s : swaps) placement.Swap(s);
#ifndef OPENMOE_TRAIN_EXPERT_BALANCE_H_
#define OPENMOE_TRAIN_EXPERT_BALANCE_H_

#include <cstdint>
#include <vector>

namespace openmoe::train {

struct ExpertSwap {
  int64_t position_a = 0, position_b = 0, local = 0;  // slots (a, local) <-> (b, local)
};

struct ExpertPlacement {
  int64_t experts = 0, positions = 1;
  std::vector<int32_t> slot_expert, expert_slot;  // [experts] each, inverse permutations

  static ExpertPlacement Identity(int64_t experts, int64_t positions);
  int64_t local_experts() const { return experts / positions; }
  bool identity() const;
  void Swap(const ExpertSwap& swap);
  // Tokens routed to each position's experts: [positions], from loads [experts] (canonical order).
  std::vector<int64_t> PositionLoads(const std::vector<int64_t>& loads) const;
};

// Greedy: while a swap of one expert of the busiest position with the expert of the same local
// index at the least busy position lowers the larger of the two positions' loads, take the best
// such swap (at most local_experts() swaps per call). Deterministic: every rank given the same loads
// plans the same swaps (ties: the lowest local index, then the lowest positions).
std::vector<ExpertSwap> PlanExpertSwaps(const ExpertPlacement& placement, const std::vector<int64_t>& loads);

}  // namespace openmoe::train

#endif  // OPENMOE_TRAIN_EXPERT_BALANCE_H_
