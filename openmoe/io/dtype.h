// File: openmoe/io/dtype.h
// Element types of checkpoint and data files, and float conversions used while streaming.
#ifndef OPENMOE_IO_DTYPE_H_
#define OPENMOE_IO_DTYPE_H_

#include <cstdint>
#include <cstring>
#include <string>

#include "absl/status/statusor.h"

namespace openmoe::io {

enum class DType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

// Safetensors spelling ("F32", "BF16", ...) <-> DType.
absl::StatusOr<DType> ParseSafetensorsDType(const std::string& name);
const char* SafetensorsDTypeName(DType dtype);
size_t DTypeSize(DType dtype);

inline float Bf16BitsToFloat(uint16_t bits) {
  const uint32_t word = uint32_t(bits) << 16;
  float f;
  std::memcpy(&f, &word, sizeof(f));
  return f;
}

// Round to nearest even, NaN stays NaN (quiet).
inline uint16_t FloatToBf16Bits(float f) {
  uint32_t word;
  std::memcpy(&word, &f, sizeof(word));
  if ((word & 0x7fffffffu) > 0x7f800000u) return uint16_t((word >> 16) | 0x40u);
  const uint32_t rounding = 0x7fffu + ((word >> 16) & 1u);
  return uint16_t((word + rounding) >> 16);
}

float Fp16BitsToFloat(uint16_t bits);

}  // namespace openmoe::io

#endif  // OPENMOE_IO_DTYPE_H_
