// File: kernels/instantiate.h
// OPENMOE_FOR_EACH_EXECUTION_SPACE(MACRO) expands MACRO(Space) for every execution space this
// build enables, for explicit instantiation of op templates in their .cc files.
#ifndef KERNELS_INSTANTIATE_H_
#define KERNELS_INSTANTIATE_H_

#include <Kokkos_Core.hpp>

#if defined(KOKKOS_ENABLE_OPENMP)
#define OPENMOE_IF_OPENMP_(MACRO) MACRO(Kokkos::OpenMP)
#else
#define OPENMOE_IF_OPENMP_(MACRO)
#endif

#if defined(KOKKOS_ENABLE_CUDA)
#define OPENMOE_IF_CUDA_(MACRO) MACRO(Kokkos::Cuda)
#else
#define OPENMOE_IF_CUDA_(MACRO)
#endif

#define OPENMOE_FOR_EACH_EXECUTION_SPACE(MACRO) \
  MACRO(Kokkos::Serial)                         \
  OPENMOE_IF_OPENMP_(MACRO)                     \
  OPENMOE_IF_CUDA_(MACRO)

#endif  // KERNELS_INSTANTIATE_H_
