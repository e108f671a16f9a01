// File: kernels/instantiate.h
// Explicit-instantiation helpers for op templates in their .cc files:
//   OPENMOE_FOR_EACH_EXECUTION_SPACE(MACRO)  -> MACRO(Space) for every enabled space;
//   OPENMOE_FOR_EACH_SPACE_AND_DTYPE(MACRO)  -> MACRO(Space, T) for T in {float, bf16} (models);
//   OPENMOE_FOR_EACH_SPACE_AND_KERNEL_DTYPE(MACRO) -> T in {float, bf16, f16} (ops: fp16 training).
#ifndef KERNELS_INSTANTIATE_H_
#define KERNELS_INSTANTIATE_H_

#include <Kokkos_Core.hpp>

#include "openmoe/core/bf16.h"

#if defined(KOKKOS_ENABLE_OPENMP)
#define OPENMOE_IF_OPENMP_(MACRO) MACRO(Kokkos::OpenMP)
#define OPENMOE_IF_OPENMP2_(MACRO) MACRO(Kokkos::OpenMP, float) MACRO(Kokkos::OpenMP, ::openmoe::bf16)
#define OPENMOE_IF_OPENMP_F16_(MACRO) MACRO(Kokkos::OpenMP, ::openmoe::f16)
#else
#define OPENMOE_IF_OPENMP_F16_(MACRO)
#define OPENMOE_IF_OPENMP_(MACRO)
#define OPENMOE_IF_OPENMP2_(MACRO)
#endif

#if defined(KOKKOS_ENABLE_CUDA)
#define OPENMOE_IF_CUDA_(MACRO) MACRO(Kokkos::Cuda)
#define OPENMOE_IF_CUDA2_(MACRO) MACRO(Kokkos::Cuda, float) MACRO(Kokkos::Cuda, ::openmoe::bf16)
#define OPENMOE_IF_CUDA_F16_(MACRO) MACRO(Kokkos::Cuda, ::openmoe::f16)
#else
#define OPENMOE_IF_CUDA_F16_(MACRO)
#define OPENMOE_IF_CUDA_(MACRO)
#define OPENMOE_IF_CUDA2_(MACRO)
#endif

#define OPENMOE_FOR_EACH_EXECUTION_SPACE(MACRO) \
  MACRO(Kokkos::Serial)                         \
  OPENMOE_IF_OPENMP_(MACRO)                     \
  OPENMOE_IF_CUDA_(MACRO)

#define OPENMOE_FOR_EACH_SPACE_AND_DTYPE(MACRO)                   \
  MACRO(Kokkos::Serial, float) MACRO(Kokkos::Serial, ::openmoe::bf16) \
  OPENMOE_IF_OPENMP2_(MACRO)                                      \
  OPENMOE_IF_CUDA2_(MACRO)

#define OPENMOE_FOR_EACH_SPACE_AND_KERNEL_DTYPE(MACRO) \
  OPENMOE_FOR_EACH_SPACE_AND_DTYPE(MACRO)               \
  MACRO(Kokkos::Serial, ::openmoe::f16)                 \
  OPENMOE_IF_OPENMP_F16_(MACRO)                         \
  OPENMOE_IF_CUDA_F16_(MACRO)

#endif  // KERNELS_INSTANTIATE_H_
