#include "openmoe/parameter_store.h"

#include <vector>

#include "kernels/instantiate.h"
#include "openmoe/core/bf16.h"
#include "openmoe/core/status_macros.h"
#include "openmoe/random_init.h"

namespace openmoe {

template <class T, class ExecSpace>
absl::Status ReadParameters(const CheckpointReader& reader, const std::vector<TensorSpec>& table,
                            const ParameterLayout& layout, Vector<T, ExecSpace> flat) {
  OPENMOE_RETURN_IF_ERROR(reader.Validate(table));
  std::vector<float> staging;  // one tensor as float
  std::vector<T> rounded;      // the same in T (unused for float)
  for (const TensorSpec& spec : table) {
    const ParameterSlot& slot = layout.slot(spec.name);
    staging.resize(slot.numel);
    OPENMOE_RETURN_IF_ERROR(reader.ReadAsFloat(spec.name, staging.data(), slot.numel));
    const T* host = nullptr;
    if constexpr (std::is_same_v<T, float>) {
      host = staging.data();
    } else {
      rounded.resize(slot.numel);
      for (int64_t i = 0; i < slot.numel; ++i) rounded[i] = FromFloat<T>(staging[i]);
      host = rounded.data();
    }
    Kokkos::deep_copy(Vector<T, ExecSpace>(flat.data() + slot.offset, slot.numel),
                      Kokkos::View<const T*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(host, slot.numel));
  }
  return absl::OkStatus();
}

template <class T, class ExecSpace>
void InitializeParameters(const ExecSpace& space, const OpenMoeConfig& config, const std::vector<TensorSpec>& table,
                          const ParameterLayout& layout, uint64_t seed, Vector<T, ExecSpace> flat) {
  for (const TensorSpec& spec : table) {
    const ParameterSlot& slot = layout.slot(spec.name);
    FillInitialValues<T>(space, config, spec, seed, Vector<T, ExecSpace>(flat.data() + slot.offset, slot.numel));
  }
}

#define OPENMOE_INSTANTIATE_PARAMETER_STORE(Space, T)                                                          \
  template absl::Status ReadParameters<T, Space>(const CheckpointReader&, const std::vector<TensorSpec>&,       \
                                                 const ParameterLayout&, Vector<T, Space>);                    \
  template void InitializeParameters<T, Space>(const Space&, const OpenMoeConfig&, const std::vector<TensorSpec>&, \
                                               const ParameterLayout&, uint64_t, Vector<T, Space>);
OPENMOE_FOR_EACH_SPACE_AND_DTYPE(OPENMOE_INSTANTIATE_PARAMETER_STORE)

}  // namespace openmoe
