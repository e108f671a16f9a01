#include "kernels/moe.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/instantiate.h"

namespace openmoe::kernels {

int64_t ExpertCapacity(int64_t num_tokens, int64_t num_experts, double capacity_factor,
                       int64_t min_capacity, int64_t top_k) {
  int64_t capacity = int64_t(std::floor(double(top_k) * capacity_factor * double(num_tokens) /
                                        double(num_experts)));
  capacity += capacity % 2;
  return capacity > min_capacity ? capacity : min_capacity;
}

template <class T, class ExecSpace>
absl::Status RouterTop2(const ExecSpace& space, ConstMatrix<T, ExecSpace> logits,
                        Matrix<float, ExecSpace> probs, Matrix<int32_t, ExecSpace> experts) {
  const int64_t N = logits.extent(0), E = logits.extent(1);
  if (E < 2 || probs.extent(0) != size_t(N) || probs.extent(1) != size_t(E) ||
      experts.extent(0) != size_t(N) || experts.extent(1) != 2) {
    return absl::InvalidArgumentError(absl::StrCat("RouterTop2: expected logits/probs [", N, ", E>=2], experts [",
                                                   N, ", 2]"));
  }
  Kokkos::parallel_for(
      "openmoe::kernels::RouterTop2", Kokkos::RangePolicy<ExecSpace>(space, 0, N),
      KOKKOS_LAMBDA(const int64_t t) {
        float max_logit = ToFloat(logits(t, 0));
        for (int64_t e = 1; e < E; ++e) {
          const float z = ToFloat(logits(t, e));
          max_logit     = z > max_logit ? z : max_logit;
        }
        float sum = 0.0f;
        for (int64_t e = 0; e < E; ++e) {
          const float p = Kokkos::Experimental::exp(ToFloat(logits(t, e)) - max_logit);
          probs(t, e)   = p;
          sum += p;
        }
        const float inv_sum = 1.0f / sum;
        int32_t first = 0;
        for (int64_t e = 0; e < E; ++e) {
          probs(t, e) *= inv_sum;
          if (probs(t, e) > probs(t, first)) first = int32_t(e);  // strict: ties keep the lowest
        }
        int32_t second = first == 0 ? 1 : 0;
        for (int64_t e = 0; e < E; ++e) {
          if (e != first && probs(t, e) > probs(t, second)) second = int32_t(e);
        }
        experts(t, 0) = first;
        experts(t, 1) = second;
      });
  return absl::OkStatus();
}

template <class ExecSpace>
absl::Status AssignSlots(const ExecSpace& space, ConstMatrix<int32_t, ExecSpace> experts,
                         int64_t num_experts, Matrix<int32_t, ExecSpace> rank) {
  const int64_t N = experts.extent(0);
  if (rank.extent(0) != size_t(N) || rank.extent(1) != 2 || experts.extent(1) != 2) {
    return absl::InvalidArgumentError("AssignSlots: experts and rank must both be [N, 2]");
  }
  // One thread per expert walks the tokens in order: first the top-1 queue, then the top-2 queue
  // behind it. O(N * E) work, no atomics, deterministic.
  Kokkos::parallel_for(
      "openmoe::kernels::AssignSlots", Kokkos::RangePolicy<ExecSpace>(space, 0, num_experts),
      KOKKOS_LAMBDA(const int64_t e) {
        int32_t next = 0;
        for (int64_t t = 0; t < N; ++t) {
          if (experts(t, 0) == e) rank(t, 0) = next++;
        }
        for (int64_t t = 0; t < N; ++t) {
          if (experts(t, 1) == e) rank(t, 1) = next++;
        }
      });
  return absl::OkStatus();
}

template <class T, class ExecSpace>
absl::Status Dispatch(const ExecSpace& space, ConstMatrix<T, ExecSpace> x,
                      ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,
                      int64_t capacity, Matrix<T, ExecSpace> buffer) {
  const int64_t N = x.extent(0), H = x.extent(1);
  if (buffer.extent(1) != size_t(H) || buffer.extent(0) % size_t(capacity) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("Dispatch: buffer '", buffer.label(),
                                                   "' must be [E * ", capacity, ", ", H, "]"));
  }
  Kokkos::deep_copy(space, buffer, FromFloat<T>(0.0f));
  Kokkos::parallel_for(
      "openmoe::kernels::Dispatch",
      Kokkos::MDRangePolicy<ExecSpace, Kokkos::Rank<3>>(space, {0, 0, 0}, {N, 2, H}),
      KOKKOS_LAMBDA(const int64_t t, const int64_t k, const int64_t h) {
        const int32_t slot = rank(t, k);
        if (slot < capacity) buffer(experts(t, k) * capacity + slot, h) = x(t, h);
      });
  return absl::OkStatus();
}

template <class T, class ExecSpace>
absl::Status Combine(const ExecSpace& space, ConstMatrix<T, ExecSpace> expert_out,
                     ConstMatrix<float, ExecSpace> probs, ConstMatrix<int32_t, ExecSpace> experts,
                     ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity,
                     Matrix<T, ExecSpace> y) {
  const int64_t N = y.extent(0), H = y.extent(1);
  if (expert_out.extent(1) != size_t(H) || probs.extent(0) != size_t(N)) {
    return absl::InvalidArgumentError("Combine: expert_out must be [E * C, H] and probs [N, E]");
  }
  Kokkos::parallel_for(
      "openmoe::kernels::Combine",
      Kokkos::MDRangePolicy<ExecSpace, Kokkos::Rank<2>>(space, {0, 0}, {N, H}),
      KOKKOS_LAMBDA(const int64_t t, const int64_t h) {
        float acc = 0.0f;
        for (int k = 0; k < 2; ++k) {
          const int32_t e = experts(t, k), slot = rank(t, k);
          if (slot < capacity) acc += probs(t, e) * ToFloat(expert_out(e * capacity + slot, h));
        }
        y(t, h) = FromFloat<T>(acc);
      });
  return absl::OkStatus();
}

#define OPENMOE_INSTANTIATE_MOE(Space, T)                                                         \
  template absl::Status RouterTop2<T, Space>(const Space&, ConstMatrix<T, Space>, Matrix<float, Space>, \
                                             Matrix<int32_t, Space>);                             \
  template absl::Status Dispatch<T, Space>(const Space&, ConstMatrix<T, Space>,                   \
                                           ConstMatrix<int32_t, Space>, ConstMatrix<int32_t, Space>, \
                                           int64_t, Matrix<T, Space>);                            \
  template absl::Status Combine<T, Space>(const Space&, ConstMatrix<T, Space>, ConstMatrix<float, Space>, \
                                          ConstMatrix<int32_t, Space>, ConstMatrix<int32_t, Space>, \
                                          int64_t, Matrix<T, Space>);
#define OPENMOE_INSTANTIATE_SLOTS(Space)                                                          \
  template absl::Status AssignSlots<Space>(const Space&, ConstMatrix<int32_t, Space>, int64_t,    \
                                           Matrix<int32_t, Space>);
OPENMOE_FOR_EACH_SPACE_AND_DTYPE(OPENMOE_INSTANTIATE_MOE)
OPENMOE_FOR_EACH_EXECUTION_SPACE(OPENMOE_INSTANTIATE_SLOTS)

}  // namespace openmoe::kernels
