// The execution context's scratch arena and tuning: buffers persist between calls and grow on
// need (bumping the generation captured graphs check), OnStream shares them, and two contexts
// share nothing (what made the old process-wide scratch and switches a hazard).
#include "kernels/execution_context.h"

#include <vector>

#include "gtest/gtest.h"
#include "openmoe/core/test_util.h"

namespace openmoe::kernels {
namespace {

template <class Space>
class ExecutionContextTest : public ::testing::Test {};
TYPED_TEST_SUITE(ExecutionContextTest, openmoe::testing::Backends);

template <class View>
std::vector<int> ToHostInts(View v) {
  std::vector<int> out(v.extent(0));
  Kokkos::deep_copy(Kokkos::View<int*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(out.data(), out.size()), v);
  return out;
}

TYPED_TEST(ExecutionContextTest, ScratchPersistsGrowsAndCountsGenerations) {
  using Space = TypeParam;
  ExecutionContext<Space> ctx;
  EXPECT_EQ(ctx.scratch_generation(), 0u);
  bool grew = false;
  auto a = ctx.template Scratch<int>("a", 8, /*zeroed=*/true, &grew);
  EXPECT_TRUE(grew);
  EXPECT_EQ(ToHostInts(a), std::vector<int>(8, 0));  // zero-filled when allocated
  EXPECT_EQ(ctx.scratch_generation(), 1u);
  Kokkos::deep_copy(a, 7);
  auto again = ctx.template Scratch<int>("a", 4, /*zeroed=*/true, &grew);  // fits: same buffer, kept contents
  EXPECT_FALSE(grew);
  EXPECT_EQ(again.data(), a.data());
  EXPECT_EQ(ToHostInts(again), std::vector<int>(4, 7));
  EXPECT_EQ(ctx.scratch_generation(), 1u);
  auto other = ctx.template Scratch<int>("b", 4);  // another name: another buffer
  EXPECT_NE(other.data(), a.data());
  EXPECT_EQ(ctx.scratch_generation(), 2u);
  auto bigger = ctx.template Scratch<int>("a", 100, /*zeroed=*/false, &grew);
  EXPECT_TRUE(grew);
  EXPECT_EQ(bigger.extent(0), 100u);
  EXPECT_EQ(ctx.scratch_generation(), 3u);
}

TYPED_TEST(ExecutionContextTest, CopiesAndOnStreamShareContextsDoNot) {
  using Space = TypeParam;
  ExecutionContext<Space> ctx, separate;
  const ExecutionContext<Space> copy = ctx, branch = ctx.OnStream(Space());
  ctx.tuning().split_key_warp_keys = 16;
  EXPECT_EQ(copy.tuning().split_key_warp_keys, 16);
  EXPECT_EQ(branch.tuning().split_key_warp_keys, 16);
  EXPECT_EQ(separate.tuning().split_key_warp_keys, 0);
  auto mine = ctx.template Scratch<float>("x", 16);
  EXPECT_EQ(branch.template Scratch<float>("x", 16).data(), mine.data());
  EXPECT_NE(separate.template Scratch<float>("x", 16).data(), mine.data());
  EXPECT_EQ(separate.scratch_generation(), 1u);
}

}  // namespace
}  // namespace openmoe::kernels
