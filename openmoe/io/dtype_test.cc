// DType table and the fp16 decoder against values computed by hand from IEEE 754 binary16.
#include "openmoe/io/dtype.h"

#include <cmath>

#include "gtest/gtest.h"

namespace openmoe::io {
namespace {

TEST(DType, ParsesSafetensorsNames) {
  EXPECT_EQ(*ParseSafetensorsDType("BF16"), DType::kBF16);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kI64), 8u);
  EXPECT_FALSE(ParseSafetensorsDType("bf16").ok());  // the format is case-sensitive
}

TEST(DType, DecodesFp16) {
  EXPECT_EQ(Fp16BitsToFloat(0x3555), 0.333251953125f);  // 1.0101010101b * 2^-2
  EXPECT_EQ(Fp16BitsToFloat(0x7bff), 65504.0f);          // largest finite
  EXPECT_EQ(Fp16BitsToFloat(0x0400), 6.103515625e-05f);  // smallest normal 2^-14
  EXPECT_TRUE(std::isinf(Fp16BitsToFloat(0xfc00)) && Fp16BitsToFloat(0xfc00) < 0);
  EXPECT_TRUE(std::isnan(Fp16BitsToFloat(0x7e00)));
}

TEST(DType, Bf16KeepsNaNAndInfinity) {
  EXPECT_TRUE(std::isnan(Bf16BitsToFloat(FloatToBf16Bits(NAN))));
  EXPECT_TRUE(std::isinf(Bf16BitsToFloat(FloatToBf16Bits(INFINITY))));
  EXPECT_EQ(Bf16BitsToFloat(0xc040), -3.0f);
}

}  // namespace
}  // namespace openmoe::io
