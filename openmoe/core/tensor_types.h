// File: openmoe/core/tensor_types.h
// View aliases used by every layer. All tensors are row-major (Kokkos::LayoutRight) on every
// backend: Kokkos' default layout is LayoutLeft on CUDA and LayoutRight on host, so the layout is
// always spelled out (docs/conventions.md). `Space` is an execution space; its memory space holds
// the data.
//
//   Matrix<float, Kokkos::Cuda> x("x", T, H);  // [T, H]
#ifndef OPENMOE_CORE_TENSOR_TYPES_H_
#define OPENMOE_CORE_TENSOR_TYPES_H_

#include <Kokkos_Core.hpp>

namespace openmoe {

template <class T, class Space>
using Vector = Kokkos::View<T*, Kokkos::LayoutRight, typename Space::memory_space>;

template <class T, class Space>
using Matrix = Kokkos::View<T**, Kokkos::LayoutRight, typename Space::memory_space>;

template <class T, class Space>
using ConstVector = Kokkos::View<const T*, Kokkos::LayoutRight, typename Space::memory_space>;

template <class T, class Space>
using ConstMatrix = Kokkos::View<const T**, Kokkos::LayoutRight, typename Space::memory_space>;

}  // namespace openmoe

#endif  // OPENMOE_CORE_TENSOR_TYPES_H_
