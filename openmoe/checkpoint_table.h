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

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// Parameters one token uses: everything but the embedding table (one row is read) and the E - 2
// experts of each MoE layer it is not routed to. The bytes a batch-1 decode step reads, and the
// "N" of the 6N FLOPs-per-token estimate of a training step.
int64_t ActiveParameters(const OpenMoeConfig& config);

// Standard deviation of upstream's initialiser (spec 2.6) for a weight of the table: router and
// expert inputs sqrt(0.1 / H), expert outputs sqrt(0.1 / I), everything else 0.02; norm weights
// (kVector) are ones, not drawn (0 here).
double InitStd(const OpenMoeConfig& config, const TensorSpec& spec);

std::vector<TensorSpec> CheckpointTable(const OpenMoeConfig& config);
// Total parameter count (sum over the table).
int64_t CountParameters(const OpenMoeConfig& config);

}  // namespace openmoe

#endif  // OPENMOE_CHECKPOINT_TABLE_H_
