// The buffer pool hands a buffer out again only once nothing holds it, only for the same type
// and shape, zero-fills on request, and Trim frees what the last repetition did not use.
#include "kernels/buffer_pool.h"

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "openmoe/core/bf16.h"
#include "openmoe/core/test_util.h"

namespace openmoe::kernels {
namespace {

template <class Space>
class BufferPoolTest : public ::testing::Test {};
TYPED_TEST_SUITE(BufferPoolTest, openmoe::testing::Backends);

template <class View>
std::vector<float> ToHostFloats(View v) {
  auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), v);
  std::vector<float> out(host.data(), host.data() + host.span());
  return out;
}

TYPED_TEST(BufferPoolTest, ReusesOnlyReleasedBuffersOfTheSameTypeAndShape) {
  using Space = TypeParam;
  using Mem   = typename Space::memory_space;
  Space space;
  BufferPool<Mem> pool;
  auto a = pool.template Take<float>(space, "a", 4, 8, /*zeroed=*/false);
  auto b = pool.template Take<float>(space, "b", 4, 8, /*zeroed=*/false);
  EXPECT_NE(a.data(), b.data());  // a is held: b must be another buffer
  EXPECT_EQ(pool.buffers(), 2);
  const float* a_data = a.data();
  a = {};  // released
  auto c = pool.template Take<float>(space, "c", 4, 8, /*zeroed=*/false);
  EXPECT_EQ(c.data(), a_data);  // a's buffer again
  auto other_shape = pool.template Take<float>(space, "d", 8, 4, /*zeroed=*/false);
  auto other_type  = pool.template Take<int32_t>(space, "e", 4, 8, /*zeroed=*/false);
  EXPECT_NE(other_shape.data(), a_data);
  EXPECT_NE(static_cast<const void*>(other_type.data()), static_cast<const void*>(a_data));
  EXPECT_EQ(pool.buffers(), 4);
  EXPECT_EQ(pool.bytes(), int64_t(4 * 32 * sizeof(float)));
}

TYPED_TEST(BufferPoolTest, ACopyOrSubviewKeepsTheBufferTaken) {
  using Space = TypeParam;
  BufferPool<typename Space::memory_space> pool;
  Space space;
  auto a = pool.template Take<float>(space, "a", 4, 8, false);
  auto rows = Kokkos::subview(a, std::make_pair(1, 3), Kokkos::ALL);
  const float* a_data = a.data();
  a = {};
  auto b = pool.template Take<float>(space, "b", 4, 8, false);
  EXPECT_NE(b.data(), a_data);  // the subview still holds a's buffer
  const float* b_data = b.data();
  rows = {};
  b = {};
  auto c = pool.template Take<float>(space, "c", 4, 8, false);
  EXPECT_TRUE(c.data() == a_data || c.data() == b_data);  // one of the two released buffers
  EXPECT_EQ(pool.buffers(), 2);
}

TYPED_TEST(BufferPoolTest, ZeroedTakesAreZeroEvenWhenReused) {
  using Space = TypeParam;
  BufferPool<typename Space::memory_space> pool;
  Space space;
  auto a = pool.template Take<float>(space, "a", 3, 5, false);
  Kokkos::deep_copy(a, 7.5f);
  a = {};
  auto b = pool.template Take<float>(space, "b", 3, 5, /*zeroed=*/true);
  space.fence();
  EXPECT_EQ(ToHostFloats(b), std::vector<float>(15, 0.0f));
  auto v = pool.template TakeVector<double>(space, "v", 7, /*zeroed=*/true);
  auto vh = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), v);
  for (int i = 0; i < 7; ++i) EXPECT_EQ(vh(i), 0.0);
  auto w = pool.template Take<bf16>(space, "w", 2, 9, true);
  auto wh = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), w);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 9; ++j) EXPECT_EQ(ToFloat(wh(i, j)), 0.0f);
}

TYPED_TEST(BufferPoolTest, TrimFreesWhatTheLastRepetitionDidNotUse) {
  using Space = TypeParam;
  BufferPool<typename Space::memory_space> pool;
  Space space;
  {  // repetition 1: two shapes
    auto a = pool.template Take<float>(space, "a", 4, 4, false);
    auto b = pool.template Take<float>(space, "b", 2, 2, false);
  }
  pool.Trim();  // both were used by repetition 1: kept
  EXPECT_EQ(pool.buffers(), 2);
  {  // repetition 2: only the first shape
    auto a = pool.template Take<float>(space, "a", 4, 4, false);
  }
  pool.Trim();  // [2, 2] was not asked for since the previous Trim: freed
  EXPECT_EQ(pool.buffers(), 1);
  auto held = pool.template Take<float>(space, "a", 4, 4, false);
  pool.Trim();
  pool.Trim();  // held buffers are never freed
  EXPECT_EQ(pool.buffers(), 1);
  held = {};
  pool.Clear();
  EXPECT_EQ(pool.buffers(), 0);
}

TYPED_TEST(BufferPoolTest, ZeroFillClearsAContiguousView) {
  using Space = TypeParam;
  Space space;
  Kokkos::View<float**, Kokkos::LayoutRight, typename Space::memory_space> x("x", 5, 3);
  Kokkos::deep_copy(x, -2.0f);
  ZeroFill(space, x);
  space.fence();
  EXPECT_EQ(ToHostFloats(x), std::vector<float>(15, 0.0f));
}

}  // namespace
}  // namespace openmoe::kernels
