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

// The process's handle bound to `space`'s stream with the fixed workspace; nullptr when
// cublasCreate or the workspace allocation failed. cublasSetStream resets the workspace to
// cuBLAS's own pool, so the workspace is set again whenever the stream changes.
inline cublasHandle_t CublasHandle(const Kokkos::Cuda& space) {
  struct Handle {
    cublasHandle_t handle = nullptr;
    void* workspace = nullptr;
    cudaStream_t stream = nullptr;
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
  if (!h.bound || stream != h.stream) {
    if (cublasSetStream(h.handle, stream) != CUBLAS_STATUS_SUCCESS ||
        cublasSetWorkspace(h.handle, h.workspace, kCublasWorkspaceBytes) != CUBLAS_STATUS_SUCCESS) {
      h.bound = false;
      return nullptr;
    }
    h.stream = stream;
    h.bound  = true;
  }
  return h.handle;
}

}  // namespace openmoe::kernels

#endif  // KOKKOS_ENABLE_CUDA
#endif  // KERNELS_CUBLAS_HANDLE_H_
