#include "openmoe/random_init.h"

#include <string>

#include "kernels/instantiate.h"
#include "openmoe/core/bf16.h"

namespace openmoe {
namespace {

KOKKOS_INLINE_FUNCTION uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t Fnv1a(const std::string& text) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char ch : text) h = (h ^ ch) * 0x100000001b3ULL;
  return h;
}

// stddev * N(0, 1) by Box-Muller from two hashed counters of `stream`.
KOKKOS_INLINE_FUNCTION float NormalDraw(uint64_t stream, int64_t i, double stddev) {
  const double u1 = double((SplitMix64(stream + 2 * uint64_t(i)) >> 11) + 1) * 0x1.0p-53;  // (0, 1]
  const double u2 = double(SplitMix64(stream + 2 * uint64_t(i) + 1) >> 11) * 0x1.0p-53;
  return float(stddev * Kokkos::Experimental::sqrt(-2.0 * Kokkos::Experimental::log(u1)) *
               Kokkos::Experimental::cos(2.0 * M_PI * u2));
}

}  // namespace

template <class T, class ExecSpace>
void FillInitialValues(const ExecSpace& space, const OpenMoeConfig& config, const TensorSpec& spec, uint64_t seed,
                       Vector<T, ExecSpace> weights, int64_t first) {
  const int64_t n = int64_t(weights.extent(0));
  if (spec.orientation == Orientation::kVector) {
    Kokkos::deep_copy(space, weights, FromFloat<T>(1.0f));
    return;
  }
  const uint64_t stream = SplitMix64(seed ^ Fnv1a(spec.name));
  const double stddev = InitStd(config, spec);
  // The embedding's padding row: [pad * H, (pad + 1) * H) is 0.
  const bool embedding = spec.name == "model.embed_tokens.weight";
  const int64_t pad_begin = embedding ? config.pad_token_id * config.hidden_size : 0;
  const int64_t pad_end   = embedding ? pad_begin + config.hidden_size : 0;
  Kokkos::parallel_for(
      "openmoe::FillInitialValues", Kokkos::RangePolicy<ExecSpace, Kokkos::IndexType<int64_t>>(space, 0, n),
      KOKKOS_LAMBDA(const int64_t i) {
        const int64_t at = first + i;  // the element of the whole tensor
        weights(i) = FromFloat<T>(at >= pad_begin && at < pad_end ? 0.0f : NormalDraw(stream, at, stddev));
      });
}

#define OPENMOE_INSTANTIATE_RANDOM_INIT(Space, T)                                                              \
  template void FillInitialValues<T, Space>(const Space&, const OpenMoeConfig&, const TensorSpec&, uint64_t, \
                                            Vector<T, Space>, int64_t);
OPENMOE_FOR_EACH_SPACE_AND_DTYPE(OPENMOE_INSTANTIATE_RANDOM_INIT)

}  // namespace openmoe
