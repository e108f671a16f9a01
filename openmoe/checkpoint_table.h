// File: openmoe/checkpoint_table.h
// The one table of every tensor an OpenMoE checkpoint holds: Hugging Face name, expected shape
// and orientation, derived from the config (spec section 4.2). The loader checks files against
// it; the model binds its Views by the same names.
#ifndef OPENMOE_CHECKPOINT_TABLE_H_
#define OPENMOE_CHECKPOINT_TABLE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "openmoe/config.h"

namespace openmoe {

enum class Orientation {
  kVector,     // [H] norm weights
  kRowTable,   // [V, H] embedding / lm_head rows
  kLinear,     // nn.Linear weight [out, in]: y = x W^T
  kStackedXW,  // stacked experts [E, in, out]: y = x W (not transposed)
};

struct TensorSpec {
  std::string name;            // e.g. "model.layers.3.mlp.experts.wi_gate"
  std::vector<int64_t> shape;  // e.g. [E, H, 2I]
  Orientation orientation;
};

std::vector<TensorSpec> CheckpointTable(const OpenMoeConfig& config);
// Total parameter count (sum over the table).
int64_t CountParameters(const OpenMoeConfig& config);

}  // namespace openmoe

#endif  // OPENMOE_CHECKPOINT_TABLE_H_
