#include "openmoe/decode_graph.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "openmoe/core/status_macros.h"
#include "kernels/dependent_launch.h"

namespace openmoe {
// A graph that holds a memory-allocation node cannot be re-edged ("operation not supported", H200
// driver 580); cuBLAS's own workspace was such a node until kernels/cublas_handle.h gave it a
// fixed one. Where the driver still refuses, the step falls back to ordinary edges.

#if defined(KOKKOS_ENABLE_CUDA)
namespace {
absl::Status CudaCheck(cudaError_t error, const char* call) {
  if (error == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(call, " failed: ", cudaGetErrorString(error)));
}

bool IsKernel(cudaGraphNode_t node) {
  cudaGraphNodeType type;
  return cudaGraphNodeGetType(node, &type) == cudaSuccess && type == cudaGraphNodeTypeKernel;
}

// Counts the edges of `graph` into `edges` and turns the ordinary edges from a kernel (kAll) or
// from a `dependent` node (kBetweenOwnKernels) to a `dependent` node (kernels of
// DependentParallelFor*) into programmatic ones (the downstream kernel may launch once every block
// upstream has let it, and waits for the upstream kernel's completion and memory with
// griddepcontrol.wait), counted into `programmatic`.
absl::Status AddProgrammaticEdges(cudaGraph_t graph, DependentLaunch mode, std::vector<cudaGraphNode_t> dependent,
                                  int64_t& edges, int64_t& programmatic) {
  std::sort(dependent.begin(), dependent.end());
  size_t count = 0;
  absl::Status status = CudaCheck(cudaGraphGetEdges(graph, nullptr, nullptr, nullptr, &count), "cudaGraphGetEdges");
  std::vector<cudaGraphNode_t> from(count), to(count);
  std::vector<cudaGraphEdgeData> data(count);
  if (status.ok() && count > 0) {
    status = CudaCheck(cudaGraphGetEdges(graph, from.data(), to.data(), data.data(), &count), "cudaGraphGetEdges");
  }
  edges = int64_t(count), programmatic = 0;
  std::map<cudaGraphNode_t, int> out_degree, in_degree;
  for (size_t i = 0; i < count; ++i) ++out_degree[from[i]], ++in_degree[to[i]];
  auto is_dependent = [&](cudaGraphNode_t node) { return std::binary_search(dependent.begin(), dependent.end(), node); };
  for (size_t i = 0; mode != DependentLaunch::kOff && status.ok() && i < count; ++i) {
    // Only links of a chain (one edge out of `from`, one into `to`): what single-stream capture makes.
    if (data[i].type != cudaGraphDependencyTypeDefault || data[i].from_port != cudaGraphKernelNodePortDefault ||
        out_degree[from[i]] != 1 || in_degree[to[i]] != 1 || !is_dependent(to[i]) ||
        !(mode == DependentLaunch::kAll ? IsKernel(from[i]) : is_dependent(from[i]))) {
      continue;
    }
    cudaGraphEdgeData edge{};
    edge.from_port = cudaGraphKernelNodePortProgrammatic;
    edge.type      = cudaGraphDependencyTypeProgrammatic;
    status = CudaCheck(cudaGraphRemoveDependencies(graph, &from[i], &to[i], &data[i], 1), "cudaGraphRemoveDependencies");
    if (status.ok()) status = CudaCheck(cudaGraphAddDependencies(graph, &from[i], &to[i], &edge, 1), "cudaGraphAddDependencies");
    if (status.ok()) ++programmatic;
  }
  return status;
}
}  // namespace

DecodeGraphs<Kokkos::Cuda>::DecodeGraphs() {
  (void)cudaStreamCreate(&stream_);
  // The branch stream only ever captures (cudaStreamBeginCaptureToGraph); non-blocking, so that
  // capturing on it never makes the legacy default stream wait on a capture.
  (void)cudaStreamCreateWithFlags(&branch_stream_, cudaStreamNonBlocking);
  space_        = Kokkos::Cuda(stream_);
  branch_space_ = Kokkos::Cuda(branch_stream_);
}

DecodeGraphs<Kokkos::Cuda>::~DecodeGraphs() {
  if (exec_ != nullptr) (void)cudaGraphExecDestroy(exec_);
  space_.fence();
  space_        = Kokkos::Cuda();  // release the instances before their streams
  branch_space_ = Kokkos::Cuda();
  (void)cudaStreamDestroy(stream_);
  (void)cudaStreamDestroy(branch_stream_);
}

absl::StatusOr<std::vector<uint64_t>> DecodeGraphs<Kokkos::Cuda>::NewConditions(int64_t count) {
  if (!capturing_) return absl::FailedPreconditionError("NewConditions: no decode step is being captured");
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  cudaGraph_t graph = nullptr;
  OPENMOE_RETURN_IF_ERROR(CudaCheck(cudaStreamGetCaptureInfo(stream_, &status, nullptr, &graph, nullptr, nullptr, nullptr),
                                    "cudaStreamGetCaptureInfo"));
  std::vector<uint64_t> conditions(count);
  for (uint64_t& condition : conditions) {
    cudaGraphConditionalHandle handle;
    OPENMOE_RETURN_IF_ERROR(CudaCheck(cudaGraphConditionalHandleCreate(&handle, graph, 0, cudaGraphCondAssignDefault),
                                      "cudaGraphConditionalHandleCreate"));
    condition = handle;
  }
  return conditions;
}

absl::Status DecodeGraphs<Kokkos::Cuda>::EnqueueConditionalBranches(
    const std::vector<uint64_t>& conditions, const std::function<absl::Status(int64_t, const Kokkos::Cuda&)>& body) {
  if (!capturing_) return absl::FailedPreconditionError("EnqueueConditionalBranches: no decode step is being captured");
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  cudaGraph_t graph = nullptr;
  const cudaGraphNode_t* frontier = nullptr;
  const cudaGraphEdgeData* frontier_edges = nullptr;
  size_t frontier_size = 0;
  OPENMOE_RETURN_IF_ERROR(CudaCheck(cudaStreamGetCaptureInfo(stream_, &status, nullptr, &graph, &frontier,
                                                             &frontier_edges, &frontier_size),
                                    "cudaStreamGetCaptureInfo"));
  // Every branch starts after the work captured so far (the kernel that set the conditions).
  const std::vector<cudaGraphNode_t> after(frontier, frontier + frontier_size);
  const std::vector<cudaGraphEdgeData> after_edges(frontier_edges, frontier_edges + frontier_size);
  std::vector<cudaGraphNode_t> branches;
  for (size_t i = 0; i < conditions.size(); ++i) {
    cudaGraphNodeParams params{};
    params.type                = cudaGraphNodeTypeConditional;
    params.conditional.handle  = cudaGraphConditionalHandle(conditions[i]);
    params.conditional.type    = cudaGraphCondTypeIf;
    params.conditional.size    = 1;
    cudaGraphNode_t node = nullptr;
    OPENMOE_RETURN_IF_ERROR(CudaCheck(cudaGraphAddNode(&node, graph, after.data(), after_edges.data(), after.size(), &params),
                                      "cudaGraphAddNode (conditional branch)"));
    OPENMOE_RETURN_IF_ERROR(CudaCheck(cudaStreamBeginCaptureToGraph(branch_stream_, params.conditional.phGraph_out[0],
                                                                    nullptr, nullptr, 0, cudaStreamCaptureModeRelaxed),
                                      "cudaStreamBeginCaptureToGraph (conditional branch)"));
    absl::Status captured = body(int64_t(i), branch_space_);
    cudaGraph_t body_graph = nullptr;
    const absl::Status ended = CudaCheck(cudaStreamEndCapture(branch_stream_, &body_graph),
                                         "cudaStreamEndCapture (conditional branch)");
    OPENMOE_RETURN_IF_ERROR(captured);
    OPENMOE_RETURN_IF_ERROR(ended);
    branches.push_back(node);
  }
  conditional_branches_ += int64_t(branches.size());
  if (branches.empty()) return absl::OkStatus();
  return CudaCheck(cudaStreamUpdateCaptureDependencies(stream_, branches.data(), nullptr, branches.size(),
                                                       cudaStreamSetCaptureDependencies),
                   "cudaStreamUpdateCaptureDependencies");
}

absl::Status DecodeGraphs<Kokkos::Cuda>::CaptureAndInstantiate(const DecodeGraphKey& key,
                                                               const std::function<uint64_t()>& generation,
                                                               const std::function<absl::Status()>& enqueue,
                                                               DependentLaunch mode) {
  if (mode != DependentLaunch::kOff) kernels::StartRecordingDependentLaunches();
  absl::Status status = CudaCheck(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed), "cudaStreamBeginCapture");
  if (!status.ok()) {
    (void)kernels::TakeDependentLaunchNodes();
    return status;
  }
  capturing_ = true, conditional_branches_ = 0;
  status = enqueue();
  capturing_ = false;
  std::vector<cudaGraphNode_t> dependent = kernels::TakeDependentLaunchNodes();
  cudaGraph_t graph = nullptr;
  const absl::Status ended = CudaCheck(cudaStreamEndCapture(stream_, &graph), "cudaStreamEndCapture");
  if (status.ok()) status = ended;
  if (status.ok() && generation() != key.generation) {
    status = absl::InternalError("a work buffer was reallocated while the decode step was being captured");
  }
  programmatic_edges_ = edges_ = 0;
  if (status.ok()) status = AddProgrammaticEdges(graph, mode, std::move(dependent), edges_, programmatic_edges_);
  if (const char* dot = std::getenv("OPENMOE_DECODE_GRAPH_DOT"); dot != nullptr && graph != nullptr) {  // debugging
    (void)cudaGraphDebugDotPrint(graph, dot, cudaGraphDebugDotFlagsVerbose);
  }
  if (status.ok()) status = CudaCheck(cudaGraphInstantiate(&exec_, graph, 0), "cudaGraphInstantiate");
  if (graph != nullptr) (void)cudaGraphDestroy(graph);
  if (!status.ok()) exec_ = nullptr, programmatic_edges_ = 0;
  return status;
}

