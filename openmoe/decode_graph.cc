#include "openmoe/decode_graph.h"

#include "absl/strings/str_cat.h"

namespace openmoe {

#if defined(KOKKOS_ENABLE_CUDA)
namespace {
absl::Status CudaCheck(cudaError_t error, const char* call) {
  if (error == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(call, " failed: ", cudaGetErrorString(error)));
}
}  // namespace

DecodeGraphs<Kokkos::Cuda>::DecodeGraphs() {
  (void)cudaStreamCreate(&stream_);
  space_ = Kokkos::Cuda(stream_);
}

DecodeGraphs<Kokkos::Cuda>::~DecodeGraphs() {
  if (exec_ != nullptr) (void)cudaGraphExecDestroy(exec_);
  space_.fence();
  space_ = Kokkos::Cuda();  // release the instance before its stream
  (void)cudaStreamDestroy(stream_);
}

absl::Status DecodeGraphs<Kokkos::Cuda>::Run(DecodeGraphKey key, const std::function<uint64_t()>& generation,
                                             const std::function<absl::Status()>& enqueue) {
  if (exec_ != nullptr && key == captured_) return CudaCheck(cudaGraphLaunch(exec_, stream_), "cudaGraphLaunch");
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
  absl::Status status = CudaCheck(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed), "cudaStreamBeginCapture");
  if (!status.ok()) return status;
  status = enqueue();
  cudaGraph_t graph = nullptr;
  const absl::Status ended = CudaCheck(cudaStreamEndCapture(stream_, &graph), "cudaStreamEndCapture");
  if (status.ok()) status = ended;
  if (status.ok() && generation() != key.generation) {
    status = absl::InternalError("a work buffer was reallocated while the decode step was being captured");
  }
  if (status.ok()) status = CudaCheck(cudaGraphInstantiate(&exec_, graph, 0), "cudaGraphInstantiate");
  if (graph != nullptr) (void)cudaGraphDestroy(graph);
  if (!status.ok()) {
    exec_ = nullptr;
    return status;
  }
  captured_ = key;
  return CudaCheck(cudaGraphLaunch(exec_, stream_), "cudaGraphLaunch");
}
#endif

}  // namespace openmoe
