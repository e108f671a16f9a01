// Google Benchmark cases for the kernels of a batch-1 decode step at OpenMoE-8B shapes (bf16),
// on the build's default backend: the weight-streaming Linear against cuBLAS (same run, weights
// from HBM), the fused residual-add RMSNorm, RoPE + cache append, split-key attention alone and
// with RoPE + append fused in (batch 1 and 16), and the cost of one empty Kokkos launch (the
// floor of a launch-bound step).
//
// Each iteration enqueues kRepeats calls and fences once, so the time per call is the device
// throughput with launches overlapped; "host_us" is the host time to enqueue one call.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <Kokkos_Core.hpp>
#include <Kokkos_Random.hpp>

#include "kernels/attention.h"
#include "kernels/linear.h"
#include "kernels/rms_norm.h"
#include "openmoe/core/bf16.h"

namespace openmoe::benchmarks {
namespace {

using Space = Kokkos::DefaultExecutionSpace;
constexpr int kRepeats = 20;

template <class View>
void FillRandom(View v, float scale) {  // uniform in [-scale, scale), bf16-rounded
  Kokkos::View<float*, typename View::memory_space> tmp("tmp", v.size());
  Kokkos::Random_XorShift64_Pool<Space> pool(/*seed=*/2026);
  Kokkos::fill_random(tmp, pool, -scale, scale);
  auto* data = v.data();
  Kokkos::parallel_for("fill", Kokkos::RangePolicy<Space>(0, v.size()),
                       KOKKOS_LAMBDA(const int64_t i) { data[i] = bf16(tmp(i)); });
  Kokkos::fence();
}

// Times `call` kRepeats times per iteration; sets time per call, bytes/s and host enqueue time.
template <class Call>
void TimeCalls(benchmark::State& state, double bytes_per_call, Call&& call) {
  double host_seconds = 0.0;
  for (auto _ : state) {
    Kokkos::Timer timer;
    for (int r = 0; r < kRepeats; ++r) call();
    host_seconds += timer.seconds();
    Kokkos::fence();
    state.SetIterationTime(timer.seconds() / kRepeats);
  }
  state.counters["GB/s"] = benchmark::Counter(bytes_per_call * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["host_us"] = host_seconds * 1e6 / (double(state.iterations()) * kRepeats);
}

// y[1, N] = x[1, K] @ w[N, K]^T; arg 2 selects the kernel: cuBLAS (0), warp per column (1),
// split-K (2) (DecodeLinearKernel). The calls
// cycle through copies of w that together exceed 4x the H200's 50 MB L2, so that every call reads
// its weights from HBM as a decode step does (one copy of the same w stays in L2 and measures
// a cache, not the kernel).
void BM_DecodeLinear(benchmark::State& state) {
  const int64_t N = state.range(0), K = state.range(1);
  const int kernel = int(state.range(2));
  static const char* const kNames[] = {"cublas", "warp_per_column", "split_k"};
  static const kernels::DecodeLinearKernel kKernels[] = {kernels::DecodeLinearKernel::kCublas,
                                                         kernels::DecodeLinearKernel::kWarpPerColumn,
                                                         kernels::DecodeLinearKernel::kSplitK};
  const double weight_bytes = double(N * K) * sizeof(bf16);
  const int copies = int(std::min(64.0, std::ceil(200e6 / weight_bytes)));
  Matrix<bf16, Space> x("x", 1, K), y("y", 1, N);
  std::vector<Matrix<bf16, Space>> w;
  for (int c = 0; c < copies; ++c) {
    w.emplace_back("w", N, K);
    FillRandom(w.back(), 0.02f);
  }
  FillRandom(x, 1.0f);
  kernels::ExecutionContext<Space> ctx;
  ctx.tuning().decode_linear_kernel = kKernels[kernel];
  int next = 0;
  TimeCalls(state, double(N * K + K + N) * sizeof(bf16), [&] {
    const Matrix<bf16, Space>& weights = w[next];
    next = (next + 1) % copies;
    absl::Status s = kernels::Linear<bf16>(ctx, ConstMatrix<bf16, Space>(x), ConstMatrix<bf16, Space>(weights), y);
    if (!s.ok()) state.SkipWithError(std::string(s.message()).c_str());
  });
  state.SetLabel(kNames[kernel]);
}

void BM_DecodeAddRmsNorm(benchmark::State& state) {
  const int64_t H = state.range(0);
  Matrix<bf16, Space> h("h", 1, H), delta("delta", 1, H), y("y", 1, H);
  Vector<bf16, Space> w("w", H);
  FillRandom(h, 1.0f);
  FillRandom(delta, 0.0f);  // h stays put across repeats
  FillRandom(w, 1.0f);
  TimeCalls(state, 5.0 * H * sizeof(bf16), [&] {
    absl::Status s = kernels::AddRmsNorm<bf16>(Space(), h, delta, w, y, 1e-6f);
    if (!s.ok()) state.SkipWithError(std::string(s.message()).c_str());
  });
}

// One query per head over `keys` cached keys (Nh = Nkv = 24, Dh = 128, as OpenMoE-8B).
void BM_DecodeAttention(benchmark::State& state) {
  const int64_t keys = state.range(0), Nh = 24, Dh = 128;
  kernels::Tensor3<bf16, Space> q("q", 1, 1, Nh * Dh), out("out", 1, 1, Nh * Dh);
  kernels::Tensor3<bf16, Space> k("k", 1, keys, Nh * Dh), v("v", 1, keys, Nh * Dh);
  Kokkos::View<int64_t**, Kokkos::LayoutRight, Space::memory_space> mask("mask", 1, keys);
  Kokkos::deep_copy(mask, 1);
  FillRandom(q, 0.1f);
  FillRandom(k, 0.1f);
  FillRandom(v, 1.0f);
  const kernels::ExecutionContext<Space> ctx;  // its scratch persists across the timed calls
  TimeCalls(state, 2.0 * keys * Nh * Dh * sizeof(bf16), [&] {
    absl::Status s = kernels::CausalAttention<bf16>(ctx, q, k, v, mask, Nh, Nh, Dh, keys, keys - 1, out);
    if (!s.ok()) state.SkipWithError(std::string(s.message()).c_str());
  });
}

// The kernel a decode step runs per layer: RoPE + cache append + attention of `batch` queries per
// head at position keys - 1 of a cache of `keys` columns (RopeAppendAttention, device position),
// on kernel 0: the warp-split kernel (automatic keys per warp), 1 and 2: the block-split kernel
// with 4 and 8 keys per lane in blocks of 8 warps, 3: 8 keys per lane in blocks of 4 warps.
void BM_DecodeStepAttention(benchmark::State& state) {
  const int64_t keys = state.range(0), B = state.range(1), Nh = 24, Dh = 128, width = Nh * Dh;
  const int64_t kernel = state.range(2);
  kernels::Tensor3<bf16, Space> qkv("qkv", B, 1, 3 * width), q("q", B, 1, width), out("out", B, 1, width);
  kernels::Tensor3<bf16, Space> k("k", B, keys, width), v("v", B, keys, width);
  Kokkos::View<int64_t**, Kokkos::LayoutRight, Space::memory_space> mask("mask", B, keys);
  Kokkos::View<int64_t, Space::memory_space> position("position");
  Kokkos::deep_copy(mask, 1);
  Kokkos::deep_copy(position, keys - 1);
  FillRandom(qkv, 0.1f);
  FillRandom(k, 0.1f);
  FillRandom(v, 1.0f);
  const kernels::ExecutionContext<Space> ctx;
  ctx.tuning().decode_attention_kernel =
      kernel == 0 ? kernels::DecodeAttentionKernel::kWarpSplit : kernels::DecodeAttentionKernel::kBlockSplit;
  ctx.tuning().block_split_lane_keys = kernel == 1 ? 4 : 8;
  ctx.tuning().block_split_warps = kernel == 3 ? 4 : 8;
  TimeCalls(state, 2.0 * B * keys * width * sizeof(bf16), [&] {
    absl::Status s = kernels::RopeAppendAttention<bf16>(ctx, qkv, q, k, v, mask, Nh, Nh, Dh, out, position.data());
    if (!s.ok()) state.SkipWithError(std::string(s.message()).c_str());
  });
}

void BM_DecodeRopeAndAppend(benchmark::State& state) {
  const int64_t Nh = 24, Dh = 128, width = Nh * Dh, S_max = 1024;
  kernels::Tensor3<bf16, Space> qkv("qkv", 1, 1, 3 * width), q("q", 1, 1, width);
  kernels::Tensor3<bf16, Space> kc("kc", 1, S_max, width), vc("vc", 1, S_max, width);
  FillRandom(qkv, 1.0f);
  TimeCalls(state, 5.0 * width * sizeof(bf16), [&] {
    absl::Status s = kernels::RopeAndAppend<bf16>(Space(), qkv, Dh, width, 600, q, kc, vc);
    if (!s.ok()) state.SkipWithError(std::string(s.message()).c_str());
  });
}

void BM_EmptyLaunch(benchmark::State& state) {
  Kokkos::View<int*, Space::memory_space> sink("sink", 1);
  TimeCalls(state, 0.0, [&] {
    Kokkos::parallel_for("empty", Kokkos::RangePolicy<Space>(0, 1), KOKKOS_LAMBDA(const int) { sink(0) = 1; });
  });
}

// Linear shapes of an 8B decode step: q/k/v fused, o_proj, gate/up fused, down, router, LM head.
BENCHMARK(BM_DecodeLinear)
    ->ArgNames({"N", "K", "kernel"})
    ->ArgsProduct({{9216}, {2048}, {0, 1, 2}})
    ->ArgsProduct({{2048}, {3072}, {0, 1, 2}})
    ->ArgsProduct({{24576}, {2048}, {0, 1, 2}})
    ->ArgsProduct({{2048}, {8192}, {0, 1, 2}})
    ->ArgsProduct({{32}, {2048}, {0, 1, 2}})
    ->ArgsProduct({{256384}, {2048}, {0, 1, 2}})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_DecodeAddRmsNorm)->Arg(2048)->Arg(3072)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_DecodeAttention)->Arg(512)->Arg(2048)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_DecodeStepAttention)
    ->ArgNames({"keys", "batch", "kernel"})
    ->ArgsProduct({{576, 2048}, {1, 16}, {0, 1, 2, 3}})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_DecodeRopeAndAppend)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_EmptyLaunch)->UseManualTime()->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace openmoe::benchmarks
