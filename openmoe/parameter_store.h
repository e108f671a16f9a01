// File: openmoe/parameter_store.h
// The one loader and the one initialiser of both models: every parameter of a config lives in one
// flat buffer of the storage type T (float32 masters for training, float32 / bf16 weights for
// inference) at the offsets of ParameterLayout(CheckpointTable(config)).
//
//   const std::vector<TensorSpec> table = CheckpointTable(config);
//   const ParameterLayout layout(table);
//   Vector<T, Space> flat("params", layout.total());                       // zero gaps
//   OPENMOE_RETURN_IF_ERROR(ReadParameters<T>(reader, table, layout, flat));  // or:
//   InitializeParameters<T>(space, config, table, layout, seed, flat);
#ifndef OPENMOE_PARAMETER_STORE_H_
#define OPENMOE_PARAMETER_STORE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "openmoe/checkpoint.h"
#include "openmoe/checkpoint_table.h"
#include "openmoe/config.h"
#include "openmoe/core/tensor_types.h"
#include "openmoe/parameter_layout.h"

namespace openmoe {

// Checks the checkpoint against `table` (missing tensors, wrong shapes: errors naming the file and
// tensor), then reads each tensor as float and rounds it once to T into its slot of `flat`
// [layout.total()]. Host memory stays at one tensor at a time.
// `shard` (expert parallelism): `table` is a TrainingTable whose stacked expert tensors hold only
// the shard's experts; the checkpoint's whole [E, ...] tensors are checked and read, and the
// shard's slice of each is stored. `check_table` false: the caller validated the checkpoint against
// the whole model already (`table` may then be a part of it, e.g. a pipeline stage's tensors).
template <class T, class ExecSpace>
absl::Status ReadParameters(const CheckpointReader& reader, const std::vector<TensorSpec>& table,
                            const ParameterLayout& layout, Vector<T, ExecSpace> flat, const ExpertShard& shard = {},
                            bool check_table = true);

// Upstream's initialiser (random_init.h) for every tensor of `table`, into its slot of `flat`.
// `shard`: as ReadParameters; each stored expert gets the values it has in the whole model's init.
template <class T, class ExecSpace>
void InitializeParameters(const ExecSpace& space, const OpenMoeConfig& config, const std::vector<TensorSpec>& table,
                          const ParameterLayout& layout, uint64_t seed, Vector<T, ExecSpace> flat,
                          const ExpertShard& shard = {});

// The whole model's spec of a TrainingTable entry: stacked expert tensors get shard.total experts.
TensorSpec WholeSpec(const TensorSpec& stored, const ExpertShard& shard);

}  // namespace openmoe

#endif  // OPENMOE_PARAMETER_STORE_H_
