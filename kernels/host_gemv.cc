#include "kernels/host_gemv.h"

#include <cstring>
#include <type_traits>

namespace openmoe::kernels {
namespace {

#define OPENMOE_INLINE inline __attribute__((always_inline))

typedef float F8 __attribute__((vector_size(32)));      // 8 floats: one ymm (two xmm on the baseline)
typedef uint32_t U8 __attribute__((vector_size(32)));

OPENMOE_INLINE F8 Load8(const float* p) {
  F8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
OPENMOE_INLINE F8 Load8(const bf16* p) {  // a bf16's bits are the top half of the float's
  // Lane by lane (not __builtin_convertvector, which g++ 12 splits into two 128-bit halves):
  // one vpmovzxwd from memory and a shift on AVX2.
  U8 u;
#pragma GCC unroll 8
  for (int e = 0; e < 8; ++e) u[e] = uint32_t(p[e].bits) << 16;
  F8 v;
  std::memcpy(&v, &u, sizeof(v));
  return v;
}
OPENMOE_INLINE F8 Load8(const f16* p) {
  F8 v;
  #pragma GCC unroll 16
  for (int e = 0; e < 8; ++e) v[e] = float(p[e]);
  return v;
}
OPENMOE_INLINE void Store8(float* p, F8 v) { std::memcpy(p, &v, sizeof(v)); }
OPENMOE_INLINE F8 Splat(float s) { return F8{s, s, s, s, s, s, s, s}; }
OPENMOE_INLINE float Sum8(F8 v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }

// out[m * ld_out] = x[m, :] . w[0:K] for m < kRows: one column of w read as a single
// sequential stream (measured faster from DRAM than interleaving several columns: 12.8 vs
// 10.0 GB/s on one Zen 3 core), kSplit partial-sum vectors per row of x (consecutive 8-wide
// k chunks, so that about 4 FMA chains are in flight), then the tail of K, then the lanes.
template <int kRows, class T>
OPENMOE_INLINE void DotColumn(const float* __restrict x, int64_t K, const T* __restrict w, float* __restrict out,
                              int64_t ld_out) {
  constexpr int kSplit = kRows == 1 ? 4 : (kRows == 2 ? 2 : 1);
  F8 acc[kRows][kSplit];
  #pragma GCC unroll 16
  for (int m = 0; m < kRows; ++m)
    #pragma GCC unroll 16
    for (int i = 0; i < kSplit; ++i) acc[m][i] = F8{};
  int64_t k = 0;
  for (; k + 8 * kSplit <= K; k += 8 * kSplit) {
    F8 wv[kSplit];
    #pragma GCC unroll 16
    for (int i = 0; i < kSplit; ++i) wv[i] = Load8(w + k + 8 * i);
    #pragma GCC unroll 16
    for (int m = 0; m < kRows; ++m)
      #pragma GCC unroll 16
      for (int i = 0; i < kSplit; ++i) acc[m][i] += Load8(x + m * K + k + 8 * i) * wv[i];
  }
  for (; k + 8 <= K; k += 8) {
    const F8 wv = Load8(w + k);
    #pragma GCC unroll 16
    for (int m = 0; m < kRows; ++m) acc[m][0] += Load8(x + m * K + k) * wv;
  }
  #pragma GCC unroll 16
  for (int m = 0; m < kRows; ++m) {
    F8 total = acc[m][0];
    #pragma GCC unroll 16
    for (int i = 1; i < kSplit; ++i) total += acc[m][i];
    float sum = Sum8(total);
    for (int64_t j = k; j < K; ++j) sum += x[m * K + j] * float(w[j]);
    out[m * ld_out] = sum;
  }
}

// bf16, one row of x, K a multiple of 16 (xp: x with each 16-block as its 8 even then its 8
// odd elements): 16 bf16 of w are loaded as 8 32-bit words, whose low halves are the even
// elements (word << 16) and high halves the odd ones (word & 0xffff0000): no widening shuffles.
OPENMOE_INLINE void DotColumnEvenOdd(const float* __restrict xp, int64_t K, const bf16* __restrict w,
                                     float* __restrict out) {
  const U8 high = U8{} + 0xffff0000u;
  F8 acc[4] = {F8{}, F8{}, F8{}, F8{}};
  auto block = [&](int64_t k, F8& even_acc, F8& odd_acc) {  // the 16 values at k
    U8 u;
    std::memcpy(&u, w + k, sizeof(u));
    const U8 even = u << 16, odd = u & high;
    F8 even_f, odd_f;
    std::memcpy(&even_f, &even, sizeof(even_f));
    std::memcpy(&odd_f, &odd, sizeof(odd_f));
    even_acc += Load8(xp + k) * even_f;
    odd_acc += Load8(xp + k + 8) * odd_f;
  };
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) block(k, acc[0], acc[1]), block(k + 16, acc[2], acc[3]);
  if (k < K) block(k, acc[0], acc[1]);
  *out = Sum8((acc[0] + acc[1]) + (acc[2] + acc[3]));
}

template <int kRows, class T>
OPENMOE_INLINE void DotColumns(const float* x, int64_t K, const T* w, int64_t columns, float* out) {
  if constexpr (kRows == 1 && std::is_same_v<T, bf16>) {
    constexpr int64_t kMaxK = 4096;
    if (K % 16 == 0 && K <= kMaxK) {
      alignas(32) float xp[kMaxK];
      for (int64_t k = 0; k < K; k += 16)
        for (int j = 0; j < 8; ++j) xp[k + j] = x[k + 2 * j], xp[k + 8 + j] = x[k + 2 * j + 1];
      for (int64_t c = 0; c < columns; ++c) DotColumnEvenOdd(xp, K, w + c * K, out + c);
      return;
    }
  }
  for (int64_t c = 0; c < columns; ++c) DotColumn<kRows>(x, K, w + c * K, out + c, columns);
}

// acc[m, 0:cols] += sum_k x[m, k] w[k, 0:cols], kUnroll rows of w per pass over acc (acc is
// loaded and stored once per kUnroll rows), in the order ((r0 + r1) + (r2 + r3)) per pass.
template <int kRows, class T>
OPENMOE_INLINE void AxpyRows(const float* __restrict x, int64_t ldx, int64_t rows, const T* __restrict w, int64_t ldw,
                             int64_t cols, float* __restrict acc, int64_t ldacc) {
  constexpr int kUnroll = kRows <= 2 ? 4 : 2;
  int64_t k = 0;
  for (; k + kUnroll <= rows; k += kUnroll) {
    const T* wr[kUnroll];
    F8 xs[kRows][kUnroll];
    #pragma GCC unroll 16
    for (int i = 0; i < kUnroll; ++i) wr[i] = w + (k + i) * ldw;
    #pragma GCC unroll 16
    for (int m = 0; m < kRows; ++m)
      #pragma GCC unroll 16
      for (int i = 0; i < kUnroll; ++i) xs[m][i] = Splat(x[m * ldx + k + i]);
    int64_t j = 0;
    for (; j + 8 <= cols; j += 8) {
      F8 wv[kUnroll];
      #pragma GCC unroll 16
      for (int i = 0; i < kUnroll; ++i) wv[i] = Load8(wr[i] + j);
      #pragma GCC unroll 16
      for (int m = 0; m < kRows; ++m) {
        F8 sum = xs[m][0] * wv[0] + xs[m][1] * wv[1];
        if constexpr (kUnroll == 4) sum += xs[m][2] * wv[2] + xs[m][3] * wv[3];
        float* out = acc + m * ldacc + j;
        Store8(out, Load8(out) + sum);
      }
    }
    for (; j < cols; ++j) {
      #pragma GCC unroll 16
      for (int m = 0; m < kRows; ++m) {
        float sum = x[m * ldx + k] * float(wr[0][j]) + x[m * ldx + k + 1] * float(wr[1][j]);
        if constexpr (kUnroll == 4) sum += x[m * ldx + k + 2] * float(wr[2][j]) + x[m * ldx + k + 3] * float(wr[3][j]);
        acc[m * ldacc + j] += sum;
      }
    }
  }
  for (; k < rows; ++k) {
    const T* w_row = w + k * ldw;
    int64_t j = 0;
    for (; j + 8 <= cols; j += 8) {
      const F8 wv = Load8(w_row + j);
      #pragma GCC unroll 16
      for (int m = 0; m < kRows; ++m) {
        float* out = acc + m * ldacc + j;
        Store8(out, Load8(out) + Splat(x[m * ldx + k]) * wv);
      }
    }
    for (; j < cols; ++j)
      #pragma GCC unroll 16
      for (int m = 0; m < kRows; ++m) acc[m * ldacc + j] += x[m * ldx + k] * float(w_row[j]);
  }
}

}  // namespace

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define OPENMOE_HOST_GEMV_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define OPENMOE_HOST_GEMV_CLONES
#endif

#define OPENMOE_HOST_GEMV_FOR_TYPE(T)                                                                            \
  OPENMOE_HOST_GEMV_CLONES void HostDotColumns(const float* x, int64_t M, int64_t K, const T* w, int64_t columns, \
                                               float* out) {                                                     \
    switch (M) {                                                                                                 \
      case 1: DotColumns<1>(x, K, w, columns, out); break;                                                       \
      case 2: DotColumns<2>(x, K, w, columns, out); break;                                                       \
      case 3: DotColumns<3>(x, K, w, columns, out); break;                                                       \
      default: DotColumns<4>(x, K, w, columns, out); break;                                                      \
    }                                                                                                            \
  }                                                                                                              \
  OPENMOE_HOST_GEMV_CLONES void HostAxpyRows(const float* x, int64_t ldx, int64_t M, int64_t rows, const T* w,     \
                                             int64_t ldw, int64_t cols, float* acc, int64_t ldacc) {             \
    switch (M) {                                                                                                 \
      case 1: AxpyRows<1>(x, ldx, rows, w, ldw, cols, acc, ldacc); break;                                         \
      case 2: AxpyRows<2>(x, ldx, rows, w, ldw, cols, acc, ldacc); break;                                         \
      case 3: AxpyRows<3>(x, ldx, rows, w, ldw, cols, acc, ldacc); break;                                         \
      default: AxpyRows<4>(x, ldx, rows, w, ldw, cols, acc, ldacc); break;                                        \
    }                                                                                                            \
  }
OPENMOE_HOST_GEMV_FOR_TYPE(float)
OPENMOE_HOST_GEMV_FOR_TYPE(bf16)
OPENMOE_HOST_GEMV_FOR_TYPE(f16)
#undef OPENMOE_HOST_GEMV_FOR_TYPE

}  // namespace openmoe::kernels
