// File: openmoe/core/execution_spaces.h
// The Kokkos execution spaces this build enables, as a type list, and their display names.
// Host build: Serial, OpenMP. CUDA build (--config=cuda): Serial, Cuda.
// Tests and benchmarks iterate over `EnabledExecutionSpaces` so that each op is checked and
// measured on every backend from one source.
#ifndef OPENMOE_CORE_EXECUTION_SPACES_H_
#define OPENMOE_CORE_EXECUTION_SPACES_H_

#include <Kokkos_Core.hpp>

namespace openmoe {

template <class... Spaces>
struct ExecutionSpaceList {};

using EnabledExecutionSpaces = ExecutionSpaceList<
#if defined(KOKKOS_ENABLE_CUDA)
    Kokkos::Cuda,
#endif
#if defined(KOKKOS_ENABLE_OPENMP)
    Kokkos::OpenMP,
#endif
    Kokkos::Serial>;

// Whether ExecSpace is the CUDA backend (false everywhere in a host build).
template <class ExecSpace>
inline constexpr bool kIsCuda = false;
#if defined(KOKKOS_ENABLE_CUDA)
template <>
inline constexpr bool kIsCuda<Kokkos::Cuda> = true;
#endif

template <class Space>
constexpr const char* BackendName() {
  return Space::name();
}

}  // namespace openmoe

#endif  // OPENMOE_CORE_EXECUTION_SPACES_H_
