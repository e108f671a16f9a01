// File: openmoe/core/test_util.h
// Helpers for tests over Kokkos: the enabled backends as a GoogleTest type list, host <-> device
// copies of row-major data, seeded random data.
//
//   TYPED_TEST_SUITE(MyTest, openmoe::testing::Backends);
//   auto x = ToDevice<TypeParam>(host, rows, cols);      // Matrix<float, TypeParam>
//   std::vector<float> back = ToHost(x);
#ifndef OPENMOE_CORE_TEST_UTIL_H_
#define OPENMOE_CORE_TEST_UTIL_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "openmoe/core/execution_spaces.h"
#include "openmoe/core/tensor_types.h"

namespace openmoe::testing {

template <class List>
struct ToGTestTypes;
template <class... Spaces>
struct ToGTestTypes<ExecutionSpaceList<Spaces...>> {
  using type = ::testing::Types<Spaces...>;
};

// Serial + OpenMP on host builds, Serial + Cuda with --config=cuda.
using Backends = ToGTestTypes<EnabledExecutionSpaces>::type;

template <class Space, class T>
Matrix<T, Space> ToDevice(const std::vector<T>& host, int64_t rows, int64_t cols,
                          const std::string& label = "x") {
  Matrix<T, Space> device(label, rows, cols);
  Kokkos::deep_copy(device, Kokkos::View<const T**, Kokkos::LayoutRight, Kokkos::HostSpace,
                                         Kokkos::MemoryUnmanaged>(host.data(), rows, cols));
  return device;
}

template <class View>
std::vector<typename View::non_const_value_type> ToHost(const View& device) {
  std::vector<typename View::non_const_value_type> host(device.size());
  auto mirror = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), device);
  for (size_t i = 0; i < device.size(); ++i) host[i] = mirror.data()[i];  // LayoutRight, contiguous
  return host;
}

inline std::vector<float> RandomNormal(size_t n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& e : v) e = scale * normal(rng);
  return v;
}

}  // namespace openmoe::testing

#endif  // OPENMOE_CORE_TEST_UTIL_H_
