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
// except the continuations of a fused product, which follow their first part directly: a dense
// MLP's up_proj rows come right after its gate_proj rows, so [gate_proj; up_proj] is one
// [3I, H] matrix (the one GEMM of the gate/up product, FusedRows). The gaps between tensors are
// zero in every buffer and stay zero under AdamW.
#ifndef OPENMOE_PARAMETER_LAYOUT_H_
#define OPENMOE_PARAMETER_LAYOUT_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "openmoe/checkpoint_table.h"

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

}  // namespace openmoe

#endif  // OPENMOE_PARAMETER_LAYOUT_H_
