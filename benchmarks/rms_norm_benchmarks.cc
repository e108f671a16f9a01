// Google Benchmark cases for RMSNorm, registered for every enabled backend (Serial, OpenMP /
// Cuda). Bytes moved per call: read x [T,H] + w [H], write y [T,H], float32.
// Shapes are OpenMoE token batches: T = 2048 tokens, H = 768 (base), 2048 (8B), 3072 (34B).
#include <benchmark/benchmark.h>

#include <Kokkos_Core.hpp>
#include <Kokkos_Random.hpp>

#include "kernels/rms_norm.h"
#include "openmoe/core/execution_spaces.h"

namespace openmoe::benchmarks {
namespace {

template <class ExecSpace>
void BM_RmsNorm(benchmark::State& state) {
  const int64_t rows = state.range(0), hidden = state.range(1);
  ExecSpace space;
  Matrix<float, ExecSpace> x("x", rows, hidden), y("y", rows, hidden);  // [T, H]
  Vector<float, ExecSpace> w("w", hidden);                              // [H]
  Kokkos::Random_XorShift64_Pool<ExecSpace> pool(/*seed=*/12345);
  Kokkos::fill_random(x, pool, -1.0f, 1.0f);
  Kokkos::fill_random(w, pool, 0.5f, 1.5f);
  space.fence();
  for (auto _ : state) {
    Kokkos::Timer timer;
    absl::Status status = kernels::RmsNorm<float>(space, x, w, y);
    space.fence();
    state.SetIterationTime(timer.seconds());
    if (!status.ok()) state.SkipWithError(std::string(status.message()).c_str());
  }
  const double bytes = (2.0 * rows * hidden + hidden) * sizeof(float);
  state.counters["GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(ExecSpace::name());
}

template <class ExecSpace>
void RegisterFor() {
  benchmark::RegisterBenchmark((std::string("RmsNorm/") + ExecSpace::name()).c_str(),
                               BM_RmsNorm<ExecSpace>)
      ->ArgNames({"T", "H"})
      ->Args({2048, 768})
      ->Args({2048, 2048})
      ->Args({2048, 3072})
      ->Args({19, 111})
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond);
}

template <class... Spaces>
void RegisterAll(ExecutionSpaceList<Spaces...>) {
  (RegisterFor<Spaces>(), ...);
}

// Registration at static-initialisation time, like BENCHMARK(); Kokkos is initialised in main.
const bool kRegistered = (RegisterAll(EnabledExecutionSpaces{}), true);

}  // namespace
}  // namespace openmoe::benchmarks
