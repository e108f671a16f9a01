// GoogleTest main for tests over Kokkos: initialises Kokkos once for the whole binary, prints
// the enabled backends, and finalises after the tests (Kokkos may be initialised only once).
#include <cstdio>

#include <Kokkos_Core.hpp>

#include "gtest/gtest.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  Kokkos::initialize(argc, argv);
  std::printf("Kokkos default execution space: %s (concurrency %d)\n",
              Kokkos::DefaultExecutionSpace::name(),
              Kokkos::DefaultExecutionSpace().concurrency());
  int result = RUN_ALL_TESTS();
  Kokkos::finalize();
  return result;
}
