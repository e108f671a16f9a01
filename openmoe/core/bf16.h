// File: openmoe/core/bf16.h
// bfloat16 storage type usable in Kokkos Views on host and device (Kokkos 3.4 has none).
// Arithmetic happens in float: convert on load (exact) and round to nearest even on store.
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

// Float value of a stored element, for float and bf16 alike.
KOKKOS_INLINE_FUNCTION float ToFloat(float x) { return x; }
KOKKOS_INLINE_FUNCTION float ToFloat(bf16 x) { return float(x); }

// Stores a float as T.
template <class T>
KOKKOS_INLINE_FUNCTION T FromFloat(float x) {
  return T(x);
}

}  // namespace openmoe

#endif  // OPENMOE_CORE_BF16_H_
