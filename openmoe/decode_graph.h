// File: openmoe/decode_graph.h
// Decode steps captured once as a CUDA graph and replayed: a batch-1 decode step is ~350 small
// kernels whose host launch cost (~5 us each through Kokkos) exceeds their GPU time; replaying
// the captured graph costs one launch. Host backends run the step directly.
//
//   DecodeGraphs<Space> graphs;                       // owns a stream on CUDA
//   graphs.Run(key, [&] { return BufferGeneration(); }, [&] { return EnqueueStep(graphs.space()); });
// The first Run with a key runs the step uncaptured (so that every buffer it needs exists), the
// second captures and launches it, later ones replay it. The captured kernels keep pointing at
// the same buffers, so the key names them: the KV cache's buffers, the batch and a generation
// that changes whenever a work buffer the step uses is reallocated (the model's workspace and
// the attention kernels' scratch); and the kernels were chosen under the model's decode tuning,
// routing mode and dependent-launch mode, which the key names too. Inputs that change per step
// (token ids, position) must be read by the kernels from device memory written before Run.
//
// By default (set_dependent_launch(DependentLaunch::kAll)): before instantiation, every edge from a kernel to a kernel launched through
// kernels::DependentParallelFor(WaitsInside) becomes a programmatic edge (Hopper's programmatic
// dependent launch, kernels/dependent_launch.h): the later kernel is launched while the earlier
// one runs and waits for it on the GPU. Other edges (into cuBLAS kernels, copies) stay ordinary.
//
// Work that only some steps need (the experts a step's tokens were routed to) goes into
// conditional branches while the step is captured:
//   auto conditions = graphs.NewConditions(E);             // all 0 at each replay
//   kernels::SetExpertConditions(space, ..., *conditions);  // a kernel sets them on the GPU
//   graphs.EnqueueConditionalBranches(*conditions, [&](int64_t e, const Space& branch) { ... });
// Each branch is a conditional graph node (CUDA 12.4+) that runs its body, captured from the
// branch stream, only when its condition is nonzero; the branches run in parallel with each
// other, and what is captured after them waits for all of them.
#ifndef OPENMOE_DECODE_GRAPH_H_
#define OPENMOE_DECODE_GRAPH_H_

#include <cstdint>
#include <functional>
#include <vector>

#include <Kokkos_Core.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace openmoe {

struct DecodeGraphKey {
  uint64_t cache        = 0;  // identity of the KvCache's buffers (a hash of their addresses)
  int64_t batch         = 0;
  int64_t capacity      = 0;
  uint64_t generation   = 0;  // buffer generation
  uint64_t tuning       = 0;  // a hash of the decode tuning, routing mode and dependent-launch mode
  bool operator==(const DecodeGraphKey& o) const {
    return cache == o.cache && batch == o.batch && capacity == o.capacity && generation == o.generation &&
           tuning == o.tuning;
  }
};

// Which captured edges become programmatic: none; those between two of the project's dependent
// kernels; or every edge into one from any kernel (cuBLAS's too). kAll is the default.
// On by default (every edge into one of the project's kernels; faster 8B batch-1 decode on the
// H200, benchmarks/RESULTS.md session 7).
enum class DependentLaunch { kOff, kBetweenOwnKernels, kAll };

// Host backends: no graphs.
template <class ExecSpace>
class DecodeGraphs {
 public:
  static constexpr bool kSupported = false;
  ExecSpace space() const { return ExecSpace(); }
  void set_dependent_launch(DependentLaunch) {}
  absl::Status Run(DecodeGraphKey, const std::function<uint64_t()>&, const std::function<absl::Status()>& enqueue) {
    return enqueue();
  }
  int64_t programmatic_edges() const { return 0; }
  int64_t edges() const { return 0; }
  int64_t launches() const { return 0; }
  int64_t conditional_branches() const { return 0; }
  bool capturing() const { return false; }
  absl::StatusOr<std::vector<uint64_t>> NewConditions(int64_t) {
    return absl::UnimplementedError("conditional branches need a CUDA decode graph");
  }
  absl::Status EnqueueConditionalBranches(const std::vector<uint64_t>&,
                                          const std::function<absl::Status(int64_t, const ExecSpace&)>&) {
    return absl::UnimplementedError("conditional branches need a CUDA decode graph");
  }
};

#if defined(KOKKOS_ENABLE_CUDA)
template <>
class DecodeGraphs<Kokkos::Cuda> {
 public:
  static constexpr bool kSupported = true;
  DecodeGraphs();
  ~DecodeGraphs();
  DecodeGraphs(const DecodeGraphs&) = delete;
  DecodeGraphs& operator=(const DecodeGraphs&) = delete;

  // A Kokkos instance on the graphs' own stream (a blocking stream: ordered with work on the
  // default stream, as capture requires nothing else to run on it).
  Kokkos::Cuda space() const { return space_; }
  // Which captured edges of later captures become programmatic (kAll unless set).
  void set_dependent_launch(DependentLaunch mode) { dependent_launch_ = mode; }
  // `generation` is read again after the step ran, so that a first run that allocated its
  // buffers is followed by a capture rather than another uncaptured run.
  absl::Status Run(DecodeGraphKey key, const std::function<uint64_t()>& generation,
                   const std::function<absl::Status()>& enqueue);
  // Programmatic edges of the graph captured last (of how many edges it has).
  int64_t programmatic_edges() const { return programmatic_edges_; }
  int64_t edges() const { return edges_; }
  // Graph launches so far (captures' first launches and replays), for tests and benchmarks.
  int64_t launches() const { return launches_; }

  // True while Run captures a step (the enqueue it was given is running under capture).
  bool capturing() const { return capturing_; }
  // While capturing: `count` conditions of the graph being captured (cudaGraphConditionalHandle),
  // reset to 0 at each launch of the graph.
  absl::StatusOr<std::vector<uint64_t>> NewConditions(int64_t count);
  // While capturing: after the work captured so far, one conditional branch per condition, whose
  // body(i, branch_space) is captured from the branch stream and runs when condition i is nonzero.
  // Work captured after this call waits for every branch.
  absl::Status EnqueueConditionalBranches(const std::vector<uint64_t>& conditions,
                                          const std::function<absl::Status(int64_t, const Kokkos::Cuda&)>& body);
  // Conditional branches of the graph captured last.
  int64_t conditional_branches() const { return conditional_branches_; }

 private:
  // Captures the step, turns its edges into programmatic ones as `mode` says, instantiates exec_.
  absl::Status CaptureAndInstantiate(const DecodeGraphKey& key, const std::function<uint64_t()>& generation,
                                     const std::function<absl::Status()>& enqueue, DependentLaunch mode);

  cudaStream_t stream_ = nullptr, branch_stream_ = nullptr;
  Kokkos::Cuda space_, branch_space_;
  bool capturing_ = false;
  int64_t conditional_branches_ = 0;
  cudaGraphExec_t exec_ = nullptr;
  DecodeGraphKey warm_, captured_;
  int64_t programmatic_edges_ = 0, edges_ = 0;
  int64_t launches_ = 0;
  DependentLaunch dependent_launch_ = DependentLaunch::kAll;
  bool warned_ = false;  // the fallback to ordinary edges was reported
};
#endif

}  // namespace openmoe

#endif  // OPENMOE_DECODE_GRAPH_H_
