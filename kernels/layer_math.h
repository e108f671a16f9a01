// File: kernels/layer_math.h
// Scalar formulas several kernels share (device and host), so that forward, decode and backward
// variants of a layer compute them the same way.
#ifndef KERNELS_LAYER_MATH_H_
#define KERNELS_LAYER_MATH_H_

#include <cstdint>

#include <Kokkos_Core.hpp>

#include "openmoe/core/bf16.h"  // FromFloat

namespace openmoe::kernels {

// cos and sin of the rotary angle (position * 10000^(-2j/Dh)), computed in double so that the
// product does not lose the low bits at large positions, then rounded to float.
KOKKOS_INLINE_FUNCTION void RopeCosSin(int64_t position, int64_t j, int64_t head_dim, float& c, float& s) {
  const double inv_freq = Kokkos::Experimental::pow(10000.0, -2.0 * double(j) / double(head_dim));
  const double angle    = double(position) * inv_freq;
  c = float(Kokkos::Experimental::cos(angle));
  s = float(Kokkos::Experimental::sin(angle));
}

// a * b rounded on its own: never contracted into a fused multiply-add with what follows. nvcc
// contracts by default and did so in some RoPE kernels and not in others (1 ulp apart in float);
// g++ on x86-64 without -mfma never contracts, so host and CUDA round alike too.
KOKKOS_INLINE_FUNCTION float RoundedProduct(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

// One rotate-half pair of RoPE: (lo, hi) -> (lo c - hi s, hi c + lo s), rounded to T. Every RoPE
// kernel rotates through here, so that all of them round alike.
template <class T>
KOKKOS_INLINE_FUNCTION void RotatePair(float lo, float hi, float c, float s, T& out_lo, T& out_hi) {
  out_lo = FromFloat<T>(RoundedProduct(lo, c) - RoundedProduct(hi, s));
  out_hi = FromFloat<T>(RoundedProduct(hi, c) + RoundedProduct(lo, s));
}

// OpenMoE's "swiglu": the first half of the gate is linear, the second goes through SiLU.
KOKKOS_INLINE_FUNCTION float Swiglu(float linear, float gated, float up) {
  return linear * (gated / (1.0f + Kokkos::Experimental::exp(-gated))) * up;
}

// Its gradients for the upstream gradient d: (d linear, d gated, d up).
KOKKOS_INLINE_FUNCTION void SwigluGradient(float linear, float gated, float up, float d, float& d_linear, float& d_gated,
                                           float& d_up) {
  const float sigma = 1.0f / (1.0f + Kokkos::Experimental::exp(-gated));
  const float silu  = gated * sigma;
  d_linear = d * silu * up;
  d_gated  = d * linear * up * sigma * (1.0f + gated * (1.0f - sigma));
  d_up     = d * linear * silu;
}

}  // namespace openmoe::kernels

#endif  // KERNELS_LAYER_MATH_H_
