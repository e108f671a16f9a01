// f16 (IEEE binary16) conversions against numpy's float32 -> float16 casts (the expected bit
// patterns below were produced by numpy 1.26: np.float32(x).astype(np.float16).view(np.uint16)),
// and an exact round trip of every 16-bit pattern.
#include <cmath>
#include <cstdint>

#include "gtest/gtest.h"
#include "openmoe/core/bf16.h"

namespace openmoe {
namespace {

TEST(F16Test, RoundsLikeNumpy) {
  struct Case {
    float x;
    uint16_t bits;
  };
  for (const Case c : {Case{0.0f, 0x0000}, Case{1.0f, 0x3c00}, Case{-2.5f, 0xc100}, Case{65504.0f, 0x7bff},
                       Case{65519.0f, 0x7bff}, Case{65520.0f, 0x7c00}, Case{1e-5f, 0x00a8}, Case{6.1e-5f, 0x03ff},
                       Case{5.96e-8f, 0x0001}, Case{2.9e-8f, 0x0000}, Case{3.0e-8f, 0x0001}, Case{0.1f, 0x2e66},
                       Case{1e9f, 0x7c00}, Case{-1e-7f, 0x8002}, Case{0.33333f, 0x3555}}) {
    EXPECT_EQ(f16(c.x).bits, c.bits) << c.x;
  }
  EXPECT_TRUE(std::isnan(float(f16(std::nanf("")))));
  EXPECT_EQ(float(f16(-INFINITY)), -INFINITY);
}

TEST(F16Test, EveryPatternRoundTrips) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    f16 h;
    h.bits = uint16_t(bits);
    const float f = float(h);
    if (std::isnan(f)) continue;
    ASSERT_EQ(f16(f).bits, bits) << std::hex << bits;
  }
  f16 smallest;
  smallest.bits = 0x0001;
  EXPECT_EQ(float(smallest), std::ldexp(1.0f, -24));  // the smallest subnormal
}

}  // namespace
}  // namespace openmoe
