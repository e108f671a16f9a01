// File: openmoe/parameter_layout.h
// Where each parameter lives in the model's flat buffers: the fp32 master weights, their
// gradients, the AdamW moments and the 16-bit working copy all share this layout, so that each is
// one contiguous buffer (one AdamW kernel, one norm reduction, later one all-reduce or
// reduce-scatter) with a typed view per tensor resolved once at load.
//
//   ParameterLayout layout(CheckpointTable(config));
//   const ParameterSlot& s = layout.slot("lm_head.weight");   // [offset, offset + numel)
//   layout.total()                                             // elements of each flat buffer
//
// Tensors follow the checkpoint table's order (per layer; an MoE layer's stacked experts
// [E, ...] are contiguous, so one expert is one slice of its tensor). Each tensor starts at a
// multiple of kAlignment elements (256 bytes of float32: vector loads and cuBLAS alignment),
// except the continuations of a fused product, which follow their first part directly: k_proj
// and v_proj come right after q_proj, so [q_proj; k_proj; v_proj] is one [Wq + 2 Wkv, H] matrix
// (the attention's one q/k/v product), and a dense MLP's up_proj rows come right after its
// gate_proj rows, so [gate_proj; up_proj] is one [3I, H] matrix (the gate/up product). Both
// models compute with these views of adjacent rows; nothing is copied into fused tensors. The gaps
// between tensors are zero in every buffer and stay zero under AdamW.
//
// ModelOffsets: where each layer's tensors start, resolved from the layout once at load, so that
// a step looks nothing up by name.
#ifndef OPENMOE_PARAMETER_LAYOUT_H_
#define OPENMOE_PARAMETER_LAYOUT_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "openmoe/checkpoint_table.h"
#include "openmoe/config.h"
#include "openmoe/layer_range.h"

namespace openmoe {

struct ParameterSlot {
  std::string name;  // Hugging Face name
  int64_t offset = 0, numel = 0;
};

class ParameterLayout {
 public:
  static constexpr int64_t kAlignment = 64;

  ParameterLayout() = default;
  explicit ParameterLayout(const std::vector<TensorSpec>& table);

  int64_t total() const { return total_; }
  const std::vector<ParameterSlot>& slots() const { return slots_; }
  // The slot of `name`; an unknown name is an error naming it.
  absl::StatusOr<ParameterSlot> Find(const std::string& name) const;
  // As Find, for names known to be in the table (the model's own code paths).
  const ParameterSlot& slot(const std::string& name) const { return slots_[index_.at(name)]; }
  // Whether `name` is stored right after the tensor before it, as part of a fused product.
  static bool ContinuesFusedProduct(const std::string& name);

 private:
  std::vector<ParameterSlot> slots_;
  std::map<std::string, size_t> index_;
  int64_t total_ = 0;
};

// Which experts of an MoE model one training rank stores (expert parallelism): experts
// [first, first + count) of `total`. Every expert by default (count == total).
struct ExpertShard {
  int64_t first = 0, count = 0, total = 0;
  static ExpertShard All(int64_t experts) { return {0, experts, experts}; }
  bool all() const { return first == 0 && count == total; }
  // Whether `name` is a stacked expert tensor [E, ...] (one expert per leading index).
  static bool IsExpertTensor(const std::string& name);
};

// The parameters a training rank stores, in its flat-buffer order: every dense tensor of `full`
// (in `full`'s order), then every stacked expert tensor with only `shard`'s experts ([count, ...]).
// So the dense parameters (replicated over the data-parallel ranks) are one range [0, D) of the
// flat buffers and the rank's experts (replicated only over the ranks holding the same experts)
// another, [D, total): each range is reduced over its own group of ranks.
std::vector<TensorSpec> TrainingTable(const std::vector<TensorSpec>& full, const ExpertShard& shard);
// D above: where the first expert tensor starts in the layout of a TrainingTable (total() when the
// model has no expert tensors).
int64_t ExpertSegmentBegin(const ParameterLayout& layout);

// Offsets (in elements) into a flat buffer of ParameterLayout(CheckpointTable(config)).
struct MlpOffsets {
  int64_t gate_up = 0, down = 0;  // gate_proj then up_proj (adjacent: [3I, H]); down_proj [H, I]
};
struct LayerOffsets {
  int64_t input_norm = 0, post_attention_norm = 0;
  int64_t qkv = 0;         // q_proj [Wq, H], then k_proj and v_proj [Wkv, H] (adjacent: [Wq + 2 Wkv, H])
  int64_t k = 0, v = 0;    // k_proj's and v_proj's own starts (inside the qkv rows)
  int64_t o = 0;           // o_proj [H, Wq]
  MlpOffsets mlp;          // dense layers: .mlp; MoE layers: .extra_mlp
  // MoE layers only (-1 elsewhere): the norm before the extra MLP, the router [E, H], and the
  // stacked experts wi_gate [E, H, 2I], wi_up [E, H, I], wo [E, I, H].
  int64_t pre_extra_mlp_norm = -1, router = -1, wi_gate = -1, wi_up = -1, wo = -1;
};
struct ModelOffsets {
  int64_t embed_tokens = 0, final_norm = 0, lm_head = 0;
  std::vector<LayerOffsets> layers;  // [num_hidden_layers]
};
// The offsets of `config`'s tensors in `layout` (which must be the layout of its table).
ModelOffsets ResolveModelOffsets(const ParameterLayout& layout, const OpenMoeConfig& config);
// The same for a layout of StageCheckpointTable(config, range) (one pipeline stage): layers outside
// the range keep default LayerOffsets, and embed_tokens / final_norm / lm_head are -1 where the
// range does not hold them.
ModelOffsets ResolveModelOffsets(const ParameterLayout& layout, const OpenMoeConfig& config, const LayerRange& range);

}  // namespace openmoe

#endif  // OPENMOE_PARAMETER_LAYOUT_H_
