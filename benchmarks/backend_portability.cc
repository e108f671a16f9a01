// backend_portability: runs the same ops (every benchmark linked into this binary) on every
// enabled Kokkos backend and prints a table with each backend's throughput relative to Serial.
// This is the project's main job until the trainer exists (README).
//
//   bazel run //benchmarks:backend_portability                       # host: Serial vs OpenMP
//   bazel run //benchmarks:backend_portability -- --benchmark_filter=RmsNorm
// Google Benchmark flags (--benchmark_*) and Kokkos flags (--kokkos-*) are accepted.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <Kokkos_Core.hpp>

namespace {

struct Measurement {
  double seconds = 0;
  double gbps    = 0;
};

// Console output as usual, plus a record of (op, shape) -> backend -> measurement.
class PortabilityReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      if (run.error_occurred || run.run_type != Run::RT_Iteration) continue;
      const std::string& name = run.run_name.function_name;  // "<Op>/<Backend>"
      const size_t slash      = name.find('/');
      const std::string op    = name.substr(0, slash);
      const std::string backend = slash == std::string::npos ? "?" : name.substr(slash + 1);
      Measurement m;
      m.seconds   = run.GetAdjustedRealTime() * benchmark::GetTimeUnitMultiplier(run.time_unit);
      auto gbps   = run.counters.find("GB/s");
      m.gbps      = gbps == run.counters.end() ? 0.0 : double(gbps->second);
      const auto key = std::make_pair(op, run.run_name.args);
      if (!results_.count(key)) order_.push_back(key);
      results_[key][backend] = m;
      backends_.emplace(backend);
    }
  }

  void PrintSummary() const {
    std::printf("\nBackend portability: same source, every enabled backend (speed-up vs Serial)\n");
    std::printf("%-10s %-14s", "op", "shape");
    for (const auto& b : backends_) std::printf(" %24s", b.c_str());
    std::printf("\n");
    for (const auto& key : order_) {
      const auto& row = results_.at(key);
      std::printf("%-10s %-14s", key.first.c_str(), key.second.c_str());
      const auto serial = row.find("Serial");
      for (const auto& b : backends_) {
        auto it = row.find(b);
        if (it == row.end()) {
          std::printf(" %24s", "-");
          continue;
        }
        char cell[64];
        const double speedup =
            serial == row.end() ? 0.0 : serial->second.seconds / it->second.seconds;
        std::snprintf(cell, sizeof(cell), "%.3g GB/s (x%.2f)", it->second.gbps, speedup);
        std::printf(" %24s", cell);
      }
      std::printf("\n");
    }
  }

 private:
  std::vector<std::pair<std::string, std::string>> order_;
  std::map<std::pair<std::string, std::string>, std::map<std::string, Measurement>> results_;
  std::set<std::string> backends_;
};

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      std::printf(
          "backend_portability: runs every op benchmark on every enabled Kokkos backend\n"
          "(host build: Serial, OpenMP; --config=cuda build: Serial, Cuda) and prints GB/s and\n"
          "the speed-up over Serial.\n\n"
          "Flags: --benchmark_filter=REGEX (e.g. RmsNorm/OpenMP), --benchmark_min_time=SECONDS,\n"
          "       --benchmark_format=console|json|csv, --kokkos-num-threads=N, and the other\n"
          "       Google Benchmark (--benchmark_*) and Kokkos (--kokkos-*) flags.\n");
      return 0;
    }
  }
  Kokkos::initialize(argc, argv);
  {
    std::printf("Kokkos default execution space: %s, concurrency %d\n",
                Kokkos::DefaultExecutionSpace::name(),
                Kokkos::DefaultExecutionSpace().concurrency());
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    PortabilityReporter reporter;
    benchmark::RunSpecifiedBenchmarks(&reporter);
    reporter.PrintSummary();
    benchmark::Shutdown();
  }
  Kokkos::finalize();
  return 0;
}
