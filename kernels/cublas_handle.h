// File: kernels/cublas_handle.h
// The process's cuBLAS handle (created on first use, shared by every op that calls cuBLAS
// directly), bound to the stream of the execution space it is asked for; cuBLAS's type names.
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

// nullptr when cublasCreate failed.
inline cublasHandle_t CublasHandle(const Kokkos::Cuda& space) {
  static cublasHandle_t handle = [] {
    cublasHandle_t h = nullptr;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) h = nullptr;
    return h;
  }();
  if (handle != nullptr) cublasSetStream(handle, space.cuda_stream());
  return handle;
}

}  // namespace openmoe::kernels

#endif  // KOKKOS_ENABLE_CUDA
#endif  // KERNELS_CUBLAS_HANDLE_H_
