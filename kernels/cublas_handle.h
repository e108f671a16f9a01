// File: kernels/cublas_handle.h
// A cuBLAS handle with a fixed workspace, owned by an execution context (execution_context.h) and
// bound to the stream and workspace of each call; cuBLAS's type names.
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

// Created on the first Bind (cublasCreate and the workspace allocation), destroyed with the
// object. Not copyable: contexts share one through a pointer.
class CublasHandle {
 public:
  CublasHandle() = default;
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  ~CublasHandle() {
    if (workspace_ != nullptr) cudaFree(workspace_);
    if (handle_ != nullptr) cublasDestroy(handle_);
  }

  // The handle bound to `stream` and to `bytes` of workspace at `workspace` (device memory; the
  // handle's own 32 MiB when workspace is nullptr); nullptr when cublasCreate, the workspace
  // allocation, cublasSetStream or cublasSetWorkspace failed. cublasSetStream resets the
  // workspace to cuBLAS's own pool, so both are set again whenever either changes. Products that
  // may run at the same time on different streams (the expert branches of a decode graph) each
  // pass a workspace of their own: split-K products keep their partial sums there.
  cublasHandle_t Bind(cudaStream_t stream, void* workspace, size_t bytes) {
    if (handle_ == nullptr && !Create()) return nullptr;
    if (workspace == nullptr) workspace = workspace_, bytes = kCublasWorkspaceBytes;
    if (!bound_ || stream != stream_ || workspace != bound_workspace_) {
      if (cublasSetStream(handle_, stream) != CUBLAS_STATUS_SUCCESS ||
          cublasSetWorkspace(handle_, workspace, bytes) != CUBLAS_STATUS_SUCCESS) {
        bound_ = false;
        return nullptr;
      }
      stream_ = stream, bound_workspace_ = workspace, bound_ = true;
    }
    return handle_;
  }

 private:
  bool Create() {
    if (cublasCreate(&handle_) != CUBLAS_STATUS_SUCCESS) {
      handle_ = nullptr;
      return false;
    }
    // Split-K products with 16-bit outputs reduce their partial sums in float32, not in the
    // output type (cuBLAS's default allows the latter): every 16-bit result is rounded once, as
    // the project's kernels and linear_test's FewRows16Bit bound assume (a bf16 [2, 777] x
    // [777, 45] MatMul was off by more than one bf16 ulp on the H200 without this).
    if (cublasSetMathMode(handle_, cublasMath_t(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)) !=
        CUBLAS_STATUS_SUCCESS) {
      cublasDestroy(handle_);
      handle_ = nullptr;
      return false;
    }
    if (cudaMalloc(&workspace_, kCublasWorkspaceBytes) != cudaSuccess) {
      (void)cudaGetLastError();
      cublasDestroy(handle_);
      handle_ = nullptr, workspace_ = nullptr;
      return false;
    }
    return true;
  }

  cublasHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  cudaStream_t stream_ = nullptr;
  void* bound_workspace_ = nullptr;
  bool bound_ = false;
};

}  // namespace openmoe::kernels

#endif  // KOKKOS_ENABLE_CUDA
#endif  // KERNELS_CUBLAS_HANDLE_H_
