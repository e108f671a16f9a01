// DependentParallelFor and DependentParallelForWaitsInside over 1-D ranges visit every index of
// [begin, end) exactly once: on CUDA through the grid-stride wrapper (2^19 threads that loop), so
// the range here is longer than that, starts off zero and ends off any multiple of the grid; an
// empty range launches nothing.
#include "kernels/dependent_launch.h"

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "openmoe/core/test_util.h"

namespace openmoe::kernels {
namespace {

template <class Space>
class DependentLaunchTest : public ::testing::Test {};
TYPED_TEST_SUITE(DependentLaunchTest, openmoe::testing::Backends);

// (A function of its own: nvcc forbids device lambdas inside a test's private TestBody.)
template <class Space>
void CheckRangesVisitEveryIndexOnce() {
  using Range = Kokkos::RangePolicy<Space, Kokkos::IndexType<int64_t>>;
  const int64_t begin = 5, end = kGridStrideThreads + 37 + begin;
  Kokkos::View<int32_t*, typename Space::memory_space> visits("visits", end + 3);
  DependentParallelFor("dependent_launch_test::add", Range(Space(), begin, end),
                       KOKKOS_LAMBDA(const int64_t i) { visits(i) += 1; });
  DependentParallelForWaitsInside("dependent_launch_test::add_waits_inside", Range(Space(), begin, end),
                                  KOKKOS_LAMBDA(const int64_t i) {
                                    WaitForPrecedingKernels();
                                    visits(i) += 10;
                                  });
  DependentParallelFor("dependent_launch_test::empty", Range(Space(), end, end),
                       KOKKOS_LAMBDA(const int64_t i) { visits(i) += 100; });
  Space().fence();
  auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), visits);
  for (int64_t i = 0; i < end + 3; ++i) {
    ASSERT_EQ(host(i), i >= begin && i < end ? 11 : 0) << "index " << i;
  }
}

TYPED_TEST(DependentLaunchTest, RangesVisitEveryIndexOnce) { CheckRangesVisitEveryIndexOnce<TypeParam>(); }

}  // namespace
}  // namespace openmoe::kernels
