// File: openmoe/layer_range.h
// Which part of the model a process holds: all of it, or one stage of a pipeline (consecutive
// layers; the embedding on the first stage, the final norm and LM head on the last).
//
//   OPENMOE_ASSIGN_OR_RETURN(LayerRange r, PipelineStageLayers(config, /*stage=*/1, /*stages=*/3));
//   // 4 layers over 3 stages: [0, 1), [1, 2), [2, 4); stage 1 has neither embedding nor head
//   std::vector<TensorSpec> mine = StageCheckpointTable(config, r);  // only those tensors
#ifndef OPENMOE_LAYER_RANGE_H_
#define OPENMOE_LAYER_RANGE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "openmoe/checkpoint_table.h"
#include "openmoe/config.h"

namespace openmoe {

struct LayerRange {
  int64_t first = 0, end = 0;  // decoder layers [first, end)
  bool embedding = true;       // model.embed_tokens (the first stage)
  bool head = true;            // model.norm and lm_head (the last stage)
  int64_t layers() const { return end - first; }
  bool contains(int64_t layer) const { return first <= layer && layer < end; }
  std::string ToString() const;  // e.g. "layers [2, 4) + final norm + LM head"
};

// Every layer, the embedding and the head.
LayerRange WholeModel(const OpenMoeConfig& config);

// Stage `stage` of `stages` (0 <= stage < stages <= num_hidden_layers): layers
// [stage L / stages, (stage + 1) L / stages) (integer division: stages differ by at most one layer,
// the later ones holding more; the split of the training pipeline); the embedding on stage 0, the
// final norm and LM head on stage stages - 1. InvalidArgument (naming num_hidden_layers) when a
// stage would have no layer.
absl::StatusOr<LayerRange> PipelineStageLayers(const OpenMoeConfig& config, int64_t stage, int64_t stages);

// The tensors of CheckpointTable(config) that `range` holds, in the table's order.
std::vector<TensorSpec> StageCheckpointTable(const OpenMoeConfig& config, const LayerRange& range);

}  // namespace openmoe

#endif  // OPENMOE_LAYER_RANGE_H_