absl::Status DecodeGraphs<Kokkos::Cuda>::Run(DecodeGraphKey key, const std::function<uint64_t()>& generation,
                                             const std::function<absl::Status()>& enqueue) {
  if (exec_ != nullptr && key == captured_) {
    ++launches_;
    return CudaCheck(cudaGraphLaunch(exec_, stream_), "cudaGraphLaunch");
  }
  if (!(key == warm_)) {  // first step with these buffers: run it as it is, allocating what it needs
    absl::Status status = enqueue();
    warm_ = key;
    warm_.generation = generation();
    return status;
  }
  if (exec_ != nullptr) {
    (void)cudaGraphExecDestroy(exec_);
    exec_ = nullptr;
  }
  space_.fence();
  absl::Status status = CaptureAndInstantiate(key, generation, enqueue, dependent_launch_);
  if (!status.ok() && dependent_launch_ != DependentLaunch::kOff) {
    // Programmatic edges refused (a driver or graph this code was not tried with): capture again
    // with ordinary edges, which is what runs without dependent launch.
    if (!warned_) {
      std::fprintf(stderr, "openmoe: note: decode graph captured with ordinary edges (programmatic dependent launch refused: %s)\n",
                   std::string(status.message()).c_str());
      warned_ = true;
    }
    (void)cudaGetLastError();
    space_.fence();
    status = CaptureAndInstantiate(key, generation, enqueue, DependentLaunch::kOff);
  }
  if (!status.ok()) return status;
  captured_ = key;
  ++launches_;
  return CudaCheck(cudaGraphLaunch(exec_, stream_), programmatic_edges_ > 0 ? "cudaGraphLaunch (with programmatic edges)"
                                                                             : "cudaGraphLaunch");
}
#endif

}  // namespace openmoe
