#include "kernels/dependent_launch.h"

#include <atomic>
#include <mutex>

namespace openmoe::kernels {

#if defined(KOKKOS_ENABLE_CUDA)
namespace {
std::mutex recorded_mutex;
std::atomic<bool> recording{false};
std::vector<cudaGraphNode_t> recorded;  // nodes of dependent launches captured so far
}  // namespace

void StartRecordingDependentLaunches() {
  std::lock_guard<std::mutex> lock(recorded_mutex);
  recorded.clear();
  recording = true;
}

void RecordDependentLaunch(cudaStream_t stream) {
  if (!recording) return;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  const cudaGraphNode_t* last = nullptr;  // the stream's capture frontier: the node just added
  size_t count = 0;
  if (cudaStreamGetCaptureInfo(stream, &status, nullptr, nullptr, &last, nullptr, &count) != cudaSuccess) {
    (void)cudaGetLastError();
    return;
  }
  if (status != cudaStreamCaptureStatusActive || count != 1) return;
  std::lock_guard<std::mutex> lock(recorded_mutex);
  recorded.push_back(last[0]);
}

std::vector<cudaGraphNode_t> TakeDependentLaunchNodes() {
  std::lock_guard<std::mutex> lock(recorded_mutex);
  recording = false;
  std::vector<cudaGraphNode_t> nodes;
  nodes.swap(recorded);
  return nodes;
}
#endif

}  // namespace openmoe::kernels
