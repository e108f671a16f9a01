// kokkos_info: prints which Kokkos backends this build has and what they see at run time
// (e.g. the CUDA device), so that a build can be checked on a new machine before real work.
//
//   bazel run //tools:kokkos_info               # host build: Serial + OpenMP
//   bazel-bin/tools/kokkos_info --verbose       # full Kokkos configuration
#include <cstdio>
#include <cstring>
#include <iostream>

#include <Kokkos_Core.hpp>

int main(int argc, char** argv) {
  bool verbose = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
      std::printf("kokkos_info [--verbose] [--kokkos-*]: prints the enabled Kokkos backends.\n");
      return 0;
    }
    if (!std::strcmp(argv[i], "--verbose")) verbose = true;
  }
  Kokkos::initialize(argc, argv);
  {
    std::printf("Kokkos %d.%d.%d\n", KOKKOS_VERSION / 10000, KOKKOS_VERSION / 100 % 100,
                KOKKOS_VERSION % 100);
    std::printf("default execution space: %s (concurrency %d)\n",
                Kokkos::DefaultExecutionSpace::name(),
                Kokkos::DefaultExecutionSpace().concurrency());
    std::printf("default host execution space: %s (concurrency %d)\n",
                Kokkos::DefaultHostExecutionSpace::name(),
                Kokkos::DefaultHostExecutionSpace().concurrency());
#if defined(KOKKOS_ENABLE_CUDA)
    const cudaDeviceProp& prop = Kokkos::Cuda().cuda_device_prop();
    std::printf("cuda device: %s, compute capability %d.%d, %d SMs, %.1f GiB\n", prop.name,
                prop.major, prop.minor, prop.multiProcessorCount,
                prop.totalGlobalMem / double(1 << 30));
#endif
    if (verbose) Kokkos::print_configuration(std::cout, true);
  }
  Kokkos::finalize();
  return 0;
}
