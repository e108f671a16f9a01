// GoogleTest main for tests over Kokkos: initialises Kokkos once for the whole binary, prints
// the enabled backends, and finalises after the tests (Kokkos may be initialised only once).
#include <cstdio>
#include <cstdlib>

#include <Kokkos_Core.hpp>

#include "gtest/gtest.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  setenv("OMP_PROC_BIND", "false", /*overwrite=*/0);  // Kokkos' advice for unit tests
  Kokkos::initialize(argc, argv);
  std::printf("Kokkos default execution space: %s (concurrency %d)\n",
              Kokkos::DefaultExecutionSpace::name(),
              Kokkos::DefaultExecutionSpace().concurrency());
  int result = RUN_ALL_TESTS();
  Kokkos::finalize();
  return result;
}
