// RowArgmax on every backend against std::max_element (the first maximum), with exact ties,
// a restricted range of allowed ids, negative rows, a NaN, and bf16 storage.
#include "kernels/argmax.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "gtest/gtest.h"
#include "openmoe/core/bf16.h"
#include "openmoe/core/test_util.h"

namespace openmoe::kernels {
namespace {

using openmoe::testing::RandomNormal;
using openmoe::testing::ToDevice;
using openmoe::testing::ToHost;

template <class Space>
class ArgmaxTest : public ::testing::Test {};
TYPED_TEST_SUITE(ArgmaxTest, openmoe::testing::Backends);

template <class Space, class T>
std::vector<int64_t> DeviceArgmax(const std::vector<T>& logits, int64_t B, int64_t V, int64_t allowed) {
  auto d = ToDevice<Space>(logits, B, V, "logits");
  Vector<int64_t, Space> ids("ids", B);
  const absl::Status s = RowArgmax<T>(ExecutionContext<Space>(), ConstMatrix<T, Space>(d), allowed, ids);
  EXPECT_TRUE(s.ok()) << s;
  return ToHost(ids);
}

TYPED_TEST(ArgmaxTest, FirstMaximumOfTheAllowedIds) {
  using Space = TypeParam;
  const int64_t B = 4, V = 70001, allowed = 70000;
  std::vector<float> logits = RandomNormal(B * V, 3.0f, 12);
  for (int64_t j = 0; j < V; ++j) logits[2 * V + j] = -std::fabs(logits[2 * V + j]) - 1.0f;  // all negative
  logits[1 * V + 500] = logits[1 * V + 60000] = 100.0f;  // exact tie: 500 wins
  logits[0 * V + 70000] = 1000.0f;                        // not allowed: ignored
  logits[3 * V + 9] = std::numeric_limits<float>::quiet_NaN();  // NaN is the largest, as torch
  std::vector<int64_t> want(B);
  for (int64_t b = 0; b < 3; ++b) want[b] = std::max_element(logits.begin() + b * V, logits.begin() + b * V + allowed) - (logits.begin() + b * V);
  want[3] = 9;
  EXPECT_EQ(want[1], 500);
  EXPECT_EQ((DeviceArgmax<Space, float>(logits, B, V, allowed)), want) << Space::name();

  std::vector<bf16> rounded;  // bf16: many exact ties after rounding; the first still wins
  for (int64_t j = 0; j < 3 * V; ++j) rounded.push_back(bf16(logits[j]));
  std::vector<int64_t> want16(3);
  for (int64_t b = 0; b < 3; ++b) {
    want16[b] = std::max_element(rounded.begin() + b * V, rounded.begin() + b * V + allowed,
                                 [](bf16 a, bf16 c) { return float(a) < float(c); }) - (rounded.begin() + b * V);
  }
  EXPECT_EQ((DeviceArgmax<Space, bf16>(rounded, 3, V, allowed)), want16) << Space::name();
}

TYPED_TEST(ArgmaxTest, RejectsAnAllowedRangeOutsideTheRow) {
  using Space = TypeParam;
  Matrix<float, Space> logits("logits", 2, 5);
  Vector<int64_t, Space> ids("ids", 2);
  EXPECT_FALSE(RowArgmax<float>(ExecutionContext<Space>(), ConstMatrix<float, Space>(logits), 6, ids).ok());
  EXPECT_FALSE(RowArgmax<float>(ExecutionContext<Space>(), ConstMatrix<float, Space>(logits), 0, ids).ok());
}

}  // namespace
}  // namespace openmoe::kernels
