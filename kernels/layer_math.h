// File: kernels/layer_math.h
// Scalar formulas several kernels share (device and host), so that forward, decode and backward
// variants of a layer compute them the same way.
#ifndef KERNELS_LAYER_MATH_H_
#define KERNELS_LAYER_MATH_H_

#include <cstdint>

#include <Kokkos_Core.hpp>

namespace openmoe::kernels {

// cos and sin of the rotary angle (position * 10000^(-2j/Dh)), computed in double so that the
// product does not lose the low bits at large positions, then rounded to float.
KOKKOS_INLINE_FUNCTION void RopeCosSin(int64_t position, int64_t j, int64_t head_dim, float& c, float& s) {
  const double inv_freq = Kokkos::Experimental::pow(10000.0, -2.0 * double(j) / double(head_dim));
  const double angle    = double(position) * inv_freq;
  c = float(Kokkos::Experimental::cos(angle));
  s = float(Kokkos::Experimental::sin(angle));
}

// One rotate-half pair of RoPE: (lo, hi) -> (lo c - hi s, hi c + lo s), rounded to T. Every RoPE
// kernel rotates through here, so that all of them round alike.
template <class T>
KOKKOS_INLINE_FUNCTION void RotatePair(float lo, float hi, float c, float s, T& out_lo, T& out_hi) {
  out_lo = FromFloat<T>(lo * c - hi * s);
  out_hi = FromFloat<T>(hi * c + lo * s);
}

// OpenMoE's "swiglu": the first half of the gate is linear, the second goes through SiLU.
KOKKOS_INLINE_FUNCTION float Swiglu(float linear, float gated, float up) {
  return linear * (gated / (1.0f + Kokkos::Experimental::exp(-gated))) * up;
}

}  // namespace openmoe::kernels

#endif  // KERNELS_LAYER_MATH_H_
