#!/usr/bin/env bash
# Host read bandwidth for the decode roofline (issue 18): sums an 800 MB float32 array with
# OpenMP (all cores unless OMP_NUM_THREADS says otherwise), best of 10 passes after a first touch.
# Compiled on the fly into a temporary folder (g++ -O3 -march=native -fopenmp). Prints
#   RESULT read_bandwidth_gb_s=<GB/s, 1e9 bytes> bytes=800000000 threads=<n>
#
#     OMP_NUM_THREADS=2 OMP_PROC_BIND=spread OMP_PLACES=cores tools/reference/read_bandwidth.sh
set -euo pipefail
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat > "$dir/read_bw.cc" <<'CC'
#include <omp.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
int main() {
  const long n = 200000000L;  // 800 MB of float32
  float* a = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
#pragma omp parallel for schedule(static)
  for (long i = 0; i < n; ++i) a[i] = 1.0f + (i & 7);  // first touch by the reading threads
  double best = 1e30, total = 0;
  for (int pass = 0; pass < 10; ++pass) {
    auto t0 = std::chrono::steady_clock::now();
    float sum = 0;
#pragma omp parallel for simd schedule(static) reduction(+ : sum)
    for (long i = 0; i < n; ++i) sum += a[i];
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    total += sum;
    if (dt < best) best = dt;
  }
  std::printf("RESULT read_bandwidth_gb_s=%.1f bytes=%ld threads=%d (checksum %.3g)\n",
              n * sizeof(float) / best / 1e9, n * static_cast<long>(sizeof(float)), omp_get_max_threads(), total);
  std::free(a);
}
CC
g++ -O3 -march=native -fopenmp -o "$dir/read_bw" "$dir/read_bw.cc"
"$dir/read_bw"
