// File: kernels/cublas_handle.h
// The process's cuBLAS handle (created on first use, shared by every op that calls cuBLAS
// directly, with a fixed workspace), bound to the stream of the execution space it is asked for;
// cuBLAS's type names.
#ifndef KERNELS_CUBLAS_HANDLE_H_
#define KERNELS_CUBLAS_HANDLE_H_

#include <Kokkos_Core.hpp>

#if defined(KOKKOS_ENABLE_CUDA)
#include <cublas_v2.h>

#include <type_traits>

#include "openmoe/core/bf16.h"

namespace openmoe::kernels {

// cuBLAS's name for a storage type: float, bf16 or f16.
template <class T>
constexpr cudaDataType_t CudaType() {
  return std::is_same_v<T, float> ? CUDA_R_32F : std::is_same_v<T, bf16> ? CUDA_R_16BF : CUDA_R_16F;
}

// cuBLAS's workspace, allocated once with the handle. cuBLAS recommends 32 MiB on Hopper. Without
// a workspace of our own, cuBLAS allocates one while a CUDA graph is being captured, and the
// captured graph then holds a memory-allocation node. The driver does not allow edges to be
// removed or added in such a graph, so the decode graph's programmatic edges
// (openmoe/decode_graph.cc) could not be added at 8B shapes.
inline constexpr size_t kCublasWorkspaceBytes = size_t(32) << 20;

// The workspace the calls on this thread use: the handle's own (nullptr here), or one that a
// ScopedCublasWorkspace gave. Products that may run at the same time (the expert branches of a
// decode graph, openmoe/model.cc) each need a workspace of their own, since split-K products
// keep their partial sums there.
struct CublasWorkspace {
  void* data   = nullptr;
  size_t bytes = 0;
};
inline CublasWorkspace& CurrentCublasWorkspace() {
  static thread_local CublasWorkspace current;
  return current;
}

// Calls made while it lives use `bytes` of workspace at `data` (device memory) instead of the
// handle's own; restores the previous one when it goes.
class ScopedCublasWorkspace {
 public:
  ScopedCublasWorkspace(void* data, size_t bytes) : previous_(CurrentCublasWorkspace()) {
    CurrentCublasWorkspace() = CublasWorkspace{data, bytes};
  }
  ~ScopedCublasWorkspace() { CurrentCublasWorkspace() = previous_; }
  ScopedCublasWorkspace(const ScopedCublasWorkspace&) = delete;
  ScopedCublasWorkspace& operator=(const ScopedCublasWorkspace&) = delete;

 private:
  CublasWorkspace previous_;
};

// The process's handle bound to `space`'s stream and to the current workspace (the fixed one
// unless a ScopedCublasWorkspace says otherwise); nullptr when cublasCreate or the workspace
// allocation failed. cublasSetStream resets the workspace to cuBLAS's own pool, so the workspace
// is set again whenever the stream or the workspace changes.
inline cublasHandle_t CublasHandle(const Kokkos::Cuda& space) {
  struct Handle {
    cublasHandle_t handle = nullptr;
    void* workspace = nullptr;
    cudaStream_t stream = nullptr;
    void* bound_workspace = nullptr;
    bool bound = false;
  };
  static Handle h = [] {
    Handle created;
    if (cublasCreate(&created.handle) != CUBLAS_STATUS_SUCCESS) return Handle{};
    if (cudaMalloc(&created.workspace, kCublasWorkspaceBytes) != cudaSuccess) {
      (void)cudaGetLastError();
      cublasDestroy(created.handle);
      return Handle{};
    }
    return created;
  }();
  if (h.handle == nullptr) return nullptr;
  const cudaStream_t stream = space.cuda_stream();
  const CublasWorkspace scoped = CurrentCublasWorkspace();
  void* workspace    = scoped.data != nullptr ? scoped.data : h.workspace;
  const size_t bytes = scoped.data != nullptr ? scoped.bytes : kCublasWorkspaceBytes;
  if (!h.bound || stream != h.stream || workspace != h.bound_workspace) {
    if (cublasSetStream(h.handle, stream) != CUBLAS_STATUS_SUCCESS ||
        cublasSetWorkspace(h.handle, workspace, bytes) != CUBLAS_STATUS_SUCCESS) {
      h.bound = false;
      return nullptr;
    }
    h.stream          = stream;
    h.bound_workspace = workspace;
    h.bound           = true;
  }
  return h.handle;
}

}  // namespace openmoe::kernels

#endif  // KOKKOS_ENABLE_CUDA
#endif  // KERNELS_CUBLAS_HANDLE_H_
