// File: kernels/launch.h
// Launch shapes shared by the ops: how many threads a row-wise team gets on each backend, flat
// ranges for element-wise work, and 16-byte packs for vectorised loads.
//
//   Kokkos::parallel_for("op", RowTeams(space, rows, 256), KOKKOS_LAMBDA(const Member& team) {...});
//   Kokkos::parallel_for("op", FlatRange(space, rows * cols), KOKKOS_LAMBDA(const int64_t i) {...});
//   SmallRangeFor("op", space, rows, rows * cols, KOKKOS_LAMBDA(const int64_t i) {...});  // tiny: inline on host
#ifndef KERNELS_LAUNCH_H_
#define KERNELS_LAUNCH_H_

#include <cstdint>
#include <type_traits>

#include <Kokkos_Core.hpp>

#include "kernels/dependent_launch.h"

namespace openmoe::kernels {

// One team per row: `gpu_threads` threads on CUDA (a decode step has a single row, which must
// still be read by many threads to hide memory latency), Kokkos' choice on host backends.
template <class ExecSpace>
Kokkos::TeamPolicy<ExecSpace> RowTeams(const ExecSpace& space, int64_t rows, int gpu_threads) {
#if defined(KOKKOS_ENABLE_CUDA)
  if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda>) {
    return Kokkos::TeamPolicy<ExecSpace>(space, rows, gpu_threads);
  }
#endif
  (void)gpu_threads;
  return Kokkos::TeamPolicy<ExecSpace>(space, rows, Kokkos::AUTO);
}

// Teams of `warps` x 32 lanes on CUDA (lanes index 16-byte column packs), Kokkos' choice of
// team size with one lane on host backends.
template <class ExecSpace>
Kokkos::TeamPolicy<ExecSpace> WarpTeams(const ExecSpace& space, int64_t league, int warps) {
#if defined(KOKKOS_ENABLE_CUDA)
  if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda>) {
    return Kokkos::TeamPolicy<ExecSpace>(space, league, warps, 32);
  }
#endif
  (void)warps;
  return Kokkos::TeamPolicy<ExecSpace>(space, league, Kokkos::AUTO, 1);
}

// A 1-D range for element-wise work over a [rows, cols] matrix (Kokkos 3.4's MDRangePolicy
// launches 32-thread blocks on CUDA, which leaves most of the GPU idle at decode shapes).
template <class ExecSpace>
Kokkos::RangePolicy<ExecSpace, Kokkos::IndexType<int64_t>> FlatRange(const ExecSpace& space, int64_t count) {
  return Kokkos::RangePolicy<ExecSpace, Kokkos::IndexType<int64_t>>(space, 0, count);
}

// Host backends run work of at most kHostInlineWork element-steps on the calling thread instead
// of in a parallel region: waking the OpenMP threads costs ~1.5 us while they spin between regions
// and 30-60 us when they sleep (OMP_WAIT_POLICY=passive: an idle vCPU of the 2-core VM, issue 18),
// more than a decode step's one-row norm or router top-2 takes on one thread.
inline constexpr int64_t kHostInlineWork = 4096;

template <class ExecSpace>
bool InlineOnHost(int64_t work) {
#if defined(KOKKOS_ENABLE_CUDA)
  if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda>) return false;
#endif
  return work <= kHostInlineWork;
}

// DependentParallelFor over [0, count), or a loop on the calling thread where InlineOnHost(work).
template <class ExecSpace, class Body>
void SmallRangeFor(const char* name, const ExecSpace& space, int64_t count, int64_t work, const Body& body) {
  if (InlineOnHost<ExecSpace>(work)) {
    for (int64_t i = 0; i < count; ++i) body(i);
    return;
  }
  DependentParallelFor(name, Kokkos::RangePolicy<ExecSpace, Kokkos::IndexType<int64_t>>(space, 0, count), body);
}

// 16 bytes of consecutive elements, loaded and stored as one vector access (ld.global.v4 on
// CUDA). Only for data whose address is a multiple of 16 bytes: see IsPackAligned.
template <class T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

template <class T>
bool IsPackAligned(const T* data, int64_t row_length) {
  return reinterpret_cast<uintptr_t>(data) % 16 == 0 && (row_length * int64_t(sizeof(T))) % 16 == 0;
}

// Lane exchanges inside one warp, for kernels that run only on CUDA with teams of 32 vector lanes
// (each lane of a ThreadVectorRange(team, 32) is one CUDA lane). Host builds compile them as
// identities; callers dispatch to such kernels on CUDA only.
KOKKOS_INLINE_FUNCTION float LaneXor(float value, int lane_mask) {  // value of lane ^ lane_mask
#if defined(__CUDA_ARCH__)
  return __shfl_xor_sync(0xffffffffu, value, lane_mask);
#else
  (void)lane_mask;
  return value;
#endif
}

KOKKOS_INLINE_FUNCTION int LaneValue(int value, int lane) {  // value of `lane`
#if defined(__CUDA_ARCH__)
  return __shfl_sync(0xffffffffu, value, lane);
#else
  (void)lane;
  return value;
#endif
}

KOKKOS_INLINE_FUNCTION void WarpSync() {  // the warp's lanes meet (and see each other's writes)
#if defined(__CUDA_ARCH__)
  __syncwarp();
#endif
}

}  // namespace openmoe::kernels

#endif  // KERNELS_LAUNCH_H_
