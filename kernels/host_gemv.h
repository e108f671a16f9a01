// File: kernels/host_gemv.h
// The weight-streaming inner loops of host products with few rows of x (batch-1 to batch-4
// decode: every weight is read once per step). Weights (float, bf16 or f16) are widened to
// float in registers (bf16: a 16-bit shift), x is float, sums are float32; plain C++ over 8-float
// vectors (GCC vector extensions), compiled for x86-64-v4, v3 and the baseline (target_clones:
// the loader picks the CPU's version; AVX-512 and AVX2 machines run the same source). No
// threads and no allocation here: callers split the work (linear.cc, moe.cc).
//
//   // out[m, c] = x[m, :] . w[c, :]      x [M, K], w [columns, K] (nn.Linear rows), out [M, columns]
//   HostDotColumns(x, M, K, w, columns, out);
//   // acc[m, j] += sum_k x[m * ldx + k] w[k * ldw + j]   k < rows, j < cols, acc row m at acc + m * ldacc
//   HostAxpyRows(x, ldx, M, rows, w, ldw, cols, acc, ldacc);
// M <= kHostGemvRows.
#ifndef KERNELS_HOST_GEMV_H_
#define KERNELS_HOST_GEMV_H_

#include <cstdint>

#include "openmoe/core/bf16.h"

namespace openmoe::kernels {

inline constexpr int64_t kHostGemvRows = 4;

void HostDotColumns(const float* x, int64_t M, int64_t K, const float* w, int64_t columns, float* out);
void HostDotColumns(const float* x, int64_t M, int64_t K, const bf16* w, int64_t columns, float* out);
void HostDotColumns(const float* x, int64_t M, int64_t K, const f16* w, int64_t columns, float* out);

void HostAxpyRows(const float* x, int64_t ldx, int64_t M, int64_t rows, const float* w, int64_t ldw, int64_t cols,
                  float* acc, int64_t ldacc);
void HostAxpyRows(const float* x, int64_t ldx, int64_t M, int64_t rows, const bf16* w, int64_t ldw, int64_t cols,
                  float* acc, int64_t ldacc);
void HostAxpyRows(const float* x, int64_t ldx, int64_t M, int64_t rows, const f16* w, int64_t ldw, int64_t cols,
                  float* acc, int64_t ldacc);

}  // namespace openmoe::kernels

#endif  // KERNELS_HOST_GEMV_H_
