// File: kernels/scratch.h
// Device buffers an op keeps between calls: allocated on first use, grown when a call needs more,
// released at Kokkos::finalize. `Tag` (any type) tells the buffers of different ops apart.
//
//   struct SplitTag;
//   auto partial = GrowingScratch<SplitTag, float, MemSpace>("attention.split", count);
#ifndef KERNELS_SCRATCH_H_
#define KERNELS_SCRATCH_H_

#include <cstddef>
#include <string>

#include <Kokkos_Core.hpp>

namespace openmoe::kernels {

// At least `count` elements; zero-filled when allocated if `zeroed`. Sets *grew when the buffer
// was (re)allocated by this call, so that callers can tell work that points at the old one.
template <class Tag, class T, class MemSpace>
Kokkos::View<T*, MemSpace> GrowingScratch(const char* label, size_t count, bool zeroed = false, bool* grew = nullptr) {
  static Kokkos::View<T*, MemSpace> buffer;
  static bool hooked = false;
  if (!hooked) {
    Kokkos::push_finalize_hook([] { buffer = Kokkos::View<T*, MemSpace>(); });
    hooked = true;
  }
  const bool grow = buffer.extent(0) < count;
  if (grow) {
    buffer = zeroed ? Kokkos::View<T*, MemSpace>(std::string(label), count)
                    : Kokkos::View<T*, MemSpace>(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string(label)), count);
  }
  if (grew != nullptr) *grew = grow;
  return buffer;
}

}  // namespace openmoe::kernels

#endif  // KERNELS_SCRATCH_H_
