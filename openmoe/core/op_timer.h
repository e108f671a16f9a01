// File: openmoe/core/op_timer.h
// Opt-in per-phase timing for finding where time goes: with OPENMOE_PROFILE=1 in the
// environment, Mark(space, "phase") fences the execution space and charges the time since the
// previous mark to "phase". Off (the default), Mark does nothing and costs one branch.
#ifndef OPENMOE_CORE_OP_TIMER_H_
#define OPENMOE_CORE_OP_TIMER_H_

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include <Kokkos_Core.hpp>

namespace openmoe {

class OpTimer {
 public:
  OpTimer() : enabled_(std::getenv("OPENMOE_PROFILE") != nullptr) {}
  bool enabled() const { return enabled_; }
  template <class ExecSpace>
  void Mark(const ExecSpace& space, const char* phase) {
    if (!enabled_ || paused_) return;
    space.fence();
    const auto now = std::chrono::steady_clock::now();
    totals_[phase] += std::chrono::duration<double>(now - last_).count();
    last_ = now;
  }
  // While paused, Mark does nothing (no fence): for work being captured into a CUDA graph.
  void set_paused(bool paused) { paused_ = paused; }
  void Restart() { last_ = std::chrono::steady_clock::now(); }
  void Clear() { totals_.clear(); }
  void Print(std::FILE* out, double divide_by = 1.0, const char* unit = "ms") const {
    double total = 0;
    for (const auto& [phase, seconds] : totals_) total += seconds;
    for (const auto& [phase, seconds] : totals_) {
      std::fprintf(out, "  %-22s %9.3f %s  %5.1f%%\n", phase.c_str(), seconds * 1e3 / divide_by, unit,
                   total > 0 ? 100.0 * seconds / total : 0.0);
    }
  }

 private:
  bool enabled_;
  bool paused_ = false;
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
  std::map<std::string, double> totals_;
};

}  // namespace openmoe

#endif  // OPENMOE_CORE_OP_TIMER_H_
