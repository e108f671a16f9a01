// File: kernels/dependent_launch.h
// Programmatic dependent launch (Hopper): inside a captured decode graph, a kernel launched
// through DependentParallelFor may start while the kernel before it is still running, so that
// its launch and its first loads overlap that kernel's tail instead of following it. A batch-1
// decode step is ~230 kernels of a few microseconds each, bound by these gaps, not by bytes.
//
//   DependentParallelFor("op", policy, KOKKOS_LAMBDA(const Member& team) {...});
//       // waits for the preceding kernels before the body runs: any body is safe.
//   DependentParallelForWaitsInside("op", policy, KOKKOS_LAMBDA(const Member& team) {
//     const P w = weights[i];      // data that no kernel of the graph writes (weights)
//     WaitForPrecedingKernels();   // before touching anything an earlier kernel reads or writes
//     ...
//   });
//
// Both launch the kernel as usual and, while its CUDA stream is being captured, record the graph
// node it became (TakeDependentLaunchNodes); openmoe/decode_graph.cc then turns the captured
// edges from another kernel into those nodes into programmatic edges. Outside such a graph
// (eager launches, host backends) the wait returns at once and the kernels run in stream order
// as any other.
#ifndef KERNELS_DEPENDENT_LAUNCH_H_
#define KERNELS_DEPENDENT_LAUNCH_H_

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include <Kokkos_Core.hpp>

namespace openmoe::kernels {

#if defined(KOKKOS_ENABLE_CUDA)
// Between StartRecordingDependentLaunches() and TakeDependentLaunchNodes() (a decode graph's
// capture), each dependent launch on a captured stream records the node it added; otherwise
// RecordDependentLaunch returns at once (no CUDA call on the eager launch path).
void StartRecordingDependentLaunches();
void RecordDependentLaunch(cudaStream_t stream);
// The nodes recorded since StartRecordingDependentLaunches(); stops recording.
std::vector<cudaGraphNode_t> TakeDependentLaunchNodes();
#endif

template <class Space>
void RecordDependentLaunch(const Space& space) {
#if defined(KOKKOS_ENABLE_CUDA)
  if constexpr (std::is_same_v<Space, Kokkos::Cuda>) RecordDependentLaunch(space.cuda_stream());
#endif
  (void)space;
}

// Blocks until the kernels this one depends on have completed and their writes are visible
// (griddepcontrol.wait). Returns at once for a kernel launched without a programmatic edge.
KOKKOS_FORCEINLINE_FUNCTION void WaitForPrecedingKernels() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the kernels that depend on this one be launched once every block of it has got here
// (griddepcontrol.launch_dependents); they still wait for its completion before reading.
KOKKOS_FORCEINLINE_FUNCTION void LetDependentKernelsLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

template <class Body, bool kWaitFirst>
struct DependentLaunchBody {
  Body body;
  template <class... Args>
  KOKKOS_FORCEINLINE_FUNCTION void operator()(Args&&... args) const {
    LetDependentKernelsLaunch();
    if constexpr (kWaitFirst) WaitForPrecedingKernels();
    body(std::forward<Args>(args)...);
  }
};

// A 1-D range on CUDA as a grid-stride loop: thread t of `threads` runs body(begin + t),
// body(begin + t + threads), ... Kokkos 3.4 launches a RangePolicy as one element per thread in
// blocks of 64, which caps element-wise kernels at ~1.6 G blocks/s (~100 G elements/s: a float ->
// bf16 conversion at 320 GB/s on an H100, a tenth of its bandwidth); a grid of a few resident
// waves that loops reaches the bandwidth.
template <class Body, bool kWaitFirst>
struct GridStrideBody {
  Body body;
  int64_t begin, end, threads;
  KOKKOS_FORCEINLINE_FUNCTION void operator()(const int64_t t) const {
    LetDependentKernelsLaunch();
    if constexpr (kWaitFirst) WaitForPrecedingKernels();
    for (int64_t i = begin + t; i < end; i += threads) body(i);
  }
};

// Threads of a grid-stride launch: 2^19, about two waves of 2048 threads on each of an H100's 132
// multiprocessors (fewer when the range is smaller).
inline constexpr int64_t kGridStrideThreads = int64_t(1) << 19;

template <class Policy>
inline constexpr bool kIsCudaRange = false;
#if defined(KOKKOS_ENABLE_CUDA)
template <class... Traits>
inline constexpr bool kIsCudaRange<Kokkos::RangePolicy<Kokkos::Cuda, Traits...>> = true;
#endif

template <bool kWaitFirst, class Policy, class Body>
void LaunchDependent(const char* name, const Policy& policy, const Body& body) {
  if constexpr (kIsCudaRange<Policy>) {
    const int64_t begin = int64_t(policy.begin()), end = int64_t(policy.end());
    const int64_t threads = std::min<int64_t>(end - begin, kGridStrideThreads);
    if (threads <= 0) return;
    using Threads = Kokkos::RangePolicy<typename Policy::execution_space, Kokkos::IndexType<int64_t>>;
    Kokkos::parallel_for(name, Threads(policy.space(), 0, threads),
                         GridStrideBody<Body, kWaitFirst>{body, begin, end, threads});
  } else {
    Kokkos::parallel_for(name, policy, DependentLaunchBody<Body, kWaitFirst>{body});
  }
  RecordDependentLaunch(policy.space());
}

template <class Policy, class Body>
void DependentParallelFor(const char* name, const Policy& policy, const Body& body) {
  LaunchDependent<true>(name, policy, body);
}

// Every thread of `body` must call WaitForPrecedingKernels() before it reads memory that a
// preceding kernel writes or writes memory that one reads (threads that do neither may return
// without); what it reads before may be read while those kernels still run, so it must be data
// that no kernel of the graph writes (weights).
template <class Policy, class Body>
void DependentParallelForWaitsInside(const char* name, const Policy& policy, const Body& body) {
  LaunchDependent<false>(name, policy, body);
}

}  // namespace openmoe::kernels

#endif  // KERNELS_DEPENDENT_LAUNCH_H_
