// File: openmoe/core/bf16.h
// The 16-bit storage types, usable in Kokkos Views on host and device (Kokkos 3.4 has none):
// bfloat16 (bf16: 8 exponent bits, 8 significant bits) and IEEE binary16 (f16: 5 exponent
// bits, 11 significant bits, largest finite 65504, subnormals down to 2^-24).
// Arithmetic happens in float: convert on load (exact) and round to nearest even on store;
// f16 stores overflow to +-inf (what fp16 training's loss scaling watches for).
//
//   Kokkos::View<bf16*> w("w", n);  w(i) = bf16(1.5f);  float f = float(w(i));
#ifndef OPENMOE_CORE_BF16_H_
#define OPENMOE_CORE_BF16_H_

#include <cstdint>

#include <Kokkos_Core.hpp>

namespace openmoe {

struct bf16 {
  uint16_t bits;

  bf16() = default;
  KOKKOS_INLINE_FUNCTION explicit bf16(float f) : bits(Round(f)) {}
  KOKKOS_INLINE_FUNCTION explicit operator float() const {
    FloatBits u;
    u.word = uint32_t(bits) << 16;
    return u.f;
  }

 private:
  union FloatBits {  // type punning through a union: supported by g++ and nvcc
    float f;
    uint32_t word;
  };
  KOKKOS_INLINE_FUNCTION static uint16_t Round(float f) {
    FloatBits u;
    u.f = f;
    if ((u.word & 0x7fffffffu) > 0x7f800000u) return uint16_t((u.word >> 16) | 0x40u);  // quiet NaN
    return uint16_t((u.word + 0x7fffu + ((u.word >> 16) & 1u)) >> 16);  // round to nearest even
  }
};

struct f16 {
  uint16_t bits;

  f16() = default;
  KOKKOS_INLINE_FUNCTION explicit f16(float f) : bits(Round(f)) {}
  KOKKOS_INLINE_FUNCTION explicit operator float() const {  // exact (F. Giesen's half_to_float)
    FloatBits o;
    o.word = uint32_t(bits & 0x7fffu) << 13;
    const uint32_t exponent = o.word & 0x0f800000u;
    o.word += (127u - 15u) << 23;
    if (exponent == 0x0f800000u) {  // inf or NaN
      o.word += (128u - 16u) << 23;
    } else if (exponent == 0) {  // zero or subnormal: renormalise through a float subtraction
      FloatBits magic;
      magic.word = 113u << 23;
      o.word += 1u << 23;
      o.f -= magic.f;
    }
    o.word |= uint32_t(bits & 0x8000u) << 16;
    return o.f;
  }

 private:
  union FloatBits {
    float f;
    uint32_t word;
  };
  // Round to nearest even (F. Giesen's float_to_half_fast3_rtne): >= 65520 becomes inf.
  KOKKOS_INLINE_FUNCTION static uint16_t Round(float f) {
    FloatBits u;
    u.f = f;
    const uint32_t sign = (u.word >> 16) & 0x8000u;
    u.word &= 0x7fffffffu;
    if (u.word >= (127u + 16u) << 23) return uint16_t(sign | (u.word > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (u.word < 113u << 23) {  // below 2^-14: subnormal or zero, rounded by a float addition
      FloatBits magic;
      magic.word = 126u << 23;  // 0.5
      u.f += magic.f;
      return uint16_t(sign | (u.word - magic.word));
    }
    const uint32_t odd = (u.word >> 13) & 1u;
    u.word += ((15u - 127u) << 23) + 0xfffu + odd;  // rebias; round the 13 dropped bits, ties to even
    return uint16_t(sign | (u.word >> 13));
  }
};

// Float value of a stored element, for float, bf16 and f16 alike.
KOKKOS_INLINE_FUNCTION float ToFloat(float x) { return x; }
KOKKOS_INLINE_FUNCTION float ToFloat(bf16 x) { return float(x); }
KOKKOS_INLINE_FUNCTION float ToFloat(f16 x) { return float(x); }

// Stores a float as T.
template <class T>
KOKKOS_INLINE_FUNCTION T FromFloat(float x) {
  return T(x);
}

}  // namespace openmoe

#endif  // OPENMOE_CORE_BF16_H_
