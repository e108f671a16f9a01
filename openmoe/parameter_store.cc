#include "openmoe/parameter_store.h"

#include <vector>

#include "kernels/instantiate.h"
#include "openmoe/core/bf16.h"
#include "openmoe/core/status_macros.h"
#include "openmoe/random_init.h"

namespace openmoe {

TensorSpec WholeSpec(const TensorSpec& stored, const ExpertShard& shard) {
  TensorSpec whole = stored;
  if (!shard.all() && ExpertShard::IsExpertTensor(stored.name)) whole.shape[0] = shard.total;
  return whole;
}

namespace {

// Where the stored part of `spec`'s whole tensor starts (elements): the shard's first expert for
// a stacked expert tensor, else 0.
int64_t StoredPartBegin(const TensorSpec& stored, const ExpertShard& shard) {
  if (shard.all() || !ExpertShard::IsExpertTensor(stored.name)) return 0;
  return shard.first * (stored.numel() / shard.count);
}

}  // namespace

template <class T, class ExecSpace>
absl::Status ReadParameters(const CheckpointReader& reader, const std::vector<TensorSpec>& table,
                            const ParameterLayout& layout, Vector<T, ExecSpace> flat, const ExpertShard& shard,
                            bool check_table) {
  if (check_table) {
    std::vector<TensorSpec> whole_table;
    for (const TensorSpec& spec : table) whole_table.push_back(WholeSpec(spec, shard));
    OPENMOE_RETURN_IF_ERROR(reader.Validate(whole_table));
  }
  std::vector<float> staging;  // one whole tensor as float
  std::vector<T> rounded;      // the stored part in T (unused for float)
  for (const TensorSpec& spec : table) {
    const ParameterSlot& slot = layout.slot(spec.name);
    const int64_t whole = WholeSpec(spec, shard).numel(), begin = StoredPartBegin(spec, shard);
    staging.resize(whole);
    OPENMOE_RETURN_IF_ERROR(reader.ReadAsFloat(spec.name, staging.data(), whole));
    const T* host = nullptr;
    if constexpr (std::is_same_v<T, float>) {
      host = staging.data() + begin;
    } else {
      rounded.resize(slot.numel);
      for (int64_t i = 0; i < slot.numel; ++i) rounded[i] = FromFloat<T>(staging[begin + i]);
      host = rounded.data();
    }
    Kokkos::deep_copy(Vector<T, ExecSpace>(flat.data() + slot.offset, slot.numel),
                      Kokkos::View<const T*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(host, slot.numel));
  }
  return absl::OkStatus();
}

template <class T, class ExecSpace>
void InitializeParameters(const ExecSpace& space, const OpenMoeConfig& config, const std::vector<TensorSpec>& table,
                          const ParameterLayout& layout, uint64_t seed, Vector<T, ExecSpace> flat,
                          const ExpertShard& shard) {
  for (const TensorSpec& spec : table) {
    const ParameterSlot& slot = layout.slot(spec.name);
    const Vector<T, ExecSpace> stored(flat.data() + slot.offset, slot.numel);
    // The stored part's draws of the whole tensor (counter-based: nothing else is drawn).
    FillInitialValues<T>(space, config, WholeSpec(spec, shard), seed, stored, StoredPartBegin(spec, shard));
  }
}

#define OPENMOE_INSTANTIATE_PARAMETER_STORE(Space, T)                                                          \
  template absl::Status ReadParameters<T, Space>(const CheckpointReader&, const std::vector<TensorSpec>&,       \
                                                 const ParameterLayout&, Vector<T, Space>, const ExpertShard&,  \
                                                 bool);                                                         \
  template void InitializeParameters<T, Space>(const Space&, const OpenMoeConfig&, const std::vector<TensorSpec>&, \
                                               const ParameterLayout&, uint64_t, Vector<T, Space>, const ExpertShard&);
OPENMOE_FOR_EACH_SPACE_AND_DTYPE(OPENMOE_INSTANTIATE_PARAMETER_STORE)

}  // namespace openmoe
